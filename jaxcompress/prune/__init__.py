"""Pruning: transforms that zero weights, keeping bit-packed masks in their state.

Every factory is built on one score-based engine, :func:`pruner` (score x
structure x schedule x distribution), except the dynamic sparse trainers
(:func:`set_`, :func:`rigl`) and the straight-through wrapper (:func:`ste`).
"""

from jaxcompress.masks import PackedMask
from jaxcompress.prune.dst import RigLState, SETState, rigl, set_
from jaxcompress.prune.magnitude import MagnitudeState, magnitude
from jaxcompress.prune.methods import (
    MovementState,
    RandomState,
    SaliencyState,
    SNIPState,
    movement,
    random,
    saliency,
    snip,
)
from jaxcompress.prune.pruner import PrunerState, pruner
from jaxcompress.prune.regularize import (
    ProximalState,
    group_lasso_penalty,
    l1_penalty,
    proximal_group_lasso,
    proximal_l1,
)
from jaxcompress.prune.ste import STEState, ste
from jaxcompress.prune.structured import BlockState, ChannelState, NMState, block, channel, n_m

__all__ = [
    "BlockState",
    "ChannelState",
    "MagnitudeState",
    "MovementState",
    "NMState",
    "PackedMask",
    "ProximalState",
    "PrunerState",
    "RandomState",
    "RigLState",
    "SETState",
    "SNIPState",
    "STEState",
    "SaliencyState",
    "block",
    "channel",
    "group_lasso_penalty",
    "l1_penalty",
    "magnitude",
    "movement",
    "n_m",
    "proximal_group_lasso",
    "proximal_l1",
    "pruner",
    "random",
    "rigl",
    "saliency",
    "set_",
    "snip",
    "ste",
]
