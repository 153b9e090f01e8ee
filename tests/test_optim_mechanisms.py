"""The wrapper's mechanisms, driven by scripted transforms: regrowth and learned parameters."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam, standard_promotion

import jaxcompress as jc
from jaxcompress import masks as packed


class ScriptState(NamedTuple):
    count: jax.Array
    masks: jc.Masks


def scripted(path: str, schedule: list[np.ndarray]) -> jc.Transform:
    """Hard mask ``schedule[t]`` on ``path`` after update ``t`` (then the last one)."""
    table = jnp.asarray(np.stack(schedule))

    def init(params):
        return ScriptState(jnp.zeros([], jnp.int32), jc.Masks({path: packed.ones(table.shape[1:])}))

    def update(params, state, grads=None, **extra):
        keep = table[jnp.minimum(state.count, len(schedule) - 1)]
        return ScriptState(state.count + 1, jc.Masks({path: packed.pack(keep)}))

    def apply(params, state):
        return jc.paths.map_selected(lambda p, w: jnp.where(state.masks.keep[p].unpack(), w, 0.0), params, [path])

    return jc.Transform(init, update, apply)


PRUNE = np.array([[1, 0, 1], [0, 1, 1]], bool)
REGROW = np.array([[1, 1, 1], [0, 1, 0]], bool)  # (0, 1) regrows, (1, 2) is pruned


def run_script(inner, moments, script):
    tx = jc.optim.with_compression(inner, scripted("w", script))
    params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3), "b": jnp.ones(3)}
    state = tx.init(params)
    grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.ones(3)}
    update = jax.jit(tx.update)
    history = []
    for _ in range(len(script)):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append((params["w"], [np.asarray(m) for m in moments(state.inner_state)]))
    return history


@pytest.mark.parametrize(
    "inner, moments",
    [
        (adam(0.1), lambda s: [s[0].mu["w"], s[0].nu["w"]]),
        (
            standard_promotion(optax.inject_hyperparams(optax.adamw)(learning_rate=0.1, weight_decay=0.1)),
            lambda s: [s.inner_state[0].mu["w"], s.inner_state[0].nu["w"]],
        ),
        (optax.sgd(0.1, momentum=0.9), lambda s: [s[0].trace["w"]]),
        (
            optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(0.1, momentum=0.9)),
            lambda s: [s[1][0].trace["w"]],
        ),
    ],
    ids=["adam", "inject_hyperparams-adamw", "sgd-momentum", "chain"],
)
def test_regrown_weights_start_at_zero_with_fresh_moments(inner, moments):
    dense = np.ones((2, 3), bool)
    history = run_script(inner, moments, [dense, dense, PRUNE, PRUNE, REGROW, REGROW])
    baseline = run_script(inner, moments, [dense, dense, PRUNE, PRUNE, PRUNE, PRUNE])
    _, m_pruning = history[2]  # the step that prunes: moments were updated everywhere
    w_before, m_before = history[3]  # a whole step under PRUNE
    w_regrow, m_regrow = history[4]  # the REGROW step
    assert all(np.all(m != 0) for m in m_pruning)
    for m in m_before:  # the inner optimizer keeps nothing for pruned weights
        np.testing.assert_array_equal(m != 0, PRUNE)
    assert w_before[0, 1] == 0.0 and w_regrow[0, 1] == 0.0  # regrown weight starts at exactly zero
    for m, m_base in zip(m_regrow, baseline[4][1], strict=True):
        assert m[0, 1] == 0.0  # with fresh moments
        survivors = PRUNE & REGROW
        assert np.all(m[survivors] != 0)
        np.testing.assert_array_equal(m[survivors], m_base[survivors])  # untouched by the reset
    assert w_regrow[1, 2] == 0.0  # newly pruned weight is zero
    w_after, m_after = history[5]
    assert w_after[0, 1] != 0.0  # and the regrown weight trains from there
    assert all(m[0, 1] != 0 for m in m_after)


def test_inner_optimizer_sees_no_gradient_of_pruned_weights():
    # Global-norm clipping inside the wrapper: a huge gradient on a pruned weight
    # must not shrink the kept weights' updates (the forward pass need not mask it).
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    params = {"w": jnp.arange(1.0, 7.0).reshape(2, 3)}
    updates = {}
    for pruned_grad in (0.0, 1e6):
        tx = jc.optim.with_compression(inner, scripted("w", [PRUNE]))
        state = tx.init(params)
        _, state = tx.update({"w": jnp.zeros((2, 3))}, state, params)  # PRUNE in force from now on
        grads = jnp.where(PRUNE, 0.1, pruned_grad)
        updates[pruned_grad], _ = tx.update({"w": grads}, state, params)
    np.testing.assert_allclose(updates[1e6]["w"][PRUNE], updates[0.0]["w"][PRUNE])
    np.testing.assert_allclose(updates[0.0]["w"][PRUNE], -0.1)  # norm 0.1 * sqrt(4) < 1: unclipped


def test_no_reset_when_nothing_regrows():
    recipe = scripted("w", [PRUNE])
    tx = jc.optim.with_compression(adam(0.1), recipe)
    params = {"w": jnp.ones((2, 3))}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.ones((2, 3))}, state, params)
        params = optax.apply_updates(params, updates)
    mu = state.inner_state[0].mu["w"]
    assert np.all(np.asarray(mu)[PRUNE] > 0)


class ScaleState(NamedTuple):
    learned: jc.Learned


def learned_scale() -> jc.Transform:
    """Multiplies every kernel by a learned scalar ``s`` (initially 1)."""

    def init(params):
        return ScaleState(jc.Learned({"s": jnp.ones([], jnp.float32)}))

    def apply(params, state):
        return jax.tree.map(lambda w: w * state.learned.values["s"], params)

    return jc.Transform(init, lambda p, s, g=None, **kw: s, apply)


def test_value_and_grad_differentiates_learned_parameters():
    recipe = jc.chain(jc.prune.magnitude(0.5), learned_scale())
    params = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
    cstate = recipe.update(params, recipe.init(params))
    loss = lambda p, c: jnp.sum(recipe.apply(p, c)["w"] ** 2)
    value, grads, learned_grads = jc.optim.value_and_grad(loss)(params, cstate)
    kept = jnp.array([[0.0, -2.0], [3.0, 0.0]])
    assert float(value) == pytest.approx(13.0)
    np.testing.assert_allclose(grads["w"], 2 * kept)  # d/dw sum((s m w)^2) = 2 s^2 m w
    assert len(learned_grads) == 1
    assert float(learned_grads[0].values["s"]) == pytest.approx(26.0)  # d/ds = 2 s sum((m w)^2)


def test_wrapper_trains_learned_parameters():
    recipe = learned_scale()
    tx = jc.optim.with_compression(optax.sgd(0.0), recipe, learned_optimizer=optax.sgd(0.01))
    params = {"w": jnp.array([1.0, 2.0])}
    state = tx.init(params)
    loss = lambda p, c: jnp.sum((recipe.apply(p, c)["w"] - 2 * p["w"]) ** 2)  # best at s = 2
    step_value_and_grad = jax.jit(jc.optim.value_and_grad(loss))
    for _ in range(200):
        _, grads, learned_grads = step_value_and_grad(params, jc.optim.compression_state(state))
        updates, state = tx.update(grads, state, params, learned_grads=learned_grads)
        params = optax.apply_updates(params, updates)
    s = jc.optim.compression_state(state).learned.values["s"]
    assert float(s) == pytest.approx(2.0, abs=1e-3)


def test_learned_gradients_are_required():
    recipe = learned_scale()
    tx = jc.optim.with_compression(optax.sgd(0.1), recipe)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="learned_grads="):
        tx.update(params, tx.init(params), params)
    tx2 = jc.optim.with_compression(optax.sgd(0.1), jc.prune.magnitude(0.5, rule="w"))
    with pytest.raises(ValueError, match="no learned parameters"):
        tx2.update(params, tx2.init(params), params, learned_grads=(1.0,))


def test_replace_learned_checks_count():
    state = ScaleState(jc.Learned({"s": jnp.ones([])}))
    with pytest.raises(ValueError, match="must hold 1 Learned"):
        jc.replace_learned(state, ())
