"""Pruning: methods that zero weights, keeping bit-packed hard masks (:class:`jaxcompress.Masks`) in their state.

Every factory but the dynamic sparse trainers (:func:`set_`, :func:`rigl`) and
the straight-through wrapper (:func:`ste`) is :func:`pruner` with a score, a
structure and defaults; they all share :class:`PrunerState`.
"""

from jaxcompress._src.prune.distributions import erk
from jaxcompress._src.prune.dst import DSTState, rigl, set_
from jaxcompress._src.prune.methods import block, channel, magnitude, movement, n_m, random, saliency, snip
from jaxcompress._src.prune.pruner import PrunerState, pruner
from jaxcompress._src.prune.regularize import (
    ProximalState,
    group_lasso_penalty,
    l1_penalty,
    proximal_group_lasso,
    proximal_l1,
)
from jaxcompress._src.prune.scores import Magnitude, Movement, Random, Saliency, Score
from jaxcompress._src.prune.ste import SoftMasks, STEState, ste
from jaxcompress._src.prune.structures import NM, Block, Channel, Structure, Unstructured
from jaxcompress._src.prune.threshold import keep_largest

__all__ = [
    "NM",
    "Block",
    "Channel",
    "DSTState",
    "Magnitude",
    "Movement",
    "ProximalState",
    "PrunerState",
    "Random",
    "STEState",
    "Saliency",
    "Score",
    "SoftMasks",
    "Structure",
    "Unstructured",
    "block",
    "channel",
    "erk",
    "group_lasso_penalty",
    "keep_largest",
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
