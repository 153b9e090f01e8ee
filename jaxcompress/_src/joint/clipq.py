"""CLIP-Q: pruning and quantization in parallel with fine-tuning (Tung & Mori, CVPR 2018).

At every forward pass each selected layer is compressed afresh from its
*current full-precision* weights ``w`` (``n_+`` positive, ``n_-`` negative),
which the optimizer keeps training with the gradients of the compressed ones:

* **Clip**: ``k_+ = round(p n_+)`` positive weights and ``k_- = round(p n_-)``
  negative weights nearest zero are set to exactly zero (``round`` half to
  even, in float32), so about the fraction ``p`` of the layer: the paper's
  interval ``[c_-, c_+]`` around zero, with ``c_+`` the ``k_+``-th smallest
  positive weight and ``c_-`` the ``k_-``-th largest negative one. Ties at a
  threshold are clipped in row-major order until exactly ``k_±`` are (the
  sort-free search of :func:`jaxcompress.prune.pruner`, no sort). Weights that
  are already exactly zero (a pruner chained before) are clipped too and
  count toward neither sign.
* **Partition**: the kept weights' values are split linearly into
  ``M = 2^b - 1`` intervals. An interval never mixes signs: the kept
  negatives' range ``[min, max]`` gets ``m_-`` equal intervals and the kept
  positives' range the other ``m_+ = M - m_-``, with ``m_-`` the share of
  ``M`` in proportion to the two ranges' lengths, ``round(M L_- / (L_- + L_+))``,
  clipped to ``[1, M - 1]`` when both signs are kept (all ``M`` to the only
  sign kept). The paper leaves open how intervals meet the clipped gap; a
  sign-pure split spends no level on a mean near zero.
* **Quantize**: each kept weight becomes the mean of the full-precision
  weights in its interval (an empty interval's entry is its midpoint, unused),
  each clipped weight exactly ``0.0``.

In integer form a leaf is a codebook leaf: ``uint8`` codes, ``0`` for the
clipped weights, ``1 .. M`` the intervals in ascending order, and the
``2^b``-entry float32 codebook ``[0.0, means...]`` (unit scale), so the codes
fit ``b`` bits. ``apply`` is the dequantization of these codes, bitwise.

Gradients are straight-through, to every full-precision weight, clipped ones
included, as in the paper (the full-precision weights are updated with the
gradients of the quantized ones). So a clipped weight can grow back: the state
holds **no** :class:`jaxcompress.Masks` node, and
:func:`jaxcompress.optim.with_compression` freezes nothing (a mask there would
hold clipped weights at zero and undo the in-parallel point). To freeze the
support for a last phase, take the clipped weights from the codes and chain a
fixed mask before a ``p = 0`` CLIP-Q:
``masks = {p: iw.codes != 0 for p, iw in jc.integer_weights(recipe, params, state).items()}``,
then ``jc.chain(jc.joint.frozen_masks(masks), clip_q({p: (0.0, b), ...}))``.

Per-layer ``(p, b)`` are chosen before training; the paper uses Bayesian
optimization, :func:`clip_q_search` a deterministic greedy search under a
size target, with the size model :func:`clip_q_bytes`.

References:
  Tung & Mori, "CLIP-Q: Deep Network Compression Learning by In-Parallel
  Pruning-Quantization", CVPR 2018.
  https://openaccess.thecvf.com/content_cvpr_2018/papers/Tung_CLIP-Q_Deep_Network_CVPR_2018_paper.pdf
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.prune import threshold
from jaxcompress._src.quant.grid import check_bits, headroom, reciprocal
from jaxcompress._src.quant.ste import straight_through

__all__ = ["DEFAULT_CANDIDATES", "ClipQState", "clip_q", "clip_q_quantize"]

Setting = tuple[float, int]  # (prune_fraction, bits)

DEFAULT_CANDIDATES: tuple[Setting, ...] = tuple((p, b) for p in (0.0, 0.5, 0.75, 0.9) for b in (8, 5, 4, 3, 2))
"""The ``(prune_fraction, bits)`` settings :func:`clip_q_search` tries by default."""


class ClipQState(NamedTuple):
    """State of :func:`clip_q`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    fractions: dict[str, jax.Array]  # per selected leaf: the prune fraction p, shape=(), dtype=float32


def check_setting(value: Any, *, argument: str) -> Setting:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(
            f"`{argument}` must be a (prune_fraction, bits) pair such as (0.5, 4), "
            f"got {type(value).__name__}: {value!r}."
        )
    fraction = validate.check_fraction(value[0], argument=f"{argument}[0] (prune_fraction)")
    return fraction, check_bits(value[1], argument=f"{argument}[1] (bits)")


def _clipped(leaves: Sequence[jax.Array], fractions: Sequence[jax.Array]) -> list[jax.Array]:
    """Per float32 leaf, the weights CLIP-Q sets to zero (see the module docstring): one batched search.

    The ``k_+`` positive weights nearest zero are the first ``k_+`` positives in
    the order of ``x``: its ``(#{x <= 0} + k_+)`` smallest entries are the
    non-positive ones and those. The same over ``-x`` gives the negatives. (Raw
    values, not a sentinel for the other sign: the search's first pivots come
    from a sample's mean and spread.)
    """
    groups, counts = [], []
    for x, p in zip(leaves, fractions, strict=True):
        for v in (x, -x):
            n_side = jnp.sum(v > 0, dtype=jnp.int32)
            k = jnp.round(jnp.asarray(p, jnp.float32) * n_side.astype(jnp.float32)).astype(jnp.int32)
            groups.append([v])
            counts.append(x.size - n_side + k)
    keeps = threshold.select(groups, counts)
    return [(x == 0) | ((x > 0) & ~keeps[2 * i][0]) | ((x < 0) & ~keeps[2 * i + 1][0]) for i, x in enumerate(leaves)]


def _masked_range(x: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array]:
    any_kept = jnp.any(where)
    lo = jnp.where(any_kept, jnp.min(jnp.where(where, x, jnp.inf)), 0.0)
    hi = jnp.where(any_kept, jnp.max(jnp.where(where, x, -jnp.inf)), 0.0)
    return lo, hi


def _partition(w: jax.Array, clipped: jax.Array, bits: int) -> IntegerWeights:
    """The differentiable codebook leaf of ``w`` given its clipped weights (see the module docstring)."""
    m = 2**bits - 1
    w32 = w.astype(jnp.float32)
    f = headroom(jnp.max(jnp.abs(lax.stop_gradient(w32)), initial=0.0))  # exact power of two: sums cannot overflow
    x = lax.stop_gradient(w32) * f
    neg, pos = (x < 0) & ~clipped, (x > 0) & ~clipped
    (lo_n, hi_n), (lo_p, hi_p) = _masked_range(x, neg), _masked_range(x, pos)
    len_n, len_p = hi_n - lo_n, hi_p - lo_p
    has_n, has_p = jnp.any(neg), jnp.any(pos)
    total = len_n + len_p
    share = jnp.where(total > 0, len_n * reciprocal(jnp.where(total > 0, total, 1.0)), 0.5)
    m_n = jnp.clip(jnp.round(m * share), 1, m - 1).astype(jnp.int32)
    m_n = jnp.where(has_n & has_p, m_n, jnp.where(has_n, m, 0))
    m_p = m - m_n

    def interval(v, lo, length, count):  # index in [0, count) of v on [lo, lo + length] split in count
        inv = jnp.where(length > 0, count.astype(jnp.float32) * reciprocal(jnp.where(length > 0, length, 1.0)), 0.0)
        return jnp.clip(jnp.floor((v - lo) * inv).astype(jnp.int32), 0, jnp.maximum(count - 1, 0))

    index = jnp.where(neg, 1 + interval(x, lo_n, len_n, m_n), 0)
    index = jnp.where(pos, 1 + m_n + interval(x, lo_p, len_p, m_p), index)
    flat_index, kept = jnp.reshape(index, (-1,)), jnp.reshape(neg | pos, (-1,))
    sums = jax.ops.segment_sum(jnp.where(kept, jnp.reshape(x, (-1,)), 0.0), flat_index, num_segments=m + 1)
    counts = jax.ops.segment_sum(kept.astype(jnp.float32), flat_index, num_segments=m + 1)
    j = jnp.arange(m + 1, dtype=jnp.int32) - 1  # entry j + 1 is interval j of all M (entry 0: the zero)
    on_n = j < m_n
    width = lambda length, count: length * reciprocal(jnp.maximum(count, 1).astype(jnp.float32))
    offset = jnp.where(on_n, j, j - m_n).astype(jnp.float32) + 0.5
    midpoints = jnp.where(on_n, lo_n + offset * width(len_n, m_n), lo_p + offset * width(len_p, m_p))
    means = sums * reciprocal(jnp.maximum(counts, 1.0))
    codebook = jnp.where(counts > 0, means, midpoints) * reciprocal(f)
    codebook = jnp.where(j < 0, 0.0, codebook)
    codes = straight_through(w32, index.astype(jnp.float32))  # a code passes its value's gradient through
    scale = jnp.ones((1,) * w.ndim, jnp.float32)
    return IntegerWeights(codes, scale, None, bits, False, codebook=lax.stop_gradient(codebook))


@functools.partial(jax.jit, static_argnums=2)  # one program per leaf set when called eagerly (inlined under jit)
def _compress(leaves: tuple, fractions: tuple, bits: tuple) -> tuple[IntegerWeights, ...]:
    """CLIP-Q's integer form of each leaf: one batched clipping search, then each leaf's partition."""
    searched = [i for i, w in enumerate(leaves) if jnp.size(w) > 0]
    full = [lax.stop_gradient(leaves[i].astype(jnp.float32)) for i in searched]
    found = _clipped(full, [fractions[i] for i in searched]) if full else []
    clipped = dict(zip(searched, found, strict=True))
    return tuple(
        _partition(w, clipped.get(i, jnp.zeros(jnp.shape(w), bool)), b)
        for i, (w, b) in enumerate(zip(leaves, bits, strict=True))
    )


def clip_q_quantize(w: jax.typing.ArrayLike, prune_fraction: float, bits: int) -> IntegerWeights:
    """The differentiable integer form of one array under CLIP-Q's clip, partition and quantize steps.

    Args:
      w: a float array (its full-precision weights).
      prune_fraction: ``p`` in ``[0, 1)``: the fraction of each sign's weights clipped to zero.
      bits: ``b``, 2 to 8: ``2^b - 1`` intervals plus the zero.

    Returns:
      A codebook :class:`jaxcompress.IntegerWeights` (float32 codes with
      straight-through gradients; ``.stored()`` gives ``uint8`` codes).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress.joint import clip_q_quantize
      >>> iw = clip_q_quantize(jnp.array([-1.0, -0.5, -0.125, 0.0625, 0.25, 0.5, 0.75, 1.0]), 0.25, 2)
      >>> iw.stored().codes.tolist(), iw.codebook.tolist()  # -0.125 and 0.0625 clipped
      ([1, 1, 0, 0, 2, 2, 3, 3], [0.0, -0.75, 0.375, 0.875])
    """
    fraction = validate.check_fraction(prune_fraction, argument="prune_fraction")
    bits = check_bits(bits)
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"`w` must be a floating-point array, got dtype {w.dtype}.")
    return _compress((w,), (jnp.float32(fraction),), (bits,))[0]


def clip_q(
    config: Setting | Mapping[str, Setting],
    *,
    default: Setting | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """CLIP-Q (Tung & Mori 2018): clip, partition and quantize each layer at every step; see the module docstring.

    Train under :func:`jaxcompress.optim.with_compression` as any quantizer:
    the full-precision weights train straight-through and every forward pass
    compresses them afresh, so clipped weights may come back.

    Args:
      config: one ``(prune_fraction, bits)`` pair for every selected leaf, or
        ``{path: (prune_fraction, bits)}`` (e.g. from :func:`clip_q_search`),
        ``prune_fraction`` in ``[0, 1)`` and ``bits`` in 2..8.
      default: the pair of selected leaves missing from a ``config`` mapping
        (``None``: every selected leaf must be in it).
      rule: which leaves to compress (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`ClipQState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> from jaxcompress.joint import clip_q
      >>> params = {"w": jnp.array([[-1.0, -0.5, -0.125, 0.0625], [0.25, 0.5, 0.75, 1.0]])}
      >>> q, state = jc.compress(clip_q((0.25, 2)), params)
      >>> q["w"].tolist()
      [[-0.75, -0.75, 0.0, 0.0], [0.375, 0.375, 0.875, 0.875]]

    References:
      Tung & Mori, CVPR 2018.
      https://openaccess.thecvf.com/content_cvpr_2018/papers/Tung_CLIP-Q_Deep_Network_CVPR_2018_paper.pdf
    """
    if isinstance(config, Mapping):
        if not config and default is None:
            raise ValueError("`config` is an empty mapping and `default` is None: give a (prune_fraction, bits) pair.")
        for path in config:
            if not isinstance(path, str):
                raise TypeError(f"`config` keys must be leaf paths (str), got {type(path).__name__}: {path!r}.")
        settings = {path: check_setting(v, argument=f"config[{path!r}]") for path, v in config.items()}
        fallback = None if default is None else check_setting(default, argument="default")
    else:
        if default is not None:
            raise ValueError("`default` applies to a `config` mapping; with one (prune_fraction, bits) pair omit it.")
        settings, fallback = {}, check_setting(config, argument="config")
    selector = paths_lib.as_selector(rule)

    def setting(path: str) -> Setting:
        return settings.get(path, fallback)

    def init(params: Any) -> ClipQState:
        _, selected = validate.selected_weights(selector, params)
        unused = [p for p in settings if p not in selected]
        if unused:
            raise ValueError(
                f"`config` names {unused}, which the rule {selector.description} does not select; expected "
                f"paths among {selected}. Fix the paths or pass rule=jc.paths.named(*config)."
            )
        missing = [p for p in selected if setting(p) is None]
        if missing:
            raise ValueError(
                f"`config` gives no (prune_fraction, bits) for the selected leaves {missing}; add them, pass "
                f"`default=(p, b)`, or narrow the rule (e.g. rule=jc.paths.named(*config))."
            )
        fractions = {p: jnp.asarray(setting(p)[0], jnp.float32) for p in selected}
        return ClipQState(jnp.zeros([], jnp.int32), fractions)

    def update(params: Any, state: ClipQState, grads: Any = None, **extra_args) -> ClipQState:
        del params, grads, extra_args
        return ClipQState(core.safe_increment(state.count), state.fractions)

    def quantize(params: Any, state: ClipQState) -> dict[str, IntegerWeights]:
        leaves = paths_lib.leaves_at(params, state.fractions)
        paths = list(leaves)
        fractions = tuple(state.fractions[p] for p in paths)
        integer = _compress(
            tuple(jnp.asarray(w) for w in leaves.values()), fractions, tuple(setting(p)[1] for p in paths)
        )
        return dict(zip(paths, integer, strict=True))

    return core.Quantizer(init, *core.checking_state(ClipQState, "jc.joint.clip_q", update, quantize))
