"""Activation quantization inside an unmodified Flax linen model, via ``nn.intercept_methods``.

:func:`quantize_activations` is a context manager: inside it, every
``__call__`` of a module selected by an :func:`~jaxcompress.quant.activations`
transform in ``cstate`` gets its first positional argument (the input)
fake-quantized, and its output too with ``outputs=True``. Nothing else is
touched: no module is swapped, no JAX op is patched, other methods and other
modules run as written. The hook is Flax's own thread-local interceptor stack,
pushed on entry and popped in ``finally``; outside the context there is no
cost at all. It works under ``jit`` and ``grad`` (the context belongs inside
the traced function, around ``model.apply``).

The context yields an :class:`Observed` record: the batch ranges of the
static-mode sites (``observed.ranges``, for running statistics: pass them to
``tx.update(..., activation_stats=observed.ranges)``, returned from the loss
as ``aux``) and the module paths that ran (``observed.visited``).

Example:
  >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
  >>> class Net(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         return nn.Dense(2)(nn.relu(nn.Dense(4)(x)))
  >>> model = Net()
  >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
  >>> aq = jc.quant.activations(4, rule="Dense_1", signed=False)
  >>> cstate = aq.init(params)
  >>> with jc.quant.quantize_activations(cstate) as observed:
  ...     y = model.apply({"params": params}, jnp.ones((5, 3)))
  >>> observed.visited
  ['Dense_1']
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn

from jaxcompress._src.quant import activations as activation
from jaxcompress._src.quant.grid import Range, range_union

__all__ = ["Observed", "intercept_layers", "quantize_activations"]


@dataclasses.dataclass
class Observed:
    """What a :func:`quantize_activations` context saw while the model ran."""

    ranges: dict[str, dict[str, Range]] = dataclasses.field(
        default_factory=lambda: {kind: {} for kind in activation.KINDS}
    )  # {"inputs": {module: Range}, "outputs": {...}}: batch ranges of static-mode sites
    visited: list[str] = dataclasses.field(default_factory=list)  # module paths whose inputs were quantized

    def record(self, module: str, kind: str, r: Range | None) -> None:
        if kind == "inputs" and module not in self.visited:
            self.visited.append(module)
        if r is None:
            return
        seen = self.ranges[kind]
        if module in seen:  # a module called twice: the union of its ranges
            r = range_union(seen[module], r)
        seen[module] = r


SiteFn = Callable[[str, str, Any], Any]  # (module path, "inputs" | "outputs", array) -> array


@contextlib.contextmanager
def intercept_layers(modules: set[str], outputs: set[str], site_fn: SiteFn) -> Iterator[None]:
    """Runs ``site_fn`` on the input of every linen module in ``modules`` (and output if in ``outputs``).

    The low-level hook both quantization and calibration use.
    """

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not args:
            return next_fun(*args, **kwargs)
        path = "/".join(str(p) for p in context.module.path)
        if path not in modules:
            return next_fun(*args, **kwargs)
        y = next_fun(site_fn(path, "inputs", args[0]), *args[1:], **kwargs)
        return site_fn(path, "outputs", y) if path in outputs else y

    with nn.intercept_methods(interceptor):
        yield


@contextlib.contextmanager
def quantize_activations(cstate: Any, *, axis_name: str | None = None) -> Iterator[Observed]:
    """Fake-quantizes activations of a linen model's selected layers while the context is open.

    Args:
      cstate: a compression state holding one or more
        :func:`~jaxcompress.quant.activations` states (e.g.
        ``jc.optim.compression_state(opt_state)``, or the state passed to a
        loss by :func:`jaxcompress.optim.value_and_grad`, so that LSQ/PACT
        parameters get gradients).
      axis_name: inside ``jax.pmap``, the mapped axis: batch ranges (and so the
        observed ranges) are the union over the replicas, so each replica
        quantizes as one device would on the global batch. Sharded ``jit``
        needs none: there a batch range is already the global batch's.

    Yields:
      An :class:`Observed` record (see the module docstring).

    Raises:
      ValueError: if ``cstate`` holds no activation transform state, or two of
        them select the same module.
    """
    sites = activation.require_sites(cstate, hint="add jc.quant.activations(...) to the recipe.")
    observed = Observed()

    def site_fn(module: str, kind: str, x: Any) -> Any:
        xq, r = activation.quantize_site(x, sites[(module, kind)], axis_name)
        observed.record(module, kind, r)
        return xq

    modules = {m for m, kind in sites if kind == "inputs"}
    outs = {m for m, kind in sites if kind == "outputs"}
    with intercept_layers(modules, outs, site_fn):
        yield observed
