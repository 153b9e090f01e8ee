"""Straight-through estimators, LSQ and PACT: gradients against hand-worked formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam

import jaxcompress as jc
from jaxcompress import quant


def test_ste_helpers_forward_and_gradients():
    x = jnp.array([-1.7, -0.5, 0.2, 1.5, 2.5])
    np.testing.assert_array_equal(quant.floor_ste(x), jnp.floor(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(quant.floor_ste(x) * 3.0))(x), 3.0)
    g = jax.grad(lambda x: jnp.sum(quant.stochastic_round_ste(x, jax.random.key(1)) * jnp.arange(5.0)))(x)
    np.testing.assert_array_equal(g, jnp.arange(5.0))
    # scale_grad: identity forward (bitwise), gradient times g
    np.testing.assert_array_equal(quant.scale_grad(x, jnp.float32(0.25)), x)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(quant.scale_grad(x, jnp.float32(0.25))))(x), 0.25)
    # straight_through: y forward, the gradient reaches both x and y
    y = jnp.round(x)
    np.testing.assert_array_equal(quant.straight_through(x, y), y)
    gx, gy = jax.grad(lambda x, y: jnp.sum(quant.straight_through(x, y) * 2.0), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(gx, 2.0)
    np.testing.assert_array_equal(gy, 2.0)


# LSQ, hand-worked (Esser et al. 2020, eq. 3): v = [0.3, 1.1, -5.0, 2.6], s = 0.5, 3 bits signed: Q_N = 4, Q_P = 3.
# v / s = [0.6, 2.2, -10, 5.2] -> round(clip) = [1, 2, -4, 3] -> v_hat = [0.5, 1.0, -2.0, 1.5].
# d v_hat / d s = [-0.6 + 1, -2.2 + 2, -Q_N, Q_P] = [0.4, -0.2, -4, 3]; with upstream ones: -0.8.
# Gradient scale g = 1 / sqrt(N Q_P) = 1 / sqrt(4 * 3).
V = jnp.array([0.3, 1.1, -5.0, 2.6])
S = jnp.float32(0.5)


def test_lsq_forward_and_step_gradient_match_the_paper_by_hand():
    v_hat, codes = quant.lsq_fake_quant(V, S, 3, n=1)
    np.testing.assert_array_equal(codes, [1.0, 2.0, -4.0, 3.0])
    np.testing.assert_allclose(v_hat, [0.5, 1.0, -2.0, 1.5])
    grad_s = jax.grad(lambda s: jnp.sum(quant.lsq_fake_quant(V, s, 3, n=1)[0]))(S)
    assert float(grad_s) == pytest.approx(-0.8 / math.sqrt(1 * 3), abs=1e-6)  # g = 1 / sqrt(N Q_P), N = 1
    per_element = jax.jacrev(lambda s: quant.lsq_fake_quant(V, s, 3, n=1)[0])(S)
    np.testing.assert_allclose(per_element * math.sqrt(3), [0.4, -0.2, -4.0, 3.0], atol=1e-6)
    scaled = jax.grad(lambda s: jnp.sum(quant.lsq_fake_quant(V, s, 3)[0]))(S)  # N = 4 entries per step
    assert float(scaled) == pytest.approx(-0.8 / math.sqrt(4 * 3), abs=1e-6)
    grad_v = jax.grad(lambda v: jnp.sum(quant.lsq_fake_quant(v, S, 3)[0] * jnp.arange(1.0, 5.0)))(V)
    np.testing.assert_array_equal(grad_v, [1.0, 2.0, 0.0, 0.0])  # zero where clipped


def test_lsq_transform_init_gradient_scale_and_integer(params):
    recipe = jc.quant.lsq(4, rule="Dense_0/kernel")  # per channel: N = 72 weights per step, Q_P = 7
    state = recipe.init(params)
    w = np.asarray(params["Dense_0"]["kernel"])
    steps = state.learned.values["Dense_0/kernel"]
    np.testing.assert_allclose(steps, 2 * np.abs(w).mean(0, keepdims=True) / np.sqrt(7), rtol=1e-6)
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["Dense_0"]["kernel"])
    _, _, (learned,) = jc.optim.value_and_grad(loss)(params, state)
    s = np.asarray(steps, np.float64)
    v = w / s
    ref = np.where(v <= -8, -8.0, np.where(v >= 7, 7.0, np.round(v) - v)).sum(0, keepdims=True) / np.sqrt(72 * 7)
    np.testing.assert_allclose(learned.values["Dense_0/kernel"], ref, rtol=1e-4, atol=1e-6)
    iw = jc.integer_weights(recipe, params, state)["Dense_0/kernel"]
    assert iw.codes.dtype == jnp.int8 and int(iw.codes.min()) >= -8 and int(iw.codes.max()) <= 7
    np.testing.assert_array_equal(iw.dequantize(), recipe.apply(params, state)["Dense_0"]["kernel"])


def test_lsq_step_sizes_train_through_the_wrapper(params):
    recipe = jc.quant.lsq(2, granularity="tensor", rule="Dense_1/kernel")
    target = params["Dense_1"]["kernel"]
    loss = lambda p, c: jnp.sum((recipe.apply(p, c)["Dense_1"]["kernel"] - target) ** 2)
    tx = jc.optim.with_compression(optax.sgd(0.0), recipe, learned_optimizer=adam(0.02))
    opt_state = tx.init(params)
    step = jax.jit(jc.optim.value_and_grad(loss))
    first = None
    for _ in range(30):
        value, grads, learned_grads = step(params, jc.optim.compression_state(opt_state))
        first = value if first is None else first
        _, opt_state = tx.update(grads, opt_state, params, learned_grads=learned_grads)
    assert float(value) < 0.9 * float(first)


def test_pact_forward_and_gradients_by_hand():
    x = jnp.array([-1.0, 0.4, 1.3, 2.9, 3.5, 7.0])
    alpha = jnp.float32(3.0)  # 2 bits: step 1, levels 0, 1, 2, 3
    np.testing.assert_array_equal(quant.pact_fake_quant(x, alpha, 2), [0.0, 0.0, 1.0, 3.0, 3.0, 3.0])
    upstream = jnp.arange(1.0, 7.0)
    gx, ga = jax.grad(lambda x, a: jnp.sum(quant.pact_fake_quant(x, a, 2) * upstream), argnums=(0, 1))(x, alpha)
    np.testing.assert_array_equal(gx, [0.0, 2.0, 3.0, 4.0, 0.0, 0.0])  # 1[0 <= x <= alpha]
    assert float(ga) == 5.0 + 6.0  # sum of upstream where x > alpha
    assert quant.pact_fake_quant(x.astype(jnp.bfloat16), alpha, 2).dtype == jnp.bfloat16
