"""Sharing a target among layers: ERK against its definition, overrides, exact counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress._src.prune import distributions

SHAPES = [(3, 3, 2, 8), (72, 32), (32, 10), (10, 4)]


def erk_reference(shapes, sparsity):
    """Evci et al. (2020): iteratively make dense the layers whose ERK density exceeds 1."""
    sizes = np.array([np.prod(s) for s in shapes], float)
    raw = np.array([sum(s) / np.prod(s) for s in shapes])
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = ((1 - sparsity) * sizes.sum() - sizes[dense].sum()) / (sizes[~dense] * raw[~dense]).sum()
        over = ~dense & (eps * raw > 1)
        if not over.any():
            return np.where(dense, 0.0, 1 - eps * raw)
        dense |= over


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95])
def test_erk_matches_definition_and_budget(sparsity):
    got = np.array([float(s) for s in distributions.erk(SHAPES, sparsity)])
    np.testing.assert_allclose(got, erk_reference(SHAPES, sparsity), atol=1e-5)
    sizes = np.array([np.prod(s) for s in SHAPES])
    np.testing.assert_allclose((got * sizes).sum(), sparsity * sizes.sum(), rtol=1e-5)
    assert np.all((got >= 0) & (got < 1))
    assert np.all(np.diff(got[1:]) <= 1e-6) or sparsity == 0.0  # smaller layers stay denser


def test_erk_is_traceable_and_follows_the_schedule():
    values = jax.jit(jax.vmap(lambda s: jnp.stack(distributions.erk(SHAPES, s))))(jnp.linspace(0.0, 0.9, 4))
    assert values.shape == (4, 4)
    assert np.all(np.diff(np.asarray(values), axis=0) >= -1e-6)


def test_overrides_take_their_sparsity_along_the_schedule():
    params = {"a": jnp.ones((8, 8)), "b": jnp.ones((8, 4)), "c": jnp.ones((4, 4))}
    schedule = jc.schedules.polynomial(0.0, 0.5, begin=0, end=2)
    t = jc.prune.magnitude(schedule, overrides={"a": 0.0, "c": 0.75})
    state, update = t.init(params), jax.jit(t.update)
    for step in range(3):
        state = update(params, state)
        pruned = {p: int((~m.unpack()).sum()) for p, m in state.masks.keep.items()}
        s = float(schedule(step))
        assert pruned == {"a": 0, "b": round(s * 32), "c": round(0.75 * s / 0.5 * 16)}


def test_overrides_with_a_global_threshold():
    params = {"a": jnp.arange(64.0).reshape(8, 8), "b": jnp.arange(32.0).reshape(8, 4), "c": jnp.ones((4, 4))}
    pruned, _ = jc.compress(jc.prune.magnitude(0.5, scope="global", overrides={"c": 0.25}), params)
    assert int((pruned["c"] == 0).sum()) == 4
    assert int((pruned["a"] == 0).sum()) + int((pruned["b"] == 0).sum()) == 48


def test_bad_overrides():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="matches none of the pruned leaves"):
        jc.prune.magnitude(0.5, overrides={"nothing": 0.1}).init(params)
    with pytest.raises(ValueError, match="more than one `overrides` rule"):
        jc.prune.magnitude(0.5, overrides={"a": 0.1, "[ab]": 0.2}).init(params)
    with pytest.raises(ValueError, match=r"`overrides\['a'\]` must lie in"):
        jc.prune.magnitude(0.5, overrides={"a": 1.5}).init(params)
