"""BatchNorm folding: the folded model equals the unfolded one in inference mode."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
        x = nn.relu(bn()(nn.Conv(4, (3, 3))(x)))
        x = nn.relu(bn()(nn.Conv(6, (3, 3), use_bias=False)(x)))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(bn()(nn.Dense(8)(x)))
        return nn.Dense(3)(x)


MODEL = BNNet()
X = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))


def trained_variables():
    variables = MODEL.init(jax.random.key(1), X)
    keys = iter(jax.random.split(jax.random.key(2), 32))
    rand = lambda x, lo, hi: jax.random.uniform(next(keys), x.shape, minval=lo, maxval=hi)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            rand(x, 0.5, 1.5)
            if "scale" in str(path)
            else (rand(x, -0.5, 0.5) if "BatchNorm" in str(path) or "bias" in str(path) else x)
        ),
        variables["params"],
    )
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: rand(x, 0.2, 3.0) if "var" in str(path) else rand(x, -1.0, 1.0), variables["batch_stats"]
    )
    return params, stats


def test_folded_model_equals_the_unfolded_one():
    params, stats = trained_variables()
    pairs = jc.quant.infer_batchnorm_pairs(MODEL, {"params": params, "batch_stats": stats}, X)
    assert pairs == {"Conv_0": "BatchNorm_0", "Conv_1": "BatchNorm_1", "Dense_0": "BatchNorm_2"}
    folded, folded_stats = jc.quant.fold_batchnorm(params, stats, pairs)
    expected = MODEL.apply({"params": params, "batch_stats": stats}, X)
    got = MODEL.apply({"params": folded, "batch_stats": folded_stats}, X)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Each folded BatchNorm is the identity, except Conv_1's shift (no bias there), kept as beta.
    for bn in ("BatchNorm_0", "BatchNorm_2"):
        np.testing.assert_array_equal(folded[bn]["bias"], 0.0)
        np.testing.assert_array_equal(folded[bn]["scale"], 1.0)
        np.testing.assert_array_equal(folded_stats[bn]["var"] + jnp.float32(1e-5), 1.0)
    w, b = params["Conv_0"]["kernel"], params["Conv_0"]["bias"]
    g, beta = params["BatchNorm_0"]["scale"], params["BatchNorm_0"]["bias"]
    mu, var = stats["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["var"]
    factor = np.asarray(g) / np.sqrt(np.asarray(var) + 1e-5)
    np.testing.assert_allclose(folded["Conv_0"]["kernel"], np.asarray(w) * factor, rtol=1e-6)
    np.testing.assert_allclose(folded["Conv_0"]["bias"], (np.asarray(b) - mu) * factor + beta, rtol=1e-5, atol=1e-6)
    # Quantizing the folded kernels is what export will compute with.
    q = jc.quant.int8(rule="kernel")
    state = q.init(folded)
    out = MODEL.apply({"params": q.apply(folded, state), "batch_stats": folded_stats}, X)
    np.testing.assert_allclose(out, expected, atol=0.05 * float(jnp.abs(expected).max()))


def test_fold_errors_are_clear():
    params, stats = trained_variables()
    with pytest.raises(ValueError, match="'Dense_0' has 8 output channels but BatchNorm 'BatchNorm_0'"):
        jc.quant.fold_batchnorm(params, stats, {"Dense_0": "BatchNorm_0"})
    with pytest.raises(ValueError, match="`params` has no module 'Conv_9'"):
        jc.quant.fold_batchnorm(params, stats, {"Conv_9": "BatchNorm_0"})
    with pytest.raises(TypeError, match="`pairs` must be a non-empty mapping"):
        jc.quant.fold_batchnorm(params, stats, {})
    plain = nn.Dense(2)
    v = plain.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="No BatchNorm directly follows"):
        jc.quant.infer_batchnorm_pairs(plain, v, jnp.ones((1, 3)))
