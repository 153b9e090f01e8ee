"""Physical removal of pruned channels and neurons from the exported program.

A planned layer (Dense or Conv) whose kernel has all-zero output channels is a
*producer* of dead channels. Removing them changes every tensor they flow
into, so removal is decided by probing, not by pattern-matching layer names:

1. **Probe.** The model runs eagerly three times on the example batch. In runs
   2 and 3 every planned layer recomputes its output from the input it saw in
   run 1 (so a perturbation never travels *through* a planned layer), then adds
   a large positive random perturbation to its dead channels (run 2) or to its
   live channels (run 3). A consumer's input feature that changes in run 2
   depends on dead channels; one that also changes in run 3 mixes dead with
   live values (e.g. a residual add of a pruned channel with a live one).
2. **Decide.** A producer's channels are removed when, at every consumer, the
   features they reach depend on dead channels only, the perturbation reaches
   no output or unplanned module, and the constant such a channel carries (a
   folded BatchNorm shift, a bias) can be folded exactly into the consumer's
   bias-like term (always for Dense; for Conv only when it pads nothing).
   The term is computed at run time from the few distinct constant values,
   quantized on the layer's input grid, so the reduced program computes
   exactly what the unreduced one did (bit-exact on the integer path). Decisions
   are iterated to a fixed point, since keeping one producer can make another
   unsafe (two branches of a residual add must drop the same channels).
3. **Verify.** The reduced program must reproduce the unreduced one on the
   example and on random inputs; otherwise nothing is removed and the report
   says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from jaxcompress._src.export import layers, program
from jaxcompress._src.export.layers import Dense, FloatKernel, KernelLayer

__all__ = ["Removal", "plan_removal", "reduced", "slice_kernel", "verify"]


class Removal(NamedTuple):
    """Channels kept per layer, constants folded, and what could not be removed."""

    keep_out: dict[str, np.ndarray]  # producer path -> kept output channel indices
    keep_in: dict[str, np.ndarray]  # consumer path -> kept input feature (Dense) / channel (Conv) indices
    constants: dict[str, Constants]  # consumer path -> the constant values its removed inputs held
    notes: list[str]  # per producer: removed how many, or why not


class Constants(NamedTuple):
    """Removed inputs of one consumer, grouped by their (data-independent) value."""

    values: np.ndarray  # (U,) float32: the distinct constant values
    members: list[np.ndarray]  # per value: removed input features (Dense) / channels (Conv) holding it

    @property
    def floor(self) -> tuple[float, float]:
        """``(min, max)`` of the values (and 0): a dynamic input range must still span them."""
        return float(min(0.0, np.min(self.values, initial=0.0))), float(max(0.0, np.max(self.values, initial=0.0)))


def dead_channels(weights: FloatKernel) -> np.ndarray:
    """Output channels whose kernel slice is all zero (from the float candidate's kernel)."""
    kernel = weights.kernel
    return np.flatnonzero(~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0))


def _run(model, variables, x, apply_kwargs, plans, float_weights, hook) -> tuple[Any, dict[str, Any]]:
    """Eager run with planned layers on the float path; ``hook`` replays their inputs and perturbs their outputs."""
    seen: dict[str, Any] = {}

    def layer(path, plan, next_fun, args, kwargs):
        if not isinstance(plan, KernelLayer):
            return next_fun(*args, **kwargs)
        seen[path] = args[0]
        inputs = hook.replay(path, args[0])
        exact = dataclasses.replace(plan, spec=None, out_spec=None, form=FloatKernel)
        return hook.perturb(path, exact(inputs, float_weights[path].arguments()))

    return program.run_planned(model, variables, x, apply_kwargs, plans, layer), seen


class _Hook:
    def __init__(self, recorded=None, channels=None, seed=0):
        self.recorded, self.channels = recorded, channels or {}
        self.rng = np.random.default_rng(seed)

    def replay(self, path, inputs):
        return inputs if self.recorded is None else self.recorded[path]

    def perturb(self, path, out):
        chans = self.channels.get(path)
        if chans is None or len(chans) == 0:
            return out
        delta = np.zeros(out.shape, np.float32)
        delta[..., chans] = 1e3 * (1.0 + self.rng.random((*out.shape[:-1], len(chans)), dtype=np.float32))
        return out + delta


def _changed(a, b) -> np.ndarray:
    """Per feature (all but the leading batch axis), whether any example differs."""
    return np.any(np.asarray(a) != np.asarray(b), axis=0)


def plan_removal(
    model: nn.Module,
    variables: Any,
    example: jax.Array,
    apply_kwargs: dict[str, Any],
    plans: dict[str, layers.Plan],
    float_weights: dict[str, FloatKernel],
    call_counts: dict[str, int],
    fixed_inputs: frozenset[str] = frozenset(),
) -> Removal:
    """Decides which dead channels can be removed (see module docstring).

    ``fixed_inputs`` are layers whose inputs cannot be sliced (per-group scales
    along the input axis); channels that reach them are kept.
    """
    notes: list[str] = []
    run = lambda hook: _run(model, variables, example, apply_kwargs, plans, float_weights, hook)
    y_ref, recorded = run(_Hook())
    dead = {}
    for path, plan in plans.items():
        if not isinstance(plan, KernelLayer):
            continue
        d = dead_channels(float_weights[path])
        if len(d) == 0:
            continue
        if call_counts.get(path, 1) != 1:
            notes.append(f"{path}: {len(d)} dead channels kept (the layer is called more than once)")
            continue
        if len(d) == float_weights[path].kernel.shape[-1]:
            notes.append(f"{path}: every channel is pruned; kept as is (removing all would leave no output)")
            continue
        dead[path] = d
    if not dead:
        return Removal({}, {}, {}, notes)

    reach: dict[str, tuple[Any, dict[str, np.ndarray]]] = {}
    for path, chans in dead.items():
        y, seen = run(_Hook(recorded, {path: chans}, seed=1))
        reach[path] = (_changed(y, y_ref), {c: _changed(seen[c], recorded[c]) for c in seen})

    removed = dict(dead)
    reasons: dict[str, str] = {}
    while True:
        live = {p: np.setdiff1d(np.arange(float_weights[p].kernel.shape[-1]), removed.get(p, [])) for p in dead}
        live.update({p: np.arange(w.kernel.shape[-1]) for p, w in float_weights.items() if p not in dead})
        _, seen_live = run(_Hook(recorded, live, seed=2))
        mixed = {c: _changed(seen_live[c], recorded[c]) for c in seen_live}
        dropped = None
        for path in removed:
            out_changed, at = reach[path]
            if np.any(out_changed):
                dropped, reasons[path] = path, "its channels reach the model output or an unplanned module"
                break
            fixed = [c for c, f in at.items() if np.any(f) and c in fixed_inputs]
            if fixed:
                dropped, reasons[path] = path, f"they feed {fixed[0]}, whose per-group scales fix its input width"
                break
            clash = [c for c, f in at.items() if np.any(f & mixed[c])]
            if clash:
                dropped, reasons[path] = path, f"its channels are combined with live ones before {clash[0]}"
                break
        if dropped is None:
            break
        del removed[dropped]

    keep_in: dict[str, Any] = {}
    for path in list(removed):
        for consumer, features in reach[path][1].items():
            if not np.any(features):
                continue
            ok, why = _fold_constants(consumer, features, recorded[consumer], plans[consumer])
            if not ok:
                reasons[path] = why
                del removed[path]
                break
    for path in removed:
        for consumer, features in reach[path][1].items():
            if np.any(features):
                feats = features if consumer not in keep_in else features | keep_in[consumer]
                keep_in[consumer] = feats
    constants = {}
    for consumer, features in keep_in.items():
        x0 = np.asarray(recorded[consumer])[0]
        if isinstance(plans[consumer], Dense):
            keep_in[consumer], removed_idx, values = np.flatnonzero(~features), np.flatnonzero(features), x0
        else:
            channel_removed = np.all(features.reshape(-1, features.shape[-1]), axis=0)
            keep_in[consumer], removed_idx = np.flatnonzero(~channel_removed), np.flatnonzero(channel_removed)
            values = x0.reshape(-1, x0.shape[-1])[0]
        distinct = [u for u in np.unique(values[removed_idx]) if u != 0]  # zeros contribute nothing
        constants[consumer] = Constants(
            np.asarray(distinct, np.float32), [removed_idx[values[removed_idx] == u] for u in distinct]
        )
    for path in dead:
        if path in removed:
            notes.append(f"{path}: removed {len(dead[path])} of {float_weights[path].kernel.shape[-1]} channels")
        else:
            notes.append(f"{path}: {len(dead[path])} dead channels kept: {reasons.get(path, 'unknown')}")
    keep_out = {p: np.setdiff1d(np.arange(float_weights[p].kernel.shape[-1]), removed[p]) for p in removed}
    return Removal(keep_out, keep_in, constants, notes)


def _fold_constants(consumer, features, inputs, plan: KernelLayer) -> tuple[bool, str]:
    """Whether the constant values in ``features`` can fold exactly into the consumer's bias."""
    x = np.asarray(inputs)
    if not np.all(x[:, features] == x[:1, features]):
        return False, f"the values reaching {consumer} are not constant across examples"
    if isinstance(plan, Dense):
        return True, ""
    per_channel = features.reshape(-1, features.shape[-1])
    full = np.all(per_channel, axis=0)
    if np.any(np.any(per_channel, axis=0) & ~full):
        return False, f"they reach only part of {consumer}'s input positions"
    values = x[0].reshape(-1, x.shape[-1])[:, full]
    if np.any(values != values[:1]):
        return False, f"they are not spatially constant at {consumer}"
    if np.any(values != 0) and any(p != (0, 0) for p in plan.config.explicit_padding(x.shape)):
        return False, f"{consumer} pads its input, so their nonzero constant cannot fold into its bias"
    return True, ""


def _per_input(kernel: np.ndarray, plan: KernelLayer) -> np.ndarray:
    """``(inputs, N)``: a kernel summed over everything but its input axis (a conv's window)."""
    if isinstance(plan, Dense):
        return kernel
    return np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1, kernel.shape[-1]).sum(1)


def with_constants(w, plan: KernelLayer, consts: Constants | None):
    """``w`` with the removed constant inputs' values and per-value weight sums (computed before slicing)."""
    if consts is None or len(consts.values) == 0:
        return w
    if isinstance(w, FloatKernel):
        per_input, dtype = _per_input(w.kernel, plan), np.float32
    else:
        codes = (w.codes_t.T if isinstance(plan, Dense) else w.codes).astype(np.int32)
        if getattr(w, "zero_point", None) is not None:
            codes = codes - w.zero_point
        per_input, dtype = _per_input(codes, plan), np.int32
    sums = np.stack([per_input[m].sum(0) for m in consts.members]).astype(dtype)
    return w.replace(const_values=consts.values, const_sums=sums)


def slice_kernel(
    a: np.ndarray, plan: KernelLayer, keep_out: np.ndarray | None, keep_in: np.ndarray | None, *, broadcast=False
) -> np.ndarray:
    """``a`` in kernel layout (Dense ``(K, N)``, Conv ``(*window, I, O)``) with the kept input and output channels.

    With ``broadcast``, an axis of size 1 (a per-tensor or per-channel scale
    shaped to broadcast against the kernel) is left as it is.
    """
    in_axis = plan.in_axis(a.ndim)
    if keep_in is not None and not (broadcast and a.shape[in_axis] == 1):
        a = np.take(a, keep_in, axis=in_axis)
    if keep_out is not None and not (broadcast and a.shape[-1] == 1):
        a = a[..., keep_out]
    return np.ascontiguousarray(a)


def reduced(w, plan: KernelLayer, keep_out, keep_in, consts: Constants | None = None):
    """A new weight layout with the removed channels sliced out (any form)."""
    w = with_constants(w, plan, consts)
    out = slice(None) if keep_out is None else keep_out
    changes = {}
    for field in dataclasses.fields(w):
        a = getattr(w, field.name)
        if a is None or field.name in ("const_values", "colsum"):
            continue
        if field.name in ("kernel", "codes"):
            changes[field.name] = slice_kernel(a, plan, keep_out, keep_in)
        elif field.name == "codes_t":  # Dense codes are stored transposed; sliced in kernel layout
            changes[field.name] = np.ascontiguousarray(slice_kernel(a.T, plan, keep_out, keep_in).T)
        else:  # per output channel: scale, zero point, bias, group scales, constant sums
            changes[field.name] = np.ascontiguousarray(a[..., out])
    if getattr(w, "colsum", None) is not None:
        codes = changes["codes"] if "codes" in changes else changes["codes_t"].T
        changes["colsum"] = layers.column_sums(codes)
    return w.replace(**changes)


def verify(reduced: Callable, full: Callable, example: jax.Array, *, rtol: float) -> str | None:
    """None if the reduced program matches the full one on the example and random inputs, else why not.

    The tolerance is relative to the largest output magnitude (float reassociation only).
    """
    probes = [example, jax.random.uniform(jax.random.key(0), example.shape, example.dtype, -1.0, 2.0)]
    for x in probes:
        try:
            a, b = np.asarray(reduced(x)), np.asarray(full(x))
        except Exception as e:  # a shape error means the model code could not take the reduced tensors
            return f"the reduced model does not run ({type(e).__name__}: {str(e)[:120]})"
        if a.shape != b.shape or not np.allclose(a, b, atol=rtol * float(np.max(np.abs(b), initial=1.0)), rtol=rtol):
            err = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
            return f"the reduced model differs from the full one (max abs diff {err:.3g})"
    return None
