"""The ``.jcx`` artifact: one file with the program, the compressed weights and a checksum.

Layout (all integers little-endian)::

    [0, 8)          magic b"JAXCMPRS"
    [8, 12)         uint32 format version
    [12, 16)        uint32 header length H
    [16, 16 + H)    header: zlib-compressed UTF-8 JSON (metadata, program and array directory)
    [16 + H, -32)   payload: the serialized ``jax.export`` program (compressed by the codec's smallest
                    stream coder), then array blobs
    [-32, end)      SHA-256 of every byte before it

The arrays follow each other in directory order; each entry says how it is
stored and is decoded by :func:`load`, in order:

* ``raw``: the array's bytes (``as``: the dtype it is cast to on load, e.g.
  scales stored as float16 where that is exact);
* ``codes``: integer codes stored by :mod:`~jaxcompress._src.export.codec`
  (sparse formats, entropy coding), minus ``offset``;
* ``derived`` (no bytes): ``(source - shift)``, optionally transposed, reshaped
  and cast; or (``op: "colsum"``) its per-output-channel sums. The integer
  program's codes, zero points, scales and column sums are views of the one
  stored copy of a layer's codes and statistics;
* ``affine``: a float kernel derived as ``(codes - zero_point) * scale``
  from other stored arrays (so float-path layers cost int bytes too);
* ``codebook``: a float kernel derived as ``codebook[indices] * scale``
  (k-means and log2 leaves).

This module needs only numpy, JAX and the standard library: a deployment loads
an artifact without the training code. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxcompress._src.export import codec

__all__ = ["FORMAT_VERSION", "Artifact", "load", "read_header"]

MAGIC = b"JAXCMPRS"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32
_MAX_ELEMENTS = 1 << 34  # a bound on one stored array, so a crafted shape cannot ask for terabytes


def encode_codes(codes: np.ndarray, offset: int, background: int | None) -> tuple[dict, bytes, dict[str, int]]:
    """Integer ``codes`` stored as ``codes + offset`` by the smallest codec format: ``(meta, blob, tried)``.

    ``background`` is the (offset) value the sparse formats leave out, or None.
    """
    codes = np.asarray(codes)
    unsigned = codes.astype(np.int32) + offset
    if unsigned.size and (unsigned.min() < 0 or unsigned.max() > 255):
        raise ValueError(f"codes + {offset} span [{unsigned.min()}, {unsigned.max()}], outside [0, 255].")
    bits = max(1, int(unsigned.max(initial=0)).bit_length())
    encoded = codec.encode(unsigned.astype(np.uint8), bits, background=background)
    meta = {"encoding": "codes", "dtype": str(codes.dtype), "shape": list(codes.shape), "offset": offset}
    meta["codec"] = encoded.meta
    return meta, encoded.blob, {"format": encoded.description, "tried": encoded.tried}


def encode_raw(array: np.ndarray, *, shrink: bool = True) -> tuple[dict, bytes]:
    """``array``'s bytes, in float16 / a narrower integer type where that holds every value exactly."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind not in "fiub" or array.dtype.byteorder == ">":
        raise TypeError(f"cannot store dtype {array.dtype} raw.")
    stored = array
    if shrink and array.dtype == np.float32:
        half = array.astype(np.float16)
        if np.array_equal(half.astype(np.float32), array):  # NaN-free by construction: exact values only
            stored = half
    elif shrink and array.dtype.kind == "i" and array.size:
        for narrow in (np.int8, np.int16):
            info = np.iinfo(narrow)
            if array.dtype.itemsize > np.dtype(narrow).itemsize and info.min <= array.min() <= array.max() <= info.max:
                stored = array.astype(narrow)
                break
    meta = {"encoding": "raw", "dtype": str(stored.dtype), "shape": list(array.shape)}
    if stored.dtype != array.dtype:
        meta["as"] = str(array.dtype)
    return meta, stored.tobytes()


def _decode(meta: Mapping[str, Any], blob: bytes, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    shape = tuple(int(d) for d in meta["shape"])
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    size = math.prod(shape)
    if size > _MAX_ELEMENTS:
        raise ValueError(f"shape {shape} has {size} elements, more than any leaf this format stores")
    encoding = meta["encoding"]
    if encoding == "raw":
        dtype = _numeric_dtype(meta["dtype"])
        if len(blob) != size * dtype.itemsize:
            raise ValueError(f"stored {len(blob)} bytes, expected {size * dtype.itemsize}")
        out = np.frombuffer(blob, dtype).reshape(shape)
        return out.astype(_numeric_dtype(meta.get("as", meta["dtype"])))
    if encoding == "codes":
        unsigned = codec.decode(meta["codec"], blob, expected_shape=shape)
        dtype = np.dtype(meta["dtype"])
        if dtype not in (np.int8, np.uint8):
            raise ValueError(f"codes are stored as int8 or uint8, not {dtype}")
        codes = unsigned.astype(np.int32) - int(meta["offset"])
        info = np.iinfo(dtype)
        if codes.size and (codes.min() < info.min or codes.max() > info.max):
            raise ValueError(f"codes span [{codes.min()}, {codes.max()}], outside {dtype}")
        return codes.astype(dtype)
    if blob:
        raise ValueError(f"a {encoding!r} entry stores no bytes, found {len(blob)}")
    if encoding == "derived":
        src = arrays[meta["source"]]
        if meta.get("op") == "colsum":
            out = (src.astype(np.int32) - int(meta.get("shift", 0))).reshape(-1, src.shape[-1]).sum(0, dtype=np.int32)
        else:
            out = src.astype(np.int32) - int(meta["shift"]) if meta.get("shift") else src
            if meta.get("transpose"):
                out = out.reshape(-1, out.shape[-1]).T
        if out.size != size:
            raise ValueError(f"derived {out.size} values from {meta['source']!r}, expected {size}")
        return np.ascontiguousarray(out.reshape(shape).astype(_numeric_dtype(meta["dtype"])))
    if encoding == "codebook":
        indices = arrays[meta["indices"]].astype(np.int64)
        codebook = arrays[meta["codebook"]]
        if indices.size and (indices.min() < 0 or indices.max() >= codebook.shape[0]):
            raise ValueError(f"codebook indices reach {indices.max()}, but the codebook has {codebook.shape[0]}")
        out = codebook[indices] * _expand(arrays[meta["scale"]], meta)
        if out.shape != shape:
            raise ValueError(f"derived shape {out.shape}, expected {shape}")
        return out.astype(np.float32)
    if encoding == "affine":
        codes = arrays[meta["codes"]].astype(np.int32)
        if meta.get("zero_point"):
            codes = codes - _expand(arrays[meta["zero_point"]], meta)
        out = codes.astype(np.float32) * _expand(arrays[meta["scale"]], meta)
        if out.shape != shape:
            raise ValueError(f"derived shape {out.shape}, expected {shape}")
        return out
    raise ValueError(f"unknown encoding {encoding!r}")


def _numeric_dtype(name: Any) -> np.dtype:
    """A stored array's dtype: a numeric or boolean numpy dtype, nothing else (never ``object``)."""
    dtype = np.dtype(name)
    if dtype.kind not in "fiub" or dtype.itemsize > 8:
        raise ValueError(f"dtype {name!r} is not one this format stores")
    return dtype


def decode_entry(name: str, meta: Mapping[str, Any], blob: bytes, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """One directory entry decoded (``arrays``: the entries before it); any inconsistency is a ValueError."""
    try:
        return _decode(meta, blob, arrays)
    except (AttributeError, IndexError, KeyError, OverflowError, TypeError, ValueError) as e:
        raise ValueError(f"array {name!r}: {type(e).__name__}: {e}") from None


def decode_all(directory: list[Mapping[str, Any]], blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Every array of a directory, decoded in order (later entries may derive from earlier ones)."""
    flat: dict[str, np.ndarray] = {}
    for meta, blob in zip(directory, blobs, strict=True):
        flat[meta["name"]] = decode_entry(meta["name"], meta, blob, flat)
    return flat


def _expand(a: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    if not meta.get("group_size"):
        return a
    size, axis = int(meta["group_size"]), int(meta["group_axis"])
    shape = tuple(int(d) for d in meta["shape"])
    if not (0 <= axis < a.ndim == len(shape)) or size < 1 or a.shape[axis] * size != shape[axis]:
        raise ValueError(f"groups of {size} along axis {axis} of {a.shape} do not give shape {shape}")
    return np.repeat(a, size, axis=axis)


class Artifact:
    """A loaded (or freshly built) exported model: ``artifact(x) -> y``.

    Attributes:
      exported: the ``jax.export.Exported`` program.
      weights: the program's weight arguments (nested dicts of numpy arrays).
      metadata: the JSON metadata (recipe, per-leaf storage and bytes, report).
    """

    def __init__(self, exported: jax.export.Exported, weights: dict, metadata: dict):
        self.exported = exported
        self.weights = weights
        self.metadata = metadata
        self._call: Callable = jax.jit(exported.call)
        self._device_weights = jax.device_put(weights)  # once, not a host copy per call

    def __call__(self, x: Any) -> jax.Array:
        return self._call(self._device_weights, x)

    def __repr__(self) -> str:
        x, y = self.exported.in_avals[-1], self.exported.out_avals
        return f"Artifact(input={x}, output={y}, file_bytes={self.metadata.get('file_bytes')})"


def write(path: str | os.PathLike, program: bytes, stored: list[tuple[str, dict, bytes]], metadata: dict) -> dict:
    """Writes an artifact atomically; ``stored`` is ``[(name, meta, blob)]`` in decode order.

    Arrays whose meta has ``"internal": true`` are decoded but not passed to the
    program (e.g. the codes a float kernel is derived from). Returns the bytes
    of each section and of the file.
    """
    coder, packed_program = codec.encode_bytes(program)
    directory = [{"name": name, **meta, "nbytes": len(blob)} for name, meta, blob in stored]
    section = {"coder": coder, "nbytes": len(packed_program), "size": len(program)}
    document = {"metadata": metadata, "program": section, "arrays": directory}
    header = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 9)
    weights = b"".join(b for _, _, b in stored)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + packed_program + weights
    data = body + hashlib.sha256(body).digest()
    _write_atomically(path, data)
    return {
        "file": len(data),
        "framing": _PREFIX.size + _DIGEST,
        "header": len(header),
        "program": len(packed_program),
        "weights": len(weights),
    }


def _write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """``data`` under ``path``, or nothing: a unique temporary file, fsync-ed, then renamed over it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save an artifact to {path!r}: it is a directory; give a file path.")
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes the rename durable (POSIX); a platform that cannot open directories skips it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(data: bytes, *, source: str = "artifact") -> tuple[dict, memoryview]:
    """Validates framing and checksum; returns ``(header, payload)``."""
    if len(data) < _PREFIX.size + _DIGEST:
        raise ValueError(f"{source} is not a jaxcompress artifact: only {len(data)} bytes (truncated?).")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{source} is not a jaxcompress artifact (magic {magic!r}, expected {MAGIC!r}).")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{source} has artifact format version {version}; this jaxcompress reads version {FORMAT_VERSION}. "
            f"Re-export the model with this version or load it with a matching jaxcompress."
        )
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{source} failed its SHA-256 check: the file is truncated or was modified.")
    start = _PREFIX.size + header_len
    if start > len(body):
        raise ValueError(f"{source} header length {header_len} runs past the end of the file.")
    try:
        header = json.loads(zlib.decompress(bytes(data[_PREFIX.size : start])).decode())
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source} has an unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source} has an unreadable header: a JSON {type(header).__name__}, expected an object.")
    return header, memoryview(body)[start:]


def split_payload(header: Mapping[str, Any], payload: memoryview) -> tuple[bytes, list[bytes]]:
    """``(program bytes, [array blob])`` of a payload, checking that the directory covers it exactly."""
    section = header["program"]
    offset = int(section["nbytes"])
    if not 0 <= offset <= len(payload):
        raise ValueError(f"the program section's {offset} bytes do not fit the {len(payload)}-byte payload")
    program = codec.decode_bytes(section["coder"], bytes(payload[:offset]), section["size"], "the program section")
    blobs = []
    for meta in header["arrays"]:
        n = int(meta["nbytes"])
        if n < 0 or offset + n > len(payload):
            raise ValueError(f"array {meta.get('name')!r} runs past the end of the payload")
        blobs.append(bytes(payload[offset : offset + n]))
        offset += n
    if offset != len(payload):
        raise ValueError(f"the directory covers {offset} payload bytes, the file has {len(payload)}")
    return program, blobs


def load(path: str | os.PathLike) -> Artifact:
    """Loads an artifact written by :meth:`jaxcompress.export.Exported.save`.

    Verifies the format version and the SHA-256 checksum, decodes the weights
    from their compressed storage and deserializes the program. The returned
    callable takes a batch of any size (the batch dimension is symbolic).

    Raises:
      ValueError: the file is truncated, tampered with, of another format
        version, or internally inconsistent.
      FileNotFoundError: ``path`` does not exist.
    """
    with open(path, "rb") as f:
        data = f.read()
    source = repr(os.fspath(path))
    header, payload = read_header(data, source=source)
    try:
        program, blobs = split_payload(header, payload)
        flat = decode_all(header["arrays"], blobs)
        leaves = [flat[m["name"]] for m in header["arrays"] if not m.get("internal")]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source} has an inconsistent header or payload ({type(e).__name__}: {e}).") from None
    try:
        exported = jax.export.deserialize(bytearray(program))
    except Exception as e:  # a crafted section fails anywhere inside the deserializer
        raise ValueError(f"{source}: its program section does not deserialize ({type(e).__name__}: {e}).") from None
    _check_signature(exported, leaves, source)
    for meta, leaf in zip([m for m in header["arrays"] if not m.get("internal")], leaves, strict=True):
        if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():  # export refuses NaN/Inf
            raise ValueError(f"{source}: array {meta['name']!r} holds NaN/Inf values; the file is corrupt.")
    (weights, _), _ = jax.tree_util.tree_unflatten(exported.in_tree, [*leaves, None])
    return Artifact(exported, weights, {**header["metadata"], "file_bytes": len(data)})


def _check_signature(exported: jax.export.Exported, leaves: list[np.ndarray], source: str) -> None:
    got = [(tuple(a.shape), np.dtype(a.dtype)) for a in leaves]
    expected = [(tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals[:-1]]
    if got != expected:
        raise ValueError(
            f"{source}: the stored weights do not match the program's signature "
            f"({len(got)} arrays stored, {len(expected)} expected)."
        )
