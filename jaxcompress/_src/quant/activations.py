"""Activation quantization: what to quantize, its state, and the export interface.

:func:`activations` is a :class:`jaxcompress.Transform` that selects *modules*
(the layers owning a ``kernel`` param: Flax ``Dense``, ``Conv``, ``Einsum``,
``DenseGeneral``, NNX ``Linear``/``Conv``/``Einsum``) by a path rule on the
module path (``"Conv_0"``, ``"Block_0/Dense_1"``: the param path of the kernel
without ``/kernel``), and keeps per-module ranges and learned parameters in
its state. It leaves the weights alone; the quantization happens inside
``model.apply``, installed by :func:`jaxcompress.quant.quantize_activations`
(linen, through ``flax.linen.intercept_methods``) or
:func:`jaxcompress.quant.quantize_activations_nnx` (NNX).

Modes, per selected module input (and output, with ``outputs=True``), all
per tensor:

* ``"dynamic"``: the range is the batch's own ``[min, max]`` (``max|x|`` when
  symmetric), computed at run time.
* ``"static"``: a stored range, from :func:`jaxcompress.quant.calibrate`
  (min-max, moving average, percentile, MSE) and/or running statistics
  folded in during QAT: pass the ranges the context observed to the
  optimizer, ``tx.update(..., activation_stats=observed.ranges)``, and each
  update moves the range by an exponential moving average (``momentum``).
  Until a range has been observed, the batch range is used.
* ``"lsq"``: a learned step size (LSQ, :func:`~jaxcompress.quant.lsq`).
* ``"pact"``: a learned clipping level, unsigned (PACT, :func:`~jaxcompress.quant.pact_fake_quant`).

The learned values (``lsq``, ``pact``) are in a :class:`jaxcompress.Learned`
node: train them with ``learned_grads=`` like any other. A PACT clipping level
gets a gradient only from activations above it, so one that starts above every
activation (the uncalibrated 6.0) never moves: calibrate first
(:func:`~jaxcompress.quant.calibrate` sets it to the observed maximum), or add
the paper's L2 term, :func:`pact_penalty`, to the loss.

**Export convention.** :func:`input_quantization` gives, per module path, an
:class:`~jaxcompress.quant.InputQuant`: the grid convention (``grid.py``) the
fake quantization here trains with and export computes, bitwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.core import safe_increment
from jaxcompress._src.quant import lsq as lsq_lib
from jaxcompress._src.quant import pact
from jaxcompress._src.quant.grid import (
    InputQuant,
    Range,
    batch_range,
    check_bits,
    check_bool,
    codes_ste,
    dequantize_codes,
    int_range,
)
from jaxcompress._src.quant.ste import straight_through

__all__ = [
    "ActivationConfig",
    "ActivationsState",
    "activations",
    "input_quantization",
    "output_quantization",
    "pact_penalty",
]

MODES = ("dynamic", "static", "lsq", "pact")
KINDS = ("inputs", "outputs")
PACT_INIT_ALPHA = 6.0


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ActivationConfig:
    """Static settings of one :func:`activations` transform (no array leaves)."""

    bits: int
    signed: bool
    symmetric: bool
    mode: str
    outputs: bool
    momentum: float
    modules: tuple[str, ...]  # selected module paths
    kernels: tuple[str, ...]  # their kernel leaf paths (to check the params' structure)

    @property
    def dynamic(self) -> InputQuant:
        """This grid with a per-batch range."""
        return InputQuant(self.bits, self.signed, True, None, None, self.symmetric)


class ActivationsState(NamedTuple):
    """State of :func:`activations`."""

    config: ActivationConfig  # static
    inputs: dict[str, Range]  # by module path: calibrated / running range of the input
    outputs: dict[str, Range]  # by module path (empty unless outputs=True)
    count: jax.Array  # shape=(), dtype=int32: observations folded into the ranges (0: none yet)
    learned: core.Learned | tuple  # lsq / pact: Learned({"inputs": {...}, "outputs": {...}}); else ()


def module_of(path: str) -> str | None:
    """The module path of a kernel leaf path (``"Conv_0/kernel"``, NNX ``"conv/kernel/value"``), else None."""
    parts = path.split("/")
    if parts[-1] == "value":
        parts = parts[:-1]
    if len(parts) >= 1 and parts[-1] == "kernel":
        return "/".join(parts[:-1])
    return None


def kernel_modules(params: Any) -> dict[str, str]:
    """``{module path: kernel leaf path}`` for every leaf named ``kernel`` in ``params``."""
    flat, _ = paths_lib.flatten(params)
    return {m: p for p in flat if (m := module_of(p)) is not None}


def activations(
    bits: int = 8,
    *,
    rule: paths_lib.Rule | None = None,
    mode: str = "dynamic",
    signed: bool = True,
    symmetric: bool = True,
    outputs: bool = False,
    momentum: float = 0.9,
) -> core.Transform:
    """Quantize the inputs (and optionally outputs) of selected layers (see the module docstring).

    Args:
      bits: bit width, 2 to 8.
      rule: which modules, as a path rule on the module path (regex searched,
        predicate ``(module_path, kernel) -> bool``, or Selector); default:
        every module with a kernel. A rule naming no module is an error listing
        the module paths seen.
      mode: ``"dynamic"``, ``"static"``, ``"lsq"`` or ``"pact"``.
      signed: signed codes (``int8``) or unsigned (``uint8``; for non-negative
        inputs, e.g. after a ReLU). ``"pact"`` needs ``signed=False``.
      symmetric: zero point 0 (``dynamic``/``static``), or an asymmetric range
        with an integer zero point.
      outputs: also quantize the layers' outputs (linen only).
      momentum: of the moving average folding running statistics into static
        ranges during QAT.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`ActivationsState`.
      ``apply`` returns the params unchanged.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
      >>> model = nn.Dense(3)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> recipe = jc.chain(jc.quant.int8(), jc.quant.activations(8))
      >>> cstate = recipe.init(params)
      >>> with jc.quant.quantize_activations(cstate):
      ...     y = model.apply({"params": recipe.apply(params, cstate)}, jnp.ones((2, 4)))
      >>> y.shape, sorted(jc.quant.input_quantization(cstate))
      ((2, 3), [''])
    """
    bits = check_bits(bits)
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    signed = check_bool(signed, argument="signed")
    symmetric = check_bool(symmetric, argument="symmetric")
    outputs = check_bool(outputs, argument="outputs")
    momentum = validate.check_fraction(momentum, argument="momentum")
    if mode == "pact" and signed:
        raise ValueError("`mode='pact'` quantizes non-negative activations: pass `signed=False` (or use mode='lsq').")
    if mode in ("lsq", "pact") and not symmetric:
        raise ValueError(f"`mode={mode!r}` has no zero point: pass `symmetric=True`.")
    selector = paths_lib.as_selector(rule) if rule is not None else None

    def init(params: Any) -> ActivationsState:
        found = kernel_modules(params)
        if not found:
            raise ValueError(
                "`params` hold no leaf named 'kernel', so no Dense/Conv/Einsum layer to quantize the inputs of. "
                f"Paths: {list(paths_lib.flatten(params)[0])}."
            )
        flat, _ = paths_lib.flatten(params)
        chosen = [m for m, k in found.items() if selector is None or selector(m, flat[k])]
        if not chosen:
            raise ValueError(
                f"`rule` {selector.description} selects no module. Module paths seen (layers with a kernel): "
                f"{list(found)}."
            )
        config = ActivationConfig(
            bits, signed, symmetric, mode, outputs, momentum, tuple(chosen), tuple(found[m] for m in chosen)
        )
        kinds = KINDS if outputs else KINDS[:1]
        ranges = {kind: {m: _zero_range() for m in chosen} if kind in kinds else {} for kind in KINDS}
        learned: core.Learned | tuple = ()
        if mode in ("lsq", "pact"):
            init_value = _init_learned(mode, bits, signed)
            learned = core.Learned({kind: {m: init_value for m in ranges[kind]} for kind in KINDS})
        return ActivationsState(config, ranges["inputs"], ranges["outputs"], jnp.zeros([], jnp.int32), learned)

    def update(params: Any, state: ActivationsState, grads: Any = None, **extra_args) -> ActivationsState:
        del params, grads
        stats = extra_args.get("activation_stats")
        if stats is None:
            return state
        return fold_ranges(state, stats)

    def apply(params: Any, state: ActivationsState) -> Any:
        paths_lib.leaves_at(params, state.config.kernels)  # the params the state was built for
        return params

    return core.Transform(init, *core.checking_state(ActivationsState, "jc.quant.activations", update, apply))


def _zero_range() -> Range:
    return Range(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32))


def pact_penalty(cstate: Any) -> jax.Array:
    """PACT's L2 regularizer: the sum of every PACT clipping level squared, ``sum(alpha^2)``.

    Add ``weight * pact_penalty(cstate)`` to the loss (Choi et al. use the
    weights' decay, about 5e-4): it pulls each ``alpha`` down until
    activations clip and their gradient holds it, so a level that starts above
    every activation still learns. Differentiable in the learned values inside
    ``cstate`` (as :func:`jaxcompress.optim.value_and_grad` hands them to the
    loss); 0.0 when ``cstate`` has no PACT site.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
      >>> params = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> cstate = jc.quant.activations(4, mode="pact", signed=False).init(params)
      >>> float(jc.quant.pact_penalty(cstate))  # the uncalibrated 6.0, squared
      36.0

    References:
      Choi et al., "PACT: Parameterized Clipping Activation for Quantized
      Neural Networks", 2018, eq. 3. https://arxiv.org/abs/1805.06085
    """
    total = jnp.zeros([], jnp.float32)
    for state in find_states(cstate):
        if state.config.mode == "pact":
            for values in state.learned.values.values():
                for alpha in values.values():
                    total = total + jnp.sum(jnp.square(alpha.astype(jnp.float32)))
    return total


def _init_learned(mode: str, bits: int, signed: bool) -> jax.Array:
    if mode == "pact":
        return jnp.asarray(PACT_INIT_ALPHA, jnp.float32)
    _, qp = lsq_lib.code_bounds(bits, signed)
    return jnp.asarray(PACT_INIT_ALPHA / qp, jnp.float32)  # a range of about [-6, 6] until calibrated


def fold_ranges(state: ActivationsState, stats: Mapping[str, Mapping[str, Range]]) -> ActivationsState:
    """``state`` with observed batch ranges folded in by a moving average (the first one taken as is)."""
    m = jnp.float32(state.config.momentum)
    first = state.count == 0
    new = {}
    for kind in KINDS:
        current = getattr(state, kind)
        seen = stats.get(kind, {})
        out = {}
        for module, r in current.items():
            if module not in seen:
                out[module] = r
                continue
            b = seen[module]
            out[module] = Range(
                jnp.where(first, b.lo, m * r.lo + (1 - m) * b.lo).astype(jnp.float32),
                jnp.where(first, b.hi, m * r.hi + (1 - m) * b.hi).astype(jnp.float32),
            )
        new[kind] = out
    return state._replace(inputs=new["inputs"], outputs=new["outputs"], count=safe_increment(state.count))


def find_states(cstate: Any) -> list[ActivationsState]:
    """Every :class:`ActivationsState` inside a (chained) compression state."""
    is_node = lambda x: isinstance(x, ActivationsState)
    return [n for n in jax.tree.leaves(cstate, is_leaf=is_node) if is_node(n)]


def replace_states(cstate: Any, new: list[ActivationsState]) -> Any:
    """``cstate`` with its :class:`ActivationsState` nodes replaced in order."""
    it = iter(new)
    is_node = lambda x: isinstance(x, ActivationsState)
    return jax.tree.map(lambda x: next(it) if is_node(x) else x, cstate, is_leaf=is_node)


class Site(NamedTuple):
    """One quantized tensor: a module's input or output, with its state."""

    module: str
    kind: str  # "inputs" or "outputs"
    config: ActivationConfig
    range: Range
    count: jax.Array
    learned: jax.Array | None  # LSQ step or PACT alpha


def sites_of(cstate: Any) -> dict[tuple[str, str], Site]:
    """``{(module, kind): Site}`` over every activation transform in ``cstate``."""
    sites: dict[tuple[str, str], Site] = {}
    for state in find_states(cstate):
        for kind in KINDS:
            for module, r in getattr(state, kind).items():
                if (module, kind) in sites:
                    raise ValueError(
                        f"Two activation transforms in `cstate` both quantize the {kind[:-1]} of module {module!r}; "
                        "give them disjoint rules."
                    )
                learned = state.learned.values[kind][module] if isinstance(state.learned, core.Learned) else None
                sites[(module, kind)] = Site(module, kind, state.config, r, state.count, learned)
    return sites


def require_sites(cstate: Any, *, hint: str = "add jc.quant.activations(...).") -> dict[tuple[str, str], Site]:
    """:func:`sites_of` ``cstate``; a ValueError ending in ``hint`` if it holds no activation state."""
    sites = sites_of(cstate)
    if not sites:
        raise ValueError(f"`cstate` holds no activation quantization state; {hint}")
    return sites


def config_grid(config: ActivationConfig, r: Range):
    """``(scale, zero point or None, qmin, qmax)`` of ``config``'s grid over range ``r``."""
    scale, zp = config.dynamic.grid(r)
    qmin, qmax = int_range(config.bits, signed=config.signed)
    return scale, zp, jnp.float32(qmin), jnp.float32(qmax)


def observed_range(x32: jax.Array, config: ActivationConfig) -> Range:
    """The batch's own range on ``config``'s grid (stop-gradient)."""
    return batch_range(x32, signed=config.signed, symmetric=config.symmetric)


def quantize_site(x: jax.Array, site: Site, axis_name: str | None = None) -> tuple[jax.Array, Range | None]:
    """Fake-quantizes ``x`` at ``site``; returns ``(x_hat in x.dtype, batch range or None)``.

    With ``axis_name`` (inside ``jax.pmap``) the batch range is the union over
    that axis: every replica quantizes as one device would on the global batch.
    """
    config = site.config
    x32 = x.astype(jnp.float32)
    if config.mode == "lsq":
        n = max(1, math.prod(x.shape[1:]))
        return lsq_lib.lsq_fake_quant(x, site.learned, config.bits, signed=config.signed, n=n)[0], None
    if config.mode == "pact":
        return pact.pact_fake_quant(x, site.learned, config.bits), None
    observed = observed_range(x32, config)
    if axis_name is not None:
        observed = Range(lax.pmin(observed.lo, axis_name), lax.pmax(observed.hi, axis_name))
    if config.mode == "dynamic":
        r = observed
    else:
        use_batch = site.count == 0
        r = Range(jnp.where(use_batch, observed.lo, site.range.lo), jnp.where(use_batch, observed.hi, site.range.hi))
    scale, zp, qmin, qmax = config_grid(config, r)
    if config.mode == "dynamic" and (config.signed or not config.symmetric):
        # The batch's own range covers it: identity gradient, with no backward work.
        codes = codes_ste(lax.stop_gradient(x32), scale, zp, qmin, qmax)
        deq = straight_through(x32, dequantize_codes(codes, scale, zp))
    else:
        codes = codes_ste(x32, scale, zp, qmin, qmax)
        deq = dequantize_codes(codes, scale, zp)
    return deq.astype(x.dtype), observed


def _export(site: Site) -> InputQuant:
    config = site.config
    if config.mode == "dynamic":
        return InputQuant(config.bits, config.signed, True, None, None, config.symmetric)
    if config.mode == "lsq":
        scale = lsq_lib.clamp_step(site.learned)
        return InputQuant(config.bits, config.signed, False, scale, None, True)
    if config.mode == "pact":
        return InputQuant(config.bits, False, False, pact.pact_scale(site.learned, config.bits), None, True)
    if validate.is_concrete(site.count) and int(site.count) == 0:
        raise ValueError(
            f"The static input range of module {site.module!r} was never observed: run jc.quant.calibrate(...) "
            "or fold running statistics in with tx.update(..., activation_stats=...) first."
        )
    scale, zp, _, _ = config_grid(config, site.range)
    return InputQuant(config.bits, config.signed, False, scale, zp, config.symmetric)


def input_quantization(cstate: Any) -> dict[str, InputQuant]:
    """``{module path: InputQuant}`` for every quantized layer input in ``cstate``.

    Keys are module paths, the param paths' prefixes (``"Conv_0"`` for
    ``"Conv_0/kernel"``). See the module docstring for the convention.

    Raises:
      ValueError: a static range was never observed (calibrate first).
    """
    return {m: _export(s) for (m, kind), s in sites_of(cstate).items() if kind == "inputs"}


def output_quantization(cstate: Any) -> dict[str, InputQuant]:
    """Like :func:`input_quantization`, for layer outputs (``outputs=True``)."""
    return {m: _export(s) for (m, kind), s in sites_of(cstate).items() if kind == "outputs"}
