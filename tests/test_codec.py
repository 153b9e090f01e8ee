"""Tests of the lossless leaf codec (jaxcompress/_src/export/codec.py)."""

from __future__ import annotations

import copy
import json
import math
import zlib

import numpy as np
import pytest

from jaxcompress._src.export import codec

CODERS = ("packed", "huffman", "zlib", "lzma")


def _leaf(seed, shape, bits, density, *, background=0, empty_rows=0, full_rows=0):
    """Random codes: kept positions (at ``density``) get skewed non-background values."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    values = np.array(np.clip(np.round(rng.normal(top / 2, 1 + top / 8, shape)), 0, top), np.int64)
    if bits > 1:
        values[values == background] = (background + 1) % (top + 1)
    x = np.where(rng.random(shape) < density, values, background)
    if x.ndim >= 2:
        x2 = x.reshape(-1, x.shape[-1])
        x2[:empty_rows] = background
        x2[empty_rows : empty_rows + full_rows] = values.reshape(x2.shape)[empty_rows : empty_rows + full_rows]
    return x.astype(np.uint8)


def _all_candidates(x, bits, background, coders=CODERS, orders=("row", "column")):
    """Every layout x order x coder: (meta, blob) pairs, each coder forced on every stream."""
    for coder in coders:
        for meta, streams in codec._candidates(x, bits, background, coders=(coder,), orders=orders):
            yield meta, codec._assemble(meta, streams)


CASES = [  # seed, shape, bits, density, background, empty_rows, full_rows
    (0, (24, 32), 4, 0.001, 0, 0, 0),
    (1, (24, 32), 8, 0.01, 3, 2, 0),
    (2, (24, 32), 6, 0.08, 0, 3, 1),
    (3, (16, 32), 3, 0.3, 5, 1, 2),
    (4, (24, 16), 2, 0.7, 1, 0, 3),
    (5, (8, 16), 5, 1.0, 0, 0, 0),
    (6, (12, 16), 7, 0.0, 9, 0, 0),  # all background
    (7, (), 4, 1.0, 0, 0, 0),
    (8, (300,), 1, 0.08, 0, 0, 0),
    (9, (2, 3, 4, 16), 8, 0.3, 128, 1, 1),
    (10, (1, 64), 6, 0.01, 32, 0, 0),
    (11, (64, 1), 6, 0.3, 32, 0, 0),
    (12, (0, 8), 3, 0.5, 0, 0, 0),
]


@pytest.mark.parametrize(("seed", "shape", "bits", "density", "background", "empty", "full"), CASES)
def test_round_trip_every_candidate(seed, shape, bits, density, background, empty, full):
    x = _leaf(seed, shape, bits, density, background=background, empty_rows=empty, full_rows=full)
    seen = set()
    for meta, blob in _all_candidates(x, bits, background):
        seen.add((meta["format"], meta["structured"], meta["order"]))
        assert sum(s["bytes"] for s in meta["streams"]) == len(blob)
        y = codec.decode(json.loads(json.dumps(meta)), blob)
        assert y.dtype == np.uint8 and y.shape == x.shape
        np.testing.assert_array_equal(y, x, err_msg=codec._describe(meta))
    assert {f for f, _, _ in seen} >= {"dense", "bitmask", "relative"}
    dense_only = {m["format"] for m, _ in _all_candidates(x, bits, None, coders=("packed",))}
    assert dense_only == {"dense"}
    e = codec.encode(x, bits, background=background)
    np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)
    assert len(e.blob) == min(e.tried.values()) == e.tried[e.description]


@pytest.mark.parametrize("bits", range(1, 9))
def test_bits_and_single_symbol(bits):
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 1 << bits, (7, 9))
    for meta, blob in _all_candidates(x, bits, None):
        np.testing.assert_array_equal(codec.decode(meta, blob), x)
    const = np.full((5, 8), (1 << bits) - 1, np.int32)  # one distinct symbol, kept everywhere or nowhere
    for bg in (0, (1 << bits) - 1):
        for meta, blob in _all_candidates(const, bits, bg):
            np.testing.assert_array_equal(codec.decode(meta, blob), const)
    assert len(codec.encode(const, bits, background=(1 << bits) - 1).blob) == 0


def _reference_gaps(seq, background, w):
    out, previous, fill = [], -1, (1 << w) - 1
    for i, v in enumerate(seq):
        if v != background:
            gap = i - previous - 1
            while gap >= fill:
                out.append(fill)
                gap -= fill
            out.append(gap)
            previous = i
    return out


@pytest.mark.parametrize("density", [0.001, 0.01, 0.08, 0.3, 1.0])
def test_relative_index_matches_reference(density):
    x = _leaf(7, (40, 50), 5, density, background=0, empty_rows=3)
    for order, seq in (("row", x.ravel()), ("column", x.T.ravel())):
        for w in range(1, 9):
            (_meta, streams), *others = codec._candidates(
                x,
                5,
                0,
                coders=("packed",),
                orders=(order,),
                match={"format": "relative", "index_bits": w, "structured": False},
            )
            assert not others
            gaps = dict((n, s) for n, s, _ in streams)["gaps"]
            assert gaps.tolist() == _reference_gaps(seq.tolist(), 0, w)


def test_long_gaps_with_narrow_index():
    x = np.zeros((3, 1000), np.uint8)
    x[0, 0], x[0, 999], x[2, 500], x[2, 999] = 1, 2, 3, 1
    for w in (1, 2, 3):
        e = codec._encode_as(x, 2, 0, format="relative", index_bits=w, orders=("row",), structured=False)
        assert e.meta["streams"][0]["count"] == len(_reference_gaps(x.ravel().tolist(), 0, w))
        np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)


def _reference_huffman_decode(data, count, alphabet):
    """Bit-by-bit decoder: code lengths table, canonical codes (RFC 1951 style), then a dict walk."""
    bits = [(byte >> i) & 1 for byte in data for i in range(8)]
    lengths = [sum(bits[4 * s + i] << i for i in range(4)) for s in range(alphabet)]
    bl_count = [lengths.count(n) if n else 0 for n in range(16)]
    code, next_code = 0, [0] * 16
    for n in range(1, 16):
        code = (code + bl_count[n - 1]) << 1
        next_code[n] = code
    table = {}
    for s in range(alphabet):
        if lengths[s]:
            table[format(next_code[lengths[s]], f"0{lengths[s]}b")] = s
            next_code[lengths[s]] += 1
    out, word = [], ""
    for b in bits[4 * alphabet :]:
        if len(out) == count:
            break
        word += str(b)
        if word in table:
            out.append(table[word])
            word = ""
    return out, lengths


@pytest.mark.parametrize(
    ("alphabet", "probs"),
    [(64, "normal"), (256, "uniform"), (16, "geometric"), (2, "skewed"), (40, "fibonacci"), (8, "single")],
)
def test_huffman_against_reference(alphabet, probs):
    rng = np.random.default_rng(alphabet)
    n = 5000
    if probs == "normal":
        sym = np.clip(np.round(rng.normal(32, 5, n)), 0, 63)
    elif probs == "uniform":
        sym = rng.integers(0, alphabet, n)
    elif probs == "geometric":
        sym = np.minimum(rng.geometric(0.4, n) - 1, alphabet - 1)
    elif probs == "skewed":
        sym = (rng.random(n) < 0.02).astype(int)
    elif probs == "fibonacci":  # unlimited Huffman would need codes far longer than 15 bits
        fib = [1, 1]
        while len(fib) < 22:
            fib.append(fib[-1] + fib[-2])
        sym = np.repeat(np.arange(22), fib)
        n = len(sym)
    else:
        sym = np.full(n, 5)
    sym = rng.permutation(sym.astype(np.uint8))
    data = codec._encode_stream("huffman", sym, alphabet)
    assert len(data) == codec._stream_size("huffman", sym, alphabet)
    ref, lengths = _reference_huffman_decode(data, n, alphabet)
    assert ref == sym.tolist()
    np.testing.assert_array_equal(codec._decode_stream("huffman", data, n, alphabet, "test"), sym)
    lengths = np.array(lengths)
    assert lengths.max() <= 15
    kraft = sum(2.0 ** -int(n_) for n_ in lengths if n_)
    assert kraft == (0.5 if probs == "single" else 1.0)  # complete code unless a single symbol
    counts = np.bincount(sym, minlength=alphabet)
    p = counts[counts > 0] / n
    entropy = -(p * np.log2(p)).sum()
    assert (counts @ lengths) / n <= entropy + 1


def test_huffman_decodes_a_long_stream():
    rng = np.random.default_rng(0)
    sym = np.clip(np.round(rng.normal(32, 6, 300_000)), 0, 63).astype(np.uint8)
    data = codec._encode_stream("huffman", sym, 64)
    np.testing.assert_array_equal(codec._decode_stream("huffman", data, len(sym), 64, "test"), sym)


def _two_four(seed, shape=(64, 128), bits=4, background=8):
    rng = np.random.default_rng(seed)
    groups = np.full((shape[0] * shape[1] // 4, 4), background, np.uint8)
    slots = np.sort(np.argsort(rng.random(groups.shape), axis=1)[:, :2], axis=1)
    values = rng.integers(0, 1 << bits, slots.shape)
    values[values == background] = 0
    np.put_along_axis(groups, slots, values.astype(np.uint8), 1)
    return groups.reshape(shape), bits, background


def test_nm_two_four():
    x, bits, bg = _two_four(0)
    kept = int((x != bg).sum())
    e = codec._encode_as(x, bits, bg, format="nm", m=4, orders=("row",), coders=("packed",))
    assert (e.meta["n"], e.meta["m"]) == (2, 4)
    slots, values = e.meta["streams"]
    assert slots["count"] == values["count"] == kept
    assert slots["bytes"] * 8 == 2 * kept  # two bits of metadata per kept weight
    assert values["bytes"] * 8 == bits * kept
    np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)
    assert "2:4 sparse" in e.description
    auto = codec.encode(x, bits, background=bg)
    assert len(auto.blob) <= len(e.blob)
    # fewer than N kept in some groups: padded with background slots
    x[:10] = bg
    for meta, blob in _all_candidates(x, bits, bg, orders=("row",)):
        np.testing.assert_array_equal(codec.decode(meta, blob), x)


def test_structured_dead_rows_cost_only_bitmaps():
    rng = np.random.default_rng(3)
    rows, cols = rng.random(64) < 0.5, rng.random(48) < 0.5
    block = _leaf(4, (int(rows.sum()), int(cols.sum())), 5, 0.3, background=0)
    block[:, 0], block[0, :] = 7, 7  # every row and column of the block is live
    x = np.zeros((64, 48), np.uint8)
    x[np.ix_(rows, cols)] = block
    bitmaps = math.ceil(64 / 8) + math.ceil(48 / 8)
    for kw in ({"format": "dense"}, {"format": "bitmask"}, {"format": "relative", "index_bits": 4}):
        kw = {**kw, "orders": ("row",), "coders": ("packed",)}
        full = codec._encode_as(x, 5, 0, structured=True, **kw)
        alone = codec._encode_as(block, 5, 0, structured=False, **kw)
        assert len(full.blob) == len(alone.blob) + bitmaps
        np.testing.assert_array_equal(codec.decode(full.meta, full.blob), x)
    assert codec.encode(x, 5, background=0).meta["structured"]


def test_determinism_and_tried():
    x = _leaf(5, (60, 40), 6, 0.08, background=32)
    a, b = codec.encode(x, 6, background=32), codec.encode(x.copy(), 6, background=32)
    assert a.blob == b.blob and a.meta == b.meta and a.tried == b.tried
    assert json.loads(json.dumps(a.meta)) == a.meta
    assert len(a.tried) >= 20 and all(isinstance(v, int) for v in a.tried.values())
    assert min(a.tried, key=a.tried.get) == a.description


def test_empty_streams_cost_nothing():
    x = np.full((30, 30), 3, np.uint8)
    e = codec._encode_as(x, 2, 3, format="relative", index_bits=4, orders=("row",), structured=False)
    assert e.blob == b"" and [s["count"] for s in e.meta["streams"]] == [0, 0]
    np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)


def test_encode_validates_input():
    with pytest.raises(TypeError, match="integer dtype"):
        codec.encode(np.zeros(3, np.float32), 4)
    with pytest.raises(ValueError, match=r"\[-1, 3\].*\[0, 15\]"):
        codec.encode(np.array([-1, 3]), 4)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        codec.encode(np.array([0, 16]), 4)
    for bits in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="bits"):
            codec.encode(np.zeros(3, np.uint8), bits)
    with pytest.raises(ValueError, match="background"):
        codec.encode(np.zeros(3, np.uint8), 2, background=4)
    with pytest.raises(ValueError, match="no candidate"):
        codec._encode_as(np.zeros((3, 5), np.uint8), 2, 0, format="nm")


def _forced(coder, fmt="relative", **kw):
    x = _leaf(11, (40, 64), 6, 0.08, background=0)
    x[-1, -1] = 9  # the last position is kept
    return x, codec._encode_as(x, 6, 0, format=fmt, orders=("row",), structured=False, coders=(coder,), **kw)


def _refused(meta, blob, match=None):
    with pytest.raises(ValueError, match=match):
        codec.decode(meta, blob)


@pytest.mark.parametrize("coder", CODERS)
def test_corruption_is_refused(coder):
    x, e = _forced(coder, index_bits=4)
    meta, blob = e.meta, e.blob
    np.testing.assert_array_equal(codec.decode(meta, blob), x)
    _refused(meta, blob[:-1], "add up to")
    _refused(meta, blob + b"\0", "add up to")
    short = copy.deepcopy(meta)  # a truncated last stream whose length the meta agrees with
    short["streams"][-1]["bytes"] -= 1
    _refused(short, blob[:-1])
    for key, value, match in [
        ("coder", "rle", "unknown coder"),
        ("count", meta["streams"][1]["count"] + 1, None),
        ("alphabet", 128, "alphabet size"),
        ("name", "mask", "names it"),
    ]:
        bad = copy.deepcopy(meta)
        bad["streams"][1][key] = value
        _refused(bad, blob, match)
    for key, value in [
        ("format", "csr"),
        ("order", "diagonal"),
        ("shape", [40, -64]),
        ("shape", [40, 63]),
        ("shape", "40x64"),
        ("bits", 9),
        ("bits", None),
        ("version", 2),
        ("structured", 1),
        ("index_bits", 0),
        ("background", None),
        ("streams", None),
        ("streams", [None]),
    ]:
        _refused({**meta, key: value}, blob)
    for key in meta:
        _refused({k: v for k, v in meta.items() if k != key}, blob)
    # a shorter array: the gaps run past its end
    _refused({**meta, "shape": [39, 64]}, blob, "past the end")


def test_detectable_corruptions():
    # zlib: every flipped byte is refused (deflate structure or adler32) or harmless
    x, e = _forced("zlib", index_bits=4)
    for i in range(len(e.blob)):
        flipped = bytearray(e.blob)
        flipped[i] ^= 0x5A
        try:
            y = codec.decode(e.meta, bytes(flipped))
        except ValueError:
            continue
        np.testing.assert_array_equal(y, x)
    # lzma: an invalid LZMA2 control byte
    _, e = _forced("lzma", index_bits=4)
    bad = bytearray(e.blob)
    bad[0] = 0x7F
    _refused(e.meta, bytes(bad), "lzma")
    # zlib stream whose symbols exceed the alphabet
    _, e = _forced("zlib", index_bits=4)
    gaps, values = e.meta["streams"]
    piece = zlib.compress(bytes([200]) * values["count"], 9)
    meta = copy.deepcopy(e.meta)
    meta["streams"][1]["bytes"] = len(piece)
    _refused(meta, e.blob[: gaps["bytes"]] + piece, "out of range")


def test_bad_huffman_streams():
    _, e = _forced("huffman", index_bits=4)
    table = 4 * 16 // 8
    kraft = b"\x11" * table + e.blob[table:]  # every gap symbol one bit long
    _refused(e.meta, kraft, "Kraft")
    _refused(e.meta, bytes(table) + e.blob[table:], "Kraft")  # no codes at all
    # a single-symbol stream has the code "0"; a one bit is no code
    x = np.full((1, 40), 2, np.uint8)
    e1 = codec._encode_as(x, 2, None, coders=("huffman",))
    data = bytearray(e1.blob)
    data[-2] |= 0x10
    _refused(e1.meta, bytes(data), "invalid huffman code")
    # ending early or with garbage after the last symbol
    with pytest.raises(ValueError, match="cannot hold 50 symbols"):
        codec._decode_stream("huffman", e1.blob, 50, 4, "test")
    with pytest.raises(ValueError, match="ends after 4 of 5"):  # codes 0, 10, 11; four times 10
        codec._decode_stream("huffman", b"\x21\x02\x55", 5, 4, "test")
    np.testing.assert_array_equal(codec._decode_stream("huffman", b"\x21\x02\x55", 4, 4, "test"), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="7 bytes, expected 5"):
        codec._decode_stream("huffman", e1.blob, 23, 4, "test")
    with pytest.raises(ValueError, match="middle of symbol"):  # a two-bit code cut after its first bit
        codec._decode_stream("huffman", b"\x21\x02\x80", 8, 4, "test")  # codes 0, 10, 11


def test_bad_gap_and_slot_streams():
    _, e = _forced("packed", index_bits=4)
    sym = np.array([3, 15, 15], np.uint8)  # ends with fillers
    meta = copy.deepcopy(e.meta)
    piece = codec._encode_stream("packed", sym, 16)
    meta["streams"][0].update(bytes=len(piece), count=3)
    meta["streams"][1].update(bytes=1, count=1)
    _refused(meta, piece + b"\x05", "filler")
    x, bits, bg = _two_four(1)
    e = codec._encode_as(x, bits, bg, format="nm", m=4, orders=("row",), coders=("packed",))
    slots = np.tile(np.array([1, 0], np.uint8), e.meta["streams"][0]["count"] // 2)
    piece = codec._encode_stream("packed", slots, 4)
    _refused(e.meta, piece + e.blob[len(piece) :], "strictly increasing")
    _refused({**e.meta, "n": 3}, e.blob)
    _refused({**e.meta, "m": 5}, e.blob)


def test_layer_sized_leaf():
    rng = np.random.default_rng(0)
    x = np.full((784, 300), 32, np.uint8)
    keep = rng.random(x.shape) < 0.08
    x[keep] = np.clip(np.round(rng.normal(32, 8, int(keep.sum()))), 0, 63)
    e = codec.encode(x, 6, background=32)
    np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)
    assert e.meta["format"] == "relative" and len(e.blob) < keep.sum() * (6 + 4) / 8


def test_dictionary_coders_win_where_a_stream_repeats():
    # A repeated pattern: every symbol equally frequent (Huffman gains nothing), LZ-style coders everything.
    pattern = np.random.default_rng(0).integers(0, 16, 37).astype(np.uint8)
    x = np.resize(pattern, (300, 200))
    e = codec.encode(x, 4)
    assert {s["coder"] for s in e.meta["streams"]} <= {"zlib", "lzma"}
    assert len(e.blob) < x.size * 4 / 8 / 20
    np.testing.assert_array_equal(codec.decode(e.meta, e.blob), x)
