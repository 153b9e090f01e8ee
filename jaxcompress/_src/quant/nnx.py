"""Activation quantization for Flax NNX models, through the layers' own op injection.

NNX layers take their contraction as an attribute: ``Linear.dot_general``,
``LinearGeneral.dot_general``, ``Conv.conv_general_dilated``,
``Einsum.einsum_op``. :func:`quantize_activations_nnx` sets, for each selected
layer of the model, that attribute to a wrapper that fake-quantizes the
layer's input (the left operand) and calls the original; on exit (``finally``)
the originals are put back. No JAX op is patched, no module replaced; layers
not selected are not touched.

Select layers with :func:`~jaxcompress.quant.activations` initialized on the
model's params, e.g. ``nnx.state(model, nnx.Param)`` (paths like
``"conv/kernel/value"``, module path ``"conv"``) or ``nnx.to_pure_dict`` of it.
Only layer inputs are supported (``outputs=True`` is an error here).

Example:
  >>> import jax.numpy as jnp, jaxcompress as jc
  >>> from flax import nnx
  >>> class Net(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.fc1 = nnx.Linear(3, 4, rngs=rngs)
  ...         self.fc2 = nnx.Linear(4, 2, rngs=rngs)
  ...     def __call__(self, x):
  ...         return self.fc2(nnx.relu(self.fc1(x)))
  >>> model = Net(nnx.Rngs(0))
  >>> aq = jc.quant.activations(8, rule="fc2", signed=False)
  >>> cstate = aq.init(nnx.state(model, nnx.Param))
  >>> with jc.quant.quantize_activations_nnx(model, cstate) as observed:
  ...     y = model(jnp.ones((5, 3)))
  >>> observed.visited
  ['fc2']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flax import nnx

from jaxcompress._src.quant import activations as activation
from jaxcompress._src.quant import hooks

__all__ = ["quantize_activations_nnx"]

# Layer type -> (attribute holding its contraction, position of the input among that op's arguments)
_INJECTION = (
    (nnx.Linear, "dot_general", 0),
    (nnx.LinearGeneral, "dot_general", 0),
    (nnx.Conv, "conv_general_dilated", 0),
    (nnx.Einsum, "einsum_op", 1),
)


def _injection(module: Any, path: str) -> tuple[str, int]:
    for cls, attr, position in _INJECTION:
        if isinstance(module, cls):
            if attr == "dot_general" and getattr(module, "dot_general_cls", None) is not None:
                raise TypeError(
                    f"NNX layer {path!r} uses `dot_general_cls`, which bypasses `dot_general`; "
                    "activation quantization cannot hook it."
                )
            return attr, position
    names = ", ".join(cls.__name__ for cls, _, _ in _INJECTION)
    raise TypeError(f"Module {path!r} is a {type(module).__name__}; NNX activation quantization supports {names}.")


@contextlib.contextmanager
def quantize_activations_nnx(model: nnx.Module, cstate: Any) -> Iterator[hooks.Observed]:
    """Fake-quantizes the inputs of an NNX model's selected layers while the context is open.

    Args:
      model: the ``nnx.Module`` to run (inside ``nnx.jit`` too).
      cstate: a compression state holding :func:`~jaxcompress.quant.activations`
        states built from this model's params.

    Yields:
      A :class:`jaxcompress.quant.hooks.Observed` record.

    Raises:
      ValueError: no activation state in ``cstate``; a selected module path is
        not in ``model`` (the message lists the model's module paths); or
        ``outputs=True`` was asked for.
      TypeError: a selected module is not a supported layer.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
    sites = activation.require_sites(cstate)
    if any(kind == "outputs" for _, kind in sites):
        raise ValueError("NNX activation quantization supports layer inputs only; use `outputs=False`.")
    layers = {"/".join(str(p) for p in path): m for path, m in nnx.iter_modules(model)}
    missing = [m for m, _ in sites if m not in layers]
    if missing:
        raise ValueError(f"`cstate` selects modules {missing} that `model` lacks. Module paths: {sorted(layers)}.")
    observed = hooks.Observed()
    patched: list[tuple[Any, str, Any]] = []
    try:
        for (path, _), site in sites.items():
            layer = layers[path]
            attr, position = _injection(layer, path)
            original = getattr(layer, attr)

            def wrapped(*args, _original=original, _position=position, _site=site, **kwargs):
                args = list(args)
                args[_position], r = activation.quantize_site(args[_position], _site)
                observed.record(_site.module, "inputs", r)
                return _original(*args, **kwargs)

            setattr(layer, attr, wrapped)
            patched.append((layer, attr, original))
        yield observed
    finally:
        for layer, attr, original in reversed(patched):
            setattr(layer, attr, original)
