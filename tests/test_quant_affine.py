import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress import quant


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
    codes, scale = quant.symmetric_codes(w, 8)
    assert codes.dtype == jnp.int8
    np.testing.assert_array_equal(codes.astype(jnp.float32) * scale, quant.symmetric_fake_quant(w, 8))


def test_ste_gradient_is_identity_inside_the_range(params):
    w = params["Dense_0"]["kernel"]
    v = jax.random.normal(jax.random.key(7), w.shape)
    grad = jax.grad(lambda w: jnp.sum(quant.symmetric_fake_quant(w, 8) * v))(w)
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
    q = quant.symmetric_fake_quant(w, 4)
    assert bool(jnp.all(jnp.isfinite(q)))
    np.testing.assert_array_equal(q[:, 0], 0.0)  # an all-zero channel
    np.testing.assert_array_equal(q[w == 0], 0.0)
    assert bool(jnp.all(jnp.isfinite(quant.symmetric_scale(w, 4))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_preserved(params, dtype):
    p = jax.tree.map(lambda x: x.astype(dtype), params)
    q, _ = jc.compress(jc.quant.int8(), p)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape


def test_quantize_after_prune_keeps_zeros(params):
    recipe = jc.chain(jc.prune.magnitude(0.8), jc.quant.symmetric(4))
    q, state = jc.compress(recipe, params)
    masks = recipe.masks(state)
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
    integer = recipe.integer(params, state)
    assert sorted(integer) == ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"]
    for path, iw in integer.items():
        assert iw.codes.dtype == jnp.int8 and iw.bits == bits
        assert int(jnp.max(jnp.abs(iw.codes))) <= 2 ** (bits - 1) - 1
        np.testing.assert_array_equal(iw.dequantize(), compressed[path])
