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


def storage(args: dict, candidates: dict[str, Candidates]) -> tuple[list, dict]:
    """Compressed storage of every program argument; per-leaf storage and bytes for the report."""
    stored, leaves = [], {}
    for name, value in paths_lib.flatten(args)[0].items():
        parts = name.split("/")
        layer = candidates.get("/".join(parts[1:-1])) if parts[0] == "layers" else None
        if layer is not None and parts[-1] in ("codes", "codes_t"):
            meta, blob = artifact.encode_codes(value, layer.iw.bits, signed=True)
            entries = [(name, meta, blob)]
            leaves[name] = {"storage": f"int{layer.iw.bits} {meta['encoding']}", "bytes": len(blob)}
        elif layer is not None and parts[-1] == "kernel":
            entries = _derived_kernel(name, value, layer)
            what = "codebook indices + codebook" if layer.iw.codebook is not None else "codes + float32 scales"
            leaves[name] = {
                "storage": f"int{layer.iw.bits} {what} (float32 kernel rebuilt at load)",
                "bytes": sum(len(b) for _, _, b in entries),
            }
        else:
            meta, blob = artifact.encode_raw(value)
            entries = [(name, meta, blob)]
            leaves[name] = {"storage": str(value.dtype), "bytes": len(blob)}
        stored.extend(entries)
    return stored, leaves


def _derived_kernel(name: str, kernel: np.ndarray, layer: Candidates) -> list[tuple[str, dict, Any]]:
    """A float-path kernel stored as its integer codes and scales, rebuilt by the loader."""
    iw = layer.iw
    groups = {"group_axis": iw.group_axis, "group_size": iw.group_size} if iw.group_size is not None else {}
    smeta, sblob = artifact.encode_raw(layer.scale)
    if iw.codebook is not None:  # indices at `bits` bits + the codebook: kernel = codebook[indices] * scale
        imeta, iblob = artifact.encode_codes(layer.codes, iw.bits, signed=False)
        bmeta, bblob = artifact.encode_raw(np.asarray(iw.codebook, np.float32))
        meta = {"encoding": "codebook", "dtype": "float32", "shape": list(kernel.shape), **groups}
        meta.update(indices=f"{name}.indices", codebook=f"{name}.codebook", scale=f"{name}.scale")
        return [
            (f"{name}.indices", {**imeta, "internal": True}, iblob),
            (f"{name}.codebook", {**bmeta, "internal": True}, bblob),
            (f"{name}.scale", {**smeta, "internal": True}, sblob),
            (name, meta, b""),
        ]
    cmeta, cblob = artifact.encode_codes(layer.codes, iw.bits, signed=layer.codes.dtype != np.uint8)
    entries = [
        (f"{name}.codes", {**cmeta, "internal": True}, cblob),
        (f"{name}.scale", {**smeta, "internal": True}, sblob),
    ]
    meta = {"encoding": "affine", "dtype": "float32", "shape": list(kernel.shape), **groups}
    meta.update(codes=f"{name}.codes", scale=f"{name}.scale")
    if layer.zero_point is not None:
        zmeta, zblob = artifact.encode_raw(layer.zero_point)
        entries.append((f"{name}.zero_point", {**zmeta, "internal": True}, zblob))
        meta["zero_point"] = f"{name}.zero_point"
    entries.append((name, meta, b""))
    return entries
