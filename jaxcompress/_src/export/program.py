"""The exported inference program: the user's Flax model, its layers swapped by plan.

The program is the unmodified ``model.apply`` run under
``flax.linen.intercept_methods``: each planned Dense/Conv call is replaced by its
layer plan (``layers.py``, integer or float) reading its weights from the
program's *arguments*; a BatchNorm folded into the layer before it becomes the
identity; every other module runs as written on the float variables, also
passed as arguments. No weight is baked into the program as a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import numpy as np

from jaxcompress._src.export import layers

__all__ = ["Program", "probe_calls", "run_planned"]


class Program(NamedTuple):
    """``model.apply`` with planned calls swapped; ``fn(weights, x) -> y``.

    ``weights`` is ``{"layers": {path: arrays of the plan's weight form},
    "variables": the variables the model's own code still reads}``.
    """

    model: nn.Module
    plans: dict[str, layers.Plan]
    apply_kwargs: dict[str, Any]

    def __call__(self, weights: dict[str, Any], x: jax.Array) -> jax.Array:
        layer_weights = weights["layers"]

        def layer(path, plan, next_fun, args, kwargs):
            if not isinstance(plan, layers.ModelCode):
                return plan(args[0], layer_weights[path])
            if plan.spec is not None:
                args = (layers.fake_quantize(args[0], plan.spec).astype(args[0].dtype), *args[1:])
            out = next_fun(*args, **kwargs)
            return out if plan.out_spec is None else layers.fake_quantize(out, plan.out_spec).astype(out.dtype)

        return run_planned(self.model, weights["variables"], x, self.apply_kwargs, self.plans, layer)


def run_planned(
    model: nn.Module,
    variables: Any,
    x: Any,
    apply_kwargs: dict[str, Any],
    plans: dict[str, layers.Plan],
    layer: Callable,
) -> Any:
    """``model.apply`` with each planned call swapped: a folded BatchNorm returns its input,
    any other plan runs ``layer(path, plan, next_fun, args, kwargs)``."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        plan = plans.get(path)
        if plan is None:
            return next_fun(*args, **kwargs)
        if isinstance(plan, layers.FoldedBatchNorm):
            return args[0]
        return layer(path, plan, next_fun, args, kwargs)

    with nn.intercept_methods(interceptor):
        return model.apply(variables, x, **apply_kwargs)


class Call(NamedTuple):
    """One module call seen while probing the model."""

    path: str
    module: nn.Module
    inputs: Any
    kwargs: dict[str, Any]
    output: Any


def probe_calls(model: nn.Module, variables: Any, x: Any, apply_kwargs: dict[str, Any]) -> list[Call]:
    """Runs the model eagerly and records every submodule ``__call__`` in order."""
    calls: list[Call] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            path = "/".join(context.module.path)
            calls.append(Call(path, context.module, args[0] if args else None, dict(kwargs), out))
        return out

    with nn.intercept_methods(interceptor):
        try:
            model.apply(variables, x, **apply_kwargs)
        except flax.errors.ModifyScopeVariableError as e:
            raise ValueError(
                "The model updates its variables when applied (a BatchNorm in training mode?); export "
                "needs inference mode: pass `apply_kwargs` such as {'train': False}. "
                f"Flax said: {str(e).splitlines()[0]}"
            ) from None
        except Exception as e:  # a shape mismatch or any other failure of the user's forward pass
            first = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(
                f"`model.apply(variables, example)` failed on an `example` of shape {tuple(np.shape(x))} "
                f"and dtype {np.asarray(x).dtype}: {type(e).__name__}: {first}. Pass a batch the model accepts "
                f"(and the `apply_kwargs` it needs)."
            ) from e
    return calls


def batchnorm_pairs(calls: list[Call]) -> dict[str, str]:
    """``{batchnorm_path: producer_path}`` for BatchNorms applied directly to a Dense/Conv output."""
    pairs: dict[str, str] = {}
    for i, call in enumerate(calls):
        if not isinstance(call.module, nn.BatchNorm) or i == 0:
            continue
        prev = calls[i - 1]
        channels_last = call.module.axis in (-1, np.ndim(call.inputs) - 1)
        if isinstance(prev.module, (nn.Dense, nn.Conv)) and prev.output is call.inputs and channels_last:
            pairs[call.path] = prev.path
    return pairs


def batchnorm_affine(bn: nn.BatchNorm, variables: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mul, add)`` with ``bn(x) = x * mul + add`` in inference mode."""
    node_params = lookup(variables.get("params", {}), path) or {}
    stats = lookup(variables.get("batch_stats", {}), path)
    if stats is None:
        raise ValueError(f"BatchNorm {path!r} has no batch_stats in `variables`; pass the model's full variables.")
    mean = np.asarray(stats["mean"], np.float32)
    var = np.asarray(stats["var"], np.float32)
    mul = 1.0 / np.sqrt(var + np.float32(bn.epsilon))
    if bn.use_scale:
        mul = mul * np.asarray(node_params["scale"], np.float32)
    add = -mean * mul
    if bn.use_bias:
        add = add + np.asarray(node_params["bias"], np.float32)
    return mul.astype(np.float32), add.astype(np.float32)


def lookup(tree: Any, path: str) -> Any:
    node = tree
    for key in path.split("/"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def uses_running_average(call: Call) -> bool:
    """Whether a probed BatchNorm call ran in inference mode (running statistics)."""
    flag = call.kwargs.get("use_running_average", call.module.use_running_average)
    return bool(flag)


def timed_interleaved(
    programs: list[tuple[Callable, Any]], x, *, rounds: int = 3, repeats: int = 10, warmup: int = 3
) -> list[float]:
    """Median seconds of each ``fn(args, x)``, after warm-up, runs interleaved so drift hits all alike."""
    import time

    for fn, args in programs:
        for _ in range(warmup):
            jax.block_until_ready(fn(args, x))
    samples: list[list[float]] = [[] for _ in programs]
    for _ in range(rounds):
        for i, (fn, args) in enumerate(programs):
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(args, x))
                samples[i].append(time.perf_counter() - start)
    return [float(np.median(s)) for s in samples]
