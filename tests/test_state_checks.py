"""A method's state must be its own, and built for params of these shapes: errors, never a broadcast."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress import IntegerWeights

RECIPES = {
    "magnitude": lambda: jc.prune.magnitude(0.5),
    "rigl": lambda: jc.prune.rigl(0.5, end=100),
    "ste": lambda: jc.prune.ste(jc.prune.magnitude(0.5)),
    "int8": jc.quant.int8,
    "lsq": lambda: jc.quant.lsq(4),
    "log2": lambda: jc.quant.log2(4),
    "kmeans": lambda: jc.quant.kmeans(3),
    "activations": lambda: jc.quant.activations(8),
    "half_precision": jc.quant.half_precision,
    "identity": jc.identity,
}


def _grads(params):
    return jax.tree.map(jnp.ones_like, params)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_state_from_another_method_is_a_type_error_naming_the_method(name):
    params = make_params()
    recipe = RECIPES[name]()
    foreign = (jc.quant.int8() if name != "int8" else jc.prune.magnitude(0.5)).init(params)
    with pytest.raises(TypeError, match=r"`state` of .* must be the \w+State its init returned, got"):
        recipe.update(params, foreign, _grads(params))
    with pytest.raises(TypeError, match=r"must be the \w+State its init returned, got"):
        recipe.apply(params, foreign)
    with pytest.raises(TypeError, match=r"got NoneType"):
        recipe.apply(params, None)


@pytest.mark.parametrize(
    "name, call",
    [
        ("magnitude", "update"),
        ("rigl", "update"),
        ("ste", "update"),
        ("magnitude", "apply"),
        ("lsq", "apply"),
        ("kmeans", "apply"),
        ("kmeans", "update"),
    ],
)
@pytest.mark.parametrize("built, given", [((8, 1), (8, 3)), ((8, 3), (8, 1))])
def test_a_state_built_for_other_shapes_is_refused_at_trace_time(name, call, built, given):
    recipe = RECIPES[name]()
    state = recipe.init({"w": jax.random.normal(jax.random.key(0), built)})
    params = {"w": jax.random.normal(jax.random.key(1), given)}
    run = jax.jit(recipe.update) if call == "update" else jax.jit(recipe.apply)
    args = (params, state, _grads(params)) if call == "update" else (params, state)
    given_shape = rf"\({given[0]}, {given[1]}\)"
    with pytest.raises(ValueError, match=rf"(leaf 'w' has shape|an array of shape) {given_shape}") as info:
        run(*args)
    assert "state was built for" in str(info.value) and "init" in str(info.value)


def test_codes_or_scales_that_do_not_fit_the_leaf_are_refused():
    """The check is in the protocol, so a user's own quantizer gets it too."""

    def quantizer(scale_shape, codes_shape):
        def quantize(params, state):
            del state
            codes = jnp.zeros(codes_shape)
            return {"w": IntegerWeights(codes, jnp.ones(scale_shape), None, 8)}

        return jc.Quantizer(lambda p: (), lambda p, s, g=None, **k: s, quantize)

    params = {"w": jnp.ones((8, 4))}
    for scale_shape, codes_shape in [((1, 5), (8, 4)), ((1,), (8, 4)), ((1, 4), (8, 5)), ((8, 2), (8, 4))]:
        q = quantizer(scale_shape, codes_shape)
        with pytest.raises(ValueError, match=r"leaf 'w' has shape \(8, 4\), but the quantizer's state gives codes"):
            q.apply(params, ())
        with pytest.raises(ValueError, match="the quantizer's state gives codes"):
            jc.integer_weights(q, params, ())
        with pytest.raises(ValueError, match="the quantizer's state gives codes"):
            jc.chain(jc.prune.magnitude(0.5), q).quantize(params, (jc.prune.magnitude(0.5).init(params), ()))
    fits = quantizer((1, 4), (8, 4))  # per channel: allowed
    assert fits.apply(params, ())["w"].shape == (8, 4)


def test_grads_of_another_dtype_are_refused():
    params = make_params()
    tx = jc.optim.with_compression(optax.sgd(0.1), jc.prune.magnitude(0.5))
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x, jnp.bfloat16), params)
    with pytest.raises(ValueError, match=r"`grads` leaf 'Conv_0/bias' has dtype bfloat16, but the param has dtype"):
        tx.update(grads, state, params)


def test_a_leaf_that_is_not_an_array_is_named():
    params = {**make_params(), "name": "my model"}
    with pytest.raises(TypeError, match=r"`params` leaf 'name' is a str: 'my model'; params must be a pytree"):
        jc.compress(jc.quant.int8(), params)


def test_python_number_and_integer_leaves_are_fine():
    params = {"w": jnp.arange(16.0).reshape(4, 4), "temperature": 0.1, "step": jnp.asarray(3, jnp.int32)}
    compressed, _ = jc.compress(jc.chain(jc.quant.int8(), jc.quant.half_precision()), params)
    assert float(compressed["temperature"]) == float(jnp.float16(0.1))  # a float scalar is rounded like a bias
    assert compressed["step"].dtype == jnp.int32 and int(compressed["step"]) == 3  # a counter is not


class _BranchesOnBatch(nn.Module):
    @nn.compact
    def __call__(self, x):
        if x.shape[0] > 1:  # decided per batch size: no single program for every batch
            x = x * 2.0
        return nn.Dense(4)(x)


def test_export_of_a_model_that_branches_on_the_batch_size_says_so():
    model, x = _BranchesOnBatch(), jnp.ones((2, 8))
    variables = model.init(jax.random.key(0), x)
    recipe = jc.quant.int8()
    with pytest.raises(ValueError, match=r"branches on \(or computes with\) the batch size.*x\.shape\[0\]"):
        jc.export.export(model, variables, recipe, recipe.init(variables["params"]), x, dispatch="int8")


def test_export_with_a_state_from_another_recipe_is_a_type_error():
    model, x = _BranchesOnBatch(), jnp.ones((1, 8))
    variables = model.init(jax.random.key(0), x)
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.int8())
    other = jc.chain(jc.quant.int8(), jc.prune.magnitude(0.5)).init(variables["params"])
    with pytest.raises(TypeError, match=r"`state` of jc.prune method must be the PrunerState"):
        jc.export.export(model, variables, recipe, other, x, dispatch="int8")
