import jax
import numpy as np
import pytest

from jaxcompress import schedules


def zhu_gupta(t, s_i, s_f, t0, t1, power=3.0):
    """Zhu & Gupta (2017), eq. 1, evaluated in float64."""
    p = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - p) ** power


@pytest.mark.parametrize("t", [0, 5, 10, 37, 60, 99, 110, 500])
def test_polynomial_matches_formula(t):
    s = schedules.polynomial(0.1, 0.9, begin=10, end=110)
    np.testing.assert_allclose(float(s(t)), zhu_gupta(t, 0.1, 0.9, 10, 110), rtol=1e-6)


def test_polynomial_update_steps():
    s = schedules.polynomial(0.0, 0.9, begin=10, end=35, frequency=10)
    steps = [t for t in range(50) if bool(s.is_update_step(t))]
    assert steps == [10, 20, 30, 35]


def test_one_shot_and_constant():
    s = schedules.one_shot(0.8, at=3)
    assert [t for t in range(10) if bool(s.is_update_step(t))] == [3]
    assert float(s(100)) == pytest.approx(0.8)
    c = schedules.constant(0.5, begin=2, end=8, frequency=3)
    assert [t for t in range(12) if bool(c.is_update_step(t))] == [2, 5, 8]


def test_iterative_prunes_fraction_of_survivors_each_round():
    s = schedules.iterative(0.936, rounds=4, frequency=100, begin=50)
    assert [t for t in range(600) if bool(s.is_update_step(t))] == [50, 150, 250, 350]
    density_per_round = (1 - 0.936) ** 0.25
    for r, t in enumerate([50, 150, 250, 350], start=1):
        np.testing.assert_allclose(float(s(t)), 1 - density_per_round**r, rtol=1e-5)
    assert float(s(0)) == 0.0


def test_schedules_are_traceable():
    s = schedules.polynomial(0.0, 0.5, begin=0, end=10)
    values = jax.jit(jax.vmap(s))(np.arange(12, dtype=np.int32))
    assert values.shape == (12,)
    np.testing.assert_allclose(values[-1], 0.5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: schedules.polynomial(0.0, 1.0, begin=0, end=10), "`final` must lie in"),
        (lambda: schedules.polynomial(-0.1, 0.5, begin=0, end=10), "`initial` must lie in"),
        (lambda: schedules.polynomial(0.0, 0.5, begin=10, end=10), "`end` must be greater"),
        (lambda: schedules.polynomial(0.0, 0.5, begin=0, end=10, frequency=0), "`frequency` must be >= 1"),
        (lambda: schedules.one_shot(1.5), "`sparsity` must lie in"),
        (lambda: schedules.iterative(0.9, rounds=0, frequency=10), "`rounds` must be >= 1"),
        (lambda: schedules.as_schedule("0.5"), "must be a number"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.polynomial(0.0, 0.9, begin=3, end=40, frequency=7),
        schedules.one_shot(0.5, at=4),
        schedules.constant(0.5, begin=2, end=30, frequency=4),
        schedules.iterative(0.9, rounds=3, frequency=9, begin=1),
    ],
    ids=["polynomial", "one_shot", "constant", "iterative"],
)
def test_update_steps_on_the_host_match_the_traced_ones(schedule):
    # A Python int gives a Python bool (host-side decisions), equal to the traced value.
    traced = jax.jit(jax.vmap(schedule.is_update_step))(np.arange(60, dtype=np.int32))
    host = [schedule.is_update_step(t) for t in range(60)]
    assert all(type(h) is bool for h in host)
    assert host == [bool(v) for v in traced]
    assert [schedule.is_update_step(np.int64(t)) for t in range(60)] == host


@pytest.mark.parametrize("power", ["3", None, float("nan"), float("inf"), True, 0.0, -1.0])
def test_polynomial_power_must_be_a_finite_positive_number(power):
    with pytest.raises(ValueError, match="power"):
        schedules.polynomial(0.0, 0.9, begin=0, end=10, power=power)
