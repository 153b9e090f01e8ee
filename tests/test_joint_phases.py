"""Phases: a quantizer that starts mid-run (identity before, calibrated on the weights at its start, one
compiled step for both phases), frozen masks carried into a new run, and the four phase recipes training
with pruned weights exactly zero throughout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion

import jaxcompress as jc

SPARSITY = 0.5


def _problem(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    params = {"a": {"kernel": jax.random.normal(k[0], (8, 8))}, "b": {"kernel": jax.random.normal(k[1], (8, 4))}}
    x = jax.random.normal(k[2], (32, 8))
    target = jnp.tanh(x @ params["a"]["kernel"]) @ params["b"]["kernel"] * 0.5
    return params, x, target


def _train(recipe, params, x, target, steps, check=None):
    tx = jc.optim.with_compression(standard_promotion(optax.adam(1e-2)), recipe)
    traces = []

    def loss_fn(p, c):
        q = recipe.apply(p, c)
        return jnp.mean((jnp.tanh(x @ q["a"]["kernel"]) @ q["b"]["kernel"] - target) ** 2)

    grad_fn = jc.optim.value_and_grad(loss_fn)

    @jax.jit
    def step(p, s):
        traces.append(1)
        _, g, lg = grad_fn(p, jc.optim.compression_state(s))
        u, s = tx.update(g, s, p, learned_grads=lg)
        return optax.apply_updates(p, u), s

    s = tx.init(params)
    for i in range(steps):
        params, s = step(params, s)
        if check is not None:
            check(i + 1, params, jc.optim.compression_state(s))
    assert len(traces) == 1
    return params, jc.optim.compression_state(s)


def _zeros_kept(recipe):
    def check(step, params, cstate):
        compressed = recipe.apply(params, cstate)
        integer = jc.integer_weights(recipe, params, cstate)
        for p, mask in jc.masks_of(cstate).items():
            pruned = ~np.asarray(mask.unpack())
            for tree in (params, compressed):
                assert not np.any(np.asarray(jc.paths.flatten(tree)[0][p])[pruned]), (step, p)
            if p in integer:
                assert not np.any(np.asarray(integer[p].dequantize())[pruned]), (step, p)

    return check


def test_delayed_is_the_identity_then_the_quantizer_calibrated_at_its_start():
    params, x, target = _problem()
    q = jc.quant.lsq(4)
    recipe = jc.joint.delayed(q, start=5)
    seen = {}

    def check(step, p, c):
        seen[step] = (p, c)

    _train(recipe, params, x, target, 8, check)
    for step in (1, 4):
        p, c = seen[step]
        assert int(c.count) == step
        out = recipe.apply(p, c)
        for path in ("a/kernel", "b/kernel"):
            np.testing.assert_array_equal(
                np.asarray(jc.paths.flatten(out)[0][path]), np.asarray(jc.paths.flatten(p)[0][path])
            )
    # at update 5 the LSQ steps are initialized from the weights as they were then (the params before step 5)
    before_start, _ = seen[4]
    _, c5 = seen[5]
    fresh = q.init(before_start)
    for a, b in zip(jc.learned_params(fresh), jc.learned_params(c5.inner_state), strict=True):
        for path in a.values:
            np.testing.assert_allclose(np.asarray(a.values[path]), np.asarray(b.values[path]), rtol=1e-6)
    p8, c8 = seen[8]
    np.testing.assert_array_equal(
        np.asarray(recipe.apply(p8, c8)["a"]["kernel"]), np.asarray(q.apply(p8, c8.inner_state)["a"]["kernel"])
    )
    assert not np.array_equal(np.asarray(recipe.apply(p8, c8)["a"]["kernel"]), np.asarray(p8["a"]["kernel"]))


def test_export_before_the_start_is_refused_with_the_reason():
    import flax.linen as nn

    model = nn.Dense(3)
    x = jnp.ones((2, 4))
    params = model.init(jax.random.key(0), x)["params"]
    recipe = jc.joint.delayed(jc.quant.int8(), start=3)
    with pytest.raises(ValueError, match=r"has not started yet \(jc\.joint\.delayed before its `start`\)"):
        jc.export.export(model, {"params": params}, recipe, recipe.init(params), x, dispatch="float")


def test_frozen_masks_hold_a_finished_runs_masks_in_a_new_run():
    params, x, target = _problem(1)
    pruner = jc.prune.magnitude(jc.schedules.polynomial(0.0, SPARSITY, begin=0, end=6, frequency=2))
    params, cstate = _train(pruner, params, x, target, 10)
    masks = jc.masks_of(cstate)
    recipe = jc.chain(jc.joint.frozen_masks(masks), jc.quant.uniform(4, symmetric=False))
    _, c2 = _train(recipe, params, x, target, 12, _zeros_kept(recipe))
    for p, mask in jc.masks_of(c2).items():
        np.testing.assert_array_equal(np.asarray(mask.unpack()), np.asarray(masks[p].unpack()))
    boolean = {p: m.unpack() for p, m in masks.items()}
    t = jc.joint.frozen_masks(boolean)
    np.testing.assert_array_equal(
        np.asarray(t.apply(params, t.init(params))["a"]["kernel"]),
        np.asarray(pruner.apply(params, cstate)["a"]["kernel"]),
    )


PHASES = {
    "simultaneous": lambda: jc.chain(
        jc.prune.magnitude(jc.schedules.polynomial(0.0, SPARSITY, begin=0, end=8, frequency=2)), jc.quant.symmetric(4)
    ),
    "prune-then-qat": lambda: jc.chain(
        jc.prune.magnitude(jc.schedules.polynomial(0.0, SPARSITY, begin=0, end=8, frequency=2)),
        jc.joint.delayed(jc.quant.uniform(4, symmetric=False, granularity="tensor"), start=8),
    ),
    "qat-mid-run": lambda: jc.chain(
        jc.prune.magnitude(jc.schedules.polynomial(0.0, SPARSITY, begin=0, end=12, frequency=2)),
        jc.joint.delayed(jc.quant.lsq(4), start=5),
    ),
}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_each_phase_recipe_keeps_pruned_weights_zero_and_ends_sparse_and_quantized(phase):
    params, x, target = _problem(2)
    recipe = PHASES[phase]()
    trained, cstate = _train(recipe, params, x, target, 16, _zeros_kept(recipe))
    for p, mask in jc.masks_of(cstate).items():
        assert np.mean(~np.asarray(mask.unpack())) == pytest.approx(SPARSITY, abs=0.02), p
    compressed = recipe.apply(trained, cstate)
    integer = jc.integer_weights(recipe, trained, cstate)
    for p, iw in integer.items():  # what is trained is what exports: codes decode to the weights applied
        np.testing.assert_array_equal(np.asarray(iw.dequantize()), np.asarray(jc.paths.flatten(compressed)[0][p]))


def test_bad_arguments():
    with pytest.raises(TypeError, match="`quantizer` must be a jaxcompress weight quantizer"):
        jc.joint.delayed(jc.prune.magnitude(0.5), start=3)
    with pytest.raises(ValueError, match="`start` must be >= 0"):
        jc.joint.delayed(jc.quant.int8(), start=-1)
    with pytest.raises(TypeError, match="`masks` must be a non-empty mapping"):
        jc.joint.frozen_masks({})
    with pytest.raises(TypeError, match=r"`masks\['w'\]` must be a boolean array"):
        jc.joint.frozen_masks({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"has shape \(3, 2\), but the jc.joint.frozen_masks state"):
        jc.joint.frozen_masks({"w": jnp.ones((2, 2), bool)}).init({"w": jnp.ones((3, 2))})
