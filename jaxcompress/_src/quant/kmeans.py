"""K-means codebook quantization: weight sharing as in Deep Compression.

Each selected leaf keeps ``K = 2^bits`` shared float values (its codebook) and,
per weight, the index of its centroid: ``w_hat = codebook[assignments]``.

* **Clustering** (at ``init``, and again at the first ``update``, so that
  chained after one-shot pruning it clusters the pruned weights; under
  :func:`jaxcompress.optim.with_compression` that first step's codebook
  gradients were computed for the ``init`` clusters): centroids spread
  linearly over
  ``[min w, max w]`` (the paper's best initialization: it keeps the rare large
  weights represented), then ``iterations`` steps of Lloyd's algorithm
  (assign each weight to its nearest centroid, move each centroid to the mean
  of its members). In one dimension the centroids stay sorted, so assignment
  is a ``searchsorted`` over midpoints, ``O(n log K)`` with no ``n x K`` matrix.
* **Fine-tuning**: the codebook lives in a :class:`jaxcompress.Learned`
  node; since ``w_hat = codebook[assignments]`` is a gather, the gradient of
  each centroid is the sum of its members' gradients (the paper's update),
  straight from autodiff. Pass it as ``learned_grads=``.
* **Assignments** are fixed after ``init``, unless ``reassign_every=n``: then
  every ``n``-th ``update`` re-assigns the current weights (which train
  straight-through) to the nearest current centroid, under ``lax.cond``.
* **Zeros stay zero** (``keep_zeros=True``): if a leaf holds exact zeros when
  it is clustered (chained after pruning), centroid 0 is reserved, pinned at
  exactly ``0.0`` and never trained, and only the zeros use it; the other
  ``K - 1`` centroids cluster the nonzero weights. Chain k-means after pruning
  whose masks are final (one-shot, or a finished schedule); with masks still
  changing, ``reassign_every`` moves newly pruned weights to the reserved
  zero (if one was reserved).

In integer form a leaf is a codebook leaf: ``uint8`` indices, a unit scale and
the ``float32`` codebook. Gradients: straight through to the weights, and each
centroid gets the sum of its members' gradients.

References:
  Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
  Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
  https://arxiv.org/abs/1510.00149
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.core import safe_increment
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.quant.grid import check_bits, check_bool
from jaxcompress._src.quant.ste import straight_through

__all__ = ["KMeansState", "kmeans", "kmeans_1d"]


class KMeansState(NamedTuple):
    """State of :func:`kmeans`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    assignments: dict[str, jax.Array]  # per leaf: centroid indices, leaf shape, dtype=uint8
    zero_reserved: dict[str, jax.Array]  # per leaf: shape=(), dtype=bool: centroid 0 pinned at 0.0
    learned: core.Learned  # codebooks by path: shape=(2^bits,), dtype=float32


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
    return centroids, _assign(x, centroids)


def _cluster(w: jax.Array, k: int, iterations: int, keep_zeros: bool):
    """(codebook (k,), assignments uint8 like w, zero_reserved bool scalar)."""
    w32 = w.astype(jnp.float32)
    reserve = jnp.any(w32 == 0) if keep_zeros else jnp.bool_(False)
    nonzero = w32 != 0

    def plain():
        return kmeans_1d(w32, k, iterations=iterations)

    def reserved():  # k - 1 centroids cluster the nonzero weights; index 0 is the zero
        c, a = kmeans_1d(w32, k - 1, iterations=iterations, where=nonzero)
        return jnp.concatenate([jnp.zeros((1,), jnp.float32), c]), jnp.where(nonzero.reshape(-1), a + 1, 0)

    codebook, assign = lax.cond(reserve, reserved, plain)
    return codebook, assign.reshape(w.shape).astype(jnp.uint8), reserve


_cluster_jit = jax.jit(_cluster, static_argnums=(1, 2, 3))  # one compiled program per leaf shape


def _effective(codebook: jax.Array, reserved: jax.Array) -> jax.Array:
    """The codebook in use: entry 0 pinned at exactly 0.0 when reserved (and not trained)."""
    pin = reserved & (jnp.arange(codebook.shape[0]) == 0)
    return jnp.where(pin, jnp.zeros_like(codebook), codebook)


def _reassign(w: jax.Array, codebook: jax.Array, reserved: jax.Array) -> jax.Array:
    """Nearest centroid of the current (possibly unsorted) codebook; zeros keep the reserved 0.

    A running arg-min over the ``K`` centroids: ``O(n K)`` work, ``O(n)`` memory.
    """
    w32 = w.astype(jnp.float32)

    def visit(j, carry):
        best, index = carry
        usable = ~(reserved & (j == 0))
        d = jnp.where(usable, jnp.abs(w32 - codebook[j]), jnp.inf)
        closer = d < best
        return jnp.where(closer, d, best), jnp.where(closer, j, index)

    init = (jnp.full(w32.shape, jnp.inf, jnp.float32), jnp.zeros(w32.shape, jnp.int32))
    _, nearest = lax.fori_loop(0, codebook.shape[0], visit, init)
    return jnp.where(reserved & (w32 == 0), 0, nearest).astype(jnp.uint8)


def kmeans(
    bits: int = 4,
    *,
    iterations: int = 20,
    keep_zeros: bool = True,
    reassign_every: int | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """K-means weight sharing with a trained codebook (see the module docstring).

    Args:
      bits: ``log2`` of the codebook size, 2 to 8.
      iterations: Lloyd iterations at ``init``.
      keep_zeros: reserve a centroid pinned at 0.0 for exact zeros (pruned
        weights) when a leaf has any.
      reassign_every: re-assign weights to their nearest centroid every this
        many updates (``None``: assignments fixed after ``init``).
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`KMeansState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[0.0, 0.1], [0.9, 1.1]])}
      >>> q, state = jc.compress(jc.quant.kmeans(2), params)
      >>> q["w"].tolist()  # 0.0 keeps its own centroid; 0.9 and 1.1 share one
      [[0.0, 0.10000000149011612], [1.0, 1.0]]

    References:
      Han, Mao & Dally, "Deep Compression", 2016. https://arxiv.org/abs/1510.00149
    """
    bits = check_bits(bits)
    iterations = validate.check_int(iterations, argument="iterations", minimum=0)
    check_bool(keep_zeros, argument="keep_zeros")
    if reassign_every is not None:
        reassign_every = validate.check_int(reassign_every, argument="reassign_every", minimum=1)
    selector = paths_lib.as_selector(rule)
    k = 2**bits

    def init(params: Any) -> KMeansState:
        flat, selected = validate.selected_weights(selector, params)
        codebooks, assignments, reserved = {}, {}, {}
        for p in selected:
            codebooks[p], assignments[p], reserved[p] = _cluster_jit(flat[p], k, iterations, keep_zeros)
        return KMeansState(jnp.zeros([], jnp.int32), assignments, reserved, core.Learned(codebooks))

    def update(params: Any, state: KMeansState, grads: Any = None, **extra_args) -> KMeansState:
        del grads, extra_args
        leaves = paths_lib.leaves_at(params, state.assignments)
        paths = list(state.assignments)
        current = (dict(state.learned.values), dict(state.assignments), dict(state.zero_reserved))

        def cluster():
            found = {p: _cluster(leaves[p], k, iterations, keep_zeros) for p in paths}
            return tuple({p: found[p][i] for p in paths} for i in range(3))

        codebooks, assignments, reserved = lax.cond(state.count == 0, cluster, lambda: current)
        count = safe_increment(state.count)
        if reassign_every is not None:

            def reassign():
                return {p: _reassign(leaves[p], codebooks[p], reserved[p]) for p in paths}

            assignments = lax.cond(count % reassign_every == 0, reassign, lambda: assignments)
        return KMeansState(count, assignments, reserved, core.Learned(codebooks))

    def quantize(params: Any, state: KMeansState) -> dict[str, IntegerWeights]:
        out = {}
        for p, w in paths_lib.leaves_at(params, state.assignments).items():
            codes = straight_through(w.astype(jnp.float32), state.assignments[p].astype(jnp.float32))
            scale = jnp.ones((1,) * w.ndim, jnp.float32)
            codebook = _effective(state.learned.values[p], state.zero_reserved[p])
            out[p] = IntegerWeights(codes, scale, None, bits, False, codebook=codebook)
        return out

    return core.Quantizer(init, update, quantize)
