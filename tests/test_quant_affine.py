import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress import quant
from jaxcompress._src.quant import granularity as gran_lib


def numpy_symmetric(w: np.ndarray, bits: int, channel_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Reference fake quantization in float64: returns (dequantized, scale)."""
    qmax = 2 ** (bits - 1) - 1
    if channel_axis is None:
        axes = tuple(range(w.ndim))
    else:
        axes = tuple(a for a in range(w.ndim) if a != channel_axis % w.ndim)
    amax = np.abs(w.astype(np.float64)).max(axis=axes, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return np.clip(np.round(w / scale), -qmax, qmax) * scale, scale


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_matches_numpy_reference(params, bits, per_channel):
    q, _ = jc.compress(jc.quant.symmetric(bits, per_channel=per_channel), params)
    for layer in params:
        w = np.asarray(params[layer]["kernel"])
        expected, _ = numpy_symmetric(w, bits, -1 if per_channel else None)
        np.testing.assert_allclose(q[layer]["kernel"], expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(q[layer]["bias"], params[layer]["bias"])


def test_every_weight_lies_on_its_int8_grid(params):
    q, _ = jc.compress(jc.quant.int8(), params)
    for layer in params:
        w = np.asarray(params[layer]["kernel"])
        scale = np.abs(w).max(axis=tuple(range(w.ndim - 1)), keepdims=True) / 127.0
        ratio = np.asarray(q[layer]["kernel"], np.float64) / scale
        np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-4)
        assert np.abs(np.round(ratio)).max() <= 127
        assert len(np.unique(np.round(ratio))) > 100  # the grid is used, not collapsed


def test_codes_times_scale_equal_fake_quant(params):
    w = params["Dense_0"]["kernel"]
    iw = quant.quantize(w, 8)
    assert iw.codes.dtype == jnp.int8 and iw.zero_point is None
    np.testing.assert_array_equal(iw.codes.astype(jnp.float32) * iw.scale, quant.fake_quant(w, 8))


def test_ste_gradient_is_identity_inside_the_range(params):
    w = params["Dense_0"]["kernel"]
    v = jax.random.normal(jax.random.key(7), w.shape)
    grad = jax.grad(lambda w: jnp.sum(quant.fake_quant(w, 8) * v))(w)
    np.testing.assert_allclose(grad, v, rtol=1e-6)  # (g / s) * s: identity up to one rounding
    assert float(jnp.max(jnp.abs(quant.round_ste(w) - jnp.round(w)))) == 0.0


def test_clipped_ste_passes_inside_and_on_the_bounds_and_blocks_outside():
    x = jnp.array([-3.0, -2.2, -0.4, 0.2, 1.7, 2.6, 5.0])
    lo, hi = jnp.float32(-2.0), jnp.float32(2.0)
    grad = jax.grad(lambda x: jnp.sum(quant.clip_ste(quant.round_ste(x), lo, hi)))(x)
    # round: -3, -2, -0, 0, 2, 3, 5 -> inside [-2, 2] (bounds included) for the middle five
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])


def test_zero_stays_zero_and_zero_channels_stay_finite():
    w = jnp.zeros((6, 4)).at[:, 1].set(jnp.linspace(-1.0, 1.0, 6)).at[2, 3].set(0.5)
    q = quant.fake_quant(w, 4)
    assert bool(jnp.all(jnp.isfinite(q)))
    np.testing.assert_array_equal(q[:, 0], 0.0)  # an all-zero channel
    np.testing.assert_array_equal(q[w == 0], 0.0)
    assert bool(jnp.all(jnp.isfinite(quant.quantize(w, 4).scale)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_preserved(params, dtype):
    p = jax.tree.map(lambda x: x.astype(dtype), params)
    q, _ = jc.compress(jc.quant.int8(), p)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape


def test_quantize_after_prune_keeps_zeros(params):
    recipe = jc.chain(jc.prune.magnitude(0.8), jc.quant.symmetric(4))
    q, state = jc.compress(recipe, params)
    masks = jc.masks_of(state)
    for layer in params:
        w = q[layer]["kernel"]
        keep = masks[f"{layer}/kernel"].unpack()
        np.testing.assert_array_equal(w[~keep], 0.0)
        assert int(jnp.sum(w == 0)) >= round(0.8 * w.size)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_integer_weights_dequantize_to_what_apply_computes(params, bits):
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.symmetric(bits))
    state = recipe.update(params, recipe.init(params))
    compressed = jc.paths.flatten(recipe.apply(params, state))[0]
    integer = jc.integer_weights(recipe, params, state)
    assert sorted(integer) == ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]
    for path, iw in integer.items():
        assert iw.codes.dtype == jnp.int8 and iw.bits == bits
        assert int(jnp.max(jnp.abs(iw.codes))) <= 2 ** (bits - 1) - 1
        np.testing.assert_array_equal(iw.dequantize(), compressed[path])


# --- the general affine quantizer: against an independent numpy reference -------------------------------------


def numpy_affine(x, bits, *, symmetric, signed, channel_axis=None, group_axis=None, group_size=None):
    """Float32 numpy reference: (dequantized, codes, scale per element, zero point per element).

    Entries sharing a scale are found by an explicit id per element, independent of the reshapes the
    library uses.
    """
    x = np.asarray(x, np.float32)
    idx = np.indices(x.shape)
    cid = idx[channel_axis % x.ndim] if channel_axis is not None else np.zeros(x.shape, int)
    gid = idx[group_axis % x.ndim] // group_size if group_axis is not None else np.zeros(x.shape, int)
    ids = cid * 100_000 + gid
    narrow = symmetric and signed
    qmin, qmax = (-(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    scale = np.zeros(x.shape, np.float32)
    zp = np.zeros(x.shape, np.float32)
    for i in np.unique(ids):
        sel = ids == i
        lo, hi = np.float32(x[sel].min()), np.float32(x[sel].max())
        if symmetric:
            amax = max(abs(lo), abs(hi)) if signed else max(hi, np.float32(0))
            denom = np.float32(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
            s, z = (np.float32(amax * (np.float32(1) / denom)) if amax > 0 else np.float32(1)), np.float32(0)
        else:
            lo, hi = min(lo, np.float32(0)), max(hi, np.float32(0))
            span = np.float32(hi - lo)
            s = np.float32(span * (np.float32(1) / np.float32(qmax - qmin))) if span > 0 else np.float32(1)
            z = np.float32(np.clip(np.round(np.float32(qmin) - np.float32(lo / s)), qmin, qmax))
        scale[sel], zp[sel] = s, z
    codes = np.clip(np.round(x * (np.float32(1) / scale)) + zp, qmin, qmax).astype(np.float32)
    return ((codes - zp) * scale).astype(np.float32), codes, scale, zp


MODES = {
    "sym-signed": dict(symmetric=True, signed=True),
    "sym-unsigned": dict(symmetric=True, signed=False),
    "asym-signed": dict(symmetric=False, signed=True),
    "asym-unsigned": dict(symmetric=False, signed=False),
}
GRANULARITIES = {
    "tensor": (quant.per_tensor(), {}),
    "channel": (quant.per_channel(-1), dict(channel_axis=-1)),
    "channel0": (quant.per_channel(0), dict(channel_axis=0)),
    "group": (quant.per_group(4, axis=-2), dict(channel_axis=-1, group_axis=-2, group_size=4)),
}
X = jax.random.normal(jax.random.key(3), (3, 3, 8, 6)) * jnp.linspace(0.1, 2.0, 6).reshape(1, 1, 1, 6) + 0.3


@pytest.mark.parametrize("gran", sorted(GRANULARITIES))
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_affine_matches_numpy_reference(bits, mode, gran):
    granularity, ref_kwargs = GRANULARITIES[gran]
    expected, codes, scale, zp = numpy_affine(X, bits, **MODES[mode], **ref_kwargs)
    iw = quant.quantize(X, bits, granularity=granularity, **MODES[mode])
    np.testing.assert_array_equal(np.asarray(iw.codes, np.float32), codes)
    np.testing.assert_array_equal(np.asarray(gran_lib.expand(iw.scale, granularity, X.shape)) * np.ones(X.shape), scale)
    if iw.zero_point is not None:
        np.testing.assert_array_equal(
            np.asarray(gran_lib.expand(iw.zero_point, granularity, X.shape)) * np.ones(X.shape), zp
        )
    else:
        assert not np.any(zp)
    np.testing.assert_array_equal(quant.fake_quant(X, bits, granularity=granularity, **MODES[mode]), expected)
    assert iw.codes.dtype == (jnp.int8 if MODES[mode]["signed"] else jnp.uint8)
    assert iw.scale.shape == granularity.stat_shape(X.shape)


@pytest.mark.parametrize("signed", [True, False])
def test_zero_is_exactly_representable_with_asymmetric(signed):
    x = jnp.array([[0.0, 0.37, 1.9, 2.3], [0.0, -0.71, 0.5, 0.2], [0.0, 5.0, 0.1, -3.3]])  # ranges cross or avoid 0
    for bits in (2, 3, 8):
        for granularity in ("tensor", "channel", quant.per_channel(0)):
            iw = quant.quantize(x, bits, symmetric=False, signed=signed, granularity=granularity)
            assert float(jnp.abs(iw.dequantize()[:, 0]).max()) == 0.0
            assert jnp.all(iw.zero_point == jnp.round(iw.zero_point))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_quantizing_a_quantized_tensor_changes_nothing(mode, gran):
    granularity, _ = GRANULARITIES[gran]
    for bits in (2, 4, 8):
        once = quant.fake_quant(X, bits, granularity=granularity, **MODES[mode])
        twice = quant.fake_quant(once, bits, granularity=granularity, **MODES[mode])
        np.testing.assert_allclose(twice, once, rtol=1e-6, atol=0)  # same codes, scale within an ulp
        c1 = quant.quantize(X, bits, granularity=granularity, **MODES[mode])
        c2 = quant.quantize(once, bits, granularity=granularity, **MODES[mode])
        np.testing.assert_array_equal(c1.codes, c2.codes)


UNIFORM_VARIANTS = {
    "sym-channel": lambda: jc.quant.uniform(4),
    "asym-unsigned-tensor": lambda: jc.quant.uniform(3, symmetric=False, signed=False, granularity="tensor"),
    "asym-group": lambda: jc.quant.uniform(4, symmetric=False, granularity=quant.per_group(8), rule="Dense.*kernel"),
    "stochastic": lambda: jc.quant.uniform(4, rounding="stochastic", seed=3),
}


@pytest.mark.parametrize(
    "name, dtype", [(name, jnp.float32) for name in sorted(UNIFORM_VARIANTS)] + [("asym-group", jnp.bfloat16)]
)
def test_uniform_integer_dequantizes_to_apply(params, name, dtype):
    params = jax.tree.map(lambda x: x.at[::2].set(0).astype(dtype), params)  # with zeros, as after pruning
    recipe = UNIFORM_VARIANTS[name]()
    state = recipe.update(params, recipe.update(params, recipe.init(params)))  # the stochastic key advances
    compressed = jc.paths.flatten(recipe.apply(params, state))[0]
    integer = jc.integer_weights(recipe, params, state)
    assert integer
    for path, iw in integer.items():
        assert iw.scale.dtype == jnp.float32 and iw.codes.dtype in (jnp.int8, jnp.uint8)
        assert compressed[path].dtype == dtype
        np.testing.assert_array_equal(iw.dequantize().astype(dtype), compressed[path])


def test_stochastic_rounding_is_unbiased_and_uses_neighbours():
    x = jnp.linspace(-1.0, 1.0, 33).reshape(3, 11)
    keys = jax.random.split(jax.random.key(0), 4000)
    samples = jax.vmap(lambda k: quant.fake_quant(x, 3, granularity="tensor", key=k))(keys)
    scale = 1.0 / 3.0
    lower = np.floor(np.asarray(x) / scale) * scale
    ok = np.isclose(samples, lower, atol=1e-6) | np.isclose(samples, lower + scale, atol=1e-6)
    assert ok.all()  # only the two neighbouring grid points
    np.testing.assert_allclose(samples.mean(0), x, atol=4 * scale / np.sqrt(4000))  # E[q] = x (4 sigma)


def test_stochastic_rounding_state_advances_and_apply_is_deterministic(params):
    recipe = jc.quant.uniform(2, rounding="stochastic")
    s0 = recipe.init(params)
    a = recipe.apply(params, s0)["Dense_0"]["kernel"]
    np.testing.assert_array_equal(a, recipe.apply(params, s0)["Dense_0"]["kernel"])
    b = recipe.apply(params, recipe.update(params, s0))["Dense_0"]["kernel"]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("value", [0.0, 2.5, -1.5])
def test_zero_range_tensors_get_a_finite_positive_scale(mode, value):
    x = jnp.full((4, 3), value)
    for granularity in ("tensor", "channel", quant.per_group(2)):
        iw = quant.quantize(x, 4, granularity=granularity, **MODES[mode])
        assert bool(jnp.all(jnp.isfinite(iw.scale)) and jnp.all(iw.scale > 0))
        out = quant.fake_quant(x, 4, granularity=granularity, **MODES[mode])
        assert bool(jnp.all(jnp.isfinite(out)))
        if value == 0.0 or MODES[mode]["symmetric"] is False or MODES[mode]["signed"] or value > 0:
            np.testing.assert_allclose(out, x, rtol=1e-6)  # a constant is exactly on its grid's end


def test_group_size_must_divide_the_axis(params):
    with pytest.raises(
        ValueError, match=r"group size 5 does not divide axis -2 of leaf 'Dense_0/kernel' \(shape \(72, 32\)"
    ):
        jc.quant.uniform(4, granularity=quant.per_group(5), rule="Dense_0/kernel").init(params)
    with pytest.raises(ValueError, match="group size 3 does not divide"):
        quant.fake_quant(jnp.ones((4, 2)), 4, granularity=quant.per_group(3))


def test_granularity_arguments_are_checked():
    with pytest.raises(TypeError, match=r"`granularity` must be quant\.per_tensor\(\)"):
        jc.quant.uniform(4, granularity="row")
    with pytest.raises(ValueError, match="`size` must be >= 1"):
        quant.per_group(0)
    with pytest.raises(ValueError, match="channel_axis=5 is out of range"):
        quant.fake_quant(jnp.ones((2, 2)), 4, granularity=quant.per_channel(5))
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        jc.quant.uniform(4, rounding="up")
