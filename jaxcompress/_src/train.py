"""A minimal supervised loop for classifiers, with or without compression."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress._src import core, optim

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, x) -> logits


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy against integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    recipe: core.Recipe | None = None,
    *,
    axis_name: str | None = None,
    out_shardings: Any = None,
):
    """A jitted ``step(params, opt_state, x, y) -> (params, opt_state, loss)``.

    With a ``recipe``, ``tx`` must come from :func:`jaxcompress.optim.with_compression`;
    the forward pass runs on ``recipe.apply(params, cstate)``, inside
    :func:`jaxcompress.quant.quantize_activations` when the recipe quantizes
    activations (their running statistics go back to the optimizer as
    ``activation_stats``), and the recipe's learned parameters (LSQ, PACT,
    codebooks) are trained through ``learned_grads``. ``apply_fn`` must be a
    Flax linen ``apply`` for activation quantization to reach its layers.

    Sharded ``jit`` (params, state and batch placed over a ``Mesh``) needs
    nothing more: the batch means, activation ranges and global thresholds
    reduce across devices inside the program. Pass ``out_shardings=(params'
    shardings, opt_state's shardings, None)`` (see
    :func:`jaxcompress.train.state_shardings`) to keep every leaf where it is.

    Under ``jax.pmap(step, axis_name=...)`` pass the same ``axis_name``: the
    gradients, learned-parameter gradients and loss are averaged over it and
    activation ranges are the union over the replicas (``pmin`` / ``pmax``),
    so every replica takes the same step, the one a single device takes on
    the global batch.
    """
    if recipe is None:

        def plain_loss(params, x, y):
            return cross_entropy(apply_fn(params, x), y)

        def plain_step(params, opt_state, x, y):
            loss, grads = _mean_over(axis_name, jax.value_and_grad(plain_loss)(params, x, y))
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return jax.jit(plain_step, out_shardings=out_shardings)

    core.check_recipe(recipe)
    from jaxcompress._src.quant import activations, hooks

    def loss_fn(params, cstate, x, y):
        compressed = recipe.apply(params, cstate)
        if not activations.find_states(cstate):
            return cross_entropy(apply_fn(compressed, x), y), {}
        with hooks.quantize_activations(cstate, axis_name=axis_name) as observed:
            logits = apply_fn(compressed, x)
        return cross_entropy(logits, y), observed.ranges

    def step(params, opt_state, x, y):
        cstate = optim.compression_state(opt_state)
        (loss, ranges), grads, learned_grads = optim.value_and_grad(loss_fn, has_aux=True)(params, cstate, x, y)
        loss, grads, learned_grads = _mean_over(axis_name, (loss, grads, learned_grads))
        extra = {"activation_stats": ranges} if ranges else {}
        updates, opt_state = tx.update(grads, opt_state, params, learned_grads=learned_grads, **extra)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, out_shardings=out_shardings)


def _mean_over(axis_name: str | None, tree: Any) -> Any:
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


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
    recipe: core.Recipe | None = None,
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
