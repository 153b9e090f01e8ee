"""The ``.jcx`` artifact: one file with the program, the compressed weights and a checksum.

Layout (all integers little-endian)::

    [0, 8)          magic b"JAXCMPRS"
    [8, 12)         uint32 format version
    [12, 20)        uint64 header length H
    [20, 20 + H)    header: UTF-8 JSON (metadata, program and array directory)
    [20 + H, -32)   payload: the serialized ``jax.export`` program, then array blobs
    [-32, end)      SHA-256 of every byte before it

Arrays are stored in their compressed form and decoded by :func:`load`:

* ``raw``: the array's bytes;
* ``packed``: integer codes at ``bits`` bits each (offset to unsigned);
* ``sparse``: a bitmap of nonzeros plus the nonzero codes, packed;
* ``affine``: a float kernel derived at load time as ``(codes - zero_point) *
  scale`` from other stored arrays (so float-path layers cost int bytes too);
* ``codebook``: a float kernel derived as ``codebook[indices] * scale``
  (k-means and log2 leaves: indices at ``bits`` bits plus the codebook).

This module needs only numpy, JAX and the standard library: a deployment loads
an artifact without the training code. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["FORMAT_VERSION", "Artifact", "load", "read_header"]

MAGIC = b"JAXCMPRS"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Packs unsigned integers ``< 2**bits`` into a little-endian bit stream."""
    u = values.astype(np.uint8).reshape(-1)
    if bits == 8:
        return u.tobytes()
    planes = np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack_bits(blob: bytes, bits: int, count: int) -> np.ndarray:
    raw = np.frombuffer(blob, np.uint8)
    if bits == 8:
        return raw[:count].copy()
    planes = np.unpackbits(raw, bitorder="little", count=count * bits).reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1)


def encode_codes(codes: np.ndarray, bits: int, *, signed: bool) -> tuple[dict, bytes]:
    """The smaller of ``packed`` and ``sparse`` storage for integer ``codes``."""
    codes = np.asarray(codes)
    offset = 2 ** (bits - 1) if signed else 0
    unsigned = (codes.astype(np.int32) + offset).reshape(-1)
    if unsigned.size and (unsigned.min() < 0 or unsigned.max() >= 2**bits):
        raise ValueError(f"codes do not fit in {bits} bits ({'signed' if signed else 'unsigned'}).")
    packed = _pack_bits(unsigned, bits)
    nonzero = codes.reshape(-1) != 0
    bitmap = np.packbits(nonzero, bitorder="little").tobytes()
    sparse_values = _pack_bits(unsigned[nonzero], bits)
    meta = {"bits": bits, "signed": signed, "dtype": str(codes.dtype), "shape": list(codes.shape)}
    if len(bitmap) + len(sparse_values) < len(packed):
        meta.update(encoding="sparse", bitmap_bytes=len(bitmap), nnz=int(nonzero.sum()))
        return meta, bitmap + sparse_values
    meta.update(encoding="packed")
    return meta, packed


def encode_raw(array: np.ndarray) -> tuple[dict, bytes]:
    array = np.ascontiguousarray(array)
    if array.dtype.kind not in "fiub" or array.dtype.byteorder == ">":
        raise TypeError(f"cannot store dtype {array.dtype} raw.")
    return {"encoding": "raw", "dtype": str(array.dtype), "shape": list(array.shape)}, array.tobytes()


def _decode(meta: Mapping[str, Any], blob: bytes, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    shape = tuple(int(d) for d in meta["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    encoding = meta["encoding"]
    if encoding == "raw":
        dtype = np.dtype(meta["dtype"])
        if len(blob) != size * dtype.itemsize:
            raise ValueError(f"stored {len(blob)} bytes, expected {size * dtype.itemsize}")
        return np.frombuffer(blob, dtype).reshape(shape).copy()
    if encoding in ("packed", "sparse"):
        bits, offset = int(meta["bits"]), (2 ** (int(meta["bits"]) - 1) if meta["signed"] else 0)
        if encoding == "packed":
            if len(blob) != -(-size * bits // 8):
                raise ValueError(f"stored {len(blob)} bytes, expected {-(-size * bits // 8)}")
            unsigned = _unpack_bits(blob, bits, size)
        else:
            nbm, nnz = int(meta["bitmap_bytes"]), int(meta["nnz"])
            nonzero = np.unpackbits(np.frombuffer(blob[:nbm], np.uint8), count=size, bitorder="little").astype(bool)
            if int(nonzero.sum()) != nnz or len(blob) != nbm + -(-nnz * bits // 8):
                raise ValueError("sparse bitmap and values disagree")
            unsigned = np.full(size, offset, np.uint8)
            unsigned[nonzero] = _unpack_bits(blob[nbm:], bits, nnz)
        return (unsigned.astype(np.int32) - offset).astype(np.dtype(meta["dtype"])).reshape(shape)
    if encoding == "codebook":
        indices = arrays[meta["indices"]].astype(np.int64)
        out = arrays[meta["codebook"]][indices] * _expand(arrays[meta["scale"]], meta)
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


def _expand(a: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    if meta.get("group_size"):
        return np.repeat(a, int(meta["group_size"]), axis=int(meta["group_axis"]))
    return a


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


def write(path: str | os.PathLike, program: bytes, stored: list[tuple[str, dict, bytes]], metadata: dict) -> int:
    """Writes an artifact; ``stored`` is ``[(name, meta, blob)]`` in decode order. Returns bytes written.

    Arrays whose meta has ``"internal": true`` are decoded but not passed to the
    program (e.g. the codes a float kernel is derived from).
    """
    directory, offset = [], len(program)
    for name, meta, blob in stored:
        directory.append({"name": name, **meta, "offset": offset, "nbytes": len(blob)})
        offset += len(blob)
    header = json.dumps(
        {"metadata": metadata, "program": {"offset": 0, "nbytes": len(program)}, "arrays": directory},
        sort_keys=True,
    ).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + program + b"".join(b for _, _, b in stored)
    data = body + hashlib.sha256(body).digest()
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # never leave a half-written artifact under the user's name
    return len(data)


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
        header = json.loads(bytes(data[_PREFIX.size : start]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source} has an unreadable header: {e}") from None
    return header, memoryview(body)[start:]


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
        prog = header["program"]
        program = bytes(payload[prog["offset"] : prog["offset"] + prog["nbytes"]])
        flat: dict[str, np.ndarray] = {}
        for meta in header["arrays"]:
            end = meta["offset"] + meta["nbytes"]
            if end > len(payload):
                raise ValueError(f"array {meta['name']!r} runs past the end of the payload")
            try:
                flat[meta["name"]] = _decode(meta, bytes(payload[meta["offset"] : end]), flat)
            except (KeyError, ValueError) as e:
                raise ValueError(f"array {meta['name']!r}: {e}") from None
        exported = jax.export.deserialize(bytearray(program))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source} has an inconsistent header ({type(e).__name__}: {e}).") from None
    leaves = [flat[m["name"]] for m in header["arrays"] if not m.get("internal")]
    _check_signature(exported, leaves, source)
    (weights, _), _ = jax.tree_util.tree_unflatten(exported.in_tree, [*leaves, None])
    return Artifact(exported, weights, header["metadata"])


def _check_signature(exported: jax.export.Exported, leaves: list[np.ndarray], source: str) -> None:
    got = [(tuple(a.shape), np.dtype(a.dtype)) for a in leaves]
    expected = [(tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals[:-1]]
    if got != expected:
        raise ValueError(
            f"{source}: the stored weights do not match the program's signature "
            f"({len(got)} arrays stored, {len(expected)} expected)."
        )
