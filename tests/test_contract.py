"""Every registered method honours the core contract (optax's alias_test.py, as a registry)."""

import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import jaxcompress as jc
from jaxcompress._src.core import IdentityState

CORE_README = pathlib.Path(__file__).resolve().parent.parent / "jaxcompress" / "README.md"


def readme_methods() -> dict:
    """The worked examples of jaxcompress/README.md ("Add a new method"), executed as written."""
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", CORE_README.read_text(), flags=re.S):
        exec(compile(block, str(CORE_README), "exec"), namespace)
    return {"readme-std-threshold": namespace["std_threshold"], "readme-ternary": namespace["ternary"]}


README_METHODS = readme_methods()

METHODS = {
    "identity": lambda: jc.identity(),
    "magnitude-one-shot": lambda: jc.prune.magnitude(0.5),
    "magnitude-global": lambda: jc.prune.magnitude(jc.schedules.constant(0.7, frequency=2), scope="global"),
    "magnitude-polynomial": lambda: jc.prune.magnitude(jc.schedules.polynomial(0.0, 0.8, begin=1, end=5)),
    "int8-per-channel": lambda: jc.quant.int8(),
    "int4-per-tensor": lambda: jc.quant.symmetric(4, per_channel=False),
    "chain": lambda: jc.chain(jc.prune.magnitude(0.5), jc.quant.int8()),
    "chain-quantize-then-prune": lambda: jc.chain(jc.quant.int8(), jc.prune.magnitude(0.5)),
    "uniform-asymmetric-unsigned-group": lambda: jc.quant.uniform(
        4, symmetric=False, signed=False, granularity=jc.quant.per_group(8), rule="Dense.*kernel"
    ),
    "uniform-stochastic": lambda: jc.quant.uniform(3, rounding="stochastic"),
    "lsq": lambda: jc.quant.lsq(4),
    "log2": lambda: jc.quant.log2(4),
    "kmeans": lambda: jc.quant.kmeans(3, iterations=3, reassign_every=2),
    "kmeans-float16-codebook-recluster": lambda: jc.quant.kmeans(2, recluster_at=1, codebook_dtype="float16"),
    "half-precision": lambda: jc.chain(jc.quant.int8(), jc.quant.half_precision()),
    "mixed-precision": lambda: jc.quant.mixed_precision({"Conv": 8, "Dense_0": 4}, default=2),
    "activations-static": lambda: jc.chain(jc.quant.int8(), jc.quant.activations(8, mode="static")),
    "activations-lsq": lambda: jc.quant.activations(4, mode="lsq", rule="Dense"),
    "saliency-erk": lambda: jc.prune.saliency(jc.schedules.constant(0.6, frequency=2), distribution="erk"),
    "movement": lambda: jc.prune.movement(jc.schedules.polynomial(0.0, 0.7, begin=1, end=4)),
    "n_m-2:4": lambda: jc.prune.n_m(2, 4, rule=r"Dense_\d/kernel"),
    "rigl": lambda: jc.prune.rigl(0.7, end=10, frequency=2),
    "set": lambda: jc.prune.set_(0.6, frequency=2),
    "random-global": lambda: jc.prune.random(0.5, scope="global"),
    "snip": lambda: jc.prune.snip(0.6),
    "channel-l1": lambda: jc.prune.channel(jc.schedules.constant(0.5, frequency=3), norm="l1"),
    "block-2x2": lambda: jc.prune.block(0.5, (2, 2)),
    "ste-n_m": lambda: jc.prune.ste(jc.prune.n_m(2, 4, rule=r"Dense_\d/kernel")),
    "ste-magnitude-schedule": lambda: jc.prune.ste(jc.prune.magnitude(jc.schedules.constant(0.5, frequency=3))),
    "admm": lambda: jc.joint.admm(0.5, 3, every=2, rho_growth=1.5),
    "bayesian-bits": lambda: jc.joint.bayesian_bits(),
    "clip-q": lambda: jc.joint.clip_q((0.5, 3)),
    "readme-std-threshold": lambda: README_METHODS["readme-std-threshold"](0.8, at=2),
    "readme-ternary": lambda: README_METHODS["readme-ternary"](),
    "readme-chain": lambda: jc.chain(README_METHODS["readme-std-threshold"](1.0), README_METHODS["readme-ternary"]()),
}

STEPS = 6


def fake_grads(params):
    """Gradient-shaped pytree for methods whose scores need gradients (others ignore it)."""
    return jax.tree.map(lambda x: x * 0.5 + 0.25, params)


@jax.jit
def moving(params, count):
    """Params that move between steps, so scores and ranges change."""
    return jax.tree.map(lambda x: (x * 0.9 + jnp.cos(x + count)).astype(x.dtype), params)


@pytest.fixture(params=sorted(METHODS), scope="module")
def method(request):
    return METHODS[request.param]()


def _sum_of_leaves(tree):
    return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree))


def make_step(method, traces):
    """One program: update, apply, and the gradient of apply."""

    @jax.jit
    def step(params, state):
        traces.append(1)
        state = method.update(params, state, fake_grads(params), unused_extra_arg=1.0)
        out = method.apply(params, state)
        grads = jax.grad(lambda p: _sum_of_leaves(method.apply(p, state)))(params)
        return out, state, grads

    return step


# bfloat16 for one method of each code path (one more compilation each).
BFLOAT16 = {
    "magnitude-polynomial", "chain-quantize-then-prune", "uniform-asymmetric-unsigned-group", "lsq", "log2",
    "kmeans", "activations-static", "movement", "n_m-2:4", "rigl", "ste-n_m", "channel-l1", "readme-ternary",
}  # fmt: skip


CASES = [(name, jnp.float32) for name in sorted(METHODS)] + [(name, jnp.bfloat16) for name in sorted(BFLOAT16)]


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{jnp.dtype(d).name}" for n, d in CASES])
def test_one_trace_shapes_dtypes_gradients_integer_form_and_resume(name, dtype):
    method = METHODS[name]()
    params = make_params(dtype=dtype)
    traces = []
    step = make_step(method, traces)
    states = [method.init(params)]
    for count in range(2 * STEPS):
        out, new_state, grads = step(moving(params, count), states[-1])
        chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, states[-1])
        chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
        chex.assert_tree_all_finite(grads)
        states.append(new_state)
    assert len(traces) == 1
    state, final = states[STEPS], states[-1]
    flat = jc.paths.flatten(params)[0]
    for path, mask in jc.masks_of(state).items():
        keep = mask.unpack()
        assert keep.dtype == jnp.bool_ and keep.shape == flat[path].shape
    # A quantizer's stored integer form dequantizes, bitwise, to what apply computes.
    last = moving(params, STEPS - 1)
    integer = jc.integer_weights(method, last, state)
    quantizes = isinstance(method, jc.Quantizer) or (
        isinstance(method, jc.Chain) and any(isinstance(s, jc.Quantizer) for s in method.stages)
    )
    assert bool(integer) == quantizes
    applied = jc.paths.flatten(method.apply(last, state))[0]
    for path, iw in integer.items():
        assert iw.codes.dtype == (jnp.int8 if iw.signed else jnp.uint8), path
        lo, hi = iw.code_range
        assert int(iw.codes.min()) >= lo and int(iw.codes.max()) <= hi, path
        np.testing.assert_array_equal(iw.dequantize().astype(applied[path].dtype), applied[path], err_msg=path)
    # A run restarted from a saved state (its counter inside) continues exactly:
    # no refresh decision lives outside the state.
    resumed = jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, state))  # as a checkpoint holds it
    for count in range(STEPS, 2 * STEPS):
        _, resumed, _ = step(moving(params, count), resumed)
    chex.assert_trees_all_equal(resumed, final)


def test_apply_rejects_params_of_another_structure(method):
    params = make_params()
    state = method.init(params)
    if isinstance(state, IdentityState):  # nothing was selected: any params pass through
        other = {"other": jnp.ones((2, 2))}
        chex.assert_trees_all_equal(method.apply(other, state), other)
        return
    with pytest.raises(ValueError, match="lack the leaves"):
        method.apply({"other": {"kernel": jnp.ones((2, 2))}}, state)


def test_the_readme_examples_compute_their_papers_formulas():
    params = make_params()
    w = np.asarray(params["Dense_0"]["kernel"])
    pruner = README_METHODS["readme-std-threshold"](0.8, at=1)
    state = pruner.update(params, pruner.update(params, pruner.init(params)))
    pruned = np.asarray(pruner.apply(params, state)["Dense_0"]["kernel"])
    np.testing.assert_array_equal(pruned, np.where(np.abs(w) >= 0.8 * w.std(), w, 0.0))
    quantizer = README_METHODS["readme-ternary"]()
    q = np.asarray(quantizer.apply(params, quantizer.init(params))["Dense_0"]["kernel"])
    big = np.abs(w) > 0.7 * np.abs(w).mean()
    np.testing.assert_allclose(q, np.where(big, np.sign(w) * np.abs(w)[big].mean(), 0.0), rtol=1e-6)
