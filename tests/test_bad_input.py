"""Bad input gets a clear ValueError/TypeError naming the argument."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import jaxcompress as jc


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(ValueError, match=r"`sparsity` must lie in \[0, 1\)"):
        jc.prune.magnitude(sparsity)


@pytest.mark.parametrize("sparsity", ["0.5", None, True])
def test_sparsity_of_wrong_type(sparsity):
    with pytest.raises(TypeError, match="`sparsity` must be a number"):
        jc.prune.magnitude(sparsity)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 32])
def test_unsupported_bit_width(bits):
    with pytest.raises(ValueError, match=r"`bits` must be an integer in \[2, 8\], got " + str(bits)):
        jc.quant.symmetric(bits)


def test_bit_width_of_wrong_type():
    with pytest.raises(TypeError, match="`bits` must be an int"):
        jc.quant.symmetric(8.0)


@pytest.mark.parametrize(
    "transform", [jc.prune.magnitude(0.5, rule="Attention"), jc.quant.int8(rule="Attention")], ids=["prune", "quant"]
)
def test_rule_matching_nothing_lists_paths(transform):
    with pytest.raises(ValueError, match="selects no leaf") as info:
        transform.init(make_params())
    assert "Dense_1/kernel" in str(info.value) and "Conv_0/bias" in str(info.value)


@pytest.mark.parametrize("transform", [jc.prune.magnitude(0.5), jc.quant.int8()], ids=["prune", "quant"])
def test_non_float_params(transform):
    params = make_params()
    params["Dense_0"]["kernel"] = jnp.ones((4, 4), jnp.int32)
    with pytest.raises(TypeError, match=r"leaf 'Dense_0/kernel' has dtype int32; compression needs a floating"):
        transform.init(params)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("transform", [jc.prune.magnitude(0.5), jc.quant.int8()], ids=["prune", "quant"])
def test_non_finite_params_at_init(transform, bad):
    params = make_params()
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[3, 2].set(bad)
    with pytest.raises(ValueError, match=r"leaf 'Dense_1/kernel' holds 1 NaN/Inf value\(s\)"):
        transform.init(params)


def test_unknown_scope():
    with pytest.raises(ValueError, match="`scope` must be one of"):
        jc.prune.magnitude(0.5, scope="model")


def test_chain_rejects_non_transforms():
    with pytest.raises(TypeError, match="`chain` argument 1 must be a jaxcompress Transform"):
        jc.chain(jc.quant.int8(), lambda p: p)


def test_chain_rejects_foreign_state():
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.int8())
    with pytest.raises(TypeError, match="tuple of 2 stage states"):
        recipe.apply(make_params(), recipe.init(make_params())[0])
