"""Sparse integer storage: a bitmap of nonzeros plus the nonzero int8 codes.

A quantized leaf with integer codes ``q`` (``q * scale`` are the weights) is
stored as

* ``bitmap``: one bit per weight, set where ``q != 0`` (``np.packbits``, little);
* ``values``: the nonzero codes, int8, in C order;
* ``scale``: the float32 scales (broadcastable against the leaf);
* ``shape``: the leaf's shape.

That is ``n / 8 + nnz + 4 * channels`` bytes for ``n`` weights, against
``4 * n`` in float32. Files are written with ``np.savez`` and read back with
``allow_pickle=False``: no pickle anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

__all__ = ["decode_sparse", "encode_sparse", "load_arrays", "save_arrays"]


def encode_sparse(codes: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Encodes int8 ``codes`` and their ``scale`` (see module docstring)."""
    codes = np.asarray(codes)
    if codes.dtype != np.int8:
        raise TypeError(f"`codes` must be int8, got {codes.dtype}.")
    nonzero = codes != 0
    return {
        "bitmap": np.packbits(nonzero.ravel(), bitorder="little"),
        "values": codes[nonzero],
        "scale": np.asarray(scale, np.float32),
        "shape": np.asarray(codes.shape, np.int64),
    }


def decode_sparse(encoded: Mapping[str, np.ndarray]) -> np.ndarray:
    """Float32 weights ``codes * scale`` from :func:`encode_sparse`'s arrays."""
    shape = tuple(int(d) for d in encoded["shape"])
    size = int(np.prod(shape))
    nonzero = np.unpackbits(encoded["bitmap"], count=size, bitorder="little").astype(bool)
    if int(nonzero.sum()) != len(encoded["values"]):
        raise ValueError(
            f"Corrupt sparse leaf: the bitmap marks {int(nonzero.sum())} nonzeros but "
            f"{len(encoded['values'])} values are stored."
        )
    codes = np.zeros(size, np.int8)
    codes[nonzero] = encoded["values"]
    return codes.reshape(shape).astype(np.float32) * encoded["scale"]


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> int:
    """Writes ``{name: array}`` to an uncompressed ``.npz``; returns the file's bytes."""
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return os.path.getsize(path)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a file written by :func:`save_arrays` (never unpickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
