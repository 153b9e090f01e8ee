"""Quantization's bad input: clear ValueError/TypeError naming the argument."""

import jax.numpy as jnp
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress import quant

FACTORIES = {
    "uniform": quant.uniform,
    "lsq": quant.lsq,
    "log2": quant.log2,
    "kmeans": quant.kmeans,
    "activations": quant.activations,
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_outside_2_to_8(name, bits):
    with pytest.raises(ValueError, match=rf"`bits` must be an integer in \[2, 8\], got {bits}"):
        FACTORIES[name](bits)


def test_bits_of_wrong_type_and_mixed_precision_bits():
    with pytest.raises(TypeError, match="`bits` must be an int, got float"):
        quant.lsq(4.0)
    with pytest.raises(ValueError, match=r"`bits\['Dense'\]` must be an integer in \[2, 8\], got 12"):
        quant.mixed_precision({"Dense": 12})
    with pytest.raises(ValueError, match=r"`bits` must be an integer in \[2, 8\], got 1"):
        quant.fake_quant(jnp.ones((2, 2)), 1)


@pytest.mark.parametrize("name", ["uniform", "lsq", "log2"])
def test_group_size_not_dividing_the_axis(name):
    with pytest.raises(ValueError, match=r"group size 7 does not divide axis -2 of leaf 'Dense_1/kernel'"):
        FACTORIES[name](4, granularity=quant.per_group(7), rule="Dense_1/kernel").init(make_params())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_rule_naming_nothing_lists_what_exists(name):
    with pytest.raises(ValueError, match="selects no") as info:
        FACTORIES[name](4, rule="Attention").init(make_params())
    assert "Dense_1" in str(info.value)


@pytest.mark.parametrize("value", [0.0, 3.0])
@pytest.mark.parametrize("name", ["uniform", "lsq", "log2", "kmeans"])
def test_zero_range_weights_give_finite_results(name, value):
    params = {"Dense_0": {"kernel": jnp.full((8, 4), value)}}
    recipe = FACTORIES[name](4)
    q, state = jc.compress(recipe, params)
    assert bool(jnp.all(jnp.isfinite(q["Dense_0"]["kernel"])))
    iw = jc.integer_weights(recipe, params, state)["Dense_0/kernel"]
    assert bool(jnp.all(jnp.isfinite(iw.scale)) and jnp.all(iw.scale > 0))
    assert bool(jnp.all(jnp.isfinite(iw.dequantize())))


def test_activation_arguments():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        quant.activations(8, mode="histogram")
    with pytest.raises(ValueError, match="pass `signed=False`"):
        quant.activations(8, mode="pact")
    with pytest.raises(ValueError, match="has no zero point: pass `symmetric=True`"):
        quant.activations(8, mode="lsq", symmetric=False)
    with pytest.raises(TypeError, match="`signed` must be a bool"):
        quant.activations(8, signed=1)
    with pytest.raises(ValueError, match="hold no leaf named 'kernel'"):
        quant.activations(8).init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="holds no activation quantization state"), quant.quantize_activations(()):
        pass


def test_calibration_arguments():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    state = quant.activations(8, mode="static").init(params)
    run = lambda p, x: x
    with pytest.raises(ValueError, match="`method` must be one of"):
        quant.calibrate(run, params, state, [jnp.ones(3)], method="entropy")
    with pytest.raises(ValueError, match=r"`percentile` must be a number in \(0, 100\]"):
        quant.calibrate(run, params, state, [jnp.ones(3)], method="percentile", percentile=0)
    with pytest.raises(ValueError, match="yielded no batch"):
        quant.calibrate(run, params, state, [])
    with pytest.raises(ValueError, match=r"never saw modules \['Dense_0'\] run"):
        quant.calibrate(run, params, state, [jnp.ones(3)])
