"""Quantization: fake-quantizing transforms with straight-through gradients."""

from jaxcompress.quant.affine import (
    SymmetricState,
    int8,
    symmetric,
    symmetric_codes,
    symmetric_fake_quant,
    symmetric_scale,
)
from jaxcompress.quant.ste import clip_ste, round_ste

__all__ = [
    "SymmetricState",
    "clip_ste",
    "int8",
    "round_ste",
    "symmetric",
    "symmetric_codes",
    "symmetric_fake_quant",
    "symmetric_scale",
]
