"""Knowledge distillation: a float teacher guides a compressed student.

Plain loss functions that compose with any training loop, the features they
need captured from an unmodified Flax linen model (the interception the
activation hooks use), and :func:`distillation`, which builds one loss that
runs teacher and student in the same traced step.

* :func:`soft_target_loss`: Hinton, Vinyals & Dean (2015), the student matches
  the teacher's temperature-softened class distribution.
* :func:`hint_loss`: Romero et al. (2015, FitNets), the student's intermediate
  features match the teacher's.
* :func:`attention_loss` over :func:`attention_maps`: attention transfer for
  Transformers, the student's attention distributions match the teacher's
  (Zagoruyko & Komodakis 2017 for the idea; per head, as in Wang et al. 2020,
  MiniLM), computed from the captured query and key projections of Flax's
  ``MultiHeadDotProductAttention``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = [
    "attention_loss",
    "attention_maps",
    "capture",
    "distillation",
    "hint_loss",
    "soft_target_loss",
]


def _check_same_shape(student: Any, teacher: Any, what: str) -> None:
    if jnp.shape(student) != jnp.shape(teacher):
        raise ValueError(
            f"{what}: the student's have shape {jnp.shape(student)}, the teacher's {jnp.shape(teacher)}; they must "
            f"match (project the student's with a small Dense of its own first, as FitNets' regressor does)."
        )


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}.")
    return float(temperature)


def soft_target_loss(student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 4.0) -> jax.Array:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` keeps the gradients' scale independent of the temperature, so
    the term mixes with the hard-label loss at any ``T`` (Hinton et al.). The
    teacher's logits get no gradient.

    Args:
      student_logits: ``(..., classes)``.
      teacher_logits: the same shape.
      temperature: ``T > 0``; higher spreads the teacher's distribution.

    Returns:
      A float32 scalar.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
      2015. https://arxiv.org/abs/1503.02531
    """
    t = _check_temperature(temperature)
    _check_same_shape(student_logits, teacher_logits, "`student_logits` and `teacher_logits`")
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / t
    student = jnp.asarray(student_logits, jnp.float32) / t
    p_teacher = jax.nn.softmax(teacher, axis=-1)
    kl = jnp.sum(p_teacher * (jax.nn.log_softmax(teacher, axis=-1) - jax.nn.log_softmax(student, axis=-1)), axis=-1)
    return t * t * jnp.mean(kl)


def hint_loss(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """Mean squared difference of intermediate features (FitNets' hint), the teacher's without gradient.

    References:
      Romero et al., "FitNets: Hints for Thin Deep Nets", 2015.
      https://arxiv.org/abs/1412.6550
    """
    _check_same_shape(student_features, teacher_features, "hint features")
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_features, jnp.float32))
    return jnp.mean(jnp.square(jnp.asarray(student_features, jnp.float32) - teacher))


@contextlib.contextmanager
def capture(modules: Iterable[str]) -> Iterator[dict[str, jax.Array]]:
    """Records the output of each named linen module while the context is open (no model changes).

    Inside the context every ``__call__`` of a module whose path (``"Dense_1"``,
    ``"Block_0/MultiHeadDotProductAttention_0/query"``) is in ``modules``
    stores its output in the yielded dict (the last call's, if one runs
    twice). It works under ``jit`` and ``grad`` (open it inside the traced
    function) and beside :func:`jaxcompress.quant.quantize_activations`
    (their interceptors stack). Capture the teacher and the student in
    separate contexts: their module paths are the same.

    Raises:
      ValueError: on exit, if a named module never ran (listing the paths that did).

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
      >>> model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> with jc.distill.capture(["layers_0"]) as features:
      ...     _ = model.apply(variables, jnp.ones((5, 3)))
      >>> features["layers_0"].shape
      (5, 4)
    """
    wanted = set(_check_paths(modules, "modules"))
    found: dict[str, jax.Array] = {}
    ran: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            path = "/".join(str(p) for p in context.module.path)
            ran.append(path)
            if path in wanted:
                found[path] = out
        return out

    with nn.intercept_methods(interceptor):
        yield found
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"`modules` {missing} never ran inside the capture; the modules that did: {sorted(set(ran))}.")


def _check_paths(paths: Any, argument: str) -> list[str]:
    if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"`{argument}` must be a collection of module paths (strings), got {paths!r}.")
    return list(paths)


def attention_maps(features: Mapping[str, jax.Array], module: str, *, mask: jax.Array | None = None) -> jax.Array:
    """The attention probabilities of a Flax ``MultiHeadDotProductAttention`` at ``module``, from captured features.

    ``softmax(q k^T / sqrt(d))`` per head, computed from the outputs of the
    module's ``query`` and ``key`` projections (capture ``f"{module}/query"``
    and ``f"{module}/key"``; with ``normalize_qk=True``, ``query_ln`` and
    ``key_ln``), as the module computes them without dropout. ``mask``: the
    boolean mask the model was given (``True`` = attend), broadcastable to
    ``(batch, heads, q_len, kv_len)``.

    Returns:
      ``(batch, heads, q_len, kv_len)`` float32 probabilities.
    """
    names = {}
    for part in ("query", "key"):
        for name in (f"{module}/{part}_ln", f"{module}/{part}"):
            if name in features:
                names[part] = name
                break
        else:
            raise ValueError(
                f"`features` lack {module}/{part}: capture the attention module's projections, "
                f"jc.distill.capture([{module + '/query'!r}, {module + '/key'!r}]). Captured: {sorted(features)}."
            )
    q = jnp.asarray(features[names["query"]], jnp.float32)
    k = jnp.asarray(features[names["key"]], jnp.float32)
    if q.ndim < 3 or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"query {q.shape} and key {k.shape} must be (..., length, heads, head_dim) alike.")
    logits = jnp.einsum("...qhd,...khd->...hqk", q / jnp.sqrt(jnp.float32(q.shape[-1])), k)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def attention_loss(student_maps: jax.Array, teacher_maps: jax.Array) -> jax.Array:
    """``KL(teacher || student)`` of attention distributions over the keys, averaged over batch, heads and queries.

    Both ``(batch, heads, q_len, kv_len)``; a student with other heads than the
    teacher compares the head-averaged maps.

    References:
      Zagoruyko & Komodakis, "Paying More Attention to Attention", 2017.
      https://arxiv.org/abs/1612.03928; Wang et al., "MiniLM: Deep
      Self-Attention Distillation", 2020. https://arxiv.org/abs/2002.10957
    """
    s, t = jnp.asarray(student_maps, jnp.float32), jax.lax.stop_gradient(jnp.asarray(teacher_maps, jnp.float32))
    if s.ndim == 4 and t.ndim == 4 and s.shape[1] != t.shape[1]:
        s, t = jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True)
    _check_same_shape(s, t, "attention maps")
    tiny = jnp.float32(1e-12)  # log(0) guard for masked-out keys (they carry no mass on either side)
    kl = jnp.sum(t * (jnp.log(t + tiny) - jnp.log(s + tiny)), axis=-1)
    return jnp.mean(kl)


def distillation(
    student: Callable[..., jax.Array],
    teacher: Callable[..., jax.Array],
    *,
    temperature: float = 4.0,
    soft_weight: float = 0.9,
    hints: Mapping[str, str] | None = None,
    hint_weight: float = 1.0,
    attention: Mapping[str, str] | None = None,
    attention_weight: float = 1.0,
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """One loss that runs the teacher and the compressed student in the same traced step.

    Args:
      student: ``student(params, cstate, x) -> logits``: the compressed student's
        forward (``model.apply({"params": recipe.apply(params, cstate)}, x)``,
        inside ``jc.quant.quantize_activations(cstate)`` if the recipe quantizes
        activations).
      teacher: ``teacher(teacher_variables, x) -> logits`` (no gradient flows into it).
      temperature: of :func:`soft_target_loss`.
      soft_weight: ``a`` in ``a * soft + (1 - a) * cross_entropy(labels)``.
      hints: ``{student_module: teacher_module}`` pairs for :func:`hint_loss`.
      hint_weight: the hints' weight (their sum is added).
      attention: ``{student_attention_module: teacher_attention_module}`` for
        :func:`attention_loss` over :func:`attention_maps`.
      attention_weight: the attention terms' weight.

    Returns:
      ``loss_fn(params, cstate, teacher_variables, x, labels) -> (loss, parts)``
      with ``parts`` the separate terms; use it with
      ``jc.optim.value_and_grad(loss_fn, has_aux=True)``.
    """
    _check_temperature(temperature)
    for name, w in (("soft_weight", soft_weight), ("hint_weight", hint_weight), ("attention_weight", attention_weight)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"`{name}` must be a number >= 0, got {w!r}.")
    if not soft_weight <= 1:
        raise ValueError(f"`soft_weight` mixes soft and hard targets: it must lie in [0, 1], got {soft_weight!r}.")
    hints, attention = dict(hints or {}), dict(attention or {})
    student_sites = [*hints, *(f"{m}/{p}" for m in attention for p in ("query", "key"))]
    teacher_sites = [*hints.values(), *(f"{m}/{p}" for m in attention.values() for p in ("query", "key"))]

    def loss_fn(params, cstate, teacher_variables, x, labels):
        with capture(teacher_sites) as t_features:
            t_logits = teacher(teacher_variables, x)
        t_logits = jax.lax.stop_gradient(t_logits)
        t_features = jax.lax.stop_gradient(t_features)
        with capture(student_sites) as s_features:
            s_logits = student(params, cstate, x)
        parts = {
            "soft": soft_target_loss(s_logits, t_logits, temperature=temperature),
            "hard": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(s_logits.astype(jnp.float32), labels)),
        }
        loss = soft_weight * parts["soft"] + (1.0 - soft_weight) * parts["hard"]
        if hints:
            parts["hints"] = sum(hint_loss(s_features[s], t_features[t]) for s, t in hints.items())
            loss = loss + hint_weight * parts["hints"]
        if attention:
            parts["attention"] = sum(
                attention_loss(attention_maps(s_features, s), attention_maps(t_features, t))
                for s, t in attention.items()
            )
            loss = loss + attention_weight * parts["attention"]
        return loss, parts

    return loss_fn
