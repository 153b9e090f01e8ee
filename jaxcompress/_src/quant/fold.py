"""BatchNorm folding: what is quantized is what will be exported.

In inference mode a BatchNorm after a Conv or Dense layer is an affine map per
output channel, so it folds into the layer:

.. math::

    w' = w \\cdot \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad
    b' = (b - \\mu) \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

(per output channel, the kernel's last axis). :func:`fold_batchnorm` returns
params and batch statistics for the *same* model in which each folded
BatchNorm is the identity (``gamma = 1``, ``beta = 0``, ``mean = 0``,
``var = v`` with ``v + eps == 1`` exactly in float32); if the layer has no bias
(``use_bias=False``, usual before a BatchNorm), the shift ``b'`` stays in the
BatchNorm's ``beta``. Quantize the folded kernels; the exporter drops the
identity BatchNorms.

:func:`infer_batchnorm_pairs` finds the pairs by running the model once: a
BatchNorm is paired with the Conv/Dense whose output it consumes directly.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018, section 3.2.
  https://arxiv.org/abs/1712.05877
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress._src import paths as paths_lib

__all__ = ["fold_batchnorm", "infer_batchnorm_pairs"]


def _unit_variance(epsilon: float) -> np.float32:
    """A float32 ``v`` with ``float32(v + eps) == 1`` (so the identity BatchNorm divides by exactly 1)."""
    eps = np.float32(epsilon)
    v = np.float32(1.0) - eps
    for _ in range(8):
        total = np.float32(v + eps)
        if total == np.float32(1.0):
            return v
        v = np.nextafter(v, np.float32(2.0) if total < 1 else np.float32(0.0), dtype=np.float32)
    raise ValueError(f"`epsilon`={epsilon!r}: no float32 variance makes var + epsilon exactly 1.")


def _subtree(tree: Mapping[str, Any], path: str, *, argument: str) -> Mapping[str, Any]:
    node: Any = tree
    for part in path.split("/") if path else []:
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"`{argument}` has no module {path!r}. Top-level keys: {list(tree)}.")
        node = node[part]
    return node


def _set(tree: Mapping[str, Any], path: str, leaf_name: str, value: Any) -> dict:
    """A copy of ``tree`` with ``path/leaf_name`` replaced (dicts rebuilt along the path)."""
    parts = [*(path.split("/") if path else []), leaf_name]

    def rebuild(node, i):
        node = dict(node)
        node[parts[i]] = value if i == len(parts) - 1 else rebuild(node[parts[i]], i + 1)
        return node

    return rebuild(tree, 0)


def fold_batchnorm(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    pairs: Mapping[str, str],
    *,
    epsilon: float = 1e-5,
) -> tuple[dict, dict]:
    """Folds BatchNorms into their preceding Conv/Dense kernels and biases.

    Args:
      params: the model's ``variables["params"]`` (nested dicts).
      batch_stats: ``variables["batch_stats"]``.
      pairs: ``{layer module path: BatchNorm module path}``, e.g.
        ``{"Conv_0": "BatchNorm_0"}`` (or from :func:`infer_batchnorm_pairs`).
      epsilon: the BatchNorms' ``epsilon`` (Flax's default is 1e-5).

    Returns:
      ``(params, batch_stats)`` for the same model: folded kernels and biases,
      each folded BatchNorm the identity (see the module docstring).

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         return nn.BatchNorm(use_running_average=True)(nn.Dense(3)(x))
      >>> model, x = Net(), jnp.ones((2, 4))
      >>> v = model.init(jax.random.key(0), x)
      >>> stats = {"BatchNorm_0": {"mean": jnp.arange(3.0), "var": jnp.full((3,), 4.0)}}
      >>> p, s = jc.quant.fold_batchnorm(v["params"], stats, {"Dense_0": "BatchNorm_0"})
      >>> bool(jnp.allclose(model.apply({"params": p, "batch_stats": s}, x),
      ...                   model.apply({"params": v["params"], "batch_stats": stats}, x), atol=1e-6))
      True
    """
    if not isinstance(pairs, Mapping) or not pairs:
        raise TypeError(f"`pairs` must be a non-empty mapping {{layer path: BatchNorm path}}, got {pairs!r}.")
    var_one = _unit_variance(epsilon)
    eps = jnp.float32(epsilon)
    for layer, bn in pairs.items():
        conv = _subtree(params, layer, argument="params")
        bn_params = _subtree(params, bn, argument="params")
        stats = _subtree(batch_stats, bn, argument="batch_stats")
        if "kernel" not in conv:
            raise ValueError(f"`pairs`: module {layer!r} has no kernel (its params: {list(conv)}).")
        if "mean" not in stats or "var" not in stats:
            raise ValueError(f"`batch_stats` of {bn!r} must hold 'mean' and 'var', got {list(stats)}.")
        kernel = conv["kernel"]
        c = kernel.shape[-1]
        if stats["mean"].shape != (c,):
            raise ValueError(
                f"`pairs`: {layer!r} has {c} output channels but BatchNorm {bn!r} normalizes "
                f"{stats['mean'].shape} features; they cannot be paired."
            )
        dtype = kernel.dtype
        gamma = jnp.asarray(bn_params.get("scale", jnp.ones((c,))), jnp.float32)
        beta = jnp.asarray(bn_params.get("bias", jnp.zeros((c,))), jnp.float32)
        mean, var = jnp.asarray(stats["mean"], jnp.float32), jnp.asarray(stats["var"], jnp.float32)
        factor = gamma / jnp.sqrt(var + eps)
        params = _set(
            params,
            layer,
            "kernel",
            (kernel.astype(jnp.float32) * jnp.reshape(factor, (1,) * (kernel.ndim - 1) + (c,))).astype(dtype),
        )
        bias = jnp.asarray(conv["bias"], jnp.float32) if "bias" in conv else jnp.zeros((c,), jnp.float32)
        shift = (bias - mean) * factor + beta
        if "bias" in conv:
            params = _set(params, layer, "bias", shift.astype(conv["bias"].dtype))
            shift = jnp.zeros((c,), jnp.float32)
        if "scale" in bn_params:
            params = _set(params, bn, "scale", jnp.ones((c,), bn_params["scale"].dtype))
        if "bias" in bn_params:
            params = _set(params, bn, "bias", shift.astype(bn_params["bias"].dtype))
        elif bool(jnp.any(shift != 0)):
            raise ValueError(
                f"{layer!r} has no bias and BatchNorm {bn!r} has no beta (use_bias=False): the folded shift "
                "has nowhere to go."
            )
        batch_stats = _set(batch_stats, bn, "mean", jnp.zeros((c,), stats["mean"].dtype))
        batch_stats = _set(batch_stats, bn, "var", jnp.full((c,), var_one, stats["var"].dtype))
    return params, batch_stats


def infer_batchnorm_pairs(model: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    """``{layer path: BatchNorm path}`` for every BatchNorm that directly consumes a Conv/Dense output.

    Runs ``model.apply(variables, *args, **kwargs)`` once (abstractly, with
    ``jax.eval_shape``) and watches module calls: a BatchNorm whose input is
    the very array a module with a kernel just returned is paired with it.

    Raises:
      ValueError: if no pair is found.
    """
    pairs: dict[str, str] = {}
    producers: dict[int, tuple[Any, str]] = {}  # id -> (the output itself, kept alive; its producer)

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if context.method_name != "__call__" or not call_args:
            return out
        path = "/".join(str(p) for p in context.module.path)
        if isinstance(context.module, nn.BatchNorm):
            source = producers.get(id(call_args[0]))
            if source is not None and source[0] is call_args[0]:
                pairs[source[1]] = path
        elif context.module.has_variable("params", "kernel"):
            producers[id(out)] = (out, path)
        return out

    def run(variables):
        with nn.intercept_methods(interceptor):
            return model.apply(variables, *args, **kwargs)

    jax.eval_shape(run, variables)
    if not pairs:
        flat = list(paths_lib.flatten(variables)[0])
        raise ValueError(f"No BatchNorm directly follows a Conv/Dense in `model`; pass `pairs` by hand. Paths: {flat}.")
    return pairs
