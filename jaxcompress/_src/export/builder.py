"""``jc.export.int8``: from (params, compression state) to an integer XLA program."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress._src import core
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.export import artifact, layers, program
from jaxcompress._src.export import channels as structured
from jaxcompress._src.quant import activations as activation_lib
from jaxcompress._src.quant.grid import InputQuant

__all__ = ["Exported", "export"]

_CHOICES = ("measure", "int8", "float")


class Exported(artifact.Artifact):
    """An exported model, callable, with :meth:`save` and a :attr:`report`."""

    def __init__(self, exported, weights, metadata, stored):
        super().__init__(exported, weights, metadata)
        self._stored = stored

    @property
    def report(self) -> dict:
        """What was exported: per-layer path choices and timings, per-leaf storage and bytes."""
        return self.metadata

    def stablehlo(self) -> str:
        """The program's StableHLO text."""
        return self.exported.mlir_module()

    def save(self, path: str | os.PathLike) -> int:
        """Writes the artifact file (see :mod:`jaxcompress.export.artifact`); returns its size in bytes."""
        program_bytes = bytes(self.exported.serialize())
        size = artifact.write(path, program_bytes, self._stored, self.metadata)
        self.metadata["file_bytes"] = size
        return size


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
        the inputs they feed (see :mod:`jaxcompress.export.structured`); the
        report's ``notes`` say what was removed and what could not be, and why.
      platforms: ``jax.export`` platforms (default: the current backend).
      description: a description of the recipe for the metadata.
      accuracy: known accuracy figures to record in the metadata.

    Returns:
      An :class:`Exported`: call it, ``save`` it, read its ``report``.
    """
    apply_kwargs = dict(apply_kwargs or {})
    _check_inputs(model, variables, recipe, example, dispatch, activations)
    example = jnp.asarray(example)
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
            plans[call.path] = plan._replace(spec=spec, out_spec=out_spec)
            candidates[call.path] = _layer_weights(call, iw, compressed)
            continue
        if reason:
            notes.append(f"{call.path}: left to the model's own float code ({reason})")
        if call.path in in_specs or out_spec is not None:  # fake-quantize around the model's own code
            spec = layers.InputSpec(in_specs[call.path]) if call.path in in_specs else None
            plans[call.path] = program.LayerPlan("module", False, spec, None, out_spec)
    if unquantized_inputs and activations == "auto":
        notes.append(
            "the recipe leaves the inputs of " + ", ".join(unquantized_inputs) + " in float; their integer "
            "layers quantize them dynamically to int8 (add jc.quant.activations(...) to the recipe to train for it)"
        )

    for bn_path, producer in program.batchnorm_pairs(calls).items():
        if producer in plans:
            mul, add = program.batchnorm_affine(_find_call(calls, bn_path).module, variables, bn_path)
            _fold_affine(candidates[producer], mul, add)
            plans[bn_path] = program.LayerPlan("identity")

    removal = None
    if remove_pruned_channels and plans:
        removal = _remove_channels(model, float_vars, example, apply_kwargs, plans, candidates, calls)
        notes.extend(removal.notes)

    choices = {}
    for path, plan in plans.items():
        if plan.kind in ("dense", "conv"):
            choice = dispatch.get(path, "measure") if isinstance(dispatch, Mapping) else dispatch
            choices[path] = "float" if "int8" not in candidates[path].candidates else choice
    variables_left = _without(float_vars, [p for p, pl in plans.items() if pl.kind != "module"])
    timings = _measure_in_program(model, plans, candidates, variables_left, apply_kwargs, example, choices)
    plans = _with_choices(plans, choices)
    fn = program.Program(model, plans, apply_kwargs)
    args = jax.tree.map(_canonical, _program_args(candidates, choices, variables_left))
    x_spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape("b"), *example.shape[1:]), example.dtype)
    w_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)

    def infer(weights, x):
        return fn(weights, x)

    exported = jax.export.export(jax.jit(infer), platforms=platforms)(w_spec, x_spec)

    stored, leaves = _storage(args, candidates)
    metadata = {
        "format_version": artifact.FORMAT_VERSION,
        "description": description or _describe(cstate),
        "input": {"shape": ["b", *example.shape[1:]], "dtype": str(example.dtype)},
        "layers": {
            p: {
                "kind": plan.kind,
                "compute": {"identity": "identity (folded into its producer)", "module": "the model's own code"}.get(
                    plan.kind, "int8" if plan.integer else "float32"
                ),
                "input_quantization": _describe_quant(plan.spec),
                "output_quantization": _describe_quant(plan.out_spec),
                **({k: round(v * 1e6, 1) for k, v in timings[p].items()} if p in timings else {}),
            }
            for p, plan in plans.items()
        },
        "notes": notes,
        "leaves": leaves,
        "weight_bytes": sum(v["bytes"] for v in leaves.values()),
        "accuracy": dict(accuracy or {}),
        "jax_version": jax.__version__,
        "platforms": list(exported.platforms),
    }
    return Exported(exported, args, metadata, stored)


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
                "represent (e.g. zeros a codebook lacks): chain pruning before quantization."
            )
    return integer


def _check_inputs(model, variables, recipe, example, dispatch, activations) -> None:
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
    choices = dispatch.values() if isinstance(dispatch, Mapping) else [dispatch]
    for c in choices:
        if c not in _CHOICES:
            raise ValueError(f"`dispatch` values must be one of {_CHOICES}, got {c!r}.")
    if not (activations in ("auto", "dynamic") or isinstance(activations, Mapping)):
        raise ValueError(
            f"`activations` must be 'auto', 'dynamic' or {{module_path: InputQuant}}, got {activations!r}."
        )


def _activation_specs(activations, cstate) -> tuple[dict[str, InputQuant], dict[str, InputQuant]]:
    """``(inputs, outputs)``: how each module's input and output are quantized, by module path."""
    if isinstance(activations, Mapping):
        return dict(activations), {}
    if activations == "dynamic":
        return {}, {}
    return activation_lib.input_quantization(cstate), activation_lib.output_quantization(cstate)


def _plan_for(call) -> tuple[program.LayerPlan | None, str]:
    """How a Dense/Conv call with quantized weights is run, or None (left to the model) and why."""
    if isinstance(call.module, nn.Dense):
        if call.module.dot_general is not None or call.module.dot_general_cls is not None:
            return None, "custom dot_general"
        return program.LayerPlan("dense", True), ""
    if isinstance(call.module, nn.Conv):
        cfg = layers.conv_config(call.module)
        if cfg is None:
            return None, "unsupported Conv configuration (padding mode, unshared weights or mask)"
        return program.LayerPlan("conv", True, None, cfg), ""
    return None, f"{type(call.module).__name__} layers have no integer kernel yet"


class _Layer:
    """Export bookkeeping of one planned layer (never a program argument).

    ``codes``/``scale``/``zero_point`` are what a float-path kernel is stored
    as (codes times the effective scale, BatchNorm factor included); they are
    sliced together with the candidates when channels are removed.
    """

    def __init__(self, kind: str, iw: core.IntegerWeights, candidates: dict[str, dict[str, np.ndarray]]):
        self.kind = kind
        self.iw = iw
        self.candidates = candidates
        self.codes = np.asarray(iw.codes)
        self.scale = np.asarray(iw.scale, np.float32)
        self.zero_point = None if iw.zero_point is None else np.asarray(iw.zero_point, np.int32)

    def reduce(self, keep_out, keep_in, consts) -> None:
        for name, w in self.candidates.items():
            self.candidates[name] = structured.reduce_weights(w, self.kind, keep_out, keep_in, consts)
        self.codes = structured.slice_kernel(self.codes, self.kind, keep_out, keep_in)
        for name in ("scale", "zero_point"):
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, structured.slice_kernel(a, self.kind, keep_out, keep_in, broadcast=True))


def _layer_weights(call, iw: core.IntegerWeights, compressed) -> _Layer:
    """Both candidate weight sets of a layer: ``{"int8": {...}, "float": {...}}``."""
    node = program._lookup(compressed, call.path)
    bias = None if node is None or "bias" not in node else np.asarray(node["bias"], np.float32)
    codes = np.asarray(iw.codes)
    n_out = codes.shape[-1]
    candidates = {"float": {"kernel": np.asarray(iw.dequantize(), np.float32)}}
    if bias is not None:
        candidates["float"]["bias"] = bias
    # The integer candidate exists exactly when the integer path computes these weights.
    dense = isinstance(call.module, nn.Dense)
    zp = None if iw.zero_point is None else np.asarray(iw.zero_point, np.int32)
    if iw.codebook is None and codes.dtype == np.uint8:
        # Unsigned codes [0, 2^b) move into the signed b-bit range; the zero point moves with them.
        shift = 2 ** (iw.bits - 1)
        codes = (codes.astype(np.int16) - shift).astype(np.int8)
        zp = (np.zeros(np.shape(iw.scale), np.int32) if zp is None else zp) - shift
    if iw.codebook is not None:
        pass  # no affine form: float compute only
    elif iw.group_size is not None:
        if dense and iw.group_axis in (0, -2):
            candidates["int8"] = layers.grouped_dense_weights(codes, np.asarray(iw.scale, np.float32), zp, bias)
    else:
        scale = np.broadcast_to(np.asarray(iw.scale, np.float32).reshape(-1), (n_out,)).copy()
        if dense:
            zp = None if zp is None else np.broadcast_to(zp.reshape(-1), (n_out,))
            candidates["int8"] = layers.dense_weights(codes, scale, zp, bias)
        elif zp is None:
            candidates["int8"] = layers.conv_weights(codes, scale, bias)
    return _Layer("dense" if isinstance(call.module, nn.Dense) else "conv", iw, candidates)


def _fold_affine(layer: _Layer, mul: np.ndarray, add: np.ndarray) -> None:
    """Folds ``y * mul + add`` (per output channel) into both candidates, in place."""
    for w in layer.candidates.values():
        bias = w.get("bias", np.zeros_like(add))
        w["bias"] = (bias * mul + add).astype(np.float32)
        if "kernel" in w:
            w["kernel"] = (w["kernel"] * mul).astype(np.float32)
        else:
            w["scale"] = (w["scale"] * mul).astype(np.float32)
    layer.scale = (layer.scale * mul.reshape((1,) * (layer.scale.ndim - 1) + (-1,))).astype(np.float32)


def _find_call(calls, path: str):
    return next(c for c in calls if c.path == path)


def _with_choices(plans: dict, choices: Mapping[str, str]) -> dict:
    """``plans`` with each chosen layer on its integer or float path."""
    return {p: pl._replace(integer=choices[p] == "int8") if p in choices else pl for p, pl in plans.items()}


def _program_args(candidates: Mapping[str, _Layer], choices: Mapping[str, str], variables_left) -> dict:
    """The program's weight arguments: each layer's chosen candidate, plus the variables it still reads."""
    return {"layers": {p: candidates[p].candidates[c] for p, c in choices.items()}, "variables": variables_left}


def _measure_in_program(model, plans, candidates, variables_left, apply_kwargs, example, choices) -> dict:
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
        fn = program.Program(model, _with_choices(plans, assignment), apply_kwargs)
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


def _storage(args: dict, planned: Mapping[str, _Layer]) -> tuple[list, dict]:
    """Compressed storage of every program argument; per-leaf bytes for the report."""
    stored, leaves = [], {}
    for name, value in _flatten(args).items():
        parts = name.split("/")
        layer = planned.get("/".join(parts[1:-1])) if parts[0] == "layers" else None
        if layer is not None and parts[-1] in ("codes", "codes_t"):
            meta, blob = artifact.encode_codes(value, layer.iw.bits, signed=True)
            entries = [(name, meta, blob)]
            leaves[name] = {"storage": f"int{layer.iw.bits} {meta['encoding']}", "bytes": len(blob)}
        elif layer is not None and parts[-1] == "kernel":
            entries = _derived_kernel(name, value, layer)
            what = "codebook indices + codebook" if layer.iw.codebook is not None else "codes + float32 scales"
            leaves[name] = {
                "storage": f"int{layer.iw.bits} {what} (float32 kernel rebuilt at load)",
                "bytes": sum(len(b) for _, _, b in entries),
            }
        else:
            meta, blob = artifact.encode_raw(value)
            entries = [(name, meta, blob)]
            leaves[name] = {"storage": str(value.dtype), "bytes": len(blob)}
        stored.extend(entries)
    return stored, leaves


def _derived_kernel(name: str, kernel: np.ndarray, layer: _Layer) -> list:
    """A float-path kernel stored as its integer codes and scales, rebuilt by the loader."""
    iw = layer.iw
    if iw.codebook is not None:  # indices at `bits` bits + the codebook: kernel = codebook[indices] * scale
        imeta, iblob = artifact.encode_codes(layer.codes, iw.bits, signed=False)
        bmeta, bblob = artifact.encode_raw(np.asarray(iw.codebook, np.float32))
        smeta, sblob = artifact.encode_raw(layer.scale)
        meta = {"encoding": "codebook", "dtype": "float32", "shape": list(kernel.shape)}
        meta.update(indices=f"{name}.indices", codebook=f"{name}.codebook", scale=f"{name}.scale")
        if iw.group_size is not None:
            meta.update(group_axis=iw.group_axis, group_size=iw.group_size)
        return [
            (f"{name}.indices", {**imeta, "internal": True}, iblob),
            (f"{name}.codebook", {**bmeta, "internal": True}, bblob),
            (f"{name}.scale", {**smeta, "internal": True}, sblob),
            (name, meta, b""),
        ]
    signed = layer.codes.dtype != np.uint8  # unsigned quantizers give uint8 codes
    cmeta, cblob = artifact.encode_codes(layer.codes, iw.bits, signed=signed)
    smeta, sblob = artifact.encode_raw(layer.scale)
    entries = [
        (f"{name}.codes", {**cmeta, "internal": True}, cblob),
        (f"{name}.scale", {**smeta, "internal": True}, sblob),
    ]
    meta = {"encoding": "affine", "dtype": "float32", "shape": list(kernel.shape)}
    meta.update(codes=f"{name}.codes", scale=f"{name}.scale")
    if layer.zero_point is not None:
        zmeta, zblob = artifact.encode_raw(layer.zero_point)
        entries.append((f"{name}.zero_point", {**zmeta, "internal": True}, zblob))
        meta["zero_point"] = f"{name}.zero_point"
    if iw.group_size is not None:
        meta.update(group_axis=iw.group_axis, group_size=iw.group_size)
    entries.append((name, meta, b""))
    return entries


def _remove_channels(model, float_vars, example, apply_kwargs, plans, candidates, calls) -> structured.Removal:
    """Plans, applies and verifies physical channel removal; undoes it if verification fails."""
    float_weights = {p: c.candidates["float"] for p, c in candidates.items()}
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.path] = counts.get(call.path, 0) + 1
    fixed = frozenset(p for p, c in candidates.items() if c.iw.group_size is not None)
    removal = structured.plan_removal(model, float_vars, example, apply_kwargs, plans, float_weights, counts, fixed)
    touched = set(removal.keep_out) | set(removal.keep_in)
    if not touched:
        return removal
    # Structure is verified exactly: float path, no input quantization on either side.
    float_plans = {p: pl._replace(integer=False, spec=None) for p, pl in plans.items()}
    full_args = {"layers": float_weights, "variables": float_vars}
    saved = {
        p: (dict(candidates[p].candidates), candidates[p].codes, candidates[p].scale, candidates[p].zero_point)
        for p in touched
    }
    for p in touched:
        candidates[p].reduce(removal.keep_out.get(p), removal.keep_in.get(p), removal.constants.get(p))
    reduced_args = {"layers": {p: c.candidates["float"] for p, c in candidates.items()}, "variables": float_vars}
    program_fn = program.Program(model, float_plans, apply_kwargs)
    why = structured.verify(
        lambda x: program_fn(reduced_args, x), lambda x: program_fn(full_args, x), example, rtol=1e-4
    )
    if why is None:
        for p, consts in removal.constants.items():  # keep each dynamic input scale on the unreduced grid
            if plans[p].spec is not None and plans[p].spec.quant.dynamic:
                plans[p] = plans[p]._replace(spec=plans[p].spec._replace(floor=consts.floor))
        return removal
    for p, (cands, codes, scale, zp) in saved.items():
        layer = candidates[p]
        layer.candidates, layer.codes, layer.scale, layer.zero_point = cands, codes, scale, zp
    return structured.Removal({}, {}, {}, [*removal.notes, f"no channels removed: {why}"])


def _flatten(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` in JAX's leaf order: the order the program takes its arguments."""
    return paths_lib.flatten(tree)[0]


def _canonical(a: Any) -> np.ndarray:
    """A numpy array in the dtype JAX will give it (int64 -> int32 without x64)."""
    a = np.asarray(a)
    return a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)


def _describe_quant(spec: layers.InputSpec | None) -> str | None:
    if spec is None:
        return None
    q = spec.quant
    kind = "dynamic" if q.dynamic else "static"
    grid = ("symmetric" if q.symmetric else "asymmetric") + (" int" if q.signed else " uint")
    return f"{kind} {grid}{q.bits}"


def _describe(cstate: Any) -> str:
    states = cstate if isinstance(cstate, tuple) else (cstate,)
    return " -> ".join(type(s).__name__ for s in states)
