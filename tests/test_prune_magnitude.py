import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress import masks as packed
from jaxcompress import paths
from jaxcompress._src.prune import threshold


def numpy_keep_largest(scores: np.ndarray, n_prune: int) -> np.ndarray:
    """Reference: prune the n smallest, ties by index (stable argsort)."""
    order = np.argsort(scores.ravel(), kind="stable")
    keep = np.ones(scores.size, bool)
    keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97])
def test_exact_sparsity_per_layer(params, sparsity):
    pruned, state = jc.compress(jc.prune.magnitude(sparsity), params)
    for path, w in paths.flatten(pruned)[0].items():
        if path.endswith("kernel"):
            assert int(jnp.sum(w == 0)) == round(sparsity * w.size), path
        else:
            assert not jnp.any(w != paths.flatten(params)[0][path]), "biases untouched"
    assert float(state.sparsity) == pytest.approx(sparsity)


def test_keeps_the_largest_magnitudes(params):
    pruned, _ = jc.compress(jc.prune.magnitude(0.6), params)
    for layer in params:
        w = np.asarray(params[layer]["kernel"])
        expected = numpy_keep_largest(np.abs(w), round(0.6 * w.size))
        np.testing.assert_array_equal(np.asarray(pruned[layer]["kernel"]) != 0, expected)


def test_global_threshold_exact_total(params):
    pruned, _ = jc.compress(jc.prune.magnitude(0.8, scope="global"), params)
    kernels = [np.asarray(params[k]["kernel"]) for k in params]
    total = sum(w.size for w in kernels)
    zeros = sum(int(jnp.sum(pruned[k]["kernel"] == 0)) for k in params)
    assert zeros == round(0.8 * total)
    all_scores = np.concatenate([np.abs(w).ravel() for w in kernels])
    cut = np.sort(all_scores)[round(0.8 * total)]
    for k in params:
        kept = np.asarray(pruned[k]["kernel"]) != 0
        assert np.all(np.abs(np.asarray(params[k]["kernel"]))[kept] >= cut)


@pytest.mark.parametrize("n_prune", [0, 1, 7, 8, 15, 16])
def test_threshold_search_breaks_ties_by_index(n_prune):
    scores = jnp.array([3.0, 1.0, 1.0, 2.0, 1.0, 0.0, 2.0, 1.0, 5.0, -1.0, 1.0, 1.0, 4.0, 2.0, 1.0, 1.0])
    (keep,) = threshold.keep_largest([scores], n_prune)
    np.testing.assert_array_equal(keep, numpy_keep_largest(np.asarray(scores), n_prune))


def test_threshold_search_across_arrays_matches_reference():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 5, size=s).astype(np.float32) for s in [(7, 3), (11,), (2, 2, 2)]]
    n = 20
    keeps = threshold.keep_largest([jnp.asarray(a) for a in arrays], n)
    expected = numpy_keep_largest(np.concatenate([a.ravel() for a in arrays]), n)
    np.testing.assert_array_equal(np.concatenate([np.asarray(k).ravel() for k in keeps]), expected)


@pytest.mark.parametrize("shape", [(5, 5, 3, 17), (16, 3), (300, 10), (7, 2), (9,), ()])
def test_packed_masks_round_trip_and_cost_one_bit_per_weight(shape):
    mask = jax.random.bernoulli(jax.random.key(0), 0.3, shape)
    p = packed.pack(mask)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else (shape[0] if shape else 1)
    cols = shape[-1] if len(shape) > 1 else 1
    assert p.bits.dtype == jnp.uint8
    assert p.bits.shape == (-(-rows // 8), cols)  # e.g. ceil(75 / 8) rows of a conv's 17 output channels
    # Bit i of byte r is row 8r + i, as numpy's little-endian packbits along the rows.
    reference = np.packbits(np.asarray(mask).reshape(rows, cols), axis=0, bitorder="little")
    np.testing.assert_array_equal(p.bits, reference)
    np.testing.assert_array_equal(p.unpack(), mask)


def test_bfloat16_params(params):
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    pruned, _ = jc.compress(jc.prune.magnitude(0.75), bf16)
    for layer in bf16:
        w = pruned[layer]["kernel"]
        assert w.dtype == jnp.bfloat16
        assert int(jnp.sum(w == 0)) == round(0.75 * w.size)


def test_gradual_schedule_reaches_targets_on_its_steps(params):
    schedule = jc.schedules.polynomial(0.0, 0.9, begin=2, end=12, frequency=5)
    t = jc.prune.magnitude(schedule, rule="Dense_0/kernel")
    state = t.init(params)
    update = jax.jit(t.update)
    seen = {}
    for step in range(15):
        state = update(params, state)
        seen[step] = int(jnp.sum(~jc.masks_of(state)["Dense_0/kernel"].unpack()))
    n = params["Dense_0"]["kernel"].size
    expected_at = {s: round(float(schedule(s)) * n) for s in (2, 7, 12)}
    assert seen[1] == 0
    assert seen[2] == expected_at[2] == 0
    assert seen[6] == 0 and seen[7] == expected_at[7]
    assert seen[11] == expected_at[7] and seen[12] == seen[14] == round(0.9 * n)
    assert int(state.count) == 15


def test_pruned_weights_get_zero_gradient(params):
    t = jc.prune.magnitude(0.5)
    state = t.init(params)
    state = t.update(params, state)
    grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(t.apply(p, state))))(params)
    for layer in params:
        keep = jc.masks_of(state)[f"{layer}/kernel"].unpack()
        np.testing.assert_array_equal(grads[layer]["kernel"], keep.astype(jnp.float32))


def test_make_params_is_deterministic():
    np.testing.assert_array_equal(make_params(3)["Dense_1"]["kernel"], make_params(3)["Dense_1"]["kernel"])


def test_a_state_built_for_other_shapes_is_refused_not_broadcast():
    recipe = jc.prune.magnitude(0.5)
    state = recipe.init({"w": jnp.ones((8, 1))})
    with pytest.raises(ValueError, match=r"mask of shape \(8, 1\) was applied to an array of shape \(8, 3\)"):
        recipe.apply({"w": jnp.ones((8, 3))}, state)
