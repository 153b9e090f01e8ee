"""Straight-through pruning: sparse forward, every weight gets its gradient, weights stay dense."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc


def test_forward_is_sparse_and_gradient_reaches_every_weight():
    t = jc.prune.ste(jc.prune.n_m(2, 4))
    w = jax.random.normal(jax.random.key(0), (8, 3))
    x = jax.random.normal(jax.random.key(1), (5, 8))
    state = t.update({"w": w}, t.init({"w": w}))
    assert jc.masks_of(state) == {}
    keep = state.inner_state.masks.keep["w"].unpack()
    masked = t.apply({"w": w}, state)["w"]
    np.testing.assert_array_equal(masked, jnp.where(keep, w, 0.0))

    def loss(p, apply):
        return jnp.sum(jnp.tanh(x @ apply(p)["w"]))

    ste_grad = jax.grad(loss)({"w": w}, lambda p: t.apply(p, state))["w"]
    # The straight-through gradient is dL/d(w * m), evaluated at the masked weights, for every weight.
    dense_grad_at_masked = jax.grad(lambda v: jnp.sum(jnp.tanh(x @ v)))(masked)
    np.testing.assert_allclose(ste_grad, dense_grad_at_masked, rtol=1e-6)
    assert bool(jnp.all(ste_grad[~keep] != 0))


def test_weights_stay_dense_under_the_optimizer_and_pruned_ones_can_return():
    schedule = jc.schedules.constant(0.5, frequency=1)
    recipe = jc.prune.ste(jc.prune.magnitude(schedule))
    tx = jc.optim.with_compression(optax.sgd(0.1), recipe)
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    target = jnp.array([[5.0, 0.0], [0.0, 4.0]])  # wants the pruned (0, 0) to grow, (1, 0) to shrink
    opt_state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)
        cstate = jc.optim.compression_state(opt_state)
        grads = jax.grad(lambda p: jnp.sum((recipe.apply(p, cstate)["w"] - target) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(8):
        params, opt_state = step(params, opt_state)
    assert len(traces) == 1
    assert bool(jnp.all(params["w"] != 0))  # dense weights
    keep = recipe.apply(params, jc.optim.compression_state(opt_state))["w"] != 0
    np.testing.assert_array_equal(keep, [[True, False], [False, True]])  # (0, 0) came back
