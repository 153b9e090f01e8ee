"""The score-based pruner every pruning factory is built from.

``pruner(sparsity, score=..., structure=..., scope=..., distribution=...)``
is one :class:`jaxcompress.Transform`: at each mask-update step of the
schedule it scores the selected leaves (:mod:`~jaxcompress.prune` scores),
groups the scores into units (structures), shares the target among the leaves
(distributions) and keeps exactly the right number of highest-scoring units
with the sort-free threshold search. Masks are stored bit-packed in a
:class:`jaxcompress.Masks` node. The refresh runs under ``lax.cond`` on the
state's own step counter, so a jitted training step traces once and a resumed
run refreshes exactly where an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, schedules, validate
from jaxcompress._src import masks as packed
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.prune import distributions, structures, threshold
from jaxcompress._src.prune import scores as scores_lib

__all__ = ["PrunerState", "pruner"]

SCOPES = ("layer", "global")


class PrunerState(NamedTuple):
    """State of :func:`pruner` and of every pruning factory built on it."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: schedule target at the latest mask refresh
    masks: core.Masks  # keep-masks of the selected leaves, by path
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
        :class:`~jaxcompress.prune.Score`.
      structure: a structure (:class:`~jaxcompress.prune.Channel`,
        :class:`~jaxcompress.prune.Block`, :class:`~jaxcompress.prune.NM`;
        default: unstructured).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (``scope="layer"`` only).
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      seed: seed of the ``"random"`` score.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
        raise TypeError(f"`structure` must be a jaxcompress.prune structure (Channel, Block, NM), got {structure!r}.")
    scope = check_scope(scope)
    distribution = distributions.check_distribution(distribution)
    if scope == "global" and distribution != "uniform":
        raise ValueError(
            f"`distribution`={distribution!r} shares the target among layers, but scope='global' "
            f"already picks one threshold across them; use scope='layer' with it."
        )
    if scope == "global" and not structure.supports_global:
        raise ValueError(f"{type(structure).__name__} selects within each leaf; use scope='layer'.")
    seed = validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)
    final = float(schedule.final)
    # Magnitude of single weights: the search computes |w| in every pass instead of storing it.
    by_weight = isinstance(score, scores_lib.Magnitude) and isinstance(structure, structures.Unstructured)

    def init(params: Any) -> PrunerState:
        flat, selected = validate.selected_weights(selector, params)
        for p in selected:
            structure.check(p, tuple(jnp.shape(flat[p])))
        distributions.resolve_overrides(overrides, selected, flat)  # errors early
        masks = core.Masks({p: packed.ones(tuple(jnp.shape(flat[p]))) for p in selected})
        scores = {p: score.init(flat[p]) for p in selected} if score.accumulates else {}
        return PrunerState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), masks, scores)

    def refresh(weights, grads, sums, target, fixed):
        paths = list(weights)
        shapes = [tuple(w.shape) for w in weights.values()]
        leaf_scores = []
        for i, p in enumerate(paths):
            if by_weight:
                leaf_scores.append(weights[p])
                continue
            g = grads[p] if grads is not None else None
            leaf_scores.append(structure.unit_scores(score(weights[p], g, sums.get(p), scores_lib.leaf_salt(seed, i))))
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
        groups = [[leaf_scores[i] for i in group] for group in members]
        if by_weight:
            chosen = threshold.select(groups, counts, score=scores_lib.magnitude_of)
        else:
            chosen = structure.select(groups, counts)
        keeps: list[Any] = [None] * len(paths)
        for group, group_keeps in zip(members, chosen, strict=True):
            for i, keep in zip(group, group_keeps, strict=True):
                keeps[i] = keep
        return {p: packed.pack(structure.expand(k, sh)) for p, k, sh in zip(paths, keeps, shapes, strict=True)}

    def update(params: Any, state: PrunerState, grads: Any = None, **extra_args) -> PrunerState:
        del extra_args
        keep = state.masks.keep
        if score.needs_grads and grads is None:
            raise ValueError(
                f"The {score.name!r} score needs gradients: call update(params, state, grads) "
                f"(jc.optim.with_compression passes them)."
            )
        weights = paths_lib.leaves_at(params, keep)
        validate.check_leaf_shapes(weights, {p: m.shape for p, m in keep.items()}, method="jc.prune method")
        leaf_grads = None
        if score.needs_grads:  # zero outside the masks, whether or not the forward pass masked the weights
            leaf_grads = {p: keep[p].keep(g) for p, g in paths_lib.leaves_at(grads, keep).items()}
        sums = dict(state.scores)
        if score.accumulates:
            sums = {p: score.accumulate(sums[p], weights[p], leaf_grads[p]) for p in keep}
        fixed = distributions.resolve_overrides(overrides, list(keep), weights)
        target = schedule(state.count)
        due = schedule.is_update_step(state.count)
        new_keep = lax.cond(due, lambda: refresh(weights, leaf_grads, sums, target, fixed), lambda: dict(keep))
        sparsity_now = jnp.where(due, target, state.sparsity)
        return PrunerState(core.safe_increment(state.count), sparsity_now, core.Masks(new_keep), sums)

    def apply(params: Any, state: PrunerState) -> Any:
        keep = state.masks.keep
        return paths_lib.map_selected(lambda path, w: keep[path].keep(w), params, keep)

    return core.Transform(init, *core.checking_state(PrunerState, "jc.prune method", update, apply))
