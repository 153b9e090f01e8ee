"""Property tests of the public API (hypothesis): random param trees, dtypes and recipes, through
``init``/``update``/``apply``/``integer_weights``, and random small models through export and load.

Pass = a clear ``ValueError``/``TypeError`` (from a factory or ``init``), or a correct result: the
params' structure, shapes and dtypes, finite values, zeros outside every mask in the weights and in
the integer codes, and (quantizer last) integer codes that dequantize bitwise to what ``apply`` gives.
Never another exception, a NaN, or a silent broadcast. Seeded (``derandomize``); each example compiles,
so CI runs a few; set ``JAXCOMPRESS_FUZZ_EXAMPLES`` (scaled down here) for a longer run.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import soft_masks
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jaxcompress as jc

EXAMPLES = int(os.environ.get("JAXCOMPRESS_FUZZ_EXAMPLES", "120"))
RECIPE_EXAMPLES = max(EXAMPLES // 20, 1)
EXPORT_EXAMPLES = max(EXAMPLES // 60, 1)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@st.composite
def param_trees(draw):
    """1 to 3 layers: a kernel of rank 2 to 4 (small dims) and a bias, one float dtype, any scale, some zeros;
    sometimes a Python float and an int32 leaf beside them."""
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    tree = {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, 8]), min_size=2, max_size=4)))
        kernel = rng.normal(size=shape) * scale
        kernel[rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 0.0
        bias = rng.normal(size=shape[-1])
        tree[f"layer{i}"] = {"kernel": jnp.asarray(kernel, dtype), "bias": jnp.asarray(bias, dtype)}
    if draw(st.booleans()):  # leaves no default rule selects: a Python float and an integer counter
        tree["temperature"], tree["step"] = 0.5, jnp.asarray(3, jnp.int32)
    return tree


def _sparsity(draw):
    return draw(st.sampled_from([0.0, 0.3, 0.5, 0.9, jc.schedules.polynomial(0.0, 0.8, begin=0, end=2)]))


@st.composite
def pruners(draw):
    kind = draw(st.sampled_from(["magnitude", "random", "movement", "channel", "block", "n_m", "rigl", "set", "ste"]))
    scope = draw(st.sampled_from(["layer", "global"]))
    if kind == "magnitude":
        return jc.prune.magnitude(_sparsity(draw), scope=scope)
    if kind == "random":
        return jc.prune.random(_sparsity(draw), scope=scope, seed=draw(st.integers(0, 5)))
    if kind == "movement":
        return jc.prune.movement(_sparsity(draw))
    if kind == "channel":
        return jc.prune.channel(_sparsity(draw), norm=draw(st.sampled_from(["l1", "l2"])))
    if kind == "block":
        return jc.prune.block(_sparsity(draw), draw(st.sampled_from([(2, 2), (1, 4), (3, 1)])))
    if kind == "n_m":
        return jc.prune.n_m(*draw(st.sampled_from([(1, 2), (2, 4), (1, 4)])))
    if kind == "rigl":
        return jc.prune.rigl(draw(st.sampled_from([0.3, 0.7])), end=4, frequency=1)
    if kind == "set":
        return jc.prune.set_(draw(st.sampled_from([0.3, 0.7])), frequency=1)
    return jc.prune.ste(jc.prune.magnitude(_sparsity(draw)))


@st.composite
def quantizers(draw):
    kind = draw(st.sampled_from(["uniform", "lsq", "log2", "kmeans"]))
    bits = draw(st.integers(2, 8))
    granularity = draw(st.sampled_from(["tensor", "channel", jc.quant.per_group(2)]))
    if kind == "uniform":
        symmetric = draw(st.booleans())
        return jc.quant.uniform(
            bits,
            symmetric=symmetric,
            signed=draw(st.booleans()) if not symmetric else True,
            granularity=granularity,
            rounding=draw(st.sampled_from(["nearest", "stochastic"])),
        )
    if kind == "lsq":
        return jc.quant.lsq(bits, granularity=granularity)
    if kind == "log2":
        return jc.quant.log2(bits, granularity=granularity)
    return jc.quant.kmeans(min(bits, 4), iterations=2)


@st.composite
def recipes(draw):
    """A pruner, a quantizer, or both in either order; sometimes with float16 biases."""
    stages = [draw(pruners()) if draw(st.booleans()) else None, draw(quantizers()) if draw(st.booleans()) else None]
    stages = [s for s in stages if s is not None] or [draw(quantizers())]
    if draw(st.booleans()):
        stages.reverse()
    if draw(st.booleans()):
        stages.append(jc.quant.half_precision())
    return jc.chain(*stages), stages


def _clear(error: Exception) -> bool:
    """A clear error: a ValueError/TypeError raised by jaxcompress, with a message naming something."""
    return isinstance(error, (ValueError, TypeError)) and len(str(error)) > 20


@settings(max_examples=RECIPE_EXAMPLES, **SETTINGS)
@given(param_trees(), recipes(), st.integers(0, 2**31 - 1))
def test_random_trees_and_recipes_give_a_clear_error_or_a_correct_result(params, built, seed):
    recipe, stages = built
    try:
        state = recipe.init(params)
    except (ValueError, TypeError) as e:
        assert _clear(e), repr(e)
        event(f"refused at init: {type(e).__name__}")
        return  # refused clearly: a pass (the checks below are for the recipes init accepts)
    event("accepted: checked")

    def gradient(w):
        if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
            return jnp.zeros_like(w)
        return jax.random.normal(jax.random.key(seed), jnp.shape(w), jnp.result_type(w))

    grads = jax.tree.map(gradient, params)

    @jax.jit  # one program per example: two updates, apply, and the integer form
    def run(params, state, grads):
        state = recipe.update(params, recipe.update(params, state, grads), grads)
        integer = jc.integer_weights(recipe, params, state)
        return state, recipe.apply(params, state), {p: iw.dequantize() for p, iw in integer.items()}

    state, out, decoded = run(params, state, grads)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    flat, flat_out = jc.paths.flatten(params)[0], jc.paths.flatten(out)[0]
    for path, w in flat.items():
        assert flat_out[path].shape == jnp.shape(w) and flat_out[path].dtype == jnp.result_type(w), path
        assert bool(jnp.all(jnp.isfinite(flat_out[path].astype(jnp.float32)))), path
    masks = jc.masks_of(state)
    soft = soft_masks(state)
    for path, mask in {**masks, **soft}.items():
        pruned = ~np.asarray(mask.unpack())
        assert not np.any(np.asarray(flat_out[path], np.float32)[pruned]), path
        if path in decoded:
            assert not np.any(np.asarray(decoded[path])[pruned]), path
    if isinstance(stages[-1], jc.Quantizer) or (len(stages) > 1 and isinstance(stages[-2], jc.Quantizer)):
        for path, values in decoded.items():
            stored = np.asarray(values.astype(jnp.result_type(flat[path])), np.float32)
            np.testing.assert_array_equal(stored, np.asarray(flat_out[path], np.float32))


class _MLP(nn.Module):
    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.Dense(width)(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x


@pytest.mark.standard_promotion
@settings(max_examples=EXPORT_EXAMPLES, **SETTINGS)
@given(
    widths=st.lists(st.sampled_from([4, 8, 12]), min_size=1, max_size=3),
    sparsity=st.sampled_from([0.0, 0.5, 0.9]),
    bits=st.sampled_from([4, 8]),
    dispatch=st.sampled_from(["int8", "float"]),
    seed=st.integers(0, 1000),
)
def test_random_models_export_and_load_to_what_they_trained(widths, sparsity, bits, dispatch, seed, tmp_path_factory):
    model = _MLP(tuple(widths))
    x = jax.random.normal(jax.random.key(seed), (3, 6))
    variables = model.init(jax.random.key(seed + 1), x)
    recipe = jc.chain(jc.prune.magnitude(sparsity), jc.quant.symmetric(bits))
    state = recipe.update(variables["params"], recipe.init(variables["params"]))
    ex = jc.export.export(model, variables, recipe, state, x, dispatch=dispatch)
    path = tmp_path_factory.mktemp("fuzz") / "m.jcx"
    assert ex.save(path) == path.stat().st_size
    loaded = jc.export.load(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(ex(x)))
    expected = model.apply({"params": recipe.apply(variables["params"], state)}, x)
    # float dispatch computes the trained model; int8 also quantizes each layer's input (the report says so)
    tolerance = 1e-5 if dispatch == "float" else 0.1 * float(jnp.max(jnp.abs(expected))) + 1e-3
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(expected), atol=tolerance, rtol=1e-4)
