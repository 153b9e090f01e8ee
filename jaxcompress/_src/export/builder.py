"""``jc.export.export``: from (params, compression state) to an integer XLA program."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.export import artifact, channels, layers, program
from jaxcompress._src.export.candidates import Candidates, storage
from jaxcompress._src.export.layers import FloatKernel, KernelLayer
from jaxcompress._src.quant import activations as activation_lib
from jaxcompress._src.quant.grid import InputQuant

__all__ = ["Exported", "export", "size_report"]

_CHOICES = ("measure", "int8", "float")


class Exported(artifact.Artifact):
    """An exported model, callable, with :meth:`save` and a :attr:`report`."""

    def __init__(self, exported, weights, metadata, stored):
        super().__init__(exported, weights, metadata)
        self._stored = stored

    @property
    def report(self) -> dict:
        """What was exported: per-layer compute and timings, per-layer storage (the format chosen for its
        codes and the bytes of every format tried) and bytes; after :meth:`save`, the file's section bytes.
        The saved file's metadata keeps the chosen formats, not the sizes of every format tried."""
        return self.metadata

    def stablehlo(self) -> str:
        """The program's StableHLO text."""
        return self.exported.mlir_module()

    def save(self, path: str | os.PathLike) -> int:
        """Writes the artifact file (see :mod:`jaxcompress.export.artifact`); returns its size in bytes."""
        program_bytes = bytes(self.exported.serialize())
        sections = artifact.write(path, program_bytes, self._stored, _saved_metadata(self.metadata))
        self.metadata["file_bytes"] = sections["file"]
        self.metadata["section_bytes"] = sections
        return sections["file"]


def _saved_metadata(metadata: dict) -> dict:
    """The metadata the file keeps: each layer's chosen format, not the sizes of every format tried.

    Nothing a save adds goes in, so saving twice writes the same bytes.
    """

    def slim(leaf: dict) -> dict:
        if "parts" not in leaf:
            return leaf
        parts = {k: {f: v for f, v in part.items() if f != "tried"} for k, part in leaf["parts"].items()}
        return {**leaf, "parts": parts}

    kept = {k: v for k, v in metadata.items() if k not in ("file_bytes", "section_bytes")}  # facts of one save
    return {**kept, "leaves": {k: slim(v) for k, v in metadata["leaves"].items()}}


def export(
    model: nn.Module,
    variables: Mapping[str, Any],
    recipe: core.Recipe,
    cstate: Any,
    example: jax.typing.ArrayLike,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    activations: str | Mapping[str, InputQuant] = "auto",
    dispatch: str | Mapping[str, str] = "measure",
    remove_pruned_channels: bool = True,
    platforms: tuple[str, ...] | None = None,
    description: str | None = None,
    accuracy: Mapping[str, float] | None = None,
) -> Exported:
    """Exports a compressed Flax model as an integer XLA program.

    Every Dense and Conv whose kernel the recipe quantizes becomes an
    ``int8 x int8 -> int32`` ``lax.dot_general`` / ``lax.conv_general_dilated``
    followed by rescaling (or, where measured faster, a float op on the
    dequantized weights). Inference-mode BatchNorms right after such a layer
    are folded into its rescaling. Weights are program arguments, stored
    compressed in the artifact.

    Args:
      model: the Flax linen model.
      variables: its variables (``{"params": ..., "batch_stats": ...}``), uncompressed.
      recipe: the compression recipe (must quantize some kernels).
      cstate: the recipe's state (``jc.optim.compression_state(opt_state)``).
      example: an example input batch; its batch size is what dispatch is
        measured at, and its other dims fix the program's input shape (the
        batch dimension is symbolic).
      apply_kwargs: extra keyword arguments of ``model.apply`` for inference
        (e.g. ``{"train": False}``).
      activations: ``"auto"``: each layer's input (and output) quantized exactly
        as the recipe's activation quantization does it
        (:func:`jaxcompress.quant.input_quantization`); integer layers whose
        inputs the recipe leaves in float quantize them dynamically to int8
        (the report notes which). ``"dynamic"``: every integer layer quantizes
        its input per call to symmetric int8. Or ``{module_path: InputQuant}``.
      dispatch: ``"measure"`` (decide each layer on this backend by timing the
        whole program with that layer int8 and float, at ``example``'s batch
        size; the report gives both program times per layer), ``"int8"``,
        ``"float"``, or ``{module_path: choice}``.
      remove_pruned_channels: physically remove all-zero output channels and
        the inputs they feed (probed and verified, see ``channels.py``); the
        report's ``notes`` say what was removed and what could not be, and why.
      platforms: ``jax.export`` platforms (default: the current backend).
      description: a description of the recipe for the metadata.
      accuracy: known accuracy figures to record in the metadata.

    Returns:
      An :class:`Exported`: call it, ``save`` it, read its ``report``.
    """
    _check_dispatch(dispatch)
    accuracy = _check_metadata(description, accuracy)
    prep = _prepare(model, variables, recipe, cstate, example, apply_kwargs, activations, remove_pruned_channels)
    example, plans, candidates = prep.example, prep.plans, prep.candidates
    choices = {}
    for path, cands in candidates.items():
        choice = dispatch.get(path, "measure") if isinstance(dispatch, Mapping) else dispatch
        choices[path] = "float" if cands.integer is None else choice
    timings = _measure_in_program(
        model, plans, candidates, prep.variables_left, prep.apply_kwargs, example, choices, prep.untrained
    )
    plans = _with_choices(plans, candidates, choices, prep.untrained)
    fn = program.Program(model, plans, prep.apply_kwargs)
    args = jax.tree.map(_canonical, _program_args(candidates, choices, prep.variables_left))
    x_spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape("b"), *example.shape[1:]), example.dtype)
    w_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)

    def infer(weights, x):
        return fn(weights, x)

    try:
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(w_spec, x_spec)
    except jax.errors.InconclusiveDimensionOperation as e:
        raise ValueError(
            "`model`'s forward branches on (or computes with) the batch size, but the exported program takes "
            "any batch size (its batch dimension is symbolic), so the branch cannot be decided. Make the forward "
            "independent of x.shape[0] (jnp.where instead of a Python `if` on it; reshape with -1 for the batch). "
            f"JAX said: {str(e).splitlines()[0]}"
        ) from e

    stored, leaves, args = storage(args, candidates)
    metadata = {
        "format_version": artifact.FORMAT_VERSION,
        "description": description or describe_recipe(recipe, cstate),
        "input": {"shape": ["b", *example.shape[1:]], "dtype": str(example.dtype)},
        "layers": {
            p: {
                "kind": plan.kind,
                "compute": _describe_compute(plan),
                "input_quantization": _describe_quant(getattr(plan, "spec", None)),
                "output_quantization": _describe_quant(getattr(plan, "out_spec", None)),
                **({k: round(v * 1e6, 1) for k, v in timings[p].items()} if p in timings else {}),
            }
            for p, plan in plans.items()
        },
        "notes": prep.notes,
        "leaves": leaves,
        "weight_bytes": sum(v["bytes"] for v in leaves.values()),
        "accuracy": accuracy,
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
    }
    return Exported(exported, args, metadata, stored)


class _Prepared(NamedTuple):
    """What export plans before choosing forms: layer plans, both weight forms, what is left to the model."""

    example: jax.Array
    apply_kwargs: dict
    plans: dict
    candidates: dict[str, Candidates]
    notes: list[str]
    variables_left: dict
    untrained: frozenset[str]  # integer-capable layers whose inputs the recipe leaves in float


def _prepare(model, variables, recipe, cstate, example, apply_kwargs, activations, remove_pruned_channels) -> _Prepared:
    apply_kwargs = dict(apply_kwargs or {})
    _check_inputs(model, variables, recipe, example, activations)
    example = jnp.asarray(example)
    for collection, tree in variables.items():  # what the program computes with: no NaN/Inf anywhere
        flat = paths_lib.flatten(tree)[0]
        floats = [p for p, a in flat.items() if np.issubdtype(np.asarray(a).dtype, np.floating)]
        validate.check_finite_leaves(flat, floats, argument=f"variables[{collection!r}]")
    params = variables["params"]
    compressed = recipe.apply(params, cstate)
    integer = _integer_form(recipe, params, cstate, compressed)
    float_vars = {**variables, "params": compressed}
    calls = program.probe_calls(model, float_vars, example, apply_kwargs)
    for call in calls:
        if isinstance(call.module, nn.BatchNorm) and not program.uses_running_average(call):
            raise ValueError(
                f"BatchNorm {call.path!r} ran in training mode; export needs inference mode: pass "
                f"`apply_kwargs` that make it use running averages (e.g. {{'train': False}})."
            )

    in_specs, out_specs = _activation_specs(activations, cstate)
    plans, candidates, notes = {}, {}, []
    unquantized_inputs = []
    seen = set()
    for call in calls:
        if call.path in seen or isinstance(call.module, nn.BatchNorm):
            continue
        seen.add(call.path)
        iw = integer.get(f"{call.path}/kernel")
        out_spec = layers.InputSpec(out_specs[call.path]) if call.path in out_specs else None
        plan, reason = (None, "") if iw is None else _plan_for(call)
        if plan is not None:
            if call.path not in in_specs:
                unquantized_inputs.append(call.path)
            spec = layers.InputSpec(in_specs.get(call.path, layers.DYNAMIC_INT8))
            plans[call.path] = dataclasses.replace(plan, spec=spec, out_spec=out_spec)
            candidates[call.path] = Candidates.build(plans[call.path], iw, _bias(compressed, call.path))
            continue
        if reason:
            notes.append(f"{call.path}: left to the model's own float code ({reason})")
        if call.path in in_specs or out_spec is not None:  # fake-quantize around the model's own code
            spec = layers.InputSpec(in_specs[call.path]) if call.path in in_specs else None
            plans[call.path] = layers.ModelCode(spec, out_spec)
    if unquantized_inputs and activations == "auto":
        notes.append(
            "the recipe leaves the inputs of " + ", ".join(unquantized_inputs) + " in float: exported in int8, "
            "such a layer quantizes its input dynamically to int8, which training never saw; exported in float it "
            "takes the input as is (add jc.quant.activations(...) to the recipe to train for int8 inputs)"
        )

    for bn_path, producer in program.batchnorm_pairs(calls).items():
        if producer in candidates:
            mul, add = program.batchnorm_affine(_find_call(calls, bn_path).module, variables, bn_path)
            candidates[producer] = candidates[producer].folded(mul, add)
            plans[bn_path] = layers.FoldedBatchNorm()

    if remove_pruned_channels and candidates:
        removal, candidates, plans = _remove_channels(
            model, float_vars, example, apply_kwargs, plans, candidates, calls
        )
        notes.extend(removal.notes)

    variables_left = _without(float_vars, [p for p, pl in plans.items() if not isinstance(pl, layers.ModelCode)])
    return _Prepared(example, apply_kwargs, plans, candidates, notes, variables_left, frozenset(unquantized_inputs))


def size_report(
    model: nn.Module,
    variables: Mapping[str, Any],
    recipe: core.Recipe,
    cstate: Any,
    example: jax.typing.ArrayLike,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    activations: str | Mapping[str, InputQuant] = "auto",
    remove_pruned_channels: bool = True,
) -> dict:
    """The bytes :func:`export` will write for these weights, per leaf and per format, before exporting.

    Runs export's planning (BatchNorm folding, channel removal) and its
    storage encoder, but compiles and times nothing. A layer's bytes do not
    depend on ``dispatch``: both of its forms are views of one stored copy of
    its codes. The figures equal the saved file's weight section entry for
    entry (``Exported.report["leaves"]``); the program and header are not
    predicted (``Exported.save`` reports them).

    Returns:
      ``{"leaves": {layer_or_argument: {...}}, "weight_bytes": int}``: for a
      quantized layer, ``"parts"`` (its codes' chosen format and the bytes of
      every format tried; its scales, zero points, codebook) and ``"bytes"``;
      for any other argument its dtype and bytes.
    """
    prep = _prepare(model, variables, recipe, cstate, example, apply_kwargs, activations, remove_pruned_channels)
    choices = {p: "float" for p in prep.candidates}
    args = jax.tree.map(_canonical, _program_args(prep.candidates, choices, prep.variables_left))
    _, leaves, _ = storage(args, prep.candidates)
    return {"leaves": leaves, "weight_bytes": sum(v["bytes"] for v in leaves.values())}


def _integer_form(recipe, params, cstate, compressed) -> dict[str, core.IntegerWeights]:
    """The recipe's stored integer form, checked leaf by leaf to dequantize to exactly what ``apply`` computes."""
    integer = core.integer_weights(recipe, params, cstate)
    if not integer:
        raise ValueError(
            "`recipe` quantizes no leaf of these params: nothing to export as integers. Check its rules "
            "(the quantizer's `rule` must select the kernels)."
        )
    flat = paths_lib.flatten(compressed)[0]
    for path, iw in integer.items():
        trained = np.asarray(flat[path], np.float32)
        stored = np.asarray(iw.dequantize(), np.float32)
        differ = stored != trained
        if np.any(differ):
            index = tuple(int(i) for i in np.argwhere(differ)[0])
            raise ValueError(
                f"Leaf {path!r}: its integer form does not dequantize to the weights the recipe applies "
                f"({int(differ.sum())} of {differ.size} entries differ; at {index}: {stored[index]!r} stored, "
                f"{trained[index]!r} trained). A stage after the quantizer set values its grid cannot "
                "represent (e.g. zeros a codebook lacks): chain pruning before quantization. Or the quantizer "
                "has not started yet (jc.joint.delayed before its `start`): export after it has."
            )
    return integer


def _check_inputs(model, variables, recipe, example, activations) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a flax.linen Module, got {type(model).__name__}.")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError("`variables` must be the model's variables dict with a 'params' collection.")
    core.check_recipe(recipe)
    if not isinstance(recipe, (core.Quantizer, core.Chain)):
        raise TypeError(
            "`recipe` must quantize weights (e.g. jc.chain(jc.prune.magnitude(...), jc.quant.int8())); "
            f"a {type(recipe).__name__} that only prunes has no integer form to export."
        )
    if np.ndim(example) < 1:
        raise ValueError(f"`example` must be a batch with a leading batch axis, got shape {np.shape(example)}.")
    if not (activations in ("auto", "dynamic") or isinstance(activations, Mapping)):
        raise ValueError(
            f"`activations` must be 'auto', 'dynamic' or {{module_path: InputQuant}}, got {activations!r}."
        )


def _check_metadata(description: Any, accuracy: Any) -> dict[str, float]:
    """``accuracy`` as plain floats (numpy and JAX scalars converted), so the metadata saves as JSON."""
    if description is not None and not isinstance(description, str):
        raise TypeError(f"`description` must be a string or None, got {type(description).__name__}.")
    if accuracy is None:
        return {}
    if not isinstance(accuracy, Mapping):
        raise TypeError(f"`accuracy` must be a mapping of names to numbers, got {type(accuracy).__name__}.")
    out = {}
    for key, value in accuracy.items():
        if not isinstance(key, str):
            raise TypeError(f"`accuracy` keys must be strings, got {key!r}.")
        if isinstance(value, bool) or np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.number):
            raise TypeError(f"`accuracy[{key!r}]` must be a number (Python, numpy or JAX scalar), got {value!r}.")
        out[key] = float(value)
        if not np.isfinite(out[key]):
            raise ValueError(f"`accuracy[{key!r}]` must be finite, got {out[key]}.")
    return out


def _check_dispatch(dispatch) -> None:
    choices = dispatch.values() if isinstance(dispatch, Mapping) else [dispatch]
    for c in choices:
        if c not in _CHOICES:
            raise ValueError(f"`dispatch` values must be one of {_CHOICES}, got {c!r}.")


def _activation_specs(activations, cstate) -> tuple[dict[str, InputQuant], dict[str, InputQuant]]:
    """``(inputs, outputs)``: how each module's input and output are quantized, by module path."""
    if isinstance(activations, Mapping):
        return dict(activations), {}
    if activations == "dynamic":
        return {}, {}
    return activation_lib.input_quantization(cstate), activation_lib.output_quantization(cstate)


def _plan_for(call) -> tuple[KernelLayer | None, str]:
    """How a Dense/Conv call with quantized weights is run, or None (left to the model) and why."""
    if isinstance(call.module, nn.Dense):
        if call.module.dot_general is not None or call.module.dot_general_cls is not None:
            return None, "custom dot_general"
        return layers.Dense(), ""
    if isinstance(call.module, nn.Conv):
        cfg = layers.conv_config(call.module)
        if cfg is None:
            return None, "unsupported Conv configuration (padding mode, unshared weights or mask)"
        return layers.Conv(config=cfg), ""
    return None, f"{type(call.module).__name__} layers have no integer kernel yet"


def _bias(compressed: Any, path: str) -> np.ndarray | None:
    node = program.lookup(compressed, path)
    return None if node is None or "bias" not in node else np.asarray(node["bias"], np.float32)


def _find_call(calls, path: str):
    return next(c for c in calls if c.path == path)


def _with_choices(plans: dict, candidates: Mapping[str, Candidates], choices: Mapping[str, str], untrained) -> dict:
    """``plans`` with each chosen layer computing with its integer or float weights.

    A float layer whose input the recipe never quantized takes it as is: only
    an integer op needs (dynamic) int8 inputs.
    """
    out = {}
    for p, pl in plans.items():
        if p in choices:
            pl = pl.with_form(type(candidates[p].form(choices[p])))
            if choices[p] == "float" and p in untrained:
                pl = dataclasses.replace(pl, spec=None)
        out[p] = pl
    return out


def _program_args(candidates: Mapping[str, Candidates], choices: Mapping[str, str], variables_left) -> dict:
    """The program's weight arguments: each layer's chosen form, plus the variables the model still reads."""
    chosen = {p: candidates[p].form(c).arguments() for p, c in choices.items()}
    return {"layers": chosen, "variables": variables_left}


def _measure_in_program(model, plans, candidates, variables_left, apply_kwargs, example, choices, untrained) -> dict:
    """Resolves ``"measure"`` in ``choices`` (in place) by timing the whole program; returns the timings.

    A layer timed alone misleads: XLA:CPU runs a convolution whose output is
    the program's result several times slower than the same convolution
    feeding a pooling op. So each measured layer is decided inside the whole
    program: starting from float for every measured layer, layers are flipped
    to int8 one at a time, in program order, and a flip is kept when the
    program gets faster (programs timed interleaved, median of each).
    """
    measured = [p for p, c in choices.items() if c == "measure"]
    for path in measured:
        choices[path] = "float"
    if not measured:
        return {}

    def build(assignment: dict[str, str]):
        fn = program.Program(model, _with_choices(plans, candidates, assignment, untrained), apply_kwargs)
        args = _program_args(candidates, assignment, variables_left)
        return jax.jit(lambda w, x: fn(w, x)), jax.tree.map(jnp.asarray, args)

    timings = {}
    current = build(choices)
    for path in measured:
        flipped_choices = {**choices, path: "int8"}
        flipped = build(flipped_choices)
        float_s, int8_s = program.timed_interleaved([current, flipped], example)
        timings[path] = {"int8_s": int8_s, "float_s": float_s}
        if int8_s < float_s:
            choices[path] = "int8"
            current = flipped
    return timings


def _without(variables: Mapping[str, Any], plans: list[str]) -> dict:
    """Variables minus the params (and batch stats) of the modules the program replaces: it never reads them."""
    out = dict(variables)
    for collection in list(out):
        tree = jax.tree.map(lambda a: a, out[collection])  # fresh containers to pop from; arrays shared
        for path in plans:
            *parents, leaf = path.split("/")
            node = tree
            for key in parents:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(leaf, None)
        out[collection] = tree
    return out


def _remove_channels(model, float_vars, example, apply_kwargs, plans, candidates, calls):
    """Plans, applies and verifies physical channel removal: ``(removal, candidates, plans)``, new or unchanged."""
    float_weights = {p: c.float for p, c in candidates.items()}
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.path] = counts.get(call.path, 0) + 1
    fixed = frozenset(p for p, c in candidates.items() if c.iw.group_size is not None)
    removal = channels.plan_removal(model, float_vars, example, apply_kwargs, plans, float_weights, counts, fixed)
    touched = set(removal.keep_out) | set(removal.keep_in)
    if not touched:
        return removal, candidates, plans
    reduced = dict(candidates)
    for p in touched:
        reduced[p] = candidates[p].reduced(removal.keep_out.get(p), removal.keep_in.get(p), removal.constants.get(p))
    # Structure is verified exactly: float path, no input quantization on either side.
    exact = {
        p: dataclasses.replace(pl, spec=None, form=FloatKernel) if p in candidates else pl for p, pl in plans.items()
    }
    program_fn = program.Program(model, exact, apply_kwargs)

    def args(cands):
        return {"layers": {p: c.float.arguments() for p, c in cands.items()}, "variables": float_vars}

    why = channels.verify(
        lambda x: program_fn(args(reduced), x), lambda x: program_fn(args(candidates), x), example, rtol=1e-4
    )
    if why is not None:
        return channels.Removal({}, {}, {}, [*removal.notes, f"no channels removed: {why}"]), candidates, plans
    plans = dict(plans)
    for p, consts in removal.constants.items():  # keep each dynamic input scale on the unreduced grid
        spec = plans[p].spec
        if spec is not None and spec.quant.dynamic:
            plans[p] = dataclasses.replace(plans[p], spec=spec._replace(floor=consts.floor))
    return removal, reduced, plans


def _flatten(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` in JAX's leaf order: the order the program takes its arguments."""
    return paths_lib.flatten(tree)[0]


def _canonical(a: Any) -> np.ndarray:
    """A numpy array in the dtype JAX will give it (int64 -> int32 without x64)."""
    a = np.asarray(a)
    return a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)


def _describe_compute(plan: layers.Plan) -> str:
    if isinstance(plan, layers.FoldedBatchNorm):
        return "identity (folded into its producer)"
    if isinstance(plan, layers.ModelCode):
        return "the model's own code"
    return "int8" if plan.integer else "float32"


def _describe_quant(spec: layers.InputSpec | None) -> str | None:
    if spec is None:
        return None
    q = spec.quant
    kind = "dynamic" if q.dynamic else "static"
    grid = ("symmetric" if q.symmetric else "asymmetric") + (" int" if q.signed else " uint")
    return f"{kind} {grid}{q.bits}"


def describe_recipe(recipe: core.Recipe, cstate: Any) -> str:
    """A readable one-line name of a recipe, e.g. ``"pruner (sparsity 0.9) -> kmeans"``."""
    if isinstance(recipe, core.Chain):
        return " -> ".join(describe_recipe(r, s) for r, s in zip(recipe.stages, cstate, strict=True))
    name = getattr(recipe.init, "__qualname__", type(recipe).__name__).split(".")[0]
    sparsity = getattr(cstate, "sparsity", None)
    if sparsity is not None and np.ndim(sparsity) == 0:
        name += f" (sparsity {float(sparsity):.3g})"
    return name
