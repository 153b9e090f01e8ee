"""Power-of-two and k-means codebook quantization, mixed precision: numpy references and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam

import jaxcompress as jc
from jaxcompress import quant


def numpy_log2(w: np.ndarray, bits: int, axes) -> np.ndarray:
    """Nearest of {0, alpha 2^-k, k < L} by brute force over the levels (ties go up)."""
    n_levels = 2 ** (bits - 1) - 1
    alpha = np.abs(w).max(axis=axes, keepdims=True)
    alpha = np.where(alpha > 0, alpha, 1.0)
    v = np.abs(w) / alpha
    levels = np.concatenate([[0.0], 2.0 ** -np.arange(n_levels)[::-1]])  # ascending
    d = np.abs(v[..., None] - levels)
    best = d.shape[-1] - 1 - np.argmin(d[..., ::-1], axis=-1)  # ties -> the larger level
    return np.sign(w) * levels[best] * alpha


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_log2_matches_numpy_reference(params, bits):
    w = np.asarray(params["Dense_0"]["kernel"]).copy()
    w[0, :] = 0.0
    if bits < 8:  # (at 8 bits the smallest level, 2^-126, is at the edge of float32's normal range)
        w[1, 0] = 0.5 * 2.0 ** -(2 ** (bits - 1) - 2) * np.abs(w[:, 0]).max()  # exactly halfway to zero: goes up
    iw = quant.log2_quantize(jnp.asarray(w), bits)
    q, codes = iw.dequantize(), iw.stored().codes
    np.testing.assert_allclose(q, numpy_log2(w, bits, axes=0), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.asarray(q)[0], 0.0)
    assert codes.dtype == jnp.uint8 and int(codes.max()) < 2**bits - 1


def test_log2_integer_dequantizes_to_apply_and_is_straight_through(params):
    recipe = jc.quant.log2(4)
    state = recipe.init(params)
    out = jc.paths.flatten(recipe.apply(params, state))[0]
    for path, iw in jc.integer_weights(recipe, params, state).items():
        assert iw.codebook.shape == (15,) and iw.zero_point is None
        np.testing.assert_array_equal(iw.dequantize(), out[path])
    g = jax.grad(lambda p: jnp.sum(recipe.apply(p, state)["Dense_1"]["kernel"] * 3.0))(params)
    np.testing.assert_array_equal(g["Dense_1"]["kernel"], 3.0)


def numpy_kmeans(x, k, iterations):
    c = np.linspace(x.min(), x.max(), k).astype(np.float32)
    for _ in range(iterations):
        a = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        for j in range(k):
            if np.any(a == j):
                c[j] = x[a == j].mean()
    return c, np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


def test_kmeans_linear_init_and_lloyd_match_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(0), (500,)) ** 3)
    c0, _ = quant.kmeans_1d(jnp.asarray(x), 8, iterations=0)
    np.testing.assert_allclose(c0, np.linspace(x.min(), x.max(), 8), rtol=1e-6)
    c, a = quant.kmeans_1d(jnp.asarray(x), 8, iterations=15)
    c_ref, a_ref = numpy_kmeans(x, 8, 15)
    np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-6)
    assert np.mean(np.asarray(a) == a_ref) > 0.995  # ties at midpoints may differ


def test_kmeans_codebook_gradient_is_the_sum_of_its_members_gradients(params):
    recipe = jc.quant.kmeans(2, rule="Dense_0/kernel")
    state = recipe.init(params)
    upstream = jax.random.normal(jax.random.key(5), params["Dense_0"]["kernel"].shape)
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["Dense_0"]["kernel"] * upstream)
    _, grads, (learned,) = jc.optim.value_and_grad(loss)(params, state)
    members = np.asarray(state.assignments["Dense_0/kernel"]).reshape(-1)
    expected = np.bincount(members, weights=np.asarray(upstream).reshape(-1), minlength=5)  # + the fixed zero
    np.testing.assert_allclose(learned.values["Dense_0/kernel"], expected, rtol=1e-5)
    assert float(learned.values["Dense_0/kernel"][4]) == 0.0
    np.testing.assert_array_equal(grads["Dense_0"]["kernel"], upstream)  # the weights train straight through
    codebook = state.learned.values["Dense_0/kernel"]
    assert len(np.unique(np.asarray(recipe.apply(params, state)["Dense_0"]["kernel"]))) == 4
    assert bool(jnp.all(jnp.diff(codebook[:4]) > 0)) and float(codebook[4]) == 0.0


@pytest.mark.parametrize(
    "schedule",
    [jc.schedules.one_shot(0.6, at=3), jc.schedules.polynomial(0.0, 0.6, begin=0, end=4)],
    ids=["one_shot_at_3", "gradual"],
)
def test_kmeans_zero_is_fixed_whenever_weights_are_pruned(params, schedule):
    # Clustered at init on unpruned weights; the pruner zeros weights later, on its own schedule.
    recipe = jc.chain(jc.prune.magnitude(schedule), jc.quant.kmeans(2))
    tx = jc.optim.with_compression(adam(1e-2), recipe)
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(1), (8, 72))

    def loss(p, c):
        q = recipe.apply(p, c)
        return jnp.sum(jnp.tanh(x @ q["Dense_0"]["kernel"]) @ q["Dense_1"]["kernel"]) + jnp.sum(q["Conv_0"]["kernel"])

    @jax.jit
    def step(params, opt_state):
        _, grads, learned_grads = jc.optim.value_and_grad(loss)(params, jc.optim.compression_state(opt_state))
        updates, opt_state = tx.update(grads, opt_state, params, learned_grads=learned_grads)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(6):
        params, opt_state = step(params, opt_state)
    cstate = jc.optim.compression_state(opt_state)
    out = jc.paths.flatten(recipe.apply(params, cstate))[0]
    masks = jc.masks_of(cstate)
    for path, iw in jc.integer_weights(recipe, params, cstate).items():
        keep = np.asarray(masks[path].unpack())
        assert 0 < keep.mean() < 1
        np.testing.assert_array_equal(out[path][~keep], 0.0)  # pruned weights decode to exactly zero
        codes = np.asarray(iw.codes)
        np.testing.assert_array_equal(codes[~keep], 4)  # the fixed zero's index, no centroid spent on it
        assert iw.codebook.shape == (5,) and float(iw.codebook[4]) == 0.0
        assert len(np.unique(codes[keep])) <= 4
        np.testing.assert_array_equal(iw.dequantize(), out[path])


def test_kmeans_of_pruned_weights_sums_codebook_gradients_over_kept_weights_only(params):
    pruned, _ = jc.compress(jc.prune.magnitude(0.8), params)
    recipe = jc.quant.kmeans(3, rule="Dense_0/kernel")
    state = recipe.init(pruned)
    path = "Dense_0/kernel"
    w = np.asarray(pruned["Dense_0"]["kernel"])
    np.testing.assert_array_equal(state.members[path], np.flatnonzero(w))  # the compact gradient path is taken
    upstream = jax.random.normal(jax.random.key(5), w.shape)
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["Dense_0"]["kernel"] * upstream)
    _, grads, (learned,) = jc.optim.value_and_grad(loss)(pruned, state)
    index = np.asarray(state.assignments[path]).reshape(-1)
    kept = w.reshape(-1) != 0
    expected = np.bincount(index[kept], weights=np.asarray(upstream).reshape(-1)[kept], minlength=9)
    np.testing.assert_allclose(learned.values[path], expected, rtol=1e-5, atol=1e-6)
    expected_grads = np.where(w != 0, np.asarray(upstream), 0.0)  # pruned weights get none: they stay zero
    np.testing.assert_array_equal(grads["Dense_0"]["kernel"], expected_grads)
    np.testing.assert_array_equal(index[~kept], 8)
    applied = np.asarray(recipe.apply(pruned, state)["Dense_0"]["kernel"])
    np.testing.assert_array_equal(applied[~kept.reshape(w.shape)], 0)


def test_kmeans_reassignment_follows_the_weights():
    params = {"w": jnp.array([[-1.0, -0.9], [0.9, 1.0]])}
    recipe = jc.quant.kmeans(1 + 1, reassign_every=1, keep_zeros=False)
    state = recipe.init(params)
    moved = {"w": jnp.array([[1.0, -0.9], [0.9, -1.0]])}
    state = recipe.update(moved, state)
    np.testing.assert_array_equal(recipe.apply(moved, state)["w"] < 0, moved["w"] < 0)
    fixed = jc.quant.kmeans(2, keep_zeros=False)
    fstate = fixed.update(moved, fixed.init(params))
    np.testing.assert_array_equal(fixed.apply(moved, fstate)["w"] < 0, params["w"] < 0)


def test_mixed_precision_first_rule_wins(params):
    recipe = jc.quant.mixed_precision([("Dense_0", 4), ("Dense", 2)], default=8)
    state = recipe.init(params)
    bits = {p: iw.bits for p, iw in jc.integer_weights(recipe, params, state).items()}
    assert bits == {"Dense_0/kernel": 4, "Dense_1/kernel": 2, "Conv_0/kernel": 8}
    out = recipe.apply(params, state)
    assert len(np.unique(np.asarray(out["Dense_1"]["kernel"][:, 0]))) <= 3
    with pytest.raises(ValueError, match="selects no leaf"):
        jc.quant.mixed_precision({"Dense": 4, "Dense_1": 2}).init(params)  # Dense_1 already taken
    lsq_mixed = jc.quant.mixed_precision({"Conv": 8, "Dense": 4}, method=jc.quant.lsq, granularity="tensor")
    assert len(jc.learned_params(lsq_mixed.init(params))) == 2


def test_kmeans_codebook_dtype_rounds_the_shared_values_straight_through(params):
    recipe = jc.quant.kmeans(3, codebook_dtype="float16", rule="Dense_0/kernel")
    state = recipe.init(params)
    (iw,) = jc.integer_weights(recipe, params, state).values()
    codebook = np.asarray(iw.codebook)
    np.testing.assert_array_equal(codebook.astype(np.float16).astype(np.float32), codebook)
    learned = np.asarray(state.learned.values["Dense_0/kernel"])
    np.testing.assert_array_equal(codebook, learned.astype(np.float16).astype(np.float32))
    assert not np.array_equal(learned, codebook)  # k-means centroids are not float16 values themselves
    upstream = jax.random.normal(jax.random.key(5), params["Dense_0"]["kernel"].shape)
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["Dense_0"]["kernel"] * upstream)
    _, _, (g,) = jc.optim.value_and_grad(loss)(params, state)
    index = np.asarray(state.assignments["Dense_0/kernel"]).reshape(-1)
    expected = np.bincount(index, weights=np.asarray(upstream).reshape(-1), minlength=9)
    np.testing.assert_allclose(g.values["Dense_0/kernel"], expected, rtol=1e-5, atol=1e-4)  # float32 sums
    with pytest.raises(ValueError, match="codebook_dtype"):
        jc.quant.kmeans(3, codebook_dtype="float8")


def test_half_precision_rounds_vectors_straight_through_and_refuses_overflow(params):
    recipe = jc.quant.half_precision()
    out, state = jc.compress(recipe, params)
    for path, leaf in jc.paths.flatten(params)[0].items():
        got = np.asarray(jc.paths.flatten(out)[0][path])
        want = np.asarray(leaf).astype(np.float16).astype(np.float32) if np.ndim(leaf) <= 1 else np.asarray(leaf)
        np.testing.assert_array_equal(got, want)
    grads = jax.grad(lambda p: sum(jnp.sum(v * 3.0) for v in jax.tree.leaves(recipe.apply(p, state))))(params)
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, 3.0)
    big = {"b": jnp.array([1e5, 1.0])}
    with pytest.raises(ValueError, match="beyond float16's range"):
        jc.quant.half_precision().init(big)
    assert float(jc.compress(jc.quant.half_precision("bfloat16"), big)[0]["b"][0]) == 99840.0
    with pytest.raises(ValueError, match="dtype"):
        jc.quant.half_precision("float8")


def test_kmeans_without_keep_zeros_trains_zero_weights_like_any_other(params):
    pruned, _ = jc.compress(jc.prune.magnitude(0.5), params)
    recipe = jc.quant.kmeans(2, keep_zeros=False, rule="Dense_0/kernel")
    state = recipe.init(pruned)
    upstream = jax.random.normal(jax.random.key(3), pruned["Dense_0"]["kernel"].shape)
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["Dense_0"]["kernel"] * upstream)
    _, grads, (learned,) = jc.optim.value_and_grad(loss)(pruned, state)
    index = np.asarray(state.assignments["Dense_0/kernel"]).reshape(-1)
    expected = np.bincount(index, weights=np.asarray(upstream).reshape(-1), minlength=4)  # zeros included
    np.testing.assert_allclose(learned.values["Dense_0/kernel"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(grads["Dense_0"]["kernel"], upstream)


@pytest.mark.parametrize(
    "recipe",
    [
        jc.quant.uniform(8, symmetric=False, granularity="tensor"),
        jc.quant.uniform(4, symmetric=False, signed=False),
        jc.quant.int8(),
        jc.quant.lsq(8),
        jc.quant.lsq(4, granularity="tensor"),
        jc.quant.log2(4),
        jc.quant.kmeans(2, keep_zeros=False),
        jc.chain(jc.quant.lsq(4, granularity="tensor"), jc.prune.magnitude(0.5)),
    ],
    ids=["asym-tensor", "asym-unsigned-channel", "int8", "lsq", "lsq-tensor", "log2", "kmeans", "lsq-prune"],
)
def test_weights_near_the_float32_maximum_quantize_to_finite_values_on_their_grid(recipe):
    # Ranges and sums computed naively overflow (hi - lo, 2 * mean) or invert to denormals (1 / 3e38).
    w = {"w": jnp.array([[3.0e38, -3.2e38, 1.0e38], [2.0e38, -1.0e37, 5.0e37]], jnp.float32)}
    out, state = jc.compress(recipe, w)
    got = np.asarray(out["w"])
    assert np.isfinite(got).all()
    assert np.abs(got).max() > 1e38  # not collapsed to zeros
    np.testing.assert_array_equal(np.asarray(jc.integer_weights(recipe, w, state)["w"].dequantize()), got)
