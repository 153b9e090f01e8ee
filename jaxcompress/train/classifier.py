"""A minimal supervised loop for classifiers, with or without compression."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import core, optim

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, x) -> logits


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, recipe: core.Transform | None = None):
    """A jitted ``step(params, opt_state, x, y) -> (params, opt_state, loss)``.

    With a ``recipe``, ``tx`` must come from :func:`jaxcompress.optim.with_compression`
    and the forward pass runs on ``recipe.apply(params, compression_state)``.
    """

    def loss_fn(params, cstate, x, y):
        if recipe is not None:
            params = recipe.apply(params, cstate)
        return cross_entropy(apply_fn(params, x), y)

    @jax.jit
    def step(params, opt_state, x, y):
        cstate = optim.compression_state(opt_state) if recipe is not None else None
        loss, grads = jax.value_and_grad(loss_fn)(params, cstate, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def accuracy(apply_fn: ApplyFn, params: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``apply_fn(params, x)`` over a dataset, in batches."""
    predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn(p, xb), axis=-1))
    correct = 0
    for start in range(0, len(x), batch_size):
        predicted = np.asarray(predict(params, x[start : start + batch_size]))
        correct += int(np.sum(predicted == y[start : start + batch_size]))
    return correct / len(x)


def fit(
    apply_fn: ApplyFn,
    params: Any,
    tx: optax.GradientTransformation,
    data: Iterator[tuple[np.ndarray, np.ndarray]],
    steps: int,
    *,
    recipe: core.Transform | None = None,
    progress: str | None = None,
) -> tuple[Any, Any, list[float]]:
    """Trains for ``steps`` steps; returns ``(params, opt_state, losses)``.

    ``progress`` is a label for a progress bar on stderr (``None``: no bar).
    """
    step = make_train_step(apply_fn, tx, recipe)
    opt_state = tx.init(params)
    losses = []
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=progress, unit="step", leave=True, dynamic_ncols=True)
    for i in range(steps):
        x, y = next(data)
        params, opt_state, loss = step(params, opt_state, x, y)
        if bar is not None:
            bar.update(1)
            if i % 20 == 0 or i == steps - 1:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        losses.append(loss)
    if bar is not None:
        bar.close()
    return params, opt_state, [float(v) for v in losses]
