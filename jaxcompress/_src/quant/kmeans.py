"""K-means codebook quantization: weight sharing as in Deep Compression.

Each selected leaf keeps ``K = 2^bits`` shared float values (its codebook) and,
per weight, the index of its centroid: ``w_hat = codebook[assignments]``.

* **Clustering** (at ``init``; again at update ``recluster_at`` if given, e.g.
  ``0`` after a chained one-shot pruner): centroids spread linearly over
  ``[min w, max w]`` of the nonzero weights (the paper's best initialization:
  it keeps the rare large weights represented), then ``iterations`` steps of
  Lloyd's algorithm. In one dimension the centroids stay sorted, so
  assignment is a ``searchsorted`` over midpoints, ``O(n log K)`` with no
  ``n x K`` matrix. Nothing of the clustering is in the training step unless
  ``recluster_at`` asks for it.
* **Fine-tuning**: the codebook lives in a :class:`jaxcompress.Learned`
  node; each centroid's gradient is the sum of its members' gradients (the
  paper's update), pass it as ``learned_grads=``. For a mostly-pruned leaf
  clustered once, the sum runs over the weights that were nonzero at
  clustering only (``KMeansState.members``), so its cost follows the kept
  weights, not the leaf, and the weights that were zero get no gradient: they
  stay exactly zero in training with no mask to enforce.
* **Assignments** are fixed after clustering, unless ``reassign_every=n``:
  then every ``n``-th ``update`` re-assigns the current weights (which train
  straight-through) to the nearest current centroid, under ``lax.cond``.
* **Zero is a fixed value** (``keep_zeros=True``): the integer form's codebook
  is the ``K`` centroids plus an exact ``0.0`` at index ``K`` (``K = 255`` for 8
  bits, so indices stay ``uint8``). Every weight that is exactly zero, at any
  step (a pruner chained before it, on any schedule), decodes to exactly 0.0;
  the centroids cluster only the nonzero weights and no centroid is spent on
  zero. Sparse storage then never stores the zeros' index at all.

In integer form a leaf is a codebook leaf: ``uint8`` indices, a unit scale and
the ``float32`` codebook. Gradients: straight through to the weights, and each
centroid gets the sum of its members' gradients.

References:
  Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
  Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
  https://arxiv.org/abs/1510.00149
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.core import safe_increment
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.quant.grid import check_bits, check_bool, headroom

__all__ = ["KMeansState", "kmeans", "kmeans_1d"]

_CODEBOOK_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


class KMeansState(NamedTuple):
    """State of :func:`kmeans`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    assignments: dict[str, jax.Array]  # per leaf: centroid indices (K: the fixed zero), leaf shape, uint8
    members: dict[str, jax.Array]  # per mostly-pruned leaf: flat indices of its nonzero weights at clustering
    learned: core.Learned  # codebooks by path: (K + 1,) float32 ending in the fixed 0.0; (K,) without keep_zeros


def _assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid (``centroids`` sorted ascending)."""
    midpoints = 0.5 * (centroids[1:] + centroids[:-1])
    return jnp.searchsorted(midpoints, x, side="left").astype(jnp.int32)


def kmeans_1d(
    x: jax.Array, k: int, *, iterations: int = 20, where: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """1-D k-means with linear initialization: ``(sorted centroids (k,), assignments)``.

    Args:
      x: values (any shape), clustered as a flat set.
      k: number of centroids.
      iterations: Lloyd iterations after the linear initialization.
      where: optional boolean mask of the values to cluster (others get
        assignment 0 and do not move any centroid).

    Returns:
      ``(centroids float32 (k,), assignments int32 like x)``. An empty cluster
      keeps its centroid.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> c, a = quant.kmeans_1d(jnp.array([0.0, 0.1, 0.9, 1.0, 1.1]), 2)
      >>> [round(v, 3) for v in c.tolist()], a.tolist()
      ([0.05, 1.0], [0, 0, 1, 1, 1])
    """
    x = x.astype(jnp.float32).reshape(-1)
    f = headroom(jnp.max(jnp.abs(x), initial=0.0))  # cluster sums and spans must not overflow
    x = x * f
    mask = jnp.ones(x.shape, bool) if where is None else jnp.reshape(where, (-1,))
    any_valid = jnp.any(mask)
    lo = jnp.where(any_valid, jnp.min(jnp.where(mask, x, jnp.inf)), 0.0)
    hi = jnp.where(any_valid, jnp.max(jnp.where(mask, x, -jnp.inf)), 0.0)
    centroids = jnp.linspace(lo, hi, k, dtype=jnp.float32)

    def lloyd(_, c):
        a = _assign(x, c)
        sums = jax.ops.segment_sum(jnp.where(mask, x, 0.0), a, num_segments=k)
        counts = jax.ops.segment_sum(mask.astype(jnp.float32), a, num_segments=k)
        return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), c)

    centroids = lax.fori_loop(0, iterations, lloyd, centroids)
    return centroids / f, _assign(x, centroids)


def _cluster(w: jax.Array, k: int, iterations: int, keep_zeros: bool) -> tuple[jax.Array, jax.Array]:
    """``(codebook, assignments uint8 like w)``: k-means of the nonzero weights.

    With ``keep_zeros`` the codebook has ``k + 1`` entries, the last the fixed
    zero that the zero weights are assigned.
    """
    w32 = w.astype(jnp.float32)
    clustered = (w32 != 0) if keep_zeros else jnp.ones(w32.shape, bool)
    codebook, assign = kmeans_1d(w32, k, iterations=iterations, where=clustered)
    assign = jnp.where(clustered.reshape(-1), assign, k)
    if keep_zeros:
        codebook = jnp.concatenate([codebook, jnp.zeros((1,), jnp.float32)])
    return codebook, assign.reshape(w.shape).astype(jnp.uint8)


_cluster_jit = jax.jit(_cluster, static_argnums=(1, 2, 3))  # one compiled program per leaf shape


def _members(w: Any) -> jax.Array | None:
    """Flat indices of the nonzero weights of a mostly-pruned concrete leaf, else None."""
    if isinstance(w, jax.core.Tracer):
        return None
    nonzero = np.asarray(w).reshape(-1) != 0
    if nonzero.mean() > 0.5:  # gathering most of the leaf costs more than the scatter it saves
        return None
    return jnp.asarray(np.flatnonzero(nonzero), jnp.int32)


def _reassign(w: jax.Array, codebook: jax.Array, k: int, keep_zeros: bool) -> jax.Array:
    """Index of the nearest of the ``k`` current (possibly unsorted) centroids; zeros get the fixed zero, ``k``.

    A running arg-min over the ``K`` centroids: ``O(n K)`` work, ``O(n)`` memory.
    """
    w32 = w.astype(jnp.float32)

    def visit(j, carry):
        best, index = carry
        d = jnp.abs(w32 - codebook[j])
        closer = d < best
        return jnp.where(closer, d, best), jnp.where(closer, j, index)

    init = (jnp.full(w32.shape, jnp.inf, jnp.float32), jnp.zeros(w32.shape, jnp.int32))
    _, nearest = lax.fori_loop(0, k, visit, init)
    if keep_zeros:
        nearest = jnp.where(w32 == 0, k, nearest)
    return nearest.astype(jnp.uint8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _codes(
    w: jax.Array, codebook: jax.Array, assign: jax.Array, clustered: jax.Array, members: jax.Array | None, k: int
) -> jax.Array:
    """The centroid indices as float32 codes carrying the gradients of a codebook leaf.

    ``assign`` is the current index of each weight (``k``: the fixed zero),
    ``clustered`` the index clustering gave it. Backward: the weights get the
    incoming gradient straight through, and each of the ``k`` centroids the
    sum of its members' gradients. With ``members`` (the flat indices of
    the weights that can be nonzero) the sum runs over those alone: a scatter
    over the kept weights instead of the whole leaf, and the weights pruned
    before clustering get no gradient, so they stay exactly zero under any
    optimizer that leaves a zero weight with a zero gradient at zero (SGD,
    momentum, Adam, weight decay).
    """
    del w, codebook, clustered, members, k
    return assign.astype(jnp.float32)


def _codes_fwd(w, codebook, assign, clustered, members, k):
    del w
    return assign.astype(jnp.float32), (None, codebook, assign, clustered, members)


def _codes_bwd(k, residuals, g):
    _, codebook, assign, clustered, members = residuals
    g_flat, index = g.reshape(-1), assign.reshape(-1).astype(jnp.int32)
    if members is not None:
        take = lambda a: jnp.take(a, members, mode="clip", indices_are_sorted=True, unique_indices=True)
        g_flat, index = take(g_flat), take(index)
    # Segment k gathers the weights at the fixed zero; it is not trained.
    sums = jax.ops.segment_sum(g_flat, index, num_segments=k + 1)[: codebook.shape[0]]
    sums = jnp.where(jnp.arange(codebook.shape[0]) == k, 0.0, sums)
    zeros = lambda a: None if a is None else np.zeros(a.shape, jax.dtypes.float0)
    g_weights = g if members is None else jnp.where(clustered == k, jnp.zeros_like(g), g)
    return g_weights, sums.astype(codebook.dtype), zeros(assign), zeros(clustered), zeros(members)


_codes.defvjp(_codes_fwd, _codes_bwd)


def kmeans(
    bits: int = 4,
    *,
    iterations: int = 20,
    keep_zeros: bool = True,
    recluster_at: int | None = None,
    reassign_every: int | None = None,
    codebook_dtype: str = "float32",
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """K-means weight sharing with a trained codebook (see the module docstring).

    Args:
      bits: ``log2`` of the number of shared values, 2 to 8.
      iterations: Lloyd iterations per clustering.
      keep_zeros: zero is a fixed extra value of every codebook: exact zeros
        (pruned weights), at any step, decode to exactly 0.0 and the
        centroids cluster the nonzero weights.
      recluster_at: also cluster again at this update (``0``: the first one,
        after a chained one-shot pruner has pruned), under ``lax.cond``;
        ``None`` (default): cluster once, at ``init``.
      reassign_every: re-assign weights to their nearest centroid every this
        many updates (``None``: assignments fixed after clustering).
      codebook_dtype: the precision the shared values take in the forward
        pass and in storage: ``"float32"``, or ``"float16"`` / ``"bfloat16"``
        (2 bytes per entry in an artifact; the optimizer still trains float32
        centroids, rounded straight through).
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`KMeansState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[0.0, 0.1], [0.9, 1.1]])}
      >>> q, state = jc.compress(jc.quant.kmeans(1 + 1), params)
      >>> q["w"].tolist()  # 0.0 stays exactly zero; the 4 centroids share the others
      [[0.0, 0.10000000149011612], [0.8999999761581421, 1.100000023841858]]

    References:
      Han, Mao & Dally, "Deep Compression", 2016. https://arxiv.org/abs/1510.00149
    """
    bits = check_bits(bits)
    iterations = validate.check_int(iterations, argument="iterations", minimum=0)
    check_bool(keep_zeros, argument="keep_zeros")
    if recluster_at is not None:
        recluster_at = validate.check_int(recluster_at, argument="recluster_at", minimum=0)
    if reassign_every is not None:
        reassign_every = validate.check_int(reassign_every, argument="reassign_every", minimum=1)
    if codebook_dtype not in _CODEBOOK_DTYPES:
        raise ValueError(f"`codebook_dtype` must be one of {sorted(_CODEBOOK_DTYPES)}, got {codebook_dtype!r}.")
    precision = _CODEBOOK_DTYPES[codebook_dtype]
    selector = paths_lib.as_selector(rule)
    # With the fixed zero the codebook has k + 1 entries; they index as uint8.
    k = min(2**bits, 255) if keep_zeros else 2**bits
    compact = keep_zeros and recluster_at is None and reassign_every is None

    def init(params: Any) -> KMeansState:
        flat, selected = validate.selected_weights(selector, params)
        codebooks, assignments, members = {}, {}, {}
        for p in selected:
            codebooks[p], assignments[p] = _cluster_jit(flat[p], k, iterations, keep_zeros)
            found = _members(flat[p]) if compact else None
            if found is not None:
                members[p] = found
        return KMeansState(jnp.zeros([], jnp.int32), assignments, members, core.Learned(codebooks))

    def update(params: Any, state: KMeansState, grads: Any = None, **extra_args) -> KMeansState:
        del grads, extra_args
        leaves = _leaves(params, state)
        paths = list(state.assignments)
        codebooks, assignments = dict(state.learned.values), dict(state.assignments)
        if recluster_at is not None:

            def cluster():
                found = {p: _cluster(leaves[p], k, iterations, keep_zeros) for p in paths}
                return {p: found[p][0] for p in paths}, {p: found[p][1] for p in paths}

            codebooks, assignments = lax.cond(state.count == recluster_at, cluster, lambda: (codebooks, assignments))
        count = safe_increment(state.count)
        if reassign_every is not None:

            def reassign():
                return {p: _reassign(leaves[p], codebooks[p], k, keep_zeros) for p in paths}

            assignments = lax.cond(count % reassign_every == 0, reassign, lambda: assignments)
        return KMeansState(count, assignments, state.members, core.Learned(codebooks))

    def quantize(params: Any, state: KMeansState) -> dict[str, IntegerWeights]:
        out = {}
        for p, w in _leaves(params, state).items():
            learned, assign = state.learned.values[p], state.assignments[p]
            clustered, codebook = assign, learned.astype(precision).astype(jnp.float32)
            if keep_zeros:  # pruned at any step: the fixed zero, index k (pinned, though its gradient is 0)
                assign = jnp.where(w == 0, jnp.uint8(k), assign)
                codebook = jnp.where(jnp.arange(k + 1) == k, jnp.zeros_like(codebook), codebook)
            codes = _codes(w.astype(jnp.float32), learned, assign, clustered, state.members.get(p), k)
            scale = jnp.ones((1,) * w.ndim, jnp.float32)
            out[p] = IntegerWeights(codes, scale, None, bits, False, codebook=lax.stop_gradient(codebook))
        return out

    return core.Quantizer(init, *core.checking_state(KMeansState, "jc.quant.kmeans", update, quantize))


def _leaves(params: Any, state: KMeansState) -> dict[str, Any]:
    leaves = paths_lib.leaves_at(params, state.assignments)
    validate.check_leaf_shapes(leaves, {p: a.shape for p, a in state.assignments.items()}, method="jc.quant.kmeans")
    return leaves
