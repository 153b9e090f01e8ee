"""Quantization: fake-quantizing transforms with straight-through gradients."""

from jaxcompress.quant import granularity
from jaxcompress.quant.affine import (
    SymmetricState,
    UniformState,
    affine_params,
    fake_quant,
    int8,
    int_range,
    quantize,
    symmetric,
    symmetric_codes,
    symmetric_fake_quant,
    symmetric_scale,
    uniform,
)
from jaxcompress.quant.codebook import KMeansState, kmeans, kmeans_1d
from jaxcompress.quant.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress.quant.learned_step import LSQState, lsq, lsq_fake_quant, lsq_init_step
from jaxcompress.quant.pact import pact_fake_quant, pact_scale
from jaxcompress.quant.power_of_two import Log2State, log2, log2_codebook, log2_quantize
from jaxcompress.quant.ste import (
    clip_ste,
    floor_ste,
    round_ste,
    scale_grad,
    stochastic_round_ste,
    straight_through,
)

__all__ = [
    "Granularity",
    "KMeansState",
    "LSQState",
    "Log2State",
    "SymmetricState",
    "UniformState",
    "affine_params",
    "clip_ste",
    "fake_quant",
    "floor_ste",
    "granularity",
    "int8",
    "int_range",
    "kmeans",
    "kmeans_1d",
    "log2",
    "log2_codebook",
    "log2_quantize",
    "lsq",
    "lsq_fake_quant",
    "lsq_init_step",
    "pact_fake_quant",
    "pact_scale",
    "per_channel",
    "per_group",
    "per_tensor",
    "quantize",
    "round_ste",
    "scale_grad",
    "stochastic_round_ste",
    "straight_through",
    "symmetric",
    "symmetric_codes",
    "symmetric_fake_quant",
    "symmetric_scale",
    "uniform",
]
