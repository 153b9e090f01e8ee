"""The score-based pruner every pruning factory is built from.

``pruner(sparsity, score=..., structure=..., scope=..., distribution=...)``
is one :class:`jaxcompress.Transform`: at each mask-update step of the
schedule it scores the selected leaves (:mod:`~jaxcompress.prune.scores`),
groups the scores into units (:mod:`~jaxcompress.prune.structures`), shares
the target among the leaves (:mod:`~jaxcompress.prune.distributions`) and
keeps exactly the right number of highest-scoring units with the sort-free
threshold search (:mod:`~jaxcompress.prune.threshold`). Masks are stored
bit-packed. The refresh runs under ``lax.cond`` on a traced step counter, so
a jitted training step traces once; a loop that knows on the host that no
refresh is due (``refreshes_at``) can run ``update(..., steady=True)``, a
program without the cond.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress import _validate, core, schedules
from jaxcompress import masks as packed
from jaxcompress import paths as paths_lib
from jaxcompress.prune import distributions, structures
from jaxcompress.prune import scores as scores_lib

__all__ = ["PrunerState", "pruner"]

SCOPES = ("layer", "global")


class PrunerState(NamedTuple):
    """State of :func:`pruner`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: schedule target at the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path
    scores: dict[str, jax.Array]  # running score sums by path (accumulating scores), else {}


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}.")
    return scope


def pruner(
    sparsity: schedules.ScheduleLike,
    *,
    score: str | scores_lib.Score = "magnitude",
    structure: structures.Structure | None = None,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Mapping[paths_lib.Rule, float] | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    seed: int = 0,
    state_type: type = PrunerState,
) -> core.Transform:
    """Score-based pruning on a schedule: the engine behind every pruning factory.

    At each mask-update step ``t`` of the schedule, with target ``s = s(t)``:

    * ``scope="layer"``: leaf ``l`` (with ``U_l`` units) keeps all but its
      ``round(s_l * U_l)`` lowest-scoring units, where ``s_l`` is ``s`` for
      ``distribution="uniform"``, the ERK share of ``s`` for ``"erk"``, or its
      ``overrides`` value;
    * ``scope="global"``: one threshold over the units of all leaves prunes
      ``round(s * sum_l U_l)`` of them.

    Args:
      sparsity: a number in ``[0, 1)`` (one-shot at the first update) or a
        :mod:`jaxcompress.schedules` schedule.
      score: ``"magnitude"``, ``"random"``, ``"saliency"``, ``"movement"`` or a
        :class:`~jaxcompress.prune.scores.Score`.
      structure: a :mod:`~jaxcompress.prune.structures` structure
        (default: unstructured).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (``scope="layer"`` only).
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      seed: seed of the ``"random"`` score.
      state_type: the NamedTuple to build the state with (factories pass
        their own, e.g. ``MagnitudeState``); it needs fields ``count``,
        ``sparsity``, ``masks``, and ``scores`` if the score accumulates.

    Returns:
      A :class:`jaxcompress.Transform`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
      >>> pruned, _ = jc.compress(jc.prune.pruner(0.5, score="magnitude"), params)
      >>> pruned["w"].tolist()
      [[0.0, -4.0], [3.0, 0.0]]

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", 2017. https://arxiv.org/abs/1710.01878
      Blalock, Gonzalez Ortiz, Frankle & Guttag, "What is the State of Neural
      Network Pruning?", 2020. https://arxiv.org/abs/2003.03033
    """
    schedule = schedules.as_schedule(sparsity)
    score = scores_lib.as_score(score)
    structure = structures.Unstructured() if structure is None else structure
    if not isinstance(structure, structures.Structure):
        raise TypeError(f"`structure` must be a jaxcompress.prune.structures.Structure, got {structure!r}.")
    scope = check_scope(scope)
    distribution = distributions.check_distribution(distribution)
    if scope == "global" and distribution != "uniform":
        raise ValueError(
            f"`distribution`={distribution!r} shares the target among layers, but scope='global' "
            f"already picks one threshold across them; use scope='layer' with it."
        )
    if scope == "global" and not structure.supports_global:
        raise ValueError(f"{type(structure).__name__} selects within each leaf; use scope='layer'.")
    seed = _validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)
    needed = {"count", "sparsity", "masks"} | ({"scores"} if score.accumulates else set())
    missing = needed - set(getattr(state_type, "_fields", ()))
    if missing:
        raise TypeError(f"`state_type` {state_type.__name__} lacks the fields {sorted(missing)}.")
    has_scores_field = "scores" in state_type._fields
    final = float(schedule.final)

    def make_state(count, sparsity_now, masks, scores):
        fields = dict(count=count, sparsity=sparsity_now, masks=masks)
        if has_scores_field:
            fields["scores"] = scores
        return state_type(**fields)

    def init(params: Any):
        flat, selected = _validate.selected_weights(selector, params)
        for p in selected:
            structure.check(p, tuple(jnp.shape(flat[p])))
        distributions.resolve_overrides(overrides, selected, flat)  # errors early
        masks = {p: packed.ones(tuple(jnp.shape(flat[p]))) for p in selected}
        scores = {p: score.init(flat[p]) for p in selected} if score.accumulates else {}
        return make_state(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), masks, scores)

    def refresh(weights, grads, sums, target, fixed):
        paths = list(weights)
        shapes = [tuple(w.shape) for w in weights.values()]
        # Scores of the weights alone (|w|) are computed inside the search, where
        # they are used, instead of being stored: the selection gets the weights.
        defer = score.of_weights and structure.per_weight
        leaf_scores = []
        for i, p in enumerate(paths):
            g = grads[p] if grads is not None else None
            salt = scores_lib.leaf_salt(seed, i)
            leaf_scores.append(weights[p] if defer else structure.unit_scores(score(weights[p], g, sums.get(p), salt)))
        units = [structure.num_units(s) for s in shapes]
        fixed_at = [fixed.get(p) for p in paths]
        per_leaf = distributions.layer_sparsities(
            "uniform" if scope == "global" else distribution, shapes, fixed_at, target, final
        )
        # One batched selection: one group per leaf, or (global) one group of all
        # leaves without an override plus one group per overridden leaf.
        if scope == "global":
            free = [i for i, f in enumerate(fixed_at) if f is None]
            own = [i for i, f in enumerate(fixed_at) if f is not None]
            members = ([free] if free else []) + [[i] for i in own]
            counts = ([structure.count(target, sum(units[i] for i in free))] if free else []) + [
                structure.count(per_leaf[i], units[i]) for i in own
            ]
        else:
            members = [[i] for i in range(len(paths))]
            counts = [structure.count(s, u) for s, u in zip(per_leaf, units, strict=True)]
        chosen = structure.select(
            [[leaf_scores[i] for i in group] for group in members], counts, score=score.of_weight if defer else None
        )
        keeps: list[Any] = [None] * len(paths)
        for group, group_keeps in zip(members, chosen, strict=True):
            for i, keep in zip(group, group_keeps, strict=True):
                keeps[i] = keep
        return {p: packed.pack(structure.expand(k, sh)) for p, k, sh in zip(paths, keeps, shapes, strict=True)}

    def update(params: Any, state, grads: Any = None, **extra_args):
        steady = core.is_steady(extra_args)
        paths = list(state.masks)
        if score.needs_grads and grads is None:
            raise ValueError(
                f"The {score.name!r} score needs gradients: call update(params, state, grads) "
                f"(jc.optim.with_compression passes them)."
            )
        weights = core.leaves_at(params, paths)
        leaf_grads = None
        if score.needs_grads:  # zero outside the masks, whether or not the forward pass masked the weights
            leaf_grads = {p: state.masks[p].keep(g) for p, g in core.leaves_at(grads, paths).items()}
        sums = dict(state.scores) if has_scores_field else {}
        if score.accumulates:
            sums = {p: score.accumulate(sums[p], weights[p], leaf_grads[p]) for p in paths}
        step = state.count
        if steady:  # the caller knows no refresh is due (refreshes_at): no cond in the program
            return make_state(core.safe_increment(step), state.sparsity, dict(state.masks), sums)
        fixed = distributions.resolve_overrides(overrides, paths, weights)
        target = schedule(step)
        do_refresh = schedule.is_update_step(step)
        masks = lax.cond(
            do_refresh,
            lambda: refresh(weights, leaf_grads, sums, target, fixed),
            lambda: dict(state.masks),
        )
        sparsity_now = jnp.where(do_refresh, target, state.sparsity)
        return make_state(core.safe_increment(step), sparsity_now, masks, sums)

    def refreshes_at(count: int) -> bool:
        return bool(schedule.is_update_step(core.check_count(count)))

    def apply(params: Any, state) -> Any:
        return core.map_selected(lambda path, w: state.masks[path].keep(w), params, list(state.masks))

    def train_apply(params: Any, state) -> Any:
        # Masks start full and the optimizer wrapper zeroes what they drop: nothing to mask.
        core.leaves_at(params, list(state.masks))  # the same error as apply for foreign params
        return params

    def masks(state) -> dict[str, packed.PackedMask]:
        return dict(state.masks)

    return core.Transform(init, update, apply, masks, train_apply=train_apply, refreshes_at=refreshes_at)
