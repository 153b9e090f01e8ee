"""SET and RigL: constant sparsity, real regrowth, and fresh optimizer moments for regrown weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam, standard_promotion

import jaxcompress as jc


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(24)(x))  # kernels (12, 24) and (24, 5); the biases are not pruned
        return nn.Dense(5)(x)


def setup():
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (64, 12))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 5)
    params = model.init(jax.random.key(2), x)["params"]
    return model, params, x, y


OPTIMIZERS = {
    "adam": adam(1e-2),
    "sgd-momentum": optax.sgd(0.1, momentum=0.9),
    "inject_hyperparams": standard_promotion(
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=1e-2)
    ),
    "chain": optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
}
CASES = [("rigl", "adam"), ("rigl", "inject_hyperparams"), ("set", "sgd-momentum"), ("set", "chain")]


def recipe_for(method):
    if method == "rigl":
        return jc.prune.rigl(0.75, end=40, frequency=2, drop_fraction=0.5)
    return jc.prune.set_(0.75, frequency=2, drop_fraction=0.5)


def moments_of(inner_state, shape):
    """Every inner-state array shaped like a kernel of this shape (Adam's mu, nu; momentum traces)."""
    return [np.asarray(x) for x in jax.tree.leaves(inner_state) if jnp.shape(x) == shape]


@pytest.mark.parametrize("method, optimizer", CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_constant_sparsity_and_fresh_moments_for_regrown_weights(method, optimizer):
    model, params, x, y = setup()
    recipe = recipe_for(method)
    tx = jc.optim.with_compression(OPTIMIZERS[optimizer], recipe)
    opt_state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)
        cstate = jc.optim.compression_state(opt_state)

        def loss(p):
            logits = model.apply({"params": recipe.apply(p, cstate)}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    kept = {p: int(m.unpack().sum()) for p, m in jc.masks_of(jc.optim.compression_state(opt_state)).items()}
    assert kept == {"Dense_0/kernel": 72, "Dense_1/kernel": 30}  # 25% of 288 and of 120
    regrown_total = 0
    for _ in range(7):
        old = jc.masks_of(jc.optim.compression_state(opt_state))
        params, opt_state = step(params, opt_state)
        new = jc.masks_of(jc.optim.compression_state(opt_state))
        for path, mask in new.items():
            keep = np.asarray(mask.unpack())
            assert keep.sum() == kept[path], "sparsity stays constant"
            layer = path.split("/")[0]
            w = np.asarray(params[layer]["kernel"])
            assert np.all(w[~keep] == 0.0), "pruned weights are exactly zero"
            regrown = keep & ~np.asarray(old[path].unpack())
            regrown_total += int(regrown.sum())
            assert np.all(w[regrown] == 0.0), "regrown weights start at zero"
            moments = moments_of(opt_state.inner_state, w.shape)
            assert moments, "found the optimizer's moments"
            for moment in moments:
                assert np.all(moment[regrown] == 0.0), "regrown weights get fresh moments"
    assert regrown_total > 0, "connections did move"
    assert len(traces) == 1
    assert np.any(np.asarray(params["Dense_0"]["bias"]) != 0.0)  # biases train, unpruned


def test_rigl_drops_smallest_weights_and_grows_largest_gradients():
    t = jc.prune.rigl(0.5, end=100, frequency=1, drop_fraction=0.5, init_mask="magnitude")
    w = jnp.array([[8.0, 1.0, 7.0, 2.0], [6.0, 3.0, 5.0, 4.0]])  # keeps 8, 7, 6, 5
    g = jnp.array([[0.0, 9.0, 0.0, 1.0], [0.0, 2.0, 0.0, 8.0]])
    state, update = t.init({"w": w}), jax.jit(t.update)
    state = update({"w": w}, state, {"w": g})  # step 0: no move
    state = update({"w": w}, state, {"w": g})  # step 1: drop 2 of 4 (5, 6); grow the 2 largest |g| elsewhere
    expected = np.array([[1, 1, 1, 0], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(jc.masks_of(state)["w"].unpack(), expected)
