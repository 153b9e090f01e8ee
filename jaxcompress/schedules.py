"""Sparsity schedules evaluated on a traced step counter."""

from jaxcompress._src.schedules import (
    Constant,
    Iterative,
    OneShot,
    Polynomial,
    Schedule,
    ScheduleLike,
    as_schedule,
    constant,
    iterative,
    one_shot,
    polynomial,
)

__all__ = [
    "Constant",
    "Iterative",
    "OneShot",
    "Polynomial",
    "Schedule",
    "ScheduleLike",
    "as_schedule",
    "constant",
    "iterative",
    "one_shot",
    "polynomial",
]
