"""Shardings of compression and optimizer state, derived from the params' shardings.

A state leaf belongs to the param it was built for, and is placed like it:

* a copy of the params inside an optimizer state (Adam's moments, momentum
  traces: a leaf whose key path ends with a param's key path, with its shape)
  gets that param's sharding;
* a leaf under a dict key naming a param's path (``masks.keep["Dense_0/kernel"]``,
  ``scales["Dense_0/kernel"]``, every jaxcompress state keys its per-leaf
  entries so) is sharded along the param's sharded axes it keeps: dims equal
  to the param's (aligned from the right, as broadcasting aligns them) take the
  param's mesh axes, dims of size 1 are replicated. A bit-packed mask
  (:class:`~jaxcompress.masks.PackedMask`, shape ``(ceil(rows / 8), cols)``)
  keeps the param's last axis, and its leading axis where whole bytes of rows
  fall on each device;
* every other leaf (step counters, schedule values, PRNG keys, activation
  ranges) is replicated over the params' mesh.

A dim a mesh axis does not divide is replicated, so every derived sharding is
valid for its leaf. Jaxpruner asks its users to write these shardings by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from jaxcompress._src import masks as masks_lib
from jaxcompress._src import paths as paths_lib

__all__ = [
    "Collective",
    "collectives",
    "fsdp_shardings",
    "init_sharded",
    "param_shardings",
    "place_like",
    "state_shardings",
]


class Collective(NamedTuple):
    """One operand of a cross-device collective of a compiled program (see :func:`collectives`)."""

    kind: str  # all-reduce, all-gather, all-to-all, collective-permute or reduce-scatter
    dtype: str  # HLO element type: f32, s32, u8, pred, ...
    elements: int  # elements of this result operand
    bytes: int


_COLLECTIVE = re.compile(r"= (.+?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf][0-9]+|bf16)\[([0-9,]*)\]")


def collectives(compiled: Any) -> list[Collective]:
    """Every cross-device collective of a compiled program, one entry per result operand, read from its HLO.

    ``compiled`` is ``jax.jit(f).lower(*args).compile()`` or its ``as_text()``.
    What a sharded step communicates, per call: the sum of ``bytes``. A check
    that global decisions (thresholds, calibration ranges) never gather a
    leaf: every collective holds a handful of elements.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    found = []
    for shapes, kind in _COLLECTIVE.findall(text):
        for dtype, dims in _ARRAY.findall(shapes):
            n = math.prod(int(d) for d in dims.split(",") if d)
            bits = 8 if dtype == "pred" else 16 if dtype == "bf16" else int(dtype[1:])
            found.append(Collective(kind, dtype, n, n * bits // 8))
    return found


def param_shardings(params: Any) -> Any:
    """The sharding of every leaf of ``params`` (placed arrays, or ``jax.ShapeDtypeStruct`` with a sharding)."""

    def sharding_of(path, x):
        sharding = getattr(x, "sharding", None)
        if not isinstance(sharding, Sharding):
            raise TypeError(
                f"`params` leaf {jax.tree_util.keystr(path)} has no sharding (found {type(x).__name__}): pass "
                f"jax.Arrays placed with jax.device_put, or jax.ShapeDtypeStruct(shape, dtype, sharding=...)."
            )
        return sharding

    return jax.tree_util.tree_map_with_path(sharding_of, params)


def fsdp_shardings(params: Any, mesh: jax.sharding.Mesh, axis: str = "fsdp", *, min_size: int = 1024) -> Any:
    """FSDP-style shardings: each leaf split over mesh ``axis`` along its largest dim that axis divides.

    Leaves with fewer than ``min_size`` entries, or no dim the axis divides,
    are replicated. The result is a pytree of ``NamedSharding`` shaped like
    ``params`` (``params`` may hold arrays or ``jax.ShapeDtypeStruct``).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, jaxcompress as jc
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
      >>> specs = jc.train.fsdp_shardings({"w": jnp.ones((4096, 3)), "b": jnp.ones(3)}, mesh)
      >>> specs["w"].spec, specs["b"].spec
      (P('fsdp', None), P())
    """
    if axis not in mesh.shape:
        raise ValueError(f"`axis` {axis!r} is not an axis of the mesh; its axes are {tuple(mesh.shape)}.")
    n = mesh.shape[axis]

    def spec_of(x):
        shape = tuple(np.shape(x))
        if math.prod(shape) < min_size:
            return NamedSharding(mesh, PartitionSpec())
        divisible = [d for d in range(len(shape)) if shape[d] % n == 0]
        if not divisible:
            return NamedSharding(mesh, PartitionSpec())
        dim = max(divisible, key=lambda d: (shape[d], -d))
        return NamedSharding(mesh, PartitionSpec(*(axis if d == dim else None for d in range(len(shape)))))

    return jax.tree.map(spec_of, params)


def state_shardings(state: Any, params: Any) -> Any:
    """A sharding for every leaf of ``state``, derived from the params' shardings (module docstring).

    Args:
      state: a compression state, or an optimizer state holding one (from
        :func:`jaxcompress.optim.with_compression`): arrays or the
        ``jax.ShapeDtypeStruct`` of ``jax.eval_shape(tx.init, params)``.
      params: the params the state was built for: placed arrays, or
        ``jax.ShapeDtypeStruct`` with shardings.

    Returns:
      A pytree of shardings with the structure of ``state``: pass it as
      ``jax.jit(..., out_shardings=...)`` or to ``jax.device_put``.
    """
    shardings = param_shardings(params)
    flat_shardings, _ = paths_lib.flatten(shardings)
    shapes = {p: tuple(np.shape(x)) for p, x in paths_lib.flatten(params)[0].items()}
    by_key_path = {
        tuple(kp): p for (kp, _), p in zip(jax.tree_util.tree_leaves_with_path(shardings), flat_shardings, strict=True)
    }
    replicated = _replicated(list(flat_shardings.values()))

    def leaf_sharding(key_path, leaf):
        path = _owner(tuple(key_path), by_key_path, flat_shardings, shapes, np.shape(leaf))
        if path is None:
            return replicated
        return _derive(flat_shardings[path], shapes[path], tuple(np.shape(leaf)), packed=_is_packed_bits(key_path))

    return jax.tree_util.tree_map_with_path(leaf_sharding, state)


def place_like(state: Any, params: Any) -> Any:
    """``state`` placed with :func:`state_shardings` by ``jax.device_put``, where the params are sharded.

    Traced params carry no sharding to derive from: under ``jit`` ``state`` is
    returned unchanged (build a state in place with :func:`init_sharded`, or pass
    :func:`state_shardings` as ``out_shardings``). Params on one device, or
    host values, leave ``state`` unchanged too; params spanning several
    processes are a ``ValueError`` (use :func:`init_sharded` there).
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        return state
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state) + leaves):
        return state
    if not all(isinstance(x, jax.Array) for x in leaves) or all(len(x.sharding.device_set) == 1 for x in leaves):
        return state  # host values or one device: nothing to place
    if not all(x.is_fully_addressable for x in leaves):
        raise ValueError(
            "The params span several processes: a state built eagerly here would hold leaves on this process's "
            "devices only. Build it in place with jc.train.init_sharded(tx.init, params)."
        )
    return jax.device_put(state, state_shardings(state, params))


def init_sharded(init: Callable[[Any], Any], params: Any) -> Any:
    """``init(params)`` run under ``jit`` with every state leaf created in place, sharded like its param.

    ``init`` is an optax ``tx.init`` (from
    :func:`jaxcompress.optim.with_compression` or not) or a recipe's ``init``.
    No leaf is built on one device first, so a state larger than one device's
    memory can be built.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxcompress as jc
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
      >>> params = jax.device_put({"w": jnp.ones((64, 8))}, jax.sharding.NamedSharding(mesh, jax.P("fsdp")))
      >>> tx = jc.optim.with_compression(optax.sgd(0.1), jc.prune.magnitude(0.5))
      >>> state = jc.train.init_sharded(tx.init, params)
      >>> jc.optim.compression_state(state).masks.keep["w"].bits.sharding.spec
      P('fsdp',)
    """
    abstract = jax.eval_shape(init, params)
    return jax.jit(init, out_shardings=state_shardings(abstract, params))(params)


def _owner(key_path, by_key_path, flat_shardings, shapes, shape) -> str | None:
    """The path of the param ``key_path``'s leaf belongs to, else None."""
    for i in range(len(key_path)):  # a copy of the params: the longest suffix that is a param's key path
        path = by_key_path.get(key_path[i:])
        if path is not None and shapes[path] == tuple(shape):
            return path
    for key in reversed(key_path):  # an entry keyed by the param's path
        name = getattr(key, "key", None)
        if isinstance(name, str) and name in flat_shardings:
            return name
    return None


def _is_packed_bits(key_path) -> bool:
    return bool(key_path) and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and key_path[-1].name == "bits"


def _replicated(shardings: list[Sharding]) -> Sharding:
    for s in shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, PartitionSpec())
    first = shardings[0]
    if len(first.device_set) == 1:
        return first
    raise TypeError(
        f"The params are placed with {type(first).__name__} over {len(first.device_set)} devices; state "
        f"shardings are derived from NamedSharding: place the params with jax.sharding.NamedSharding."
    )


def _derive(sharding: Sharding, param_shape, shape: tuple[int, ...], *, packed: bool) -> Sharding:
    if shape == param_shape:
        return sharding
    if not isinstance(sharding, NamedSharding):
        return _replicated([sharding])
    mesh = sharding.mesh
    spec = tuple(sharding.spec) + (None,) * (len(param_shape) - len(sharding.spec))
    if packed and param_shape:
        rows, cols = masks_lib.rows_cols(param_shape)
        if shape == (-(-rows // 8), cols):
            # Rows split on the first axis alone fall on whole bytes when each device holds a multiple of 8.
            lead = spec[0] if all(a is None for a in spec[1:-1]) else None
            if lead is not None and (rows // _size(mesh, lead)) % 8 != 0:
                lead = None
            return _valid(mesh, (lead, spec[-1] if len(param_shape) > 1 else None), shape)
    aligned = spec[len(param_shape) - len(shape) :] if len(shape) <= len(param_shape) else (None,) * len(shape)
    entries = tuple(
        a if len(shape) <= len(param_shape) and d == param_shape[len(param_shape) - len(shape) + i] else None
        for i, (a, d) in enumerate(zip(aligned, shape, strict=True))
    )
    return _valid(mesh, entries, shape)


def _size(mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def _valid(mesh, entries, shape) -> NamedSharding:
    entries = tuple(
        None if a is None or a is PartitionSpec.UNCONSTRAINED or d % _size(mesh, a) else a
        for a, d in zip(entries, shape, strict=True)
    )
    while entries and entries[-1] is None:
        entries = entries[:-1]
    return NamedSharding(mesh, PartitionSpec(*entries))
