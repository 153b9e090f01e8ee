"""Joint pruning and quantization in training: methods that decide sparsity and precision together.

:func:`admm` (Ye et al. 2018) trains toward "at most k nonzeros on a b-bit
grid" with an augmented-Lagrangian penalty (:func:`admm_penalty`) and
projections (:func:`project`), then :func:`hard_projection` hands the result to
:func:`fixed_grid` for masked retraining. :func:`bayesian_bits` (van Baalen
et al. 2020) learns each layer's precision and its pruned channels as
hard-concrete gates on nested quantization residuals, penalized by
:func:`relative_bops` (with :func:`count_macs`); :func:`finalize` turns the
gates into an exportable recipe. :func:`clip_q` (Tung & Mori 2018) clips and
partitions each layer in parallel with fine-tuning; :func:`clip_q_search`
chooses each layer's (prune fraction, bits) under a size target. Phases: :func:`delayed` starts a quantizer
mid-run (calibrated on the weights then), :func:`frozen_masks` carries a
pruning run's masks into a new one.
"""

from jaxcompress._src.joint.admm import (
    ADMMState,
    FixedGridState,
    LayerBudget,
    admm,
    admm_penalty,
    fixed_grid,
    hard_projection,
    project,
)
from jaxcompress._src.joint.bayesian_bits import (
    BayesianBitsState,
    bayesian_bits,
    count_macs,
    finalize,
    gate_probabilities,
    relative_bops,
)
from jaxcompress._src.joint.clipq import ClipQState, clip_q, clip_q_quantize
from jaxcompress._src.joint.clipq_search import ClipQSearchRecord, clip_q_bytes, clip_q_search
from jaxcompress._src.joint.phases import (
    DelayedQuantizer,
    DelayedState,
    FrozenMasksState,
    delayed,
    frozen_masks,
)

__all__ = [
    "ADMMState",
    "BayesianBitsState",
    "ClipQSearchRecord",
    "ClipQState",
    "DelayedQuantizer",
    "DelayedState",
    "FixedGridState",
    "FrozenMasksState",
    "LayerBudget",
    "admm",
    "admm_penalty",
    "bayesian_bits",
    "clip_q",
    "clip_q_bytes",
    "clip_q_quantize",
    "clip_q_search",
    "count_macs",
    "delayed",
    "finalize",
    "fixed_grid",
    "frozen_masks",
    "gate_probabilities",
    "hard_projection",
    "project",
    "relative_bops",
]
