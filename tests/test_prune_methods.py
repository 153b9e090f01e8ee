"""Unstructured pruning by score: exact counts and the right weights, against numpy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress import paths
from jaxcompress._src.prune import distributions

KERNELS = ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]


def make_grads(seed=7, dtype=jnp.float32):
    """Gradient-shaped pytree (random values, independent of the params)."""
    return make_params(seed, dtype)


def flat(tree):
    return paths.flatten(tree)[0]


def numpy_keep(scores: np.ndarray, n_prune: int) -> np.ndarray:
    order = np.argsort(scores.ravel(), kind="stable")
    keep = np.ones(scores.size, bool)
    keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


def compress(transform, params, grads=None):
    return jax.jit(lambda p, g: jc.compress(transform, p, g))(params, grads)


def kept(tree):
    return {p: np.asarray(flat(tree)[p]) != 0 for p in KERNELS}


def test_saliency_keeps_exactly_the_largest_weight_times_gradient_per_layer():
    params, grads = make_params(), make_grads()
    pruned, state = compress(jc.prune.saliency(0.6), params, grads)
    assert isinstance(state, jc.prune.PrunerState)
    for p, keep in kept(pruned).items():
        score = np.abs(np.asarray(flat(params)[p]) * np.asarray(flat(grads)[p]))
        np.testing.assert_array_equal(keep, numpy_keep(score, round(0.6 * score.size)))
    for p, w in flat(pruned).items():
        if p.endswith("bias"):
            np.testing.assert_array_equal(w, flat(params)[p])


def test_snip_is_one_global_threshold_on_sensitivity():
    params, grads = make_params(), make_grads()
    pruned, state = compress(jc.prune.snip(0.8), params, grads)
    assert isinstance(state, jc.prune.PrunerState)
    score = np.concatenate([np.abs(np.asarray(flat(params)[p]) * np.asarray(flat(grads)[p])).ravel() for p in KERNELS])
    keep = np.concatenate([k.ravel() for k in kept(pruned).values()])
    np.testing.assert_array_equal(keep, numpy_keep(score, round(0.8 * score.size)))


def test_magnitude_erk_prunes_each_layer_its_share_exactly():
    params = make_params()
    pruned, _ = compress(jc.prune.magnitude(0.7, distribution="erk"), params)
    shares = distributions.erk([flat(params)[p].shape for p in KERNELS], 0.7)
    for (p, keep), s in zip(kept(pruned).items(), shares, strict=True):
        w = np.abs(np.asarray(flat(params)[p]))
        np.testing.assert_array_equal(keep, numpy_keep(w, round(float(s) * w.size)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_movement_accumulates_minus_weight_times_gradient(dtype):
    t = jc.prune.movement(jc.schedules.one_shot(0.5, at=3), rule="Dense_1/kernel")
    params = make_params(dtype=dtype)
    state = t.init(params)
    update = jax.jit(t.update)
    total = np.zeros(params["Dense_1"]["kernel"].shape, np.float32)
    for seed in range(4):
        grads = make_grads(seed, dtype)
        w, g = params["Dense_1"]["kernel"], grads["Dense_1"]["kernel"]
        total = (total - np.asarray(w.astype(jnp.float32) * g.astype(jnp.float32))).astype(np.float32)
        total = np.asarray(jnp.asarray(total).astype(dtype).astype(jnp.float32))  # stored in the param dtype
        state = update(params, state, grads)
        params = jax.tree.map(lambda x: x * 0.9, params)  # the weights move between steps
    assert state.scores["Dense_1/kernel"].dtype == dtype
    np.testing.assert_allclose(np.asarray(state.scores["Dense_1/kernel"], np.float32), total, rtol=1e-2, atol=1e-2)
    keep = state.masks.keep["Dense_1/kernel"].unpack()
    expected = numpy_keep(np.asarray(state.scores["Dense_1/kernel"], np.float32), total.size // 2)
    np.testing.assert_array_equal(keep, expected)


def test_random_is_global_exact_nested_along_a_schedule_and_seeded():
    schedule = jc.schedules.polynomial(0.0, 0.9, begin=0, end=4)
    t = jc.prune.random(schedule, scope="global", seed=5)
    params = make_params()
    traces = []

    @jax.jit
    def update(params, state):
        traces.append(1)
        return t.update(params, state)

    state, history = t.init(params), []
    total = sum(flat(params)[p].size for p in KERNELS)
    for step in range(5):
        state = update(params, state)
        keep = np.concatenate([np.asarray(state.masks.keep[p].unpack()).ravel() for p in KERNELS])
        assert (~keep).sum() == round(float(schedule(step)) * total)
        history.append(keep)
    assert len(traces) == 1
    for before, after in itertools.pairwise(history):
        assert np.all(before >= after)  # nothing regrows
    other = jax.jit(jc.prune.random(schedule, scope="global", seed=6).update)(params, state._replace(count=4))
    assert any(np.any(other.masks.keep[p].unpack() != state.masks.keep[p].unpack()) for p in KERNELS)


@pytest.mark.parametrize(
    "make", [lambda: jc.prune.saliency(0.5), lambda: jc.prune.movement(0.5), lambda: jc.prune.snip(0.5)]
)
def test_gradient_scores_need_gradients(make):
    t = make()
    params = make_params()
    with pytest.raises(ValueError, match="score needs gradients: call update"):
        t.update(params, t.init(params))
