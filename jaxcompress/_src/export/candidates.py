"""A planned layer's weights: its integer and float forms, and how the chosen one is stored.

:class:`Candidates` is built once per planned layer from the recipe's integer
form and changed only by returning new objects (BatchNorm folding, channel
removal). The float form's kernel is never stored as floats: the artifact holds
the codes and scales it is rebuilt from at load time (``affine`` / ``codebook``
entries of the artifact directory).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxcompress._src import paths as paths_lib
from jaxcompress._src.export import artifact, channels
from jaxcompress._src.export.layers import FloatKernel, GroupedIntDense, IntConv, IntDense, KernelLayer
from jaxcompress._src.integer import IntegerWeights

__all__ = ["Candidates", "storage"]


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Both weight forms of one planned layer, and the codes its float kernel is stored as.

    ``codes`` / ``scale`` / ``zero_point`` are in kernel layout: the float
    kernel is ``(codes - zero_point) * scale`` (or ``codebook[codes] * scale``),
    ``scale`` including a folded BatchNorm's factor.
    """

    plan: KernelLayer  # the layer (its geometry: which kernel axis holds the inputs)
    iw: IntegerWeights  # stored form: bits, codebook, groups
    float: FloatKernel
    integer: IntDense | GroupedIntDense | IntConv | None  # None: no integer op for this form
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None

    @classmethod
    def build(cls, plan: KernelLayer, iw: IntegerWeights, bias: np.ndarray | None) -> Candidates:
        codes = np.asarray(iw.codes)
        zp = None if iw.zero_point is None else np.asarray(iw.zero_point, np.int32)
        scale = np.asarray(iw.scale, np.float32)
        bias = None if bias is None else np.asarray(bias, np.float32)
        integer = None
        if iw.codebook is None and _per_output_channel(scale, zp, iw):
            int_codes, int_zp = codes, zp
            if codes.dtype == np.uint8:  # unsigned [0, 2^b) codes move into the signed b-bit range, zero point too
                shift = 2 ** (iw.bits - 1)
                int_codes = (codes.astype(np.int16) - shift).astype(np.int8)
                int_zp = (np.zeros(scale.shape, np.int32) if zp is None else zp) - shift
            group_axis = iw.group_axis if iw.group_size is not None else None
            integer = plan.integer_weights(int_codes, scale, int_zp, bias, group_axis=group_axis)
        kernel = FloatKernel(np.asarray(iw.dequantize(), np.float32), bias)
        return cls(plan, iw, kernel, integer, codes, scale, zp)

    def form(self, choice: str):
        """The weights the layer computes with for a dispatch ``choice`` (``"int8"`` or ``"float"``)."""
        return self.integer if choice == "int8" else self.float

    def folded(self, mul: np.ndarray, add: np.ndarray) -> Candidates:
        """``y * mul + add`` (per output channel, an inference BatchNorm) folded into both forms."""

        def fold(w):
            if w is None:
                return None
            bias = (np.zeros_like(add) if w.bias is None else w.bias) * mul + add
            if isinstance(w, FloatKernel):
                return w.replace(kernel=(w.kernel * mul).astype(np.float32), bias=bias.astype(np.float32))
            if isinstance(w, GroupedIntDense):
                return w.replace(group_scale=(w.group_scale * mul).astype(np.float32), bias=bias.astype(np.float32))
            return w.replace(scale=(w.scale * mul).astype(np.float32), bias=bias.astype(np.float32))

        scale = (self.scale * mul.reshape((1,) * (self.scale.ndim - 1) + (-1,))).astype(np.float32)
        return dataclasses.replace(self, float=fold(self.float), integer=fold(self.integer), scale=scale)

    def reduced(self, keep_out, keep_in, constants) -> Candidates:
        """Both forms with removed channels sliced out (and removed constant inputs folded in)."""

        def cut(a):
            return None if a is None else channels.slice_kernel(a, self.plan, keep_out, keep_in, broadcast=True)

        return dataclasses.replace(
            self,
            float=channels.reduced(self.float, self.plan, keep_out, keep_in, constants),
            integer=None
            if self.integer is None
            else channels.reduced(self.integer, self.plan, keep_out, keep_in, constants),
            codes=channels.slice_kernel(self.codes, self.plan, keep_out, keep_in),
            scale=cut(self.scale),
            zero_point=cut(self.zero_point),
        )


def _per_output_channel(scale: np.ndarray, zp: np.ndarray | None, iw: IntegerWeights) -> bool:
    """Whether the statistics vary along the output channels (or groups) only: what an integer op rescales."""
    if iw.group_size is not None:
        return True
    return all(d == 1 for d in scale.shape[:-1]) and (zp is None or all(d == 1 for d in zp.shape[:-1]))


def storage(args: dict, candidates: dict[str, Candidates]) -> tuple[list, dict, dict]:
    """How every program argument is stored: ``(entries, report, weights)``.

    Each planned layer stores its codes and statistics once, in kernel layout
    (``stored:<layer>/codes`` etc., internal entries); its program arguments
    (a float kernel, or integer codes, zero points, scales and column sums)
    are views of them that cost no bytes. Anything else is stored raw. The
    returned ``weights`` are the arguments as the loader decodes them, so an
    in-memory export computes exactly what its saved file does.
    """
    entries: list[tuple[str, dict, bytes]] = []
    report: dict[str, dict] = {}
    decoded: dict[str, np.ndarray] = {}
    flat = paths_lib.flatten(args)[0]
    for name, value in flat.items():
        parts = name.split("/")
        path = "/".join(parts[1:-1]) if parts[0] == "layers" else None
        layer = candidates.get(path)
        if layer is not None and _internal(path, "codes") not in decoded:
            internal, report[path] = _layer_storage(path, layer)
            for entry in internal:
                decoded[entry[0]] = artifact.decode_entry(*entry, decoded)
            entries.extend(internal)
        derived = None if layer is None else _derivation(parts[-1], value, path, layer, decoded)
        if derived is not None:
            meta, decoded[name] = derived
            entries.append((name, meta, b""))
            continue
        meta, blob = artifact.encode_raw(value, shrink=parts[-1] not in _KEEP_DTYPE)
        entries.append((name, meta, blob))
        report[name] = {"storage": meta["dtype"], "bytes": len(blob)}
        decoded[name] = np.asarray(value)
    weights = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(args), [decoded[n] for n in flat])
    return entries, report, weights


# Arrays whose dtype differs between a layer's float and integer forms: stored at their width in
# both, so a layer's bytes do not depend on which form dispatch picks.
_KEEP_DTYPE = ("const_values", "const_sums")


def _internal(path: str, what: str) -> str:
    return f"stored:{path}/{what}"


def _layer_storage(path: str, layer: Candidates) -> tuple[list[tuple[str, dict, bytes]], dict]:
    """A layer's codes (sparse and entropy coded) and statistics (at their smallest exact width)."""
    iw, codes = layer.iw, np.asarray(layer.codes)
    codebook = None
    if iw.codebook is not None:  # only the entries in use are stored, the indices renumbered
        used = np.unique(codes)
        codebook = np.asarray(iw.codebook, np.float32)[used]
        codes = np.searchsorted(used, codes).astype(codes.dtype)
        zeros = np.flatnonzero(codebook == 0)
        offset, background = 0, (int(zeros[0]) if zeros.size else None)
    elif codes.dtype == np.uint8:  # unsigned: the code of 0.0 is the zero point (0 without one)
        zp = np.zeros(1, np.int32) if layer.zero_point is None else layer.zero_point.reshape(-1)
        offset, background = 0, (int(zp[0]) if np.all(zp == zp[0]) else None)
    else:
        offset = 2 ** (iw.bits - 1)
        background = offset if layer.zero_point is None else None
    cmeta, cblob, how = artifact.encode_codes(codes, offset, background)
    entries = [(_internal(path, "codes"), {**cmeta, "internal": True}, cblob)]
    parts = {"codes": {"format": how["format"], "bytes": len(cblob), "tried": how["tried"]}}
    stats = {"scale": layer.scale, "zero_point": layer.zero_point}
    if codebook is not None:
        stats["codebook"] = codebook
    for what, array in stats.items():
        if array is None:
            continue
        meta, blob = artifact.encode_raw(np.asarray(array))
        entries.append((_internal(path, what), {**meta, "internal": True}, blob))
        parts[what] = {"storage": meta["dtype"], "bytes": len(blob)}
    return entries, {"parts": parts, "bytes": sum(p["bytes"] for p in parts.values())}


def _derivation(field: str, value: Any, path: str, layer: Candidates, decoded: dict) -> tuple[dict, np.ndarray] | None:
    """``(meta, rebuilt array)`` of a no-bytes entry that rebuilds this program argument from the layer's
    stored arrays.

    None when no derivation reproduces it (it is then stored raw): integer
    views must match exactly, a float kernel to rounding (the loader's
    product is then what the program computes with, in memory too).
    """
    value = np.asarray(value)
    iw = layer.iw
    codes_name = _internal(path, "codes")
    shift = 2 ** (iw.bits - 1) if layer.codes.dtype == np.uint8 and iw.codebook is None else 0
    groups = {"group_axis": iw.group_axis, "group_size": iw.group_size} if iw.group_size is not None else {}
    base = {"dtype": str(value.dtype), "shape": list(value.shape)}
    if field == "kernel":
        refs = {"scale": _internal(path, "scale")}
        if iw.codebook is not None:
            meta = {"encoding": "codebook", "indices": codes_name, "codebook": _internal(path, "codebook"), **refs}
        else:
            meta = {"encoding": "affine", "codes": codes_name, **refs}
            if layer.zero_point is not None:
                meta["zero_point"] = _internal(path, "zero_point")
        meta = {**meta, **base, **groups}
        exact = False
    elif field in ("codes_t", "codes"):
        meta = {"encoding": "derived", "source": codes_name, "shift": shift, "transpose": field == "codes_t", **base}
        exact = True
    elif field == "colsum":
        meta = {"encoding": "derived", "op": "colsum", "source": codes_name, "shift": shift, **base}
        exact = True
    elif field in ("scale", "group_scale"):
        meta = {"encoding": "derived", "source": _internal(path, "scale"), **base}
        exact = True
    elif field in ("zero_point", "group_zero_point") and layer.zero_point is not None:
        meta = {"encoding": "derived", "source": _internal(path, "zero_point"), "shift": shift, **base}
        exact = True
    else:
        return None
    try:
        rebuilt = artifact.decode_entry(field, meta, b"", decoded)
    except ValueError:
        return None
    if rebuilt.shape != value.shape or rebuilt.dtype != value.dtype:
        return None
    if exact and not np.array_equal(rebuilt, value):
        return None
    if not exact and not np.allclose(rebuilt, value, rtol=1e-6, atol=1e-7 * float(np.max(np.abs(value), initial=0))):
        return None
    return meta, rebuilt
