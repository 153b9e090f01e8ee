"""Knowledge distillation: losses against numpy formulas, capture without model changes, one-step helper."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion

import jaxcompress as jc


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_soft_target_loss_is_hintons_t2_kl():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)) * 3
    for temperature in (1.0, 4.0):
        ls, lt = _np_log_softmax(s / temperature), _np_log_softmax(t / temperature)
        expected = temperature**2 * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
        got = jc.distill.soft_target_loss(jnp.asarray(s), jnp.asarray(t), temperature=temperature)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert float(jc.distill.soft_target_loss(jnp.asarray(t), jnp.asarray(t + 7.0))) == pytest.approx(0.0, abs=1e-6)
    # the teacher gets no gradient; the student's at T is (softmax(s/T) - softmax(t/T)) * T / batch
    gs, gt = jax.grad(lambda a, b: jc.distill.soft_target_loss(a, b, temperature=4.0), argnums=(0, 1))(
        jnp.asarray(s), jnp.asarray(t)
    )
    assert not np.any(np.asarray(gt))
    expected = (np.exp(_np_log_softmax(s / 4)) - np.exp(_np_log_softmax(t / 4))) * 4 / len(s)
    np.testing.assert_allclose(np.asarray(gs), expected, rtol=1e-4, atol=1e-7)


def test_hint_loss_and_shape_errors():
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 3))
    np.testing.assert_allclose(float(jc.distill.hint_loss(a, b)), np.mean((np.arange(6.0) - 1) ** 2))
    with pytest.raises(ValueError, match=r"hint features: the student's have shape \(2, 3\), the teacher's \(2, 4\)"):
        jc.distill.hint_loss(a, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="`temperature` must be a positive number"):
        jc.distill.soft_target_loss(a, b, temperature=0.0)


class _Net(nn.Module):
    hidden: int = 8

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(3)(h)


def test_capture_records_outputs_under_jit_and_names_missing_modules():
    model, x = _Net(), jax.random.normal(jax.random.key(0), (4, 5))
    variables = model.init(jax.random.key(1), x)
    p = variables["params"]
    hidden = np.asarray(x) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])

    @jax.jit
    def run(variables, x):
        with jc.distill.capture(["Dense_0", "Dense_1"]) as features:
            y = model.apply(variables, x)
        return y, features

    y, features = run(variables, x)
    np.testing.assert_allclose(np.asarray(features["Dense_0"]), np.asarray(hidden), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(features["Dense_1"]), np.asarray(y))
    missing = r"\['Dense_7'\] never ran inside the capture.*'Dense_0', 'Dense_1'"
    with pytest.raises(ValueError, match=missing), jc.distill.capture(["Dense_7"]):
        model.apply(variables, x)
    with pytest.raises(TypeError, match="collection of module paths"), jc.distill.capture("Dense_0"):
        pass


class _Attention(nn.Module):
    heads: int = 2

    @nn.compact
    def __call__(self, x, mask=None):
        return nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=8)(x, mask=mask, sow_weights=True)


def test_attention_maps_equal_flaxs_own_weights_and_the_loss_is_their_kl():
    model, x = _Attention(), jax.random.normal(jax.random.key(0), (3, 5, 6))
    variables = model.init(jax.random.key(1), x)
    mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
    for m in (None, mask):
        with jc.distill.capture(["MultiHeadDotProductAttention_0/query", "MultiHeadDotProductAttention_0/key"]) as f:
            _, sown = model.apply(variables, x, m, mutable=["intermediates"])
        maps = jc.distill.attention_maps(f, "MultiHeadDotProductAttention_0", mask=m)
        flax_maps = sown["intermediates"]["MultiHeadDotProductAttention_0"]["attention_weights"][0]
        np.testing.assert_allclose(np.asarray(maps), np.asarray(flax_maps), rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    s = np.exp(_np_log_softmax(rng.normal(size=(2, 2, 3, 4))))
    t = np.exp(_np_log_softmax(rng.normal(size=(2, 2, 3, 4))))
    expected = np.mean(np.sum(t * (np.log(t) - np.log(s)), -1))
    np.testing.assert_allclose(float(jc.distill.attention_loss(jnp.asarray(s), jnp.asarray(t))), expected, rtol=1e-5)
    averaged = jc.distill.attention_loss(jnp.asarray(s[:, :1]), jnp.asarray(t))  # 1 head against 2: head means
    tm = t.mean(1, keepdims=True)
    np.testing.assert_allclose(float(averaged), np.mean(np.sum(tm * (np.log(tm) - np.log(s[:, :1])), -1)), rtol=1e-5)
    with pytest.raises(ValueError, match="capture the attention module's projections"):
        jc.distill.attention_maps({}, "MultiHeadDotProductAttention_0")


@pytest.mark.standard_promotion
def test_distillation_runs_teacher_and_compressed_student_in_one_jitted_step():
    """The loss is the sum of its parts, gradients reach only the student, and training reduces the soft term."""
    teacher_model, student_model = _Net(hidden=16), _Net(hidden=8)
    x = jax.random.normal(jax.random.key(0), (32, 5))
    labels = jax.random.randint(jax.random.key(1), (32,), 0, 3)
    teacher_vars = teacher_model.init(jax.random.key(2), x)
    params = student_model.init(jax.random.key(3), x)["params"]
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.symmetric(4))

    def student(p, c, x):
        return student_model.apply({"params": recipe.apply(p, c)}, x)

    with pytest.raises(ValueError, match="hint features"):  # 8 student features against 16
        loss_fn = jc.distill.distillation(student, teacher_model.apply, hints={"Dense_0": "Dense_0"})
        loss_fn(params, recipe.init(params), teacher_vars, x, labels)
    loss_fn = jc.distill.distillation(
        student, teacher_model.apply, temperature=2.0, soft_weight=0.7, hints={"Dense_1": "Dense_1"}, hint_weight=0.5
    )
    tx = jc.optim.with_compression(standard_promotion(optax.adam(1e-2)), recipe)
    opt_state = tx.init(params)
    grad_fn = jc.optim.value_and_grad(loss_fn, has_aux=True)
    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)
        (loss, parts), grads, _ = grad_fn(params, jc.optim.compression_state(opt_state), teacher_vars, x, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, parts

    first = None
    for _ in range(60):
        params, opt_state, loss, parts = step(params, opt_state)
        first = first or parts
        np.testing.assert_allclose(
            float(loss),
            0.7 * float(parts["soft"]) + 0.3 * float(parts["hard"]) + 0.5 * float(parts["hints"]),
            rtol=1e-5,
        )
    assert len(traces) == 1
    assert float(parts["soft"]) < 0.5 * float(first["soft"])
    cstate = jc.optim.compression_state(opt_state)
    s_logits = student(params, cstate, x)
    expected = jc.distill.soft_target_loss(s_logits, teacher_model.apply(teacher_vars, x), temperature=2.0)
    np.testing.assert_allclose(float(expected), float(loss_fn(params, cstate, teacher_vars, x, labels)[1]["soft"]))
