"""Unstructured pruning by score: exact counts and the right weights, against numpy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress import paths

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


FACTORIES = {
    "random": lambda s, scope: jc.prune.random(s, scope=scope, seed=3),
    "saliency": lambda s, scope: jc.prune.saliency(s, scope=scope),
    "movement": lambda s, scope: jc.prune.movement(s, scope=scope),
    "snip": lambda s, scope: jc.prune.snip(s, scope=scope),
    "magnitude-erk": lambda s, scope: jc.prune.magnitude(s, distribution="erk"),
}


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_exact_sparsity(name, scope):
    if name == "magnitude-erk" and scope == "global":
        pytest.skip("ERK shares the target among layers")
    params, grads = make_params(), make_grads()
    t = FACTORIES[name](0.7, scope)
    pruned, _ = jc.compress(t, params, grads)
    zeros = {p: int(jnp.sum(flat(pruned)[p] == 0)) for p in KERNELS}
    sizes = {p: flat(params)[p].size for p in KERNELS}
    if name == "magnitude-erk":
        from jaxcompress.prune import distributions

        expected = distributions.erk([flat(params)[p].shape for p in KERNELS], 0.7)
        assert zeros == {p: round(float(s) * sizes[p]) for p, s in zip(KERNELS, expected, strict=True)}
        assert abs(sum(zeros.values()) - 0.7 * sum(sizes.values())) <= 3
    elif scope == "layer":
        assert zeros == {p: round(0.7 * sizes[p]) for p in KERNELS}
    else:
        assert sum(zeros.values()) == round(0.7 * sum(sizes.values()))
    for p, w in flat(pruned).items():
        if p.endswith("bias"):
            np.testing.assert_array_equal(w, flat(params)[p])


def test_saliency_keeps_largest_weight_times_gradient():
    params, grads = make_params(), make_grads()
    pruned, _ = jc.compress(jc.prune.saliency(0.6), params, grads)
    for p in KERNELS:
        score = np.abs(np.asarray(flat(params)[p]) * np.asarray(flat(grads)[p]))
        np.testing.assert_array_equal(np.asarray(flat(pruned)[p]) != 0, numpy_keep(score, round(0.6 * score.size)))


def test_snip_is_one_global_threshold_on_sensitivity():
    params, grads = make_params(), make_grads()
    pruned, state = jc.compress(jc.prune.snip(0.8), params, grads)
    assert type(state).__name__ == "SNIPState"
    score = np.concatenate([np.abs(np.asarray(flat(params)[p]) * np.asarray(flat(grads)[p])).ravel() for p in KERNELS])
    kept = np.concatenate([(np.asarray(flat(pruned)[p]) != 0).ravel() for p in KERNELS])
    np.testing.assert_array_equal(kept, numpy_keep(score, round(0.8 * score.size)))


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
    keep = state.masks["Dense_1/kernel"].unpack()
    expected = numpy_keep(np.asarray(state.scores["Dense_1/kernel"], np.float32), total.size // 2)
    np.testing.assert_array_equal(keep, expected)


def test_random_masks_are_nested_along_a_gradual_schedule_and_seeded():
    schedule = jc.schedules.polynomial(0.0, 0.9, begin=0, end=4)
    t = jc.prune.random(schedule, rule="Dense_0/kernel", seed=5)
    params = make_params()
    state, update, kept = t.init(params), jax.jit(t.update), []
    for _ in range(5):
        state = update(params, state)
        kept.append(np.asarray(state.masks["Dense_0/kernel"].unpack()))
    for before, after in itertools.pairwise(kept):
        assert np.all(before >= after)  # nothing regrows
    assert kept[-1].sum() == round(0.1 * kept[-1].size)
    other, _ = jc.compress(jc.prune.random(0.9, rule="Dense_0/kernel", seed=6), params)
    assert np.any((np.asarray(other["Dense_0"]["kernel"]) != 0) != kept[-1])


@pytest.mark.parametrize("name", ["saliency", "movement", "snip"])
def test_gradient_scores_need_gradients(name):
    t = FACTORIES[name](0.5, "layer")
    params = make_params()
    with pytest.raises(ValueError, match=f"'{'saliency' if name == 'snip' else name}' score needs gradients"):
        t.update(params, t.init(params))
