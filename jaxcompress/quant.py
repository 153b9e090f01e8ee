"""Quantization: weights and activations, QAT and PTQ, uniform and not.

Weight quantizers are :class:`jaxcompress.Quantizer` s: :func:`uniform` (affine:
symmetric/asymmetric, signed/unsigned, per tensor/channel/group,
nearest/stochastic rounding), :func:`symmetric`, :func:`int8`, :func:`lsq`
(learned step size), :func:`log2` (power of two), :func:`kmeans` (codebook,
weight sharing); :func:`mixed_precision` chains them by path rule;
:func:`half_precision` rounds biases (any float leaf) to float16/bfloat16.

Activations: :func:`activations` (a transform selecting layers by module path;
dynamic, static, LSQ or PACT ranges), installed around ``model.apply`` by
:func:`quantize_activations` (linen) or :func:`quantize_activations_nnx`;
:func:`calibrate` for static ranges; :func:`input_quantization` gives the
:class:`InputQuant` export computes with. PTQ helpers: :func:`fold_batchnorm`,
:func:`infer_batchnorm_pairs`.
"""

from jaxcompress._src.quant.activations import (
    ActivationConfig,
    ActivationsState,
    activations,
    input_quantization,
    output_quantization,
    pact_penalty,
)
from jaxcompress._src.quant.calibration import calibrate, observe_range
from jaxcompress._src.quant.fold import fold_batchnorm, infer_batchnorm_pairs
from jaxcompress._src.quant.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress._src.quant.grid import InputQuant, Range, affine_params, int_range, quantize_input
from jaxcompress._src.quant.half import VECTORS, HalfPrecisionState, half_precision
from jaxcompress._src.quant.hooks import Observed, quantize_activations
from jaxcompress._src.quant.kmeans import KMeansState, kmeans, kmeans_1d
from jaxcompress._src.quant.log2 import Log2State, log2, log2_codebook, log2_quantize
from jaxcompress._src.quant.lsq import LSQState, lsq, lsq_fake_quant, lsq_init_step
from jaxcompress._src.quant.mixed import mixed_precision
from jaxcompress._src.quant.nnx import quantize_activations_nnx
from jaxcompress._src.quant.pact import pact_fake_quant, pact_scale
from jaxcompress._src.quant.ste import (
    clip_ste,
    floor_ste,
    round_ste,
    scale_grad,
    stochastic_round_ste,
    straight_through,
)
from jaxcompress._src.quant.uniform import UniformState, fake_quant, int8, quantize, symmetric, uniform

__all__ = [
    "VECTORS",
    "ActivationConfig",
    "ActivationsState",
    "Granularity",
    "HalfPrecisionState",
    "InputQuant",
    "KMeansState",
    "LSQState",
    "Log2State",
    "Observed",
    "Range",
    "UniformState",
    "activations",
    "affine_params",
    "calibrate",
    "clip_ste",
    "fake_quant",
    "floor_ste",
    "fold_batchnorm",
    "half_precision",
    "infer_batchnorm_pairs",
    "input_quantization",
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
    "mixed_precision",
    "observe_range",
    "output_quantization",
    "pact_fake_quant",
    "pact_penalty",
    "pact_scale",
    "per_channel",
    "per_group",
    "per_tensor",
    "quantize",
    "quantize_activations",
    "quantize_activations_nnx",
    "quantize_input",
    "round_ste",
    "scale_grad",
    "stochastic_round_ste",
    "straight_through",
    "symmetric",
    "uniform",
]
