"""Bayesian Bits: learned mixed precision and pruning, as gates on nested quantization residuals.

Each selected leaf's weights, clipped to ``[-a, a]`` (``a``: the leaf's
largest magnitude at ``init``), are quantized on nested symmetric grids of
2, 4, 8 and 16 bits, steps ``s_2 = a``, ``s_4 = s_2 / 5``, ``s_8 = s_4 / 17``,
``s_16 = s_8 / 257`` (each step divides the one before by ``2^b + 1``, so every
grid holds the coarser one), and 32 bits is the float value itself:

    x = z_2 (x_2 + z_4 (e_4 + z_8 (e_8 + z_16 (e_16 + z_32 e_32))))

with ``x_b = s_b round(w / s_b)`` and residuals ``e_b = x_b - x_{b/2}`` (the
paper's ``s_b round((w - x_{b/2}) / s_b)``: the grids nest). ``z_2``, one gate per
output channel (the last axis), is the zero-bit gate: off, the channel is
pruned. ``z_4 .. z_32``, one each per leaf, choose its width: the highest gate
on in the unbroken run from ``z_4`` is the leaf's precision.

Gates are hard-concrete (Louizos et al. 2018) with learned log-odds, in a
:class:`jaxcompress.Learned` node (pass their gradients as ``learned_grads=``):
while training each is sampled from the state's key (advanced by ``update``),
so a gate's log-odds learn through the reparameterized sample. The penalty is
:func:`relative_bops` (expected bit operations over float's), weighted by the
user in the loss. :func:`finalize` makes the gates deterministic (a gate is on
where its test-time value ``sigmoid(log_odds) (zeta - gamma) + gamma`` exceeds
1/2, i.e. ``log_odds > 0``) and returns the recipe that exports: pruned
channels held at zero and each leaf on its chosen grid (:func:`fixed_grid`).

References:
  van Baalen et al., "Bayesian Bits: Unifying Quantization and Pruning",
  NeurIPS 2020. https://arxiv.org/abs/2005.07093
  Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
  Regularization", ICLR 2018 (hard-concrete gates). https://arxiv.org/abs/1712.01312
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.joint.admm import fixed_grid
from jaxcompress._src.quant.ste import clip_ste, round_ste
from jaxcompress._src.quant.uniform import advance_key, leaf_key

__all__ = [
    "BITS",
    "BayesianBitsState",
    "bayesian_bits",
    "count_macs",
    "finalize",
    "gate_probabilities",
    "relative_bops",
]

BITS = (2, 4, 8, 16, 32)
_LEVELS = {2: 1, 4: 5, 8: 85, 16: 21845}  # Q_b: codes in [-Q_b, Q_b], step a / Q_b
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)


class BayesianBitsState(NamedTuple):
    """State of :func:`bayesian_bits`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    key: jax.Array  # shape=(2,), dtype=uint32: raw PRNG key of the gate samples, advanced by update
    alpha: dict[str, jax.Array]  # by path: the clipping range a, shape=(), float32
    learned: core.Learned  # by path: {"prune": (channels,) log-odds of z_2, "bits": (4,) of z_4 .. z_32}


def _sample(log_odds: jax.Array, key: jax.Array) -> jax.Array:
    """Hard-concrete samples in [0, 1] (exact zeros and ones have positive probability)."""
    u = jax.random.uniform(key, log_odds.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_odds) / BETA)
    return jnp.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def gate_probabilities(log_odds: jax.Array) -> jax.Array:
    """``P(z != 0)`` of hard-concrete gates with these log-odds (differentiable)."""
    return jax.nn.sigmoid(log_odds - BETA * math.log(-GAMMA / ZETA))


def _deterministic(log_odds: jax.Array) -> jax.Array:
    return (log_odds > 0).astype(jnp.float32)


def _levels(w: jax.Array, alpha: jax.Array) -> list[jax.Array]:
    """``[x_2, x_4, x_8, x_16, x_32]``: ``w`` clipped to ``[-a, a]`` on each nested grid (x_32 = the clipped ``w``)."""
    clipped = clip_ste(w, -alpha, alpha)
    return [alpha / _LEVELS[b] * round_ste(clipped * (_LEVELS[b] / alpha)) for b in BITS[:-1]] + [clipped]


def gated(w: jax.Array, alpha: jax.Array, prune: jax.Array, bits: jax.Array) -> jax.Array:
    """The gated sum of residuals for gate values ``prune`` (per output channel) and ``bits`` (``z_4 .. z_32``)."""
    x = _levels(w, alpha)
    inner = jnp.zeros_like(w)
    for i in range(len(BITS) - 1, 0, -1):  # from z_32 inwards: z_b (e_b + inner)
        inner = bits[i - 1] * (x[i] - x[i - 1] + inner)
    return jnp.broadcast_to(prune, jnp.shape(w)) * (x[0] + inner)


def bayesian_bits(
    *,
    init_log_odds: float = 3.0,
    seed: int = 0,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Transform:
    """Bayesian Bits (van Baalen et al. 2020): gated nested residuals; see the module docstring.

    Train with ``loss + strength * jc.joint.relative_bops(cstate, macs)``
    (``macs`` from :func:`count_macs`) under
    :func:`jaxcompress.optim.with_compression`, passing ``learned_grads`` from
    :func:`jaxcompress.optim.value_and_grad`; then :func:`finalize`.

    Args:
      init_log_odds: every gate's initial log-odds (``3.0``: nearly always on,
        so training starts at full precision and the penalty turns gates off).
      seed: seed of the gates' sampling key.
      rule: which leaves to gate (default: ``ndim >= 2``); the last axis is the output channel.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`BayesianBitsState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> method = jc.joint.bayesian_bits()
      >>> state = method.init({"w": jnp.array([[0.1, -1.0], [0.45, 0.9]])})
      >>> state.learned.values["w"]["prune"].shape, state.learned.values["w"]["bits"].shape
      ((2,), (4,))
    """
    if isinstance(init_log_odds, bool) or not isinstance(init_log_odds, (int, float)):
        raise TypeError(f"`init_log_odds` must be a number, got {type(init_log_odds).__name__}: {init_log_odds!r}.")
    if not math.isfinite(init_log_odds):
        raise ValueError(f"`init_log_odds` must be finite, got {init_log_odds!r}.")
    seed = validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)

    def init(params: Any) -> BayesianBitsState:
        flat, selected = validate.selected_weights(selector, params)
        alpha, gates = {}, {}
        for p in selected:
            w = jnp.asarray(flat[p], jnp.float32)
            top = jnp.max(jnp.abs(w)) if w.size else jnp.ones((), jnp.float32)
            alpha[p] = jnp.where(top > 0, top, 1.0)
            channels = w.shape[-1] if w.ndim else 1
            gates[p] = {
                "prune": jnp.full((channels,), init_log_odds, jnp.float32),
                "bits": jnp.full((len(BITS) - 1,), init_log_odds, jnp.float32),
            }
        key = jax.random.key_data(jax.random.key(seed))
        return BayesianBitsState(jnp.zeros((), jnp.int32), key, alpha, core.Learned(gates))

    def update(params: Any, state: BayesianBitsState, grads: Any = None, **extra_args) -> BayesianBitsState:
        del grads, extra_args
        _leaves(params, state)
        return state._replace(count=core.safe_increment(state.count), key=advance_key(state.key))

    def apply(params: Any, state: BayesianBitsState) -> Any:
        leaves = _leaves(params, state)

        def sampled(p, w):
            gates = state.learned.values[p]
            k_prune, k_bits = jax.random.split(leaf_key(state.key, p))
            prune, bits = _sample(gates["prune"], k_prune), _sample(gates["bits"], k_bits)
            return gated(jnp.asarray(w, jnp.float32), state.alpha[p], prune, bits).astype(jnp.result_type(w))

        return paths_lib.map_selected(sampled, params, list(leaves))

    return core.Transform(init, *core.checking_state(BayesianBitsState, "jc.joint.bayesian_bits", update, apply))


def _leaves(params: Any, state: BayesianBitsState) -> dict[str, Any]:
    leaves = paths_lib.leaves_at(params, state.alpha)
    for p, w in leaves.items():
        channels = state.learned.values[p]["prune"].shape[0]
        found = jnp.shape(w)[-1] if jnp.ndim(w) else 1
        if found != channels:
            raise ValueError(
                f"`params` leaf {p!r} has {found} output channels (shape {tuple(jnp.shape(w))}), but the "
                f"jc.joint.bayesian_bits state was built for {channels}. Pass params shaped as at init."
            )
    return leaves


def _node(state: Any) -> BayesianBitsState:
    nodes = core.nodes_of(state, BayesianBitsState)
    if len(nodes) != 1:
        raise ValueError(
            f"`state` must hold exactly one jc.joint.bayesian_bits state, found {len(nodes)} (in a "
            f"{type(state).__name__}); pass the compression state, e.g. jc.optim.compression_state(opt_state)."
        )
    return nodes[0]


def _expected_bits(on: jax.Array) -> jax.Array:
    """Bits of an unpruned channel given the probabilities (or 0/1 values) of ``z_4 .. z_32``."""
    total = jnp.zeros((), jnp.float32)
    for i in range(len(BITS) - 1, 0, -1):
        total = on[i - 1] * (BITS[i] - BITS[i - 1] + total)
    return BITS[0] + total


def relative_bops(state: Any, macs: Mapping[str, int], *, activation_bits: int = 8, expected: bool = True) -> jax.Array:
    """Bit operations of the gated layers over float32's, ``sum_l M_l k_l b_l b_a / sum_l M_l 32 32``.

    ``M_l`` is the layer's multiply-accumulates (``macs``), ``k_l`` the
    fraction of output channels whose ``z_2`` is on, ``b_l`` the width the
    gates give, ``b_a`` the activations' width.
    ``expected=True`` (the training penalty, differentiable in the gates'
    log-odds) uses the gates' probabilities of being on; ``False`` the
    deterministic gates :func:`finalize` uses. Pruned output channels are not
    counted as removing the next layer's inputs (an upper bound).

    Args:
      state: the compression state holding the :class:`BayesianBitsState`.
      macs: ``{path: multiply-accumulates per example}`` of every gated leaf (:func:`count_macs`).
      activation_bits: the width of the layers' inputs (8: the int8 program's).
      expected: expected (training) or deterministic (final) gates.

    Returns:
      A float32 scalar in ``[0, 1]``.
    """
    node = _node(state)
    if not isinstance(macs, Mapping) or set(macs) != set(node.alpha):
        found = sorted(macs) if isinstance(macs, Mapping) else type(macs).__name__
        raise ValueError(
            f"`macs` must give the multiply-accumulates of exactly the gated leaves {sorted(node.alpha)}, got "
            f"{found}; use jc.joint.count_macs(model, variables, example)."
        )
    activation_bits = validate.check_int(activation_bits, argument="activation_bits", minimum=1)
    on = gate_probabilities if expected else _deterministic
    spent = jnp.zeros((), jnp.float32)
    for p, gates in node.learned.values.items():
        kept = jnp.mean(on(gates["prune"]))
        spent = spent + macs[p] * kept * _expected_bits(on(gates["bits"])) * activation_bits
    return spent / (sum(macs.values()) * 32.0 * 32.0)


def count_macs(model: nn.Module, variables: Any, example: jax.typing.ArrayLike, **apply_kwargs: Any) -> dict[str, int]:
    """``{kernel path: multiply-accumulates per example}`` of every linen module with a ``kernel`` (Dense, Conv).

    Traced abstractly (``jax.eval_shape``), nothing is computed: a kernel's
    size times the output positions it is applied at (its output's spatial
    size; 1 for a Dense on a vector).
    """
    found: dict[str, int] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and module.has_variable("params", "kernel"):
            kernel = module.get_variable("params", "kernel")
            positions = math.prod(out.shape[1:-1]) if out.ndim > 2 else 1
            found["/".join(str(p) for p in (*module.path, "kernel"))] = int(math.prod(kernel.shape)) * positions
        return out

    def run(variables, x):
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, **apply_kwargs)

    jax.eval_shape(run, variables, jnp.asarray(example))
    if not found:
        raise ValueError("`model` ran no module with a `kernel` parameter: there is nothing to count.")
    return found


def finalize(params: Any, state: Any) -> tuple[Any, core.Recipe, dict[str, dict]]:
    """Deterministic gates: ``(params, recipe, choices)`` for evaluation, fine-tuning and export.

    Each gated leaf is clipped to its range and its channels with ``z_2`` off
    set to zero. The recipe is :func:`fixed_grid` on each leaf's chosen grid
    (step ``a / Q_b``, codes in ``[-Q_b, Q_b]``) with the pruned channels as its
    masks; a leaf that keeps its 16- or 32-bit gate is left in float32 (codes
    are stored in at most 8 bits), which ``choices`` reports as 32 bits: its
    pruned channels are zero in the returned params but not masked, so
    fine-tuning may regrow them. ``choices[path]``
    gives ``bits`` and ``channels_kept``. A leaf with every channel pruned stays
    on a 2-bit grid of zeros.

    Args:
      params: the trained params.
      state: the compression state holding the :class:`BayesianBitsState`.

    Returns:
      ``(params, recipe, choices)``; ``recipe`` is ``jc.identity()`` when every leaf stays float.
    """
    node = _node(state)
    leaves = _leaves(params, node)
    keep, steps, widths, choices, new = {}, {}, {}, {}, {}
    for p, w in leaves.items():
        gates = jax.tree.map(lambda x: jax.device_get(_deterministic(x)), node.learned.values[p])
        on = gates["bits"]
        bits = BITS[0]
        for i in range(1, len(BITS)):
            if on[i - 1] != 1:
                break
            bits = BITS[i]
        channels = jnp.asarray(gates["prune"], bool)
        alpha = node.alpha[p]
        mask = jnp.broadcast_to(channels, jnp.shape(w))
        value = jnp.where(mask, jnp.clip(jnp.asarray(w, jnp.float32), -alpha, alpha), 0.0)
        new[p] = value.astype(jnp.result_type(w))
        choices[p] = {"bits": bits if bits <= 8 else 32, "channels_kept": int(channels.sum())}
        if bits <= 8:
            keep[p], steps[p], widths[p] = mask, alpha / _LEVELS[bits], bits
    params = paths_lib.map_selected(lambda p, _: new[p], params, list(new))
    recipe = fixed_grid(keep, steps, widths) if keep else core.identity()
    return params, recipe, choices
