"""CLIP-Q's per-layer choice of (prune fraction, bits) under a size target: a greedy marginal-cost search.

The paper (Tung & Mori 2018) picks each layer's setting by Bayesian
optimization; :func:`clip_q_search` is a deterministic greedy alternative
(see its docstring), with :func:`clip_q_bytes` as the size model.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from jaxcompress._src import validate
from jaxcompress._src.joint.clipq import DEFAULT_CANDIDATES, Setting, check_setting
from jaxcompress._src.quant.grid import check_bits

__all__ = ["ClipQSearchRecord", "clip_q_bytes", "clip_q_search"]


def clip_q_bytes(n: int, prune_fraction: float, bits: int, *, index_bits: float | None = None) -> int:
    """The estimated storage of a CLIP-Q layer of ``n`` weights at ``(prune_fraction, bits)``, in bytes.

    .. math::

        \\lceil (k\\, b + I) / 8 \\rceil + 4 \\cdot 2^b, \\qquad k = \\mathrm{round}((1 - p)\\, n)

    ``k`` kept weights of ``b`` bits each, their positions costing ``I`` bits,
    and a float32 codebook of ``2^b`` entries. By default ``I = n H(k / n)``,
    with ``H`` the binary entropy: the least any position code needs (``0``
    when nothing is clipped, so a dense layer costs ``n b`` bits); with
    ``index_bits`` a fixed ``I = k * index_bits`` (e.g. relative indices).

    Args:
      n: the layer's number of weights (``>= 1``).
      prune_fraction: ``p`` in ``[0, 1)``.
      bits: ``b``, 2 to 8.
      index_bits: bits per kept weight's position (``None``: the entropy bound).

    Returns:
      The estimated bytes (an int).

    Example:
      >>> from jaxcompress.joint import clip_q_bytes
      >>> clip_q_bytes(1000, 0.0, 8), clip_q_bytes(1000, 0.5, 4), clip_q_bytes(1000, 0.5, 4, index_bits=4)
      (2024, 439, 564)
    """
    n = validate.check_int(n, argument="n", minimum=1)
    p = validate.check_fraction(prune_fraction, argument="prune_fraction")
    bits = check_bits(bits)
    kept = round((1.0 - p) * n)
    if index_bits is None:
        q = kept / n
        index = 0.0 if q in (0.0, 1.0) else -n * (q * math.log2(q) + (1.0 - q) * math.log2(1.0 - q))
    else:
        if isinstance(index_bits, bool) or not isinstance(index_bits, numbers.Real) or not index_bits >= 0:
            raise ValueError(f"`index_bits` must be a number >= 0 or None, got {index_bits!r}.")
        index = kept * float(index_bits)
    return math.ceil((kept * bits + index) / 8) + 4 * 2**bits


class ClipQSearchRecord(NamedTuple):
    """What :func:`clip_q_search` did."""

    evaluations: int  # calls of `evaluate`
    bytes: int  # the chosen config's estimated size (clip_q_bytes, summed)
    loss: float  # evaluate(the chosen config)
    moves: tuple[tuple[str, Setting], ...]  # (path, its new setting), in the order applied


def _loss(evaluate: Callable, config: dict[str, Setting]) -> float:
    value = evaluate(dict(config))
    try:
        loss = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`evaluate` must return a number (a validation loss or error), got {type(value).__name__}: {value!r}."
        ) from None
    if not math.isfinite(loss):
        raise ValueError(f"`evaluate` returned {loss!r} for the config {config}; expected a finite loss.")
    return loss


def clip_q_search(
    evaluate: Callable[[dict[str, Setting]], float],
    sizes: Mapping[str, int],
    *,
    target_bytes: float,
    candidates: Sequence[Setting] = DEFAULT_CANDIDATES,
    index_bits: float | None = None,
) -> tuple[dict[str, Setting], ClipQSearchRecord]:
    """Per-layer ``(prune_fraction, bits)`` under a size target, by a greedy marginal-cost search.

    Each layer's candidates are ordered by their estimated size
    (:func:`clip_q_bytes`), largest first (of candidates of equal size, the
    first given is kept). Every layer starts at its largest; then, while the
    total exceeds ``target_bytes``, each layer's *next* smaller candidate is
    evaluated with the others unchanged, and the move with the least loss
    increase per byte saved, ``(loss' - loss) / (bytes - bytes')``, is applied
    (ties: the first layer in ``sizes``). Each round evaluates at most one
    candidate per layer and makes one move, so a search over ``L`` layers and
    ``C`` candidates takes at most ``1 + L^2 (C - 1)`` evaluations.

    The paper chooses the settings by Bayesian optimization (a Gaussian process
    over each layer's ``(p, b)`` and a weighted sum of error and compression).
    This search is deterministic, needs no trade-off weight (it meets the size
    target directly), and its evaluations are bounded: it is the classic greedy
    for a budgeted choice over separable costs, which, when the loss adds over
    layers and each layer's loss-versus-bytes curve is convex, follows the
    lower convex hull of the trade-off.

    Args:
      evaluate: ``evaluate(config) -> float``, a validation loss or error of
        the model compressed with ``config`` (a dict ``{path: (p, b)}``, as
        :func:`clip_q` takes), e.g. one batch's loss of ``jc.compress(clip_q(config), params)``.
      sizes: ``{path: number of weights}`` of the layers to configure.
      target_bytes: the size to reach (``clip_q_bytes`` summed over layers).
      candidates: the ``(prune_fraction, bits)`` settings to choose from.
      index_bits: passed to :func:`clip_q_bytes`.

    Returns:
      ``(config, record)``: ``{path: (p, b)}`` in the order of ``sizes``, and a :class:`ClipQSearchRecord`.

    Raises:
      ValueError: if even every layer at its smallest candidate exceeds ``target_bytes``.

    Example:
      >>> from jaxcompress.joint import clip_q_search
      >>> def evaluate(config):  # stands for a validation loss: layer "a" is ten times more sensitive
      ...     return sum(s * (p + 2.0**-b) for s, (p, b) in zip((10.0, 1.0), config.values()))
      >>> config, record = clip_q_search(
      ...     evaluate, {"a": 4096, "b": 4096}, target_bytes=5000, candidates=[(0.0, 8), (0.5, 4), (0.75, 2)]
      ... )
      >>> config, record.moves[0], record.bytes, record.evaluations
      ({'a': (0.5, 4), 'b': (0.75, 2)}, ('b', (0.5, 4)), 2288, 6)
    """
    if not callable(evaluate):
        raise TypeError(f"`evaluate` must be callable, config -> loss, got {type(evaluate).__name__}: {evaluate!r}.")
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError(
            f"`sizes` must be a non-empty mapping {{path: n_weights}}, got {type(sizes).__name__}: {sizes!r}."
        )
    for path in sizes:
        if not isinstance(path, str):
            raise TypeError(f"`sizes` keys must be leaf paths (str), got {type(path).__name__}: {path!r}.")
    sizes = {p: validate.check_int(n, argument=f"sizes[{p!r}]", minimum=1) for p, n in sizes.items()}
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, numbers.Real) or not target_bytes > 0:
        raise ValueError(f"`target_bytes` must be a positive number, got {target_bytes!r}.")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not candidates:
        raise TypeError(
            f"`candidates` must be a non-empty sequence of (prune_fraction, bits) pairs, got {candidates!r}."
        )
    candidates = [check_setting(c, argument=f"candidates[{i}]") for i, c in enumerate(candidates)]
    size_of = functools.partial(clip_q_bytes, index_bits=index_bits)

    chains: dict[str, list[tuple[int, Setting]]] = {}
    for p, n in sizes.items():
        ordered = sorted(((size_of(n, *c), c) for c in candidates), key=lambda bc: -bc[0])  # stable: given order
        chains[p] = [bc for i, bc in enumerate(ordered) if i == 0 or bc[0] < ordered[i - 1][0]]
    smallest = sum(chain[-1][0] for chain in chains.values())
    if smallest > target_bytes:
        raise ValueError(
            f"`target_bytes`={target_bytes} is unreachable: with every layer at its smallest candidate the "
            f"estimated size is {smallest} bytes. Raise the target or add smaller candidates (more pruning, "
            f"fewer bits)."
        )
    at = dict.fromkeys(sizes, 0)
    config = {p: chains[p][0][1] for p in sizes}
    total = sum(chains[p][0][0] for p in sizes)
    loss, evaluations, moves = _loss(evaluate, config), 1, []
    while total > target_bytes:
        best = None
        for p in sizes:
            if at[p] + 1 == len(chains[p]):
                continue
            (now, _), (then, setting) = chains[p][at[p]], chains[p][at[p] + 1]
            trial = _loss(evaluate, {**config, p: setting})
            evaluations += 1
            cost = (trial - loss) / (now - then)
            if best is None or cost < best[0]:
                best = (cost, p, trial, now - then)
        _, p, loss, saved = best  # a move exists: the smallest total is within the target
        at[p] += 1
        config[p] = chains[p][at[p]][1]
        total -= saved
        moves.append((p, config[p]))
    return config, ClipQSearchRecord(evaluations, total, loss, tuple(moves))
