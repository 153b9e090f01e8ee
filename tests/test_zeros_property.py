"""Property test of the central invariant (hypothesis): pruned weights are exactly zero, at every step.

For a random param tree, a random pruner (every kind, with a random schedule and scope), a random
weight quantizer (every kind and granularity, asymmetric and unsigned included), a random chain
order and a random optax optimizer from the matrix, ``with_compression`` trains a random quadratic
loss for a few steps. After EVERY step, for every masked leaf, the weights outside the current mask
are exactly 0.0 in the params (hard masks; :func:`jaxcompress.prune.ste` keeps its params dense), in
``recipe.apply`` (the fake-quantized weights) and in the integer codes (each code decodes to 0.0),
and every value is finite. At the end, a schedule that reached its target holds exactly the
sparsity it asked for, so the check is not vacuous.

The fixed-grid 10,000-step version is ``tests/test_zeros_long_run.py``. Seeded (``derandomize``).
The test runs once per pruner kind, so every kind is checked on every run. Each example compiles one
program (2 to 10 s on XLA:CPU, mostly the pruners' threshold search), so CI runs one example per kind:
hypothesis's first, simplest draw, whose other choices (quantizer, granularity, optimizer, dtype,
schedule, tree, order) rotate with the kind, so that the 11 together cover every quantizer and all
but one optimizer. ``JAXCOMPRESS_PROPERTY_EXAMPLES=220`` (shared out among the kinds) runs random ones.
"""

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import promotion, soft_masks, standard_promotion
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jaxcompress as jc

EXAMPLES = int(os.environ.get("JAXCOMPRESS_PROPERTY_EXAMPLES", "11"))
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Optimizers that run inside with_compression (each under standard promotion: optax's own code needs it).
OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.05),
    "sgd-momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "sgd-nesterov": lambda: optax.sgd(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(0.01),
    "adamw": lambda: optax.adamw(0.01, weight_decay=0.1),
    "lion": lambda: optax.lion(0.003, weight_decay=0.01),
    "rmsprop": lambda: optax.rmsprop(0.01, momentum=0.9),
    "clip-adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01)),
    "multisteps-adam": lambda: optax.MultiSteps(optax.adam(0.01), every_k_schedule=2),
    "inject-sgd": lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9),
    "adafactor": lambda: optax.adafactor(0.01),
}
# "multisteps-outside": optax.MultiSteps(with_compression(adamw), OUTER_K); the recipe advances per emitted step.
OUTER_K = 2
OPTIMIZER_NAMES = sorted([*OPTIMIZERS, "multisteps-outside"])

UNSTRUCTURED = ("magnitude", "random", "saliency", "movement")
PRUNER_KINDS = (*UNSTRUCTURED, "snip", "n_m", "channel", "block", "set_", "rigl", "ste")
# Each pruner kind's test gets its share of the examples (at least one).
EXAMPLES_PER_PRUNER = max(EXAMPLES // len(PRUNER_KINDS), 1)
STE_INNER = ("magnitude", "random", "movement", "n_m", "channel", "block")
QUANTIZER_KINDS = ("uniform", "symmetric", "int8", "lsq", "log2", "kmeans")
GRANULARITIES = {
    "tensor": "tensor",
    "channel": "channel",
    "channel-axis0": jc.quant.per_channel(0),
    "group2": jc.quant.per_group(2),
    "group4-all-channels": jc.quant.per_group(4, channel_axis=None),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """A factory call, ``jc.<module>.<name>(*args, **kwargs)``: it prints as what to type to reproduce."""

    module: str
    name: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    def build(self):
        args = [a.build() if isinstance(a, Method) else a for a in self.args]
        return getattr(getattr(jc, self.module), self.name)(*args, **self.kwargs)

    def __repr__(self) -> str:
        args = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"jc.{self.module}.{self.name}({', '.join(args)})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints a failing case with this
        printer.text(repr(self))


@dataclasses.dataclass(frozen=True)
class Pruning:
    """A pruner and what it must reach: its units, scope, final sparsity and the update that reaches it."""

    method: Method
    units: tuple  # ("weight",), ("channel",), ("block", bh, bw) or ("n_m", n, m)
    scope: str
    final: float
    reached_at: int  # the recipe update (0-based) from which the masks hold `final` (-1: from init)
    hard: bool  # hard masks (jc.masks_of), else ste's soft masks


@dataclasses.dataclass(frozen=True)
class Case:
    shapes: tuple  # kernel shapes, one layer each (every layer also has a bias)
    dtype: str
    scale: float  # of the initial kernels
    zeros: float  # fraction of exact zeros in the initial kernels
    seed: int
    pruning: Pruning
    quantizer: Method
    quantizer_first: bool  # chain(quantizer, pruner) instead of chain(pruner, quantizer)
    optimizer: str
    steps: int


@dataclasses.dataclass(frozen=True)
class _Pick:
    """Draws one of some options. Hypothesis's simplest draw (its first example, the only one when a pruner
    kind gets one example) is the option at ``index // stride + offset``: with ``index`` the pruner kind's,
    the first examples of the kinds spread over the options instead of all taking the first."""

    draw: Any
    index: int

    def __call__(self, options, *, stride: int = 1, offset: int = 0):
        options = list(options)
        k = (self.index // stride + offset) % len(options)
        return self.draw(st.sampled_from(options[k:] + options[:k]))


def _schedule(pick: _Pick, final: float):
    """A schedule (or a float) ending at ``final``, and the update from which its target is ``final``."""
    kind = pick(["float", "one_shot", "constant", "polynomial", "iterative"])
    event(f"schedule: {kind}")
    if kind == "float":
        return final, 0
    if kind == "one_shot":
        at = pick(range(4), offset=1)
        return jc.schedules.one_shot(final, at=at), at
    begin, frequency = pick(range(3)), pick(range(1, 4), stride=2)
    if kind == "constant":
        end = begin + pick(range(1, 7))
        return jc.schedules.constant(final, begin=begin, end=end, frequency=frequency), begin
    if kind == "polynomial":
        end = begin + pick(range(1, 6), offset=2)
        initial, power = pick([0.0, 0.0, min(0.1, final)]), pick([3.0, 1.0])
        return jc.schedules.polynomial(initial, final, begin=begin, end=end, frequency=frequency, power=power), end
    rounds = pick(range(1, 4), offset=1)
    reached_at = begin + (rounds - 1) * frequency
    return jc.schedules.iterative(final, rounds=rounds, frequency=frequency, begin=begin), reached_at


def _pruning(pick: _Pick, kind: str) -> Pruning:
    if kind == "ste":
        inner = _pruning(pick, pick(STE_INNER))
        return dataclasses.replace(inner, method=Method("prune", "ste", (inner.method,)), hard=False)
    scope = pick(["layer", "global"], stride=2)
    if kind in (*UNSTRUCTURED, "channel", "block"):
        final = pick([0.5, 0.75, 0.9, 0.25], stride=3)
        schedule, reached_at = _schedule(pick, final)
        kwargs: dict[str, Any] = {"scope": scope}
        args: tuple = (schedule,)
        units: tuple = ("weight",)
        if kind == "random":
            kwargs["seed"] = pick(range(4))
        elif kind == "channel":
            kwargs["norm"] = pick(["l1", "l2"])
            kwargs["score"] = pick(["magnitude", "saliency", "random"])
            units = ("channel",)
        elif kind == "block":
            bh, bw = pick([(2, 2), (1, 4), (3, 1), (2, 1)])
            args = (schedule, (bh, bw))
            units = ("block", bh, bw)
        return Pruning(Method("prune", kind, args, kwargs), units, scope, final, reached_at, True)
    if kind == "snip":
        final = pick([0.5, 0.75, 0.9, 0.25], stride=3)
        return Pruning(Method("prune", "snip", (final,), {"scope": scope}), ("weight",), scope, final, 0, True)
    if kind == "n_m":
        n, m = pick([(2, 4), (1, 2), (1, 4)])
        final = 1.0 - n / m
        schedule, reached_at = _schedule(pick, final) if pick([True, False], offset=1) else (None, 0)
        kwargs = {"score": pick(["magnitude", "saliency", "random"], offset=1)}
        args = (n, m) if schedule is None else (n, m, schedule)
        return Pruning(Method("prune", "n_m", args, kwargs), ("n_m", n, m), "layer", final, reached_at, True)
    final = pick([0.5, 0.75, 0.3])
    kwargs = {
        "frequency": pick(range(1, 4)),
        "drop_fraction": pick([0.3, 1.0]),
        "init_mask": pick(["random", "magnitude"]),
        "seed": pick(range(4)),
    }
    if kind == "rigl":
        kwargs["end"] = pick(range(2, 11), offset=1)
    return Pruning(Method("prune", kind, (final,), kwargs), ("weight",), "layer", final, -1, True)


def _quantizer(pick: _Pick, kind: str, granularity: str) -> Method:
    bits = pick(range(2, 9))
    g = GRANULARITIES[granularity]
    if kind == "uniform":
        kwargs = {
            "symmetric": pick([False, True], stride=3),
            "signed": pick([False, True], stride=2),
            "granularity": g,
            "rounding": pick(["stochastic", "nearest"]),
            "seed": pick(range(4)),
        }
        return Method("quant", "uniform", (bits,), kwargs)
    if kind in ("symmetric", "int8"):
        per_channel = pick([False, True], stride=2)
        return Method("quant", kind, (bits,) if kind == "symmetric" else (), {"per_channel": per_channel})
    if kind == "lsq":
        return Method("quant", "lsq", (bits,), {"signed": pick([True, False], stride=2), "granularity": g})
    if kind == "log2":
        return Method("quant", "log2", (bits,), {"granularity": g})
    kwargs = {
        "iterations": pick(range(4), offset=2),
        "recluster_at": pick([0, None, 2]),
        "reassign_every": pick([1, None, 3], stride=2),
        "codebook_dtype": pick(["float32", "bfloat16", "float32", "float16"]),
    }
    return Method("quant", "kmeans", (pick([3, 2]),), kwargs)


def _kernel_shape(pick: _Pick, layer: int, multiples: dict[int, int]) -> tuple[int, ...]:
    """Rank 2 to 4, small dims; axis ``a`` a multiple of ``multiples[a]`` (n_m groups, blocks, quantizer groups)."""
    rank = pick([2, 3, 4], stride=2, offset=layer)
    shape = [pick([4, 2, 8, 3, 1], offset=layer + a) for a in range(rank)]
    for axis, multiple in multiples.items():
        if multiple > 1:
            shape[axis] = multiple * pick([1, 2], offset=layer)
    return tuple(shape)


@st.composite
def cases(draw, pruner_kind: str) -> Case:
    """A case for ``pruner_kind``: a random param tree, quantizer, chain order, optimizer and run length."""
    pick = _Pick(draw, PRUNER_KINDS.index(pruner_kind))
    pruning = _pruning(pick, pruner_kind)
    quantizer_kind = pick(QUANTIZER_KINDS)
    granularity = pick(GRANULARITIES)
    quantizer = _quantizer(pick, quantizer_kind, granularity)
    multiples = {-2: 1, -1: 1}
    if pruning.units[0] == "n_m":
        multiples[-2] = pruning.units[2]
    if pruning.units[0] == "block":
        multiples[-2], multiples[-1] = pruning.units[1], pruning.units[2]
    if "granularity" in quantizer.kwargs and granularity.startswith("group"):
        multiples[-2] = math.lcm(multiples[-2], int(granularity[len("group")]))
    case = Case(
        shapes=tuple(_kernel_shape(pick, layer, multiples) for layer in range(pick([1, 2, 3]))),
        dtype=pick(["float32", "float32", "bfloat16"]),
        scale=pick([1.0, 0.01, 5.0], stride=2),
        zeros=pick([0.0, 0.3], offset=1),
        seed=draw(st.integers(0, 2**31 - 1)),
        pruning=pruning,
        quantizer=quantizer,
        quantizer_first=pick([False, False, True], offset=1),
        optimizer=pick(OPTIMIZER_NAMES),
        steps=pick(range(6, 13)),
    )
    event(f"pruner: {pruning.method.name if pruning.hard else 'ste(' + pruning.method.args[0].name + ')'}")
    event(f"quantizer: {quantizer_kind}" + (f", {granularity}" if "granularity" in quantizer.kwargs else ""))
    event(f"optimizer: {case.optimizer}")
    event(f"dtype: {case.dtype}")
    event(f"order: {'quantizer, pruner' if case.quantizer_first else 'pruner, quantizer'}")
    return case


def _problem(case: Case):
    """The params (kernels with some exact zeros, biases), and the curvatures and targets of the loss."""
    rng = np.random.default_rng(case.seed)
    dtype = DTYPES[case.dtype]
    params, curvature, targets = {}, {}, {}
    for i, shape in enumerate(case.shapes):
        kernel = rng.normal(size=shape) * case.scale
        kernel[rng.random(shape) < case.zeros] = 0.0
        layer = {"kernel": jnp.asarray(kernel, dtype), "bias": jnp.asarray(rng.normal(size=shape[-1]), dtype)}
        params[f"layer{i}"] = layer
        curvature[f"layer{i}"] = {k: jnp.asarray(rng.uniform(0.5, 2.0, v.shape), jnp.float32) for k, v in layer.items()}
        targets[f"layer{i}"] = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in layer.items()}
    return params, curvature, targets


def _optimizer(name: str, recipe) -> optax.GradientTransformationExtraArgs:
    if name == "multisteps-outside":
        # Only optax's own code runs under standard promotion; jaxcompress's stays strict.
        inner = promotion(
            jc.optim.with_compression(standard_promotion(optax.adamw(0.01, weight_decay=0.1)), recipe), "strict"
        )
        return standard_promotion(optax.MultiSteps(inner, every_k_schedule=OUTER_K))
    return jc.optim.with_compression(standard_promotion(OPTIMIZERS[name]()), recipe)


def _violations(recipe, params, cstate) -> tuple[dict[str, jax.Array], jax.Array]:
    """Per masked leaf: [pruned weights non-zero in the params (hard masks only: ste keeps its params dense),
    in the fake-quantized weights, in the integer codes; weights outside the mask]. And the number of
    non-finite values in every leaf of the params, the fake-quantized weights and the decoded codes."""
    hard = jc.masks_of(cstate)
    masks = {**hard, **soft_masks(cstate)}
    flat = jc.paths.flatten(params)[0]
    compressed = jc.paths.flatten(recipe.apply(params, cstate))[0]
    decoded = {path: iw.dequantize() for path, iw in jc.integer_weights(recipe, params, cstate).items()}
    out = {}
    for path, mask in masks.items():
        pruned = ~mask.unpack()
        out[path] = jnp.stack(
            [
                jnp.sum(pruned & (flat[path] != 0)) if path in hard else jnp.int32(0),
                jnp.sum(pruned & (compressed[path] != 0)),
                jnp.sum(pruned & (decoded[path] != 0)),
                jnp.sum(pruned),
            ]
        )
    values = [*flat.values(), *compressed.values(), *decoded.values()]
    return out, sum(jnp.sum(~jnp.isfinite(x.astype(jnp.float32))) for x in values)


def _run(case: Case):
    """Trains the case; returns, by step, the counts of :func:`_violations`."""
    pruner, quantizer = case.pruning.method.build(), case.quantizer.build()
    recipe = jc.chain(quantizer, pruner) if case.quantizer_first else jc.chain(pruner, quantizer)
    params, curvature, targets = _problem(case)
    tx = _optimizer(case.optimizer, recipe)

    def loss_fn(p, cstate):
        w = recipe.apply(p, cstate)
        return sum(
            jnp.sum(a * (x.astype(jnp.float32) - t) ** 2)
            for x, a, t in zip(jax.tree.leaves(w), jax.tree.leaves(curvature), jax.tree.leaves(targets), strict=True)
        )

    grad_fn = jc.optim.value_and_grad(loss_fn)  # learned_grads too (lsq's steps, kmeans's codebooks)

    def step(carry, _):
        p, opt_state = carry
        _, grads, learned_grads = grad_fn(p, jc.optim.compression_state(opt_state))
        updates, opt_state = tx.update(grads, opt_state, p, learned_grads=learned_grads)
        p = optax.apply_updates(p, updates)
        return (p, opt_state), _violations(recipe, p, jc.optim.compression_state(opt_state))

    @jax.jit  # one program per example: every step and every check
    def run(p, opt_state):
        return jax.lax.scan(step, (p, opt_state), None, length=case.steps)[1]

    return jax.tree.map(np.asarray, run(params, tx.init(params)))


def _unit_size(units: tuple, shape: tuple[int, ...]) -> int:
    if units[0] == "channel":
        return math.prod(shape[:-1])
    if units[0] == "block":
        return units[1] * units[2]
    return 1


def _sparsity_problems(case: Case, pruned: dict[str, int]) -> list[str]:
    """Whether the final masks hold exactly the sparsity the pruner asked for (the step counts are exact)."""
    p, s = case.pruning, np.float32(case.pruning.final)
    shapes = {f"layer{i}/kernel": shape for i, shape in enumerate(case.shapes)}
    if sorted(pruned) != sorted(shapes):
        return [f"masked leaves {sorted(pruned)}, expected every kernel {sorted(shapes)}"]
    if p.units[0] == "n_m":
        _, n, m = p.units
        expected = {path: math.prod(shape) * (m - n) // m for path, shape in shapes.items()}
        return [
            f"{k}: {pruned[k]} weights pruned, expected {v} ({n}:{m})" for k, v in expected.items() if pruned[k] != v
        ]
    problems, units, got = [], {}, {}
    for path, shape in shapes.items():
        size = _unit_size(p.units, shape)
        if pruned[path] % size:
            problems.append(f"{path}: {pruned[path]} weights pruned, not whole {p.units[0]} units of {size}")
        units[path], got[path] = math.prod(shape) // size, pruned[path] // size
    if p.scope == "global":
        expected = int(np.round(s * np.float32(sum(units.values()))))
        if sum(got.values()) != expected:
            problems.append(f"{sum(got.values())} {p.units[0]} units pruned over all leaves, expected {expected}")
    else:
        for path in shapes:
            expected = int(np.round(s * np.float32(units[path])))
            if got[path] != expected:
                problems.append(f"{path}: {got[path]} {p.units[0]} units pruned, expected {expected}")
    return problems


@pytest.mark.parametrize("pruner_kind", PRUNER_KINDS)
@settings(max_examples=EXAMPLES_PER_PRUNER, **SETTINGS)
@given(data=st.data())
def test_pruned_weights_are_exactly_zero_in_params_weights_and_codes_at_every_step(pruner_kind, data):
    case = data.draw(cases(pruner_kind), label="case")
    counts, non_finite = _run(case)
    outer = case.optimizer == "multisteps-outside"
    updates = case.steps // OUTER_K if outer else case.steps  # the recipe advances once per emitted step
    # The wrapper zeroes params through its updates: under MultiSteps(with_compression(...)) none runs before
    # the first emitted step, so until then the params are the initial ones, dense outside the sparse initial
    # masks of set_ / rigl (fake-quantized weights and codes are masked from the start).
    first_params_check = OUTER_K - 1 if outer else 0
    problems = []
    for path, c in counts.items():
        in_params, in_weights, in_codes = c[:, :3].copy().T
        in_params[:first_params_check] = 0
        for name, count in (("params", in_params), ("fake-quantized weights", in_weights), ("codes", in_codes)):
            if count.any():
                problems.append(f"{path}: non-zero pruned weights in the {name}, by step: {count.tolist()}")
    if non_finite.any():
        problems.append(f"non-finite params, fake-quantized weights or codes, by step: {non_finite.tolist()}")
    if case.pruning.reached_at < updates:
        event("sparsity reached: checked exactly")
        problems += _sparsity_problems(case, {path: int(c[-1, -1]) for path, c in counts.items()})
    else:
        event("sparsity not reached in the run")
    assert not problems, "\n".join(problems)
