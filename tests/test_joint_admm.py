"""ADMM joint pruning and quantization: the projection against brute force, the ADMM steps against numpy,
masked retraining on the projection's grid, and the method beating projection of the dense solution."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import run_update, standard_promotion

import jaxcompress as jc
from jaxcompress._src.joint import admm as admm_lib


def _brute_force(v: np.ndarray, k: int, q_max: int, step: float | None = None) -> float:
    """The least ``||v - step * q||^2`` over integer ``q`` in ``[-q_max, q_max]`` with at most ``k`` nonzeros
    (the best least-squares step for each ``q`` when ``step`` is None)."""
    best = np.inf
    for q in itertools.product(range(-q_max, q_max + 1), repeat=len(v)):
        q = np.asarray(q, np.float64)
        if np.count_nonzero(q) > k:
            continue
        s = step if step is not None else (v @ q / (q @ q) if q @ q > 0 else 1.0)
        best = min(best, float(np.sum((v - s * q) ** 2)))
    return best


@pytest.mark.parametrize("bits", [2, 3])
def test_the_assignment_at_a_fixed_step_is_the_exact_projection(bits):
    rng = np.random.default_rng(bits)
    q_max = 2 ** (bits - 1) - 1
    for _ in range(6):
        v = rng.normal(size=5).astype(np.float32)
        step = float(rng.uniform(0.2, 1.0))
        for k in (0, 1, 2, 5):
            codes, cost = admm_lib._assign(jnp.asarray(v), jnp.float32(step), k, q_max)
            assert np.count_nonzero(np.asarray(codes)) <= k
            np.testing.assert_allclose(float(cost), _brute_force(v, k, q_max, step), rtol=1e-5, atol=1e-6)


def test_the_projection_is_close_to_the_best_over_all_steps_and_respects_the_constraint():
    rng = np.random.default_rng(1)
    for bits, k in [(2, 2), (2, 4), (3, 3)]:
        v = rng.normal(size=6).astype(np.float32)
        codes, step = jc.joint.project(jnp.asarray(v), k, bits)
        codes = np.asarray(codes)
        q_max = 2 ** (bits - 1) - 1
        assert np.count_nonzero(codes) <= k and np.all(np.abs(codes) <= q_max)
        assert np.all(codes == np.round(codes))
        cost = float(np.sum((v - float(step) * codes) ** 2))
        optimum = _brute_force(v, k, q_max)
        assert optimum - 1e-6 <= cost <= 1.02 * optimum + 1e-6


def test_projection_edge_cases():
    codes, step = jc.joint.project(jnp.zeros((3, 2)), 2, 4)
    assert not np.any(np.asarray(codes)) and float(step) > 0
    codes, _ = jc.joint.project(jnp.arange(6.0).reshape(2, 3), 0, 4)
    assert not np.any(np.asarray(codes)) and codes.shape == (2, 3)
    # k at least the size: every weight may stay, on an 8-bit grid nearly exactly
    v = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)), jnp.float32)
    codes, step = jc.joint.project(v, 16, 8)
    np.testing.assert_allclose(np.asarray(codes * step), np.asarray(v), atol=float(step) / 2 + 1e-6)


def test_init_update_and_penalty_follow_the_scaled_admm_recursion():
    rng = np.random.default_rng(2)
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}, "a_bias": jnp.ones(3)}
    method = jc.joint.admm(0.5, 3, every=2, rho=0.5, rho_growth=2.0)
    state = method.init(params)
    w = np.asarray(params["a"]["kernel"])

    def proj(v):
        codes, step = jc.joint.project(jnp.asarray(v), 6, 3)
        return np.asarray(codes * step)

    np.testing.assert_allclose(np.asarray(state.z["a/kernel"]), proj(w), rtol=1e-6)
    assert state.budget.k("a/kernel") == 6 and state.budget.width("a/kernel") == 3
    assert list(state.z) == ["a/kernel"]  # the bias (ndim 1) is not constrained
    update = jax.jit(method.update)
    w1 = w + 0.3
    s1 = update({"a": {"kernel": jnp.asarray(w1)}, "a_bias": jnp.ones(3)}, state)  # step 1: no dual step
    np.testing.assert_array_equal(np.asarray(s1.z["a/kernel"]), np.asarray(state.z["a/kernel"]))
    assert float(s1.rho) == 0.5
    s2 = update({"a": {"kernel": jnp.asarray(w1)}, "a_bias": jnp.ones(3)}, s1)  # step 2: Z and dual steps
    z = proj(w1)  # Z = project(W + U) with U = 0 at init
    u = (w1 - z) * 0.5 / 1.0  # U + W - Z, rescaled by rho_old / rho_new
    np.testing.assert_allclose(np.asarray(s2.z["a/kernel"]), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s2.u["a/kernel"]), u, rtol=1e-5, atol=1e-6)
    assert float(s2.rho) == 1.0
    p2 = {"a": {"kernel": jnp.asarray(w1)}, "a_bias": jnp.ones(3)}
    expected = 0.5 * 1.0 * np.sum((w1 - z + u) ** 2)
    np.testing.assert_allclose(float(jc.joint.admm_penalty(p2, s2)), expected, rtol=1e-5)
    g = jax.grad(lambda p: jc.joint.admm_penalty(p, s2))(p2)
    np.testing.assert_allclose(np.asarray(g["a"]["kernel"]), 1.0 * (w1 - z + u), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(method.apply(p2, s2)["a"]["kernel"]), w1)  # trains dense


def test_admm_beats_projecting_the_dense_solution_on_correlated_least_squares():
    """Least squares over near-duplicate feature pairs: the (ridge) dense solution splits each weight over its
    pair, so projecting it keeps half-size weights; ADMM (penalty + projections, then masked retraining on the
    grid) finds the sparse ternary solution."""
    rng = np.random.default_rng(3)
    n, pairs = 200, 12
    base = rng.normal(size=(n, pairs))
    x = np.repeat(base, 2, axis=1) + 0.05 * rng.normal(size=(n, 2 * pairs))
    d = 2 * pairs
    w_true = np.zeros((d, 1))
    for i in rng.choice(pairs, 4, replace=False):
        w_true[2 * i] = rng.choice([-1.0, 1.0])
    y = x @ w_true + 0.05 * rng.normal(size=(n, 1))
    ridge = np.linalg.solve(x.T @ x + 5.0 * np.eye(d), x.T @ y)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    loss = lambda p: jnp.mean((x @ p["w"]["kernel"] - y) ** 2)
    dense = {"w": {"kernel": jnp.asarray(ridge, jnp.float32)}}
    sparsity, bits = 1 - 4 / d, 2

    naive, _ = jc.joint.hard_projection(dense, jc.joint.admm(sparsity, bits, every=1).init(dense))

    method = jc.joint.admm(sparsity, bits, every=20, rho=0.05, rho_growth=1.3)
    tx = jc.optim.with_compression(standard_promotion(optax.adam(1e-2)), method)

    @jax.jit
    def step(p, s):
        c = jc.optim.compression_state(s)
        g = jax.grad(lambda q: loss(q) + jc.joint.admm_penalty(q, c))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s = dense, tx.init(dense)
    for _ in range(600):
        p, s = step(p, s)
    projected, quantizer = jc.joint.hard_projection(p, jc.optim.compression_state(s))
    kept = np.asarray(projected["w"]["kernel"]) != 0
    assert kept.sum() <= 4
    # masked retraining on the frozen grid: zeros stay, values stay on the grid
    tx2 = jc.optim.with_compression(standard_promotion(optax.adam(3e-3)), quantizer)

    @jax.jit
    def retrain(p, s):
        c = jc.optim.compression_state(s)
        g = jax.grad(lambda q: loss(quantizer.apply(q, c)))(p)
        u, s = tx2.update(g, s, p)
        return optax.apply_updates(p, u), s

    p2, s2 = projected, tx2.init(projected)
    c2 = jc.optim.compression_state(s2)
    np.testing.assert_array_equal(  # the projection is on the grid: retraining starts from it unchanged
        np.asarray(quantizer.apply(projected, c2)["w"]["kernel"]), np.asarray(projected["w"]["kernel"])
    )
    for _ in range(200):
        p2, s2 = retrain(p2, s2)
    c2 = jc.optim.compression_state(s2)
    final = quantizer.apply(p2, c2)
    assert np.all(np.asarray(p2["w"]["kernel"])[~kept] == 0) and np.all(np.asarray(final["w"]["kernel"])[~kept] == 0)
    codes = jc.integer_weights(quantizer, p2, c2)["w/kernel"]
    assert codes.codes.dtype == jnp.int8 and np.all(np.abs(np.asarray(codes.codes)) <= 1)
    np.testing.assert_array_equal(np.asarray(codes.dequantize()), np.asarray(final["w"]["kernel"]))
    assert float(loss(final)) < 0.05 * float(loss(naive))


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


def test_hard_projection_exports_to_the_integer_program_it_trained():
    model, x = _MLP(), jnp.asarray(np.random.default_rng(4).normal(size=(8, 12)), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    state = jc.joint.admm(0.8, 3, every=5, bits_overrides={"Dense_1/kernel": 4}).init(params)
    assert state.budget.width("Dense_1/kernel") == 4 and state.budget.width("Dense_0/kernel") == 3
    projected, quantizer = jc.joint.hard_projection(params, state)
    cstate = quantizer.init(projected)
    ex = jc.export.export(model, {"params": projected}, quantizer, cstate, x, dispatch="float")
    expected = model.apply({"params": quantizer.apply(projected, cstate)}, x)
    np.testing.assert_allclose(np.asarray(ex(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    for p, w in jc.paths.flatten(projected)[0].items():
        if p.endswith("kernel"):
            assert 0 < np.count_nonzero(np.asarray(w)) <= round(0.2 * w.size) == state.budget.k(p)


def test_update_traces_once():
    params = {"w": jnp.ones((4, 4))}
    method = jc.joint.admm(0.5, 2, every=3)
    s, traces = run_update(method.update, params, method.init(params), 7)
    assert traces == 1 and int(s.count) == 7


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="`sparsity` must lie in"):
        jc.joint.admm(1.0, 2, every=1)
    with pytest.raises(ValueError, match=r"`bits` must be an integer in \[2, 8\]"):
        jc.joint.admm(0.5, 9, every=1)
    with pytest.raises(ValueError, match="`every` must be >= 1"):
        jc.joint.admm(0.5, 2, every=0)
    with pytest.raises(ValueError, match="`rho` must be > 0"):
        jc.joint.admm(0.5, 2, every=1, rho=0.0)
    with pytest.raises(ValueError, match="`rho_growth` must be >= 1"):
        jc.joint.admm(0.5, 2, every=1, rho_growth=0.5)
    with pytest.raises(TypeError, match="`bits_overrides` must be a mapping"):
        jc.joint.admm(0.5, 2, every=1, bits_overrides=[3])
    with pytest.raises(ValueError, match="matches none of the leaves"):
        jc.joint.admm(0.5, 2, every=1, bits_overrides={"nothing": 3}).init({"w": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match=r"holds no jc\.joint\.admm state"):
        jc.joint.admm_penalty({"w": jnp.ones((2, 2))}, jc.prune.magnitude(0.5).init({"w": jnp.ones((2, 2))}))
    with pytest.raises(ValueError, match=r"has shape \(3, 2\), but the jc.joint.admm state was built for shape"):
        method = jc.joint.admm(0.5, 2, every=1)
        method.update({"w": jnp.ones((3, 2))}, method.init({"w": jnp.ones((2, 2))}))
    with pytest.raises(ValueError, match="must name the same, non-empty set of paths"):
        jc.joint.fixed_grid({"w": jnp.ones((2, 2), bool)}, {}, {"w": 2})
    with pytest.raises(ValueError, match=r"`keep\['w'\]` has shape \(2, 2\), the leaf has shape \(3, 2\)"):
        jc.joint.fixed_grid({"w": jnp.ones((2, 2), bool)}, {"w": 0.1}, {"w": 2}).init({"w": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match="must be one positive number"):
        jc.joint.fixed_grid({"w": jnp.ones((2, 2), bool)}, {"w": -0.1}, {"w": 2}).init({"w": jnp.ones((2, 2))})
