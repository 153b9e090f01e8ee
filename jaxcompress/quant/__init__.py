"""Quantization: weights and activations, QAT and PTQ, uniform and not.

Weight quantizers (transforms; each has ``integer`` for export):
:func:`uniform` (affine: symmetric/asymmetric, signed/unsigned, per
tensor/channel/group, nearest/stochastic rounding), :func:`symmetric`,
:func:`int8`, :func:`lsq` (learned step size), :func:`log2` (power of two),
:func:`kmeans` (codebook, weight sharing), :func:`mixed_precision`.

Activations: :func:`activations` (a transform selecting layers by module
path; dynamic, static, LSQ or PACT ranges), installed around ``model.apply``
by :func:`quantize_activations` (linen) or :func:`quantize_activations_nnx`;
:func:`calibrate` for static ranges; :func:`input_quantization` for export.
PTQ helpers: :func:`fold_batchnorm`, :func:`infer_batchnorm_pairs`.
"""

from jaxcompress.quant import granularity
from jaxcompress.quant.activation import (
    ActivationConfig,
    ActivationsState,
    InputQuant,
    Range,
    activations,
    input_quantization,
    output_quantization,
    quantize_input,
)
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
from jaxcompress.quant.calibration import calibrate, observe_range
from jaxcompress.quant.codebook import KMeansState, kmeans, kmeans_1d
from jaxcompress.quant.fold import fold_batchnorm, infer_batchnorm_pairs
from jaxcompress.quant.granularity import Granularity, per_channel, per_group, per_tensor
from jaxcompress.quant.hooks import Observed, quantize_activations
from jaxcompress.quant.learned_step import LSQState, lsq, lsq_fake_quant, lsq_init_step
from jaxcompress.quant.mixed import mixed_precision
from jaxcompress.quant.nnx import quantize_activations_nnx
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
    "ActivationConfig",
    "ActivationsState",
    "Granularity",
    "InputQuant",
    "KMeansState",
    "LSQState",
    "Log2State",
    "Observed",
    "Range",
    "SymmetricState",
    "UniformState",
    "activations",
    "affine_params",
    "calibrate",
    "clip_ste",
    "fake_quant",
    "floor_ste",
    "fold_batchnorm",
    "granularity",
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
    "symmetric_codes",
    "symmetric_fake_quant",
    "symmetric_scale",
    "uniform",
]
