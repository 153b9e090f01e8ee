"""Sparsity schedules evaluated on a traced step counter.

A schedule answers two questions at a step ``t`` (a traced int32): the target
sparsity ``schedule(t)`` and whether masks are recomputed at ``t``
(``schedule.is_update_step(t)``). Both are jnp expressions, so a jitted
training step never retraces as ``t`` advances. ``is_update_step`` of a Python
int is a Python bool, for loops that decide on the host (see
:attr:`jaxcompress.Transform.refreshes_at`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from jaxcompress._src import validate

__all__ = ["Schedule", "as_schedule", "constant", "iterative", "one_shot", "polynomial"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: target sparsity and mask-update steps as functions of ``step``."""

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        raise NotImplementedError

    def is_update_step(self, step: jax.typing.ArrayLike) -> jax.Array | bool:
        """Whether masks are recomputed at ``step`` (a bool array; a Python bool for a Python int)."""
        raise NotImplementedError

    @property
    def final(self) -> float:
        """The sparsity the schedule ends at."""
        raise NotImplementedError


def _as_step(step):
    """A Python int stays one (host-side decisions); anything else becomes an int32 array."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return int(step)
    return jnp.asarray(step, jnp.int32)


def _window(step, begin: int, end: int, frequency: int) -> jax.Array | bool:
    step = _as_step(step)
    in_window = (step >= begin) & (step <= end)
    on_beat = ((step - begin) % frequency == 0) | (step == end)
    return in_window & on_beat


@dataclasses.dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once, to ``sparsity``, at step ``at``."""

    sparsity: float
    at: int = 0

    def __call__(self, step):
        del step
        return jnp.asarray(self.sparsity, jnp.float32)

    def is_update_step(self, step):
        return _as_step(step) == self.at

    @property
    def final(self) -> float:
        return self.sparsity


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """Constant target sparsity, masks recomputed every ``frequency`` steps in ``[begin, end]``."""

    sparsity: float
    begin: int = 0
    end: int = 2**31 - 1
    frequency: int = 1

    def __call__(self, step):
        del step
        return jnp.asarray(self.sparsity, jnp.float32)

    def is_update_step(self, step):
        return _window(step, self.begin, self.end, self.frequency)

    @property
    def final(self) -> float:
        return self.sparsity


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """Gradual pruning of Zhu & Gupta (2017).

    .. math:: s_t = s_f + (s_i - s_f) \\left(1 - \\frac{t - t_0}{t_1 - t_0}\\right)^p

    clamped to ``[t_0, t_1]``; masks are recomputed every ``frequency`` steps
    from ``begin`` (``t_0``) to ``end`` (``t_1``), and at ``end``.

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", 2017. https://arxiv.org/abs/1710.01878
    """

    initial: float
    final_sparsity: float
    begin: int
    end: int
    power: float = 3.0
    frequency: int = 1

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - self.begin) / (self.end - self.begin), 0.0, 1.0)
        return self.final_sparsity + (self.initial - self.final_sparsity) * (1.0 - progress) ** self.power

    def is_update_step(self, step):
        return _window(step, self.begin, self.end, self.frequency)

    @property
    def final(self) -> float:
        return self.final_sparsity


@dataclasses.dataclass(frozen=True)
class Iterative(Schedule):
    """The classic prune-retrain loop (Han et al. 2015).

    Every ``frequency`` steps from ``begin``, for ``rounds`` rounds, a further
    fraction of the surviving weights is pruned, so that after round ``r`` the
    density is ``(1 - final)^(r / rounds)``.

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for
      Efficient Neural Networks", 2015. https://arxiv.org/abs/1506.02626
    """

    final_sparsity: float
    rounds: int
    frequency: int
    begin: int = 0

    def __call__(self, step):
        step = jnp.asarray(step, jnp.int32)
        done = jnp.clip((step - self.begin) // self.frequency + 1, 0, self.rounds)
        density = (1.0 - self.final_sparsity) ** (done.astype(jnp.float32) / self.rounds)
        return 1.0 - density

    def is_update_step(self, step):
        end = self.begin + (self.rounds - 1) * self.frequency
        return _window(step, self.begin, end, self.frequency)

    @property
    def final(self) -> float:
        return self.final_sparsity


def one_shot(sparsity: float, *, at: int = 0) -> OneShot:
    """Prune once to ``sparsity`` at step ``at`` (default: the first update)."""
    return OneShot(
        validate.check_fraction(sparsity, argument="sparsity"),
        validate.check_int(at, argument="at", minimum=0),
    )


def constant(sparsity: float, *, begin: int = 0, end: int = 2**31 - 1, frequency: int = 1) -> Constant:
    """Hold ``sparsity``, recomputing masks every ``frequency`` steps in ``[begin, end]``."""
    begin, end, frequency = _check_window(begin, end, frequency)
    return Constant(validate.check_fraction(sparsity, argument="sparsity"), begin, end, frequency)


def polynomial(
    initial: float, final: float, *, begin: int, end: int, power: float = 3.0, frequency: int = 1
) -> Polynomial:
    """Gradual (cubic by default) schedule of Zhu & Gupta (2017); see :class:`Polynomial`.

    Example:
      >>> import jaxcompress as jc
      >>> s = jc.schedules.polynomial(0.0, 0.9, begin=0, end=1000)
      >>> round(float(s(500)), 4)
      0.7875
    """
    initial = validate.check_fraction(initial, argument="initial")
    final = validate.check_fraction(final, argument="final")
    begin, end, frequency = _check_window(begin, end, frequency)
    if isinstance(power, bool) or not isinstance(power, int | float) or not math.isfinite(power) or not power > 0:
        raise ValueError(f"`power` must be a finite number > 0, got {power!r}.")
    return Polynomial(initial, final, begin, end, float(power), frequency)


def iterative(final: float, *, rounds: int, frequency: int, begin: int = 0) -> Iterative:
    """Prune-retrain loop reaching ``final`` after ``rounds`` rounds; see :class:`Iterative`."""
    final = validate.check_fraction(final, argument="final")
    rounds = validate.check_int(rounds, argument="rounds", minimum=1)
    frequency = validate.check_int(frequency, argument="frequency", minimum=1)
    return Iterative(final, rounds, frequency, validate.check_int(begin, argument="begin", minimum=0))


def _check_window(begin, end, frequency) -> tuple[int, int, int]:
    begin = validate.check_int(begin, argument="begin", minimum=0)
    end = validate.check_int(end, argument="end", minimum=0)
    frequency = validate.check_int(frequency, argument="frequency", minimum=1)
    if end <= begin:
        raise ValueError(f"`end` must be greater than `begin`, got begin={begin}, end={end}.")
    return begin, end, frequency


ScheduleLike = float | Schedule


def as_schedule(sparsity: ScheduleLike, *, argument: str = "sparsity") -> Schedule:
    """A number means :func:`one_shot` at the first update; a Schedule passes through."""
    if isinstance(sparsity, Schedule):
        return sparsity
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(
            f"`{argument}` must be a number in [0, 1) or a jaxcompress.schedules.Schedule, "
            f"got {type(sparsity).__name__}: {sparsity!r}."
        )
    return one_shot(validate.check_fraction(sparsity, argument=argument))
