"""Lossless storage of one weight leaf's integer codes.

A leaf of shape ``(..., n)`` is viewed as a 2-D matrix ``(prod(shape[:-1]), n)`` and its codes are written in
row order (C order of the view) or column order (F order). Positions holding the ``background`` value (the
pruned weights) can be omitted, as in Deep Compression (Han, Mao & Dally, ICLR 2016, arXiv 1510.00149):
pruning, relative indices and Huffman coding. Every candidate layout below is tried and the smallest kept:

* ``dense``: every value.
* ``bitmask``: a one-bit-per-position map of the kept (non-background) positions, then the kept values.
* ``relative``: for each kept position, the gap since the previous one at a ``w``-bit index width; a gap that
  does not fit is preceded by *filler* symbols ``2**w - 1``, each skipping ``2**w - 1`` positions without a
  value (the paper's padding zeros, which here carry no value).
* ``nm``: N:M sparsity, exactly N slots per group of M consecutive positions along the order's fast axis, each
  slot its position in the group and its value (groups with fewer kept entries are padded with background).
* ``structured``: any of the above on the block of live rows and columns, behind a row and a column bitmap.

A layout is a list of integer *streams* (the mask, gaps, slots, values). Each stream is stored with the
smallest of four coders: ``packed`` (fixed width, little-endian bits), ``huffman`` (canonical, code lengths at
most 15 bits, table of one four-bit length per symbol), ``zlib`` and raw ``lzma`` (one byte per symbol).
Every layout is sized exactly under packing and Huffman without encoding; zlib and LZMA, far slower and
only better where a stream has structure beyond its symbol frequencies, are tried on the two layouts
smallest without them.
The blob is the concatenation of the coded streams; ``meta`` says how to split and read it. The decoder needs
only numpy and the standard library, checks everything it reads and raises ``ValueError`` on any
inconsistency. Encoding is deterministic.
"""

from __future__ import annotations

import dataclasses
import heapq
import lzma
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Encoded", "decode", "decode_bytes", "encode", "encode_bytes"]

_VERSION = 1
_CODERS = ("packed", "huffman", "zlib", "lzma")
_CHEAP = ("packed", "huffman")
_FORMATS = ("dense", "bitmask", "relative", "nm")
_ORDERS = ("row", "column")
_GROUPS = (4, 8, 16)
_MAX_LEN = 15  # longest Huffman code
_EXPENSIVE_LAYOUTS = 2  # the layouts smallest under packed/Huffman that also try zlib and LZMA

Stream = tuple[str, np.ndarray, int]  # name, uint8 symbols, alphabet size


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One leaf's coded form: ``decode(meta, blob)`` gives the codes back; ``tried`` sizes every candidate."""

    meta: dict
    blob: bytes
    tried: dict[str, int]

    @property
    def description(self) -> str:
        """Short human text of the chosen layout and coders."""
        return _describe(self.meta)


def _describe(meta: Mapping[str, Any]) -> str:
    fmt, notes = meta["format"], [f"{meta['order']} order"]
    if fmt == "relative":
        fmt = "relative index"
        notes.insert(0, f"{meta['index_bits']}-bit gaps")
    elif fmt == "nm":
        fmt = f"{meta['n']}:{meta['m']} sparse"
    if meta["structured"]:
        notes.append("live rows/columns")
    return f"{fmt} ({', '.join(notes)}) + " + " + ".join(f"{s['coder']} {s['name']}" for s in meta["streams"])


# ----------------------------------------------------------------------------------------------- stream coders


def _width(alphabet: int) -> int:
    return (alphabet - 1).bit_length()


def _to_bits(sym: np.ndarray, width: int) -> np.ndarray:
    return ((sym.astype(np.int64)[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()


def _from_bits(bits: np.ndarray, width: int) -> np.ndarray:
    return bits.reshape(-1, width).astype(np.int64) @ (1 << np.arange(width, dtype=np.int64))


def _read_bits(data: bytes, nbits: int, what: str) -> np.ndarray:
    """The first ``nbits`` bits of ``data``, which must be exactly that long with zero padding."""
    if len(data) != -(-nbits // 8):
        raise ValueError(f"{what}: {len(data)} bytes, expected {-(-nbits // 8)} for {nbits} bits")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    if bits[nbits:].any():
        raise ValueError(f"{what}: nonzero padding bits after {nbits} bits")
    return bits[:nbits]


def _huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (ties broken by symbol), limited by halving the counts until they fit."""
    freq = counts.astype(np.int64)
    while True:
        lengths = np.zeros(len(freq), np.int64)
        heap = [(int(f), s, [s]) for s, f in enumerate(freq) if f > 0]
        if len(heap) == 1:
            lengths[heap[0][1]] = 1
        heapq.heapify(heap)
        tie = len(freq)
        while len(heap) > 1:
            (f1, _, s1), (f2, _, s2) = heapq.heappop(heap), heapq.heappop(heap)
            lengths[s1 + s2] += 1
            heapq.heappush(heap, (f1 + f2, tie, s1 + s2))
            tie += 1
        if lengths.max(initial=0) <= _MAX_LEN:
            return lengths
        freq = np.where(freq > 0, (freq + 1) // 2, 0)


def _canonical(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: by increasing length, then symbol."""
    codes, code, prev = np.zeros(len(lengths), np.int64), 0, 0
    for s in np.lexsort((np.arange(len(lengths)), lengths)):
        if lengths[s]:
            code <<= int(lengths[s]) - prev
            codes[s], code, prev = code, code + 1, int(lengths[s])
    return codes


def _huffman_encode(sym: np.ndarray, alphabet: int) -> bytes:
    lengths = _huffman_lengths(np.bincount(sym, minlength=alphabet))
    codes = _canonical(lengths)
    n, c = lengths[sym], codes[sym]
    start = np.cumsum(n) - n
    bits = np.zeros(int(n.sum()), np.uint8)
    for j in range(int(n.max(initial=0))):
        sel = n > j
        bits[start[sel] + j] = (c[sel] >> (n[sel] - 1 - j)) & 1
    return np.packbits(np.concatenate([_to_bits(lengths, 4), bits]), bitorder="little").tobytes()


def _huffman_decode(data: bytes, count: int, alphabet: int, what: str) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    head = 4 * alphabet
    if len(bits) < head:
        raise ValueError(f"{what}: {len(data)} bytes cannot hold the huffman table of {alphabet} lengths")
    lengths = _from_bits(bits[:head], 4)
    kraft = int(np.sum((1 << (_MAX_LEN - lengths))[lengths > 0]))
    if kraft == 0 or kraft > 1 << _MAX_LEN:
        raise ValueError(f"{what}: huffman code lengths are not a prefix code (Kraft sum {kraft}/{1 << _MAX_LEN})")
    codes = _canonical(lengths)
    table_sym, table_len = np.zeros(1 << _MAX_LEN, np.int64), np.zeros(1 << _MAX_LEN, np.int64)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (_MAX_LEN - int(lengths[s]))
        table_sym[lo : lo + (1 << (_MAX_LEN - int(lengths[s])))] = s
        table_len[lo : lo + (1 << (_MAX_LEN - int(lengths[s])))] = lengths[s]
    body = bits[head:]
    n = len(body)
    if count > n:  # every code is at least one bit long
        raise ValueError(f"{what}: {n} huffman code bits cannot hold {count} symbols")
    padded = np.concatenate([body, np.zeros(_MAX_LEN, np.uint8)]).astype(np.int32)
    window = np.zeros(n, np.int32)
    for k in range(_MAX_LEN):  # the next fifteen bits at every offset, first bit most significant
        window |= padded[k : k + n] << (_MAX_LEN - 1 - k)
    step = np.append(table_len[window], 0)  # sentinel: offset n starts no symbol
    nxt = np.minimum(np.arange(n + 1) + step, n).tolist()
    pos, p = [0] * count, 0
    for i in range(count):
        pos[i], p = p, nxt[p]
    pos = np.asarray(pos, np.int64)
    bad = np.flatnonzero(step[pos] == 0)
    if len(bad):
        i = int(bad[0])
        if pos[i] >= n:
            raise ValueError(f"{what}: huffman bit stream ends after {i} of {count} symbols")
        raise ValueError(f"{what}: invalid huffman code at bit {int(pos[i])} (symbol {i})")
    end = int(pos[-1] + step[pos[-1]])
    if end > n:
        raise ValueError(f"{what}: huffman bit stream ends in the middle of symbol {count - 1}")
    _read_bits(data, head + end, what)  # length and padding
    return table_sym[window[pos]]


def _lzma_filters(count: int) -> list[dict[str, int]]:
    """LZMA2 with the dictionary sized to the data (the decoder derives it from the count).

    Preset 9 | extreme up to a million symbols; plain 9 beyond, where extreme costs seconds a stream
    (the preset only steers the encoder's search, the decoder needs the dictionary size alone).
    """
    dict_size = 1 << max(12, min(26, _width(count)))
    preset = 9 | lzma.PRESET_EXTREME if count <= 1 << 20 else 9
    return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}]


def _inflate(coder: str, data: bytes, count: int, what: str) -> np.ndarray:
    """zlib or raw lzma data holding exactly ``count`` bytes and nothing after."""
    if coder == "zlib":
        d, errors = zlib.decompressobj(), zlib.error
    else:
        d, errors = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(count)), lzma.LZMAError
    try:
        out = d.decompress(data, count + 1)
    except errors as e:
        raise ValueError(f"{what}: corrupt {coder} data ({e})") from None
    if len(out) != count or not d.eof or d.unused_data:
        state = "unterminated" if not d.eof else "followed by extra bytes" if d.unused_data else "complete"
        raise ValueError(f"{what}: {coder} data gives {len(out)} symbols ({state}), expected {count}")
    return np.frombuffer(out, np.uint8).astype(np.int64)


def _encode_stream(coder: str, sym: np.ndarray, alphabet: int) -> bytes:
    if not len(sym):
        return b""
    if coder == "packed":
        return np.packbits(_to_bits(sym, _width(alphabet)), bitorder="little").tobytes()
    if coder == "huffman":
        return _huffman_encode(sym, alphabet)
    if coder == "zlib":
        return zlib.compress(sym.tobytes(), 9)
    return lzma.compress(sym.tobytes(), format=lzma.FORMAT_RAW, filters=_lzma_filters(len(sym)))


def _stream_size(coder: str, sym: np.ndarray, alphabet: int) -> int:
    if not len(sym):
        return 0
    if coder == "packed":
        return -(-len(sym) * _width(alphabet) // 8)
    if coder == "huffman":
        counts = np.bincount(sym, minlength=alphabet)
        return -(-(4 * alphabet + int(counts @ _huffman_lengths(counts))) // 8)
    return len(_encode_stream(coder, sym, alphabet))


def _decode_stream(coder: str, data: bytes, count: int, alphabet: int, what: str) -> np.ndarray:
    if count > _MAX_COUNT:
        raise ValueError(f"{what}: {count} symbols, more than any stream this format stores")
    if count == 0:
        if data:
            raise ValueError(f"{what}: {len(data)} bytes for an empty stream")
        return np.zeros(0, np.int64)
    if coder == "packed":
        sym = _from_bits(_read_bits(data, count * _width(alphabet), what), _width(alphabet))
    elif coder == "huffman":
        sym = _huffman_decode(data, count, alphabet, what)
    elif coder in ("zlib", "lzma"):
        sym = _inflate(coder, data, count, what)
    else:
        raise ValueError(f"{what}: unknown coder {coder!r}, expected one of {_CODERS}")
    if sym.max() >= alphabet:
        raise ValueError(f"{what}: symbol {int(sym.max())} out of range for alphabet size {alphabet}")
    return sym


# ----------------------------------------------------------------------------------------------------- layouts


def _gap_symbols(gaps: np.ndarray, w: int) -> np.ndarray:
    """Gap symbols at index width ``w``: ``gap // f`` fillers ``f = 2**w - 1``, then ``gap % f``."""
    f = (1 << w) - 1
    fills = gaps // f
    out = np.full(int(fills.sum()) + len(gaps), f, np.uint8)
    out[np.cumsum(fills + 1) - 1] = gaps - fills * f
    return out


def _layouts(view: np.ndarray, bits: int, bg: int | None, orders: Sequence[str] | None) -> Iterator:
    """Every candidate layout of ``view``: ``(layout, streams)``."""
    blocks = [(False, view, [])]
    if bg is not None and view.size:
        rows, cols = (view != bg).any(1), (view != bg).any(0)
        if not (rows.all() and cols.all()):
            head = [("rows", rows.astype(np.uint8), 2), ("columns", cols.astype(np.uint8), 2)]
            blocks.append((True, view[rows][:, cols], head))
    for structured, block, head in blocks:
        r, c = block.shape
        for order in orders or (("row",) if r <= 1 else ("column",) if c <= 1 else _ORDERS):
            a = np.ascontiguousarray(block if order == "row" else block.T)
            seq = a.ravel()
            base = {"format": "dense", "order": order, "structured": structured}
            yield base, [*head, ("values", seq, 1 << bits)]
            if bg is None:
                continue
            keep = seq != bg
            vals = seq[keep]
            yield (
                {**base, "format": "bitmask"},
                [*head, ("mask", keep.astype(np.uint8), 2), ("values", vals, 1 << bits)],
            )
            gaps = np.diff(np.flatnonzero(keep), prepend=-1) - 1
            for w in range(1, 9):
                layout = {**base, "format": "relative", "index_bits": w}
                yield layout, [*head, ("gaps", _gap_symbols(gaps, w), 1 << w), ("values", vals, 1 << bits)]
            for m in _GROUPS:
                if not a.size or a.shape[1] % m:
                    continue
                groups = a.reshape(-1, m)
                live = groups != bg
                n = int(live.sum(1).max())
                if n > m // 2:
                    continue
                key = np.where(live, 0, m) + np.arange(m)
                slots = np.sort(np.argsort(key, axis=1, kind="stable")[:, :n], axis=1)
                values = np.take_along_axis(groups, slots, 1).ravel()
                streams_nm = [*head, ("slots", slots.ravel().astype(np.uint8), m), ("values", values, 1 << bits)]
                yield {**base, "format": "nm", "n": n, "m": m}, streams_nm


def _check(codes: Any, bits: Any, background: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
    arr = np.asarray(codes)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"codes must have an integer dtype, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << bits):
        raise ValueError(f"codes span [{arr.min()}, {arr.max()}], outside [0, {(1 << bits) - 1}] for bits={bits}")
    if background is not None and (
        isinstance(background, bool) or not isinstance(background, int | np.integer) or not 0 <= background < 1 << bits
    ):
        raise ValueError(f"background must be None or an integer in [0, {(1 << bits) - 1}], got {background!r}")
    return arr, arr.astype(np.uint8).reshape(_view_shape(arr.shape))


def _view_shape(shape: Sequence[int]) -> tuple[int, int]:
    return (1, math.prod(shape)) if len(shape) <= 1 else (math.prod(shape[:-1]), shape[-1])


def _candidates(
    codes: Any,
    bits: int,
    background: int | None,
    *,
    coders: Sequence[str] = _CODERS,
    orders: Sequence[str] | None = None,
    match: Mapping[str, Any] | None = None,
) -> Iterator[tuple[dict, list[Stream]]]:
    """Each candidate layout (those with the ``match`` items): meta, each stream with its best allowed coder.

    Two passes: every layout is sized with the cheap coders (packed, Huffman: exact sizes without
    encoding), then the ``_EXPENSIVE_LAYOUTS`` smallest also try zlib and LZMA, which cost far more
    time and only win where a stream has structure beyond its symbol frequencies.
    """
    arr, view = _check(codes, bits, background)
    bg = None if background is None else int(background)
    cheap = [k for k in coders if k in _CHEAP] or list(coders)
    sizes: dict[tuple, int] = {}

    def sized(streams, allowed):
        entries = []
        for name, sym, alphabet in streams:
            key = (alphabet, sym.tobytes())
            for k in allowed:
                if (k, *key) not in sizes:
                    sizes[(k, *key)] = _stream_size(k, sym, alphabet)
            k = min(allowed, key=lambda k, key=key: sizes[(k, *key)])
            entries.append(
                {"name": name, "coder": k, "bytes": sizes[(k, *key)], "count": len(sym), "alphabet": alphabet}
            )
        return entries

    def layouts():
        for layout, streams in _layouts(view, int(bits), bg, orders):
            if all(layout.get(k) == v for k, v in (match or {}).items()):
                yield layout, streams

    totals = [sum(e["bytes"] for e in sized(streams, cheap)) for _, streams in layouts()]
    top = set(sorted(range(len(totals)), key=lambda i: (totals[i], i))[:_EXPENSIVE_LAYOUTS])
    head = {"version": _VERSION, "shape": list(arr.shape), "bits": int(bits), "background": bg}
    for i, (layout, streams) in enumerate(layouts()):
        entries = sized(streams, list(coders) if i in top else cheap)
        yield {**head, **layout, "streams": entries}, streams


def _assemble(meta: Mapping[str, Any], streams: list[Stream]) -> bytes:
    return b"".join(_encode_stream(e["coder"], s, a) for e, (_, s, a) in zip(meta["streams"], streams, strict=True))


def _encode_as(
    codes: Any,
    bits: int,
    background: int | None = None,
    *,
    coders: Sequence[str] = _CODERS,
    orders: Sequence[str] | None = None,
    **layout: Any,
) -> Encoded:
    """``encode`` restricted to the given coders, orders and layout keys (e.g. ``format="nm", m=4``)."""
    best, tried = None, {}
    for meta, streams in _candidates(codes, bits, background, coders=coders, orders=orders, match=layout):
        total = tried[_describe(meta)] = sum(e["bytes"] for e in meta["streams"])
        if best is None or total < best[0]:
            best = (total, meta, streams)
    if best is None:
        raise ValueError(f"no candidate layout matches {layout} with orders {orders}")
    return Encoded(best[1], _assemble(best[1], best[2]), tried)


def encode(codes: np.ndarray, bits: int, *, background: int | None = None) -> Encoded:
    """Store ``codes`` (integers in ``[0, 2**bits)``) in the smallest candidate layout; sparse layouts omit
    positions equal to ``background`` and are only tried when it is given."""
    return _encode_as(codes, bits, background)


def encode_bytes(data: bytes) -> tuple[str, bytes]:
    """Opaque ``data`` (a serialized program) in the smallest of the stream coders: ``(coder, blob)``."""
    sym = np.frombuffer(data, np.uint8)
    blobs = {k: _encode_stream(k, sym, 256) for k in _CODERS}
    coder = min(_CODERS, key=lambda k: len(blobs[k]))  # ties: the first, "packed" (the bytes as they are)
    return coder, blobs[coder]


# ------------------------------------------------------------------------------------------------------ decode


_MAX_COUNT = 1 << 34  # a bound on one stream, so a crafted count cannot overflow a length or ask for terabytes


def _int(value: Any, what: str, lo: int, hi: int | float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"codec meta {what}={value!r}: expected an integer in [{lo}, {hi}]")
    return value


class _Reader:
    """Reads the blob's streams in order, checking each against what the layout expects."""

    def __init__(self, entries: Any, blob: bytes) -> None:
        if not isinstance(entries, list):
            raise ValueError(f"codec meta streams must be a list, got {type(entries).__name__}")
        lengths = [_int(e["bytes"], f"streams[{i}].bytes", 0) for i, e in enumerate(entries)]
        if sum(lengths) != len(blob):
            raise ValueError(f"blob has {len(blob)} bytes, but its streams' lengths add up to {sum(lengths)}")
        self.entries, self.blob, self.i, self.offset = entries, blob, 0, 0

    def __call__(self, name: str, alphabet: int, count: int | None = None) -> np.ndarray:
        if self.i >= len(self.entries):
            raise ValueError(f"stream {name!r} missing: the meta lists only {len(self.entries)} streams")
        e = self.entries[self.i]
        what = f"stream {self.i} ({name!r})"
        if e["name"] != name:
            raise ValueError(f"{what}: meta names it {e['name']!r}")
        if _int(e["alphabet"], f"{name}.alphabet", 1) != alphabet:
            raise ValueError(f"{what}: alphabet size {e['alphabet']}, expected {alphabet}")
        got = _int(e["count"], f"{name}.count", 0)
        if count is not None and got != count:
            raise ValueError(f"{what}: {got} symbols, expected {count}")
        data = self.blob[self.offset : self.offset + e["bytes"]]
        self.i, self.offset = self.i + 1, self.offset + e["bytes"]
        return _decode_stream(e["coder"], data, got, alphabet, what)

    def finish(self) -> None:
        if self.i != len(self.entries):
            raise ValueError(f"meta lists {len(self.entries)} streams, the layout uses {self.i}")


def _decode_block(meta: Mapping[str, Any], read: _Reader, shape: tuple[int, int], bg: int | None) -> np.ndarray:
    fmt, values = meta["format"], 1 << meta["bits"]
    r, c = shape if meta["order"] == "row" else shape[::-1]
    if fmt == "dense":
        a = read("values", values, r * c).reshape(r, c)
    elif fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}, expected one of {_FORMATS}")
    elif bg is None:
        raise ValueError(f"format {fmt!r} needs a background value, meta has none")
    elif fmt == "bitmask":
        keep = read("mask", 2, r * c).astype(bool)
        a = np.full(r * c, bg, np.int64)
        a[keep] = read("values", values, int(keep.sum()))
    elif fmt == "relative":
        f = (1 << _int(meta["index_bits"], "index_bits", 1, 8)) - 1
        gaps = read("gaps", f + 1)
        fill = gaps == f
        if len(gaps) and fill[-1]:
            raise ValueError("stream 'gaps' ends with a filler symbol")
        pos = (np.cumsum(np.where(fill, f, gaps + 1)) - 1)[~fill]
        if len(pos) and pos[-1] >= r * c:
            raise ValueError(f"stream 'gaps' runs past the end: kept position {int(pos[-1])} of {r * c} positions")
        a = np.full(r * c, bg, np.int64)
        a[pos] = read("values", values, len(pos))
    else:
        m = _int(meta["m"], "m", 4, 16)
        if m not in _GROUPS:
            raise ValueError(f"codec meta m={m!r}: expected one of {_GROUPS}")
        n = _int(meta["n"], "n", 0, m // 2)
        if c % m:
            raise ValueError(f"nm layout: fast axis of {c} positions is not a multiple of m={m}")
        slots = read("slots", m, r * c // m * n).reshape(r * c // m, n)
        if n > 1 and (np.diff(slots, axis=1) <= 0).any():
            raise ValueError("stream 'slots': slot positions within a group are not strictly increasing")
        a = np.full((r * c // m, m), bg, np.int64)
        np.put_along_axis(a, slots, read("values", values, slots.size).reshape(slots.shape), 1)
    a = a.reshape(r, c)
    return a if meta["order"] == "row" else a.T


def decode_bytes(coder: Any, blob: bytes, count: Any, what: str) -> bytes:
    """The ``count`` bytes :func:`encode_bytes` stored as ``(coder, blob)``; ``ValueError`` if inconsistent."""
    if not isinstance(coder, str):
        raise ValueError(f"{what}: coder {coder!r}, expected one of {_CODERS}")
    return _decode_stream(coder, blob, _int(count, f"{what} size", 0), 256, what).astype(np.uint8).tobytes()


def decode(meta: Mapping[str, Any], blob: bytes, *, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The codes ``encode`` stored, as a ``uint8`` array of ``meta["shape"]``; ``ValueError`` if inconsistent.

    With ``expected_shape``, a meta of another shape is refused before anything is allocated.
    """
    try:
        if meta["version"] != _VERSION:
            raise ValueError(f"codec meta version {meta['version']!r}, expected {_VERSION}")
        shape = tuple(_int(d, "shape", 0) for d in meta["shape"])
        if expected_shape is not None and shape != tuple(expected_shape):
            raise ValueError(f"codec meta shape {shape}, expected {tuple(expected_shape)}")
        _int(meta["bits"], "bits", 1, 8)
        bg = meta["background"]
        if bg is not None:
            _int(bg, "background", 0, (1 << meta["bits"]) - 1)
        if meta["order"] not in _ORDERS:
            raise ValueError(f"codec meta order {meta['order']!r}, expected one of {_ORDERS}")
        read = _Reader(meta["streams"], bytes(blob))
        rows_cols = _view_shape(shape)
        if meta["structured"] is True:
            if bg is None:
                raise ValueError("a structured layout needs a background value, meta has none")
            rows, cols = read("rows", 2, rows_cols[0]).astype(bool), read("columns", 2, rows_cols[1]).astype(bool)
            view = np.full(rows_cols, bg, np.int64)
            view[np.ix_(rows, cols)] = _decode_block(meta, read, (int(rows.sum()), int(cols.sum())), bg)
        elif meta["structured"] is False:
            view = _decode_block(meta, read, rows_cols, bg)
        else:
            raise ValueError(f"codec meta structured={meta['structured']!r}: expected a bool")
        read.finish()
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed codec meta: {type(e).__name__}: {e}") from None
    return view.astype(np.uint8).reshape(shape)
