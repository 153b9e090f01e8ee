"""Every registered transform honours the core contract."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import make_params

import jaxcompress as jc

TRANSFORMS = {
    "identity": lambda: jc.identity(),
    "magnitude-one-shot": lambda: jc.prune.magnitude(0.5),
    "magnitude-global": lambda: jc.prune.magnitude(jc.schedules.constant(0.7, frequency=2), scope="global"),
    "magnitude-polynomial": lambda: jc.prune.magnitude(jc.schedules.polynomial(0.0, 0.8, begin=1, end=5)),
    "int8-per-channel": lambda: jc.quant.int8(),
    "int4-per-tensor": lambda: jc.quant.symmetric(4, per_channel=False),
    "chain": lambda: jc.chain(jc.prune.magnitude(0.5), jc.quant.int8()),
    "uniform-asymmetric-unsigned-group": lambda: jc.quant.uniform(
        4, symmetric=False, signed=False, granularity=jc.quant.per_group(8), rule="Dense.*kernel"
    ),
    "uniform-stochastic": lambda: jc.quant.uniform(3, rounding="stochastic"),
    "lsq": lambda: jc.quant.lsq(4),
    "log2": lambda: jc.quant.log2(4),
    "kmeans": lambda: jc.quant.kmeans(3, iterations=3, reassign_every=2),
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
}


def fake_grads(params):
    """Gradient-shaped pytree for transforms whose scores need gradients (others ignore it)."""
    return jax.tree.map(lambda x: x * 0.5 + 0.25, params)


@pytest.fixture(params=sorted(TRANSFORMS))
def transform(request):
    return TRANSFORMS[request.param]()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_dtypes_and_single_trace(transform, dtype):
    params = make_params(dtype=dtype)
    with jax.numpy_dtype_promotion("strict"):
        state = transform.init(params)

        traces = []

        @jax.jit
        def step(params, state):
            traces.append(1)
            state = transform.update(params, state, fake_grads(params), unused_extra_arg=1.0)
            return transform.apply(params, state), state

        for _ in range(6):
            out, new_state = step(params, state)
            chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
            chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
            state = new_state
        assert len(traces) == 1
        masks = transform.masks(state)
        flat = jc.paths.flatten(params)[0]
        for path, mask in masks.items():
            keep = mask.unpack()
            assert keep.dtype == jnp.bool_ and keep.shape == flat[path].shape


def test_apply_is_differentiable(transform):
    params = make_params()
    state = transform.update(params, transform.init(params), fake_grads(params))
    grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(transform.apply(p, state))))(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    chex.assert_tree_all_finite(grads)


def test_apply_rejects_params_of_another_structure(transform):
    params = make_params()
    state = transform.init(params)
    if transform.masks(state) or not isinstance(state, jc.core.IdentityState):
        with pytest.raises(ValueError, match="lack the leaves"):
            transform.apply({"other": {"kernel": jnp.ones((2, 2))}}, state)


def test_train_apply_matches_apply_on_params_from_the_wrapper(transform):
    # train_apply skips hard masks because with_compression keeps pruned weights
    # at exactly zero: on the params a training loop sees, both views are equal.
    params = make_params()
    tx = jc.optim.with_compression(optax.sgd(0.1), transform)
    opt_state = tx.init(params)

    def loss(p, cstate):
        return sum(jnp.sum(jnp.sin(3.0 * x)) for x in jax.tree.leaves(jc.optim.train_apply(transform, p, cstate)))

    @jax.jit
    def step(params, opt_state):
        cstate = jc.optim.compression_state(opt_state)
        _, grads, learned_grads = jc.optim.value_and_grad(loss)(params, cstate)
        updates, opt_state = tx.update(grads, opt_state, params, learned_grads=learned_grads)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(6):
        cstate = jc.optim.compression_state(opt_state)
        chex.assert_trees_all_equal(jc.optim.train_apply(transform, params, cstate), transform.apply(params, cstate))
        params, opt_state = step(params, opt_state)


def test_steady_updates_where_no_refresh_is_due_change_nothing(transform):
    # Where refreshes_at(step) is False, update(..., steady=True) (a program
    # without the refresh branch) must give the state the traced refresh gives.
    params = make_params()
    state = transform.init(params)
    if transform.masks(state) or isinstance(state, jc.prune.STEState):
        assert transform.refreshes_at is not None  # every mask schedule is known on the host
    if transform.refreshes_at is None:
        return
    traced_step = jax.jit(lambda p, s: transform.update(p, s, fake_grads(p)))
    steady_step = jax.jit(lambda p, s: transform.update(p, s, fake_grads(p), steady=True))
    traced, steady = state, state
    for count in range(8):
        params = jax.tree.map(lambda x, c=count: x * 0.9 + jnp.cos(x + c), params)  # scores move between steps
        traced = traced_step(params, traced)
        steady = steady_step(params, steady) if not transform.refreshes_at(count) else traced_step(params, steady)
        chex.assert_trees_all_equal(steady, traced)
