"""Training: jitted classifier steps and a fit loop; sharding, checkpoints and multi-host runs."""

from jaxcompress._src.checkpoint import Checkpoints, CheckpointSkipped, Restored
from jaxcompress._src.sharding import (
    Collective,
    collectives,
    fsdp_shardings,
    init_sharded,
    param_shardings,
    place_like,
    state_shardings,
)
from jaxcompress._src.train import accuracy, cross_entropy, fit, make_train_step
from jaxcompress.train import distributed

__all__ = [
    "CheckpointSkipped",
    "Checkpoints",
    "Collective",
    "Restored",
    "accuracy",
    "collectives",
    "cross_entropy",
    "distributed",
    "fit",
    "fsdp_shardings",
    "init_sharded",
    "make_train_step",
    "param_shardings",
    "place_like",
    "state_shardings",
]
