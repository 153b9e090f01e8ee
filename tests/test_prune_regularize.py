"""Sparsity-inducing training: penalties against numpy, proximal steps reach exact zeros."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcompress as jc


def test_penalties_match_numpy():
    w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.ones(4)}
    np.testing.assert_allclose(jc.prune.l1_penalty(params), np.abs(w).sum(), rtol=1e-6)
    np.testing.assert_allclose(jc.prune.group_lasso_penalty(params), np.linalg.norm(w, axis=0).sum(), rtol=1e-6)
    np.testing.assert_allclose(jc.prune.group_lasso_penalty(params, axis=0), np.linalg.norm(w, axis=1).sum(), rtol=1e-6)


def least_squares(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    w_true = np.zeros((10, 3), np.float32)
    w_true[:3] = rng.normal(size=(3, 3))  # only 3 input rows matter
    return jnp.asarray(x), jnp.asarray(x @ w_true)


@pytest.mark.parametrize("kind", ["l1", "group"])
def test_proximal_step_drives_weights_to_exactly_zero(kind):
    x, y = least_squares()
    lr = 0.05
    prox = jc.prune.proximal_l1(lr * 0.1) if kind == "l1" else jc.prune.proximal_group_lasso(lr * 0.5, axis=0)
    tx = optax.chain(optax.sgd(lr), prox)
    params = {"w": jnp.full((10, 3), 0.3)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: 0.5 * jnp.mean(jnp.sum((x @ p["w"] - y) ** 2, axis=1)))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    w = np.asarray(params["w"])
    if kind == "l1":
        assert (w[3:] == 0.0).mean() > 0.9  # the irrelevant weights are exactly zero
    else:
        assert np.all(w[3:] == 0.0)  # whole irrelevant input rows are exactly zero
    assert np.all(np.any(w[:3] != 0.0, axis=1))  # the relevant rows survive
    # Magnitude pruning then cuts exactly the zeros without changing the function.
    n_zero = int((w == 0).sum())
    pruned, _ = jc.compress(jc.prune.magnitude(n_zero / w.size), params)
    np.testing.assert_array_equal(pruned["w"], params["w"])


def test_proximal_needs_params_and_a_valid_strength():
    tx = jc.prune.proximal_l1(0.1)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="`strength` must be a number >= 0"):
        jc.prune.proximal_l1(-1.0)
