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
    with pytest.raises(TypeError, match="`chain` argument 1 must be a jaxcompress method"):
        jc.chain(jc.quant.int8(), lambda p: p)


def test_chain_rejects_foreign_state():
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.int8())
    with pytest.raises(TypeError, match="tuple of 2 stage states"):
        recipe.apply(make_params(), recipe.init(make_params())[0])


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: jc.prune.n_m(4, 4), ValueError, r"N:M sparsity needs `n` < `m`.*got n=4, m=4"),
        (lambda: jc.prune.n_m(5, 4), ValueError, r"`n` < `m`"),
        (lambda: jc.prune.n_m(0, 4), ValueError, r"`n` must be >= 1"),
        (lambda: jc.prune.n_m(2, 4, 0.9), ValueError, r"must end at 1 - n/m = 0.5, got 0.9"),
        (lambda: jc.prune.n_m(2.0, 4), TypeError, r"`n` must be an int"),
        (lambda: jc.prune.block(0.5, 4), TypeError, r"`shape` must be a non-empty sequence"),
        (lambda: jc.prune.block(0.5, (0, 2)), ValueError, r"`shape` must be >= 1"),
        (lambda: jc.prune.channel(0.5, norm="l3"), ValueError, r"`norm` must be 'l1' or 'l2'"),
        (lambda: jc.prune.magnitude(0.5, distribution="gaussian"), ValueError, r"`distribution` must be one of"),
        (lambda: jc.prune.magnitude(0.5, scope="global", distribution="erk"), ValueError, r"scope='layer'"),
        (lambda: jc.prune.n_m(2, 4).init({"w": jnp.ones((6, 3))}), ValueError, r"length 6 is not a multiple of 4"),
        (lambda: jc.prune.pruner(0.5, score="hessian"), ValueError, r"`score` must be one of"),
        (lambda: jc.prune.channel(0.5, score="movement"), ValueError, r"accumulates per-weight state"),
        (lambda: jc.prune.random(1.0), ValueError, r"`sparsity` must lie in \[0, 1\)"),
        (lambda: jc.prune.saliency(-0.2), ValueError, r"`sparsity` must lie in \[0, 1\)"),
        (lambda: jc.prune.rigl(1.2, end=10), ValueError, r"`sparsity` must lie in \[0, 1\)"),
        (lambda: jc.prune.set_(0.5, drop_fraction=0.0), ValueError, r"`drop_fraction` must be > 0"),
        (lambda: jc.prune.set_(0.5, frequency=0), ValueError, r"`frequency` must be >= 1"),
        (lambda: jc.prune.rigl(0.5, end=10, init_mask="zeros"), ValueError, r"`init_mask` must be one of"),
        (lambda: jc.prune.snip(jc.schedules.constant(0.5)), TypeError, r"SNIP prunes once"),
        (lambda: jc.prune.ste(lambda p: p), TypeError, r"`inner` must be a jaxcompress method"),
        (lambda: jc.prune.proximal_l1("0.1"), ValueError, r"`strength` must be a number >= 0"),
    ],
)
def test_bad_pruning_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_block_shape_must_divide_the_leaf():
    with pytest.raises(ValueError, match=r"`block`=\(4, 4\) does not divide leaf 'Dense_1/kernel' of shape \(32, 10\)"):
        jc.prune.block(0.5, (4, 4), rule=r"Dense_\d/kernel").init(make_params())
