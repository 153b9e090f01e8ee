"""Bayesian Bits: nested grids and gates against numpy, hard-concrete probabilities, BOPs, training that turns
gates off under the penalty, and the finalized recipe computing (and exporting) the deterministic gates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ConvDenseNet, run_update, standard_promotion

import jaxcompress as jc
from jaxcompress._src.joint import bayesian_bits as bb

Q = {2: 1, 4: 5, 8: 85, 16: 21845}


def _np_grid(w, a, bits):
    c = np.clip(w, -a, a)
    return c if bits == 32 else a / Q[bits] * np.round(c * Q[bits] / a)


@pytest.mark.parametrize("on", [0, 1, 2, 3, 4])
def test_gated_residuals_with_binary_gates_are_the_chosen_nested_grid(on):
    rng = np.random.default_rng(on)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    a = np.float32(1.5)
    bits_gates = np.array([1.0] * on + [0.0] * (4 - on), np.float32)
    channels = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    got = bb.gated(jnp.asarray(w), jnp.asarray(a), jnp.asarray(channels), jnp.asarray(bits_gates))
    expected = channels * _np_grid(w, a, bb.BITS[on])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
    # every grid holds the coarser ones (the steps divide by 2^b + 1)
    for b in (2, 4, 8):
        coarse = _np_grid(w, a, b)
        finer = {2: 4, 4: 8, 8: 16}[b]
        np.testing.assert_allclose(_np_grid(coarse, a, finer), coarse, rtol=1e-5, atol=1e-6)


def test_hard_concrete_samples_match_their_probabilities_and_gradients_reach_the_log_odds():
    log_odds = jnp.array([-3.0, -1.0, 0.0, 1.0, 3.0])
    samples = jax.vmap(lambda k: bb._sample(log_odds, k))(jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(np.mean(np.asarray(samples) > 0, 0), bb.gate_probabilities(log_odds), atol=0.015)
    expected = 1 / (1 + np.exp(-(np.asarray(log_odds) - (2 / 3) * math.log(0.1 / 1.1))))
    np.testing.assert_allclose(np.asarray(jc.joint.gate_probabilities(log_odds)), expected, rtol=1e-6)
    assert np.all(np.asarray(samples) >= 0) and np.all(np.asarray(samples) <= 1)
    assert np.mean(np.asarray(samples) == 0) > 0.05 and np.mean(np.asarray(samples) == 1) > 0.05  # exact 0s, 1s
    g = jax.grad(lambda t: jnp.sum(bb._sample(t, jax.random.key(1))))(jnp.zeros(64))
    assert np.any(np.asarray(g) > 0)


def test_count_macs_and_relative_bops_against_numpy():
    model, x = ConvDenseNet(hidden=16), jnp.ones((2, 6, 6, 1))
    variables = model.init(jax.random.key(0), x)
    macs = jc.joint.count_macs(model, variables, x)
    assert macs == {"Conv_0/kernel": 36 * 9 * 8, "Dense_0/kernel": 288 * 16, "Dense_1/kernel": 160}
    method = jc.joint.bayesian_bits()
    state = method.init(variables["params"])
    values = dict(state.learned.values)
    values["Conv_0/kernel"] = {"prune": jnp.array([5.0] * 6 + [-5.0] * 2), "bits": jnp.array([5.0, -5.0, 5.0, 5.0])}
    values["Dense_0/kernel"] = {"prune": jnp.full((16,), 5.0), "bits": jnp.array([5.0, 5.0, -5.0, -5.0])}
    values["Dense_1/kernel"] = {"prune": jnp.full((10,), -5.0), "bits": jnp.full((4,), 5.0)}
    state = state._replace(learned=jc.Learned(values))
    total = sum(macs.values()) * 32 * 32
    # conv: 3/4 of its channels at 4 bits (the 8-bit gate is off, so 16 and 32 do not count); dense_0: 8 bits
    expected = (macs["Conv_0/kernel"] * 0.75 * 4 * 8 + macs["Dense_0/kernel"] * 8 * 8) / total
    got = jc.joint.relative_bops(state, macs, expected=False)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    prob = lambda t: 1 / (1 + np.exp(-(np.asarray(t) - (2 / 3) * math.log(0.1 / 1.1))))
    soft = 0.0
    for path, gates in values.items():
        q = prob(gates["bits"])
        bits = 2 + q[0] * (2 + q[1] * (4 + q[2] * (8 + q[3] * 16)))
        soft += macs[path] * np.mean(prob(gates["prune"])) * bits * 8
    np.testing.assert_allclose(float(jc.joint.relative_bops(state, macs)), soft / total, rtol=1e-5)


def test_the_penalty_turns_gates_off_and_finalize_exports_what_the_gates_chose():
    model = ConvDenseNet(hidden=16)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 6, 6, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    y = model.apply(variables, x)  # the model fits its own outputs: only the penalty asks for change
    macs = jc.joint.count_macs(model, variables, x)
    method = jc.joint.bayesian_bits(seed=1)
    tx = jc.optim.with_compression(
        standard_promotion(optax.adam(1e-3)), method, learned_optimizer=standard_promotion(optax.adam(0.1))
    )

    def loss_fn(params, cstate):
        out = model.apply({"params": method.apply(params, cstate)}, x)
        return jnp.mean((out - y) ** 2) + 0.5 * jc.joint.relative_bops(cstate, macs)

    grad_fn = jc.optim.value_and_grad(loss_fn)

    @jax.jit
    def step(p, s):
        loss, grads, learned_grads = grad_fn(p, jc.optim.compression_state(s))
        u, s = tx.update(grads, s, p, learned_grads=learned_grads)
        return optax.apply_updates(p, u), s, loss

    params, s = variables["params"], tx.init(variables["params"])
    start = float(jc.joint.relative_bops(jc.optim.compression_state(s), macs))
    for _ in range(150):
        params, s, _ = step(params, s)
    cstate = jc.optim.compression_state(s)
    end = float(jc.joint.relative_bops(cstate, macs))
    assert end < 0.5 * start
    final_params, recipe, choices = jc.joint.finalize(params, cstate)
    assert any(c["bits"] < 32 for c in choices.values())
    deterministic = float(jc.joint.relative_bops(cstate, macs, expected=False))
    from_choices = sum(
        macs[p] * c["channels_kept"] / params_channels * c["bits"] * 8
        for p, c, params_channels in ((p, c, jc.paths.flatten(params)[0][p].shape[-1]) for p, c in choices.items())
    ) / (sum(macs.values()) * 1024)
    np.testing.assert_allclose(deterministic, from_choices, rtol=1e-6)
    rstate = recipe.init(final_params)
    compressed = recipe.apply(final_params, rstate)
    flat_params, flat_out = jc.paths.flatten(params)[0], jc.paths.flatten(compressed)[0]
    for p, c in choices.items():
        gates = cstate.learned.values[p]
        on = (np.asarray(gates["bits"]) > 0).astype(np.float32)
        on = np.cumprod(on)  # a gate counts only while all below it are on
        expected = bb.gated(flat_params[p], cstate.alpha[p], (gates["prune"] > 0).astype(jnp.float32), jnp.asarray(on))
        np.testing.assert_allclose(np.asarray(flat_out[p]), np.asarray(expected), rtol=1e-5, atol=1e-6)
        assert (
            int(np.sum(np.any(np.asarray(flat_out[p]) != 0, axis=tuple(range(flat_out[p].ndim - 1)))))
            <= c["channels_kept"]
        )
    ex = jc.export.export(model, {"params": final_params}, recipe, rstate, x, dispatch="float")
    np.testing.assert_allclose(
        np.asarray(ex(x)), np.asarray(model.apply({"params": compressed}, x)), rtol=1e-5, atol=1e-5
    )


def test_update_traces_once_and_advances_the_key():
    params = {"w": jnp.ones((4, 4))}
    method = jc.joint.bayesian_bits()
    s0 = method.init(params)
    s, traces = run_update(method.update, params, s0, 5)
    assert traces == 1 and int(s.count) == 5
    assert not np.array_equal(np.asarray(s.key), np.asarray(s0.key))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="`init_log_odds` must be a number"):
        jc.joint.bayesian_bits(init_log_odds="on")
    with pytest.raises(ValueError, match="`init_log_odds` must be finite"):
        jc.joint.bayesian_bits(init_log_odds=float("inf"))
    params = {"w": jnp.ones((3, 4))}
    state = jc.joint.bayesian_bits().init(params)
    with pytest.raises(
        ValueError, match=r"`macs` must give the multiply-accumulates of exactly the gated leaves \['w'\]"
    ):
        jc.joint.relative_bops(state, {"v": 3})
    with pytest.raises(ValueError, match=r"exactly one jc\.joint\.bayesian_bits state, found 0"):
        jc.joint.finalize(params, jc.prune.magnitude(0.5).init(params))
    with pytest.raises(ValueError, match="has 5 output channels"):
        jc.joint.bayesian_bits().apply({"w": jnp.ones((3, 5))}, state)
