"""ADMM joint pruning and quantization: train toward "at most k nonzeros on a b-bit grid", then project.

The problem ``min_W loss(W)`` subject to ``W_l in S_l`` for each selected
layer ``l``, with ``S_l`` the set of tensors with at most ``k_l`` nonzeros,
each a level of a symmetric ``b_l``-bit grid ``s * {-Q, ..., Q}``
(``Q = 2^(b-1) - 1``, any step ``s``), is split by ADMM into:

* the **W-step**: ordinary training of the loss plus the augmented-Lagrangian
  term :func:`admm_penalty`, ``rho / 2 * ||W - Z + U||^2`` (add it to your loss);
* the **Z-step**, every ``every`` updates: ``Z = project(W + U)``, the
  Euclidean projection onto ``S_l`` (:func:`project`);
* the **dual step**, with it: ``U = U + W - Z`` (scaled dual variables); ``rho``
  grows by ``rho_growth`` at each dual step, and ``U`` is rescaled so that
  ``rho * U`` (the unscaled dual) is unchanged.

:func:`admm` is the transform that holds ``Z``, ``U`` and ``rho`` and runs the
Z and dual steps on its own counter (its ``apply`` is the identity: the
weights train dense). :func:`hard_projection` ends the ADMM phase: it
projects the weights and returns them with :func:`fixed_grid`, the quantizer
for masked retraining (the support frozen, the grid step fixed), which
exports as integer codes.

The projection for a fixed step ``s`` is exact: each weight either becomes 0
(cost ``v^2``) or its nearest *nonzero* level (cost ``(v - s q)^2``), so the
best tensor keeps the ``k`` weights whose nonzero level saves the most. The
step is the best of a few candidates, refined by alternating least squares
(each refinement lowers the distance).

References:
  Ye et al., "A Unified Framework of DNN Weight Pruning and Weight
  Clustering/Quantization Using ADMM", 2018. https://arxiv.org/abs/1811.01907
  Boyd et al., "Distributed Optimization and Statistical Learning via the
  Alternating Direction Method of Multipliers", 2011 (scaled form, rho updates).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import masks as packed
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.prune import distributions
from jaxcompress._src.quant.grid import check_bits
from jaxcompress._src.quant.ste import straight_through

__all__ = [
    "ADMMState",
    "FixedGridState",
    "LayerBudget",
    "admm",
    "admm_penalty",
    "fixed_grid",
    "hard_projection",
    "project",
]

_CANDIDATES = 12  # grid steps tried before refinement, spread over (0, max|v| / Q]
_REFINEMENTS = 4


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LayerBudget:
    """Static per-leaf constraints: the nonzeros allowed (``keep``) and the grid's width (``bits``)."""

    keep: tuple[tuple[str, int], ...]  # (path, k) pairs
    bits: tuple[tuple[str, int], ...]  # (path, bits) pairs

    def k(self, path: str) -> int:
        return dict(self.keep)[path]

    def width(self, path: str) -> int:
        return dict(self.bits)[path]


class ADMMState(NamedTuple):
    """State of :func:`admm`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    rho: jax.Array  # shape=(), dtype=float32: the penalty weight now
    z: dict[str, jax.Array]  # by path: the latest projection of W + U, float32, leaf shape
    u: dict[str, jax.Array]  # by path: scaled dual variables, float32, leaf shape
    budget: LayerBudget  # static


def _levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _assign(v: jax.Array, step: jax.Array, k: int, q_max: int) -> tuple[jax.Array, jax.Array]:
    """The nearest point to flat ``v`` with at most ``k`` nonzero levels of ``step * {-q_max..q_max}``: codes, cost."""
    q = jnp.clip(jnp.round(v / step), -q_max, q_max)
    q = jnp.where(q == 0, jnp.where(v < 0, -1.0, 1.0), q)  # nearest nonzero level
    saving = v * v - (v - step * q) ** 2
    if k == 0:
        chosen = jnp.zeros(v.shape, bool)
    elif k < v.size:
        threshold = lax.top_k(saving, k)[0][-1]
        chosen = (saving >= threshold) & (saving > 0)
        # ties at the threshold could keep more than k: keep the first k of them
        chosen = chosen & (jnp.cumsum(chosen) <= k)
    else:
        chosen = saving > 0
    codes = jnp.where(chosen, q, 0.0)
    return codes, jnp.sum((v - step * codes) ** 2)


def project(v: jax.Array, k: int, bits: int) -> tuple[jax.Array, jax.Array]:
    """Projects ``v`` onto "at most ``k`` nonzeros, each a level of a symmetric ``bits``-bit grid".

    For each candidate step the assignment is exact (see the module
    docstring); the best candidate's step is then refined by least squares
    on its codes and the codes re-assigned, which never increases the
    distance.

    Args:
      v: a float array.
      k: the most nonzeros allowed (``0 <= k``).
      bits: the grid's width, 2 to 8 (levels ``-Q..Q``, ``Q = 2^(bits-1) - 1``).

    Returns:
      ``(codes, step)``: integer-valued float32 codes in ``[-Q, Q]`` of ``v``'s
      shape, at most ``k`` nonzero, and the step (shape ``()``); the
      projection is ``codes * step``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import joint
      >>> codes, step = joint.project(jnp.array([0.1, -1.0, 0.45, 0.9]), k=2, bits=2)
      >>> codes.tolist(), round(float(step), 2)
      ([0.0, -1.0, 0.0, 1.0], 0.95)
    """
    k = validate.check_int(k, argument="k", minimum=0)
    bits = check_bits(bits)
    shape, flat = jnp.shape(v), jnp.ravel(jnp.asarray(v, jnp.float32))
    if k == 0 or flat.size == 0:
        return jnp.zeros(shape, jnp.float32), jnp.ones((), jnp.float32)
    q_max = _levels(bits)
    top = jnp.max(jnp.abs(flat))
    top = jnp.where(top > 0, top, 1.0)
    candidates = top / q_max * jnp.arange(1, _CANDIDATES + 1, dtype=jnp.float32) / _CANDIDATES
    costs = jax.vmap(lambda s: _assign(flat, s, k, q_max)[1])(candidates)
    step = candidates[jnp.argmin(costs)]
    codes, cost = _assign(flat, step, k, q_max)

    def refine(_, carry):
        step, codes, cost = carry
        norm = jnp.sum(codes * codes)
        fitted = jnp.where(norm > 0, jnp.sum(flat * codes) / jnp.where(norm > 0, norm, 1.0), step)
        fitted = jnp.where(fitted > 0, fitted, step)
        new_codes, new_cost = _assign(flat, fitted, k, q_max)
        better = new_cost < cost
        return jnp.where(better, fitted, step), jnp.where(better, new_codes, codes), jnp.minimum(new_cost, cost)

    step, codes, _ = lax.fori_loop(0, _REFINEMENTS, refine, (step, codes, cost))
    return jnp.reshape(codes, shape), step


_project_jit = jax.jit(project, static_argnums=(1, 2))


@functools.partial(jax.jit, static_argnums=(1, 2))  # one program per leaf at init, inlined under jit
def _projected(v: jax.Array, k: int, bits: int) -> jax.Array:
    codes, step = project(v, k, bits)
    return codes * step


def admm(
    sparsity: float,
    bits: int,
    *,
    every: int,
    rho: float = 1e-3,
    rho_growth: float = 1.0,
    overrides: Mapping[paths_lib.Rule, float] | None = None,
    bits_overrides: Mapping[paths_lib.Rule, int] | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Transform:
    """ADMM toward sparse weights on a low-bit grid (Ye et al. 2018); see the module docstring.

    Train with ``loss + jc.joint.admm_penalty(params, cstate)`` under
    :func:`jaxcompress.optim.with_compression`; at the end, call
    :func:`hard_projection` and retrain with the quantizer it returns.

    Args:
      sparsity: the fraction of each selected leaf's weights that must be zero, in ``[0, 1)``.
      bits: the grid's width, 2 to 8.
      every: updates between Z/dual steps (``>= 1``).
      rho: the initial penalty weight (``> 0``).
      rho_growth: the factor ``rho`` grows by at each dual step (``>= 1``).
      overrides: ``{rule: sparsity}`` for leaves that differ from ``sparsity``.
      bits_overrides: ``{rule: bits}`` for leaves that differ from ``bits``.
      rule: which leaves to constrain (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`ADMMState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> method = jc.joint.admm(0.5, 2, every=1)
      >>> state = method.init({"w": jnp.array([[0.1, -1.0], [0.45, 0.9]])})
      >>> (state.z["w"] != 0).sum().item(), state.budget.k("w")
      (2, 2)
    """
    sparsity = validate.check_fraction(sparsity, argument="sparsity")
    bits = check_bits(bits)
    every = validate.check_int(every, argument="every", minimum=1)
    rho = _positive(rho, "rho")
    rho_growth = _positive(rho_growth, "rho_growth")
    if rho_growth < 1.0:
        raise ValueError(f"`rho_growth` must be >= 1 (rho only grows), got {rho_growth!r}.")
    selector = paths_lib.as_selector(rule)
    _check_bits_overrides(bits_overrides)

    def init(params: Any) -> ADMMState:
        flat, selected = validate.selected_weights(selector, params)
        fractions = distributions.resolve_overrides(overrides, selected, flat)
        widths = distributions.resolve_overrides(
            bits_overrides, selected, flat, argument="bits_overrides", value="bits", leaves="leaves", check=check_bits
        )
        budget = LayerBudget(
            tuple((p, round((1.0 - fractions.get(p, sparsity)) * jnp.size(flat[p]))) for p in selected),
            tuple((p, widths.get(p, bits)) for p in selected),
        )
        z = {p: _projected(flat[p], budget.k(p), budget.width(p)) for p in selected}
        u = {p: jnp.zeros(jnp.shape(flat[p]), jnp.float32) for p in selected}
        return ADMMState(jnp.zeros((), jnp.int32), jnp.asarray(rho, jnp.float32), z, u, budget)

    def update(params: Any, state: ADMMState, grads: Any = None, **extra_args) -> ADMMState:
        del grads, extra_args
        w = _leaves(params, state)
        count = core.safe_increment(state.count)

        def dual_step(state):
            z = {p: _projected(w[p] + state.u[p], state.budget.k(p), state.budget.width(p)) for p in state.z}
            u = {p: state.u[p] + w[p] - z[p] for p in state.z}
            new_rho = state.rho * rho_growth
            u = {p: u[p] * (state.rho / new_rho) for p in state.z}  # rho * U unchanged
            return state._replace(rho=new_rho, z=z, u=u)

        def wait(state):
            return state

        state = lax.cond(count % every == 0, dual_step, wait, state)
        return state._replace(count=count)

    def apply(params: Any, state: ADMMState) -> Any:
        _leaves(params, state)
        return params

    return core.Transform(init, *core.checking_state(ADMMState, "jc.joint.admm", update, apply))


def _positive(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{argument}` must be a positive number, got {type(value).__name__}: {value!r}.")
    if not value > 0:
        raise ValueError(f"`{argument}` must be > 0, got {value!r}.")
    return float(value)


def _check_bits_overrides(bits_overrides: Any) -> None:
    """Checked when the method is built (the rules are matched at init, by ``resolve_overrides``)."""
    if bits_overrides is not None and not isinstance(bits_overrides, Mapping):
        raise TypeError(
            f"`bits_overrides` must be a mapping {{rule: bits}}, got {type(bits_overrides).__name__}: "
            f"{bits_overrides!r}."
        )
    for rule, value in (bits_overrides or {}).items():
        check_bits(value, argument=f"bits_overrides[{rule!r}]")


def _leaves(params: Any, state: ADMMState) -> dict[str, jax.Array]:
    leaves = paths_lib.leaves_at(params, state.z)
    validate.check_leaf_shapes(leaves, {p: z.shape for p, z in state.z.items()}, method="jc.joint.admm")
    return {p: jnp.asarray(w, jnp.float32) for p, w in leaves.items()}


def admm_penalty(params: Any, state: Any) -> jax.Array:
    """The augmented-Lagrangian term ``sum_l rho / 2 * ||W_l - Z_l + U_l||^2`` of every :func:`admm` in ``state``.

    Add it to the training loss during the ADMM phase (``state``: the
    compression state, a chain's included). Gradients flow to the weights
    only; ``Z``, ``U`` and ``rho`` are constants of the step.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[0.1, -1.0], [0.45, 0.9]])}
      >>> state = jc.joint.admm(0.5, 2, every=1, rho=2.0).init(params)
      >>> round(float(jc.joint.admm_penalty(params, state)), 4)  # rho / 2 * ||W - Z||^2, Z = (0, -0.95, 0, 0.95)
      0.2175
    """
    nodes = core.nodes_of(state, ADMMState)
    if not nodes:
        raise ValueError(
            f"`state` holds no jc.joint.admm state (got {type(state).__name__}): pass the compression state of a "
            f"recipe that includes jc.joint.admm(...), e.g. jc.optim.compression_state(opt_state)."
        )
    total = jnp.zeros((), jnp.float32)
    for node in nodes:
        w = _leaves(params, node)
        z, u, rho = (lax.stop_gradient(x) for x in (node.z, node.u, node.rho))
        total = total + 0.5 * rho * sum(jnp.sum((w[p] - z[p] + u[p]) ** 2) for p in z)
    return total


class FixedGridState(NamedTuple):
    """State of :func:`fixed_grid`."""

    masks: core.Masks  # the support: weights outside it stay exactly zero
    step: dict[str, jax.Array]  # by path: the grid step, float32, shape (1,) * ndim
    budget: LayerBudget  # static: the widths (and the kept counts at init)


def fixed_grid(keep: Mapping[str, Any], step: Mapping[str, Any], bits: Mapping[str, int]) -> core.Quantizer:
    """Quantization with a frozen support and a fixed symmetric grid: the masked retraining after ADMM.

    Each leaf at path ``p`` becomes ``step[p] * clip(round(w / step[p]), -Q, Q)``
    inside ``keep[p]`` and exactly zero outside it, with straight-through
    gradients (clipped weights get none). The masks are a :class:`jaxcompress.Masks`
    node, so :func:`jaxcompress.optim.with_compression` keeps the pruned
    weights at zero.

    Args:
      keep: ``{path: boolean mask}`` of the kept weights.
      step: ``{path: grid step}`` (positive scalars).
      bits: ``{path: width}``, 2 to 8.

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`FixedGridState`.
    """
    for name, value in (("keep", keep), ("step", step), ("bits", bits)):
        if not isinstance(value, Mapping):
            raise TypeError(f"`{name}` must be a mapping {{path: value}}, got {type(value).__name__}.")
    if not (set(keep) == set(step) == set(bits)) or not keep:
        raise ValueError(
            f"`keep`, `step` and `bits` must name the same, non-empty set of paths; got {sorted(keep)}, "
            f"{sorted(step)} and {sorted(bits)}."
        )
    widths = {p: check_bits(b, argument=f"bits[{p!r}]") for p, b in bits.items()}
    kept = tuple((p, int(np.count_nonzero(np.asarray(keep[p])))) for p in sorted(keep))
    budget = LayerBudget(kept, tuple(sorted(widths.items())))  # static, so init also runs under jit

    def init(params: Any) -> FixedGridState:
        flat, _ = paths_lib.flatten(params)
        leaves = paths_lib.leaves_at(params, keep)
        validate.check_float_leaves(flat, list(keep))
        masks, steps = {}, {}
        for p, mask in keep.items():
            shape = tuple(jnp.shape(leaves[p]))
            if tuple(jnp.shape(mask)) != shape:
                raise ValueError(f"`keep[{p!r}]` has shape {tuple(jnp.shape(mask))}, the leaf has shape {shape}.")
            s = jnp.asarray(step[p], jnp.float32)
            if s.size != 1 or (validate.is_concrete(s) and not float(s.reshape(())) > 0):
                raise ValueError(f"`step[{p!r}]` must be one positive number, got {step[p]!r}.")
            masks[p] = packed.pack(jnp.asarray(mask, bool))
            steps[p] = jnp.reshape(s, (1,) * len(shape))
        return FixedGridState(core.Masks(masks), steps, budget)

    def update(params: Any, state: FixedGridState, grads: Any = None, **extra_args) -> FixedGridState:
        del params, grads, extra_args
        return state

    def quantize(params: Any, state: FixedGridState) -> dict[str, IntegerWeights]:
        out = {}
        for p, w in paths_lib.leaves_at(params, state.step).items():
            s, q_max = state.step[p], _levels(state.budget.width(p))
            units = jnp.asarray(w, jnp.float32) / s
            inside = jnp.abs(units) <= q_max
            codes = straight_through(jnp.where(inside, units, lax.stop_gradient(units)), jnp.round(units))
            codes = state.masks.keep[p].keep(jnp.clip(codes, -q_max, q_max))
            out[p] = IntegerWeights(codes, s, None, state.budget.width(p), True)
        return out

    return core.Quantizer(init, *core.checking_state(FixedGridState, "jc.joint.fixed_grid", update, quantize))


def hard_projection(params: Any, state: Any) -> tuple[Any, core.Quantizer]:
    """Ends the ADMM phase: ``(projected params, quantizer for masked retraining)``.

    Each leaf an :func:`admm` in ``state`` constrains is replaced by its
    projection (:func:`project` of the weights themselves, with that leaf's
    ``k`` and bits); the quantizer is :func:`fixed_grid` with the projection's
    support and step, so it leaves the projected params unchanged and keeps
    them on the grid while they retrain. Start a new optimizer for the
    retraining: ``jc.optim.with_compression(tx, quantizer)``.

    Args:
      params: the trained params.
      state: the compression state holding the :class:`ADMMState`.

    Returns:
      ``(params, quantizer)``.
    """
    nodes = core.nodes_of(state, ADMMState)
    if len(nodes) != 1:
        raise ValueError(f"`state` must hold exactly one jc.joint.admm state, found {len(nodes)}.")
    node = nodes[0]
    w = _leaves(params, node)
    keep, steps, projected = {}, {}, {}
    for p in node.z:
        codes, s = _project_jit(w[p], node.budget.k(p), node.budget.width(p))
        keep[p], steps[p] = codes != 0, s
        projected[p] = (codes * s).astype(jnp.result_type(paths_lib.leaves_at(params, [p])[p]))
    params = paths_lib.map_selected(lambda p, _: projected[p], params, list(projected))
    return params, fixed_grid(keep, steps, dict(node.budget.bits))
