"""Export benchmark: exported int8 program vs jitted float32, sizes, fidelity (issue 5).

Trains LeNet-300-100 and LeNet-5 on MNIST, fine-tunes each with int8 weights
and dynamic int8 activations (QAT), exports through the real artifact file
(``save`` then ``load``), and measures in this one process, at batch 256:

* latency of the loaded artifact over the jitted float32 model (warm-up, then
  the median of interleaved runs);
* a LeNet-5 with 50% of its conv filters and fc1 neurons pruned (structured,
  then fine-tuned with int8), physically removed at export;
* artifact file bytes against float32 param bytes;
* argmax agreement of every exported model with the fake-quantized model it
  came from, over the 10,000 MNIST test images.

The last line printed is one JSON object with the issue's keys.

Usage: python benchmarks/export.py [--epochs 2] [--runs 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc
from jaxcompress.models import LeNet5, lenet300_100


def fake_quant_activations(fn):
    """Runs ``fn`` with every Dense/Conv input on a dynamic symmetric int8 grid (straight-through)."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
            a = args[0]
            s = jax.lax.stop_gradient(jnp.max(jnp.abs(a)) / 127.0)
            q = jc.quant.clip_ste(jc.quant.round_ste(a / s), -127.0, 127.0) * s
            args = (q, *args[1:])
        return next_fun(*args, **kwargs)

    def wrapped(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return fn(*args, **kwargs)

    return wrapped


def train(model, params, data, steps, *, lr, recipe=None, quantize_activations=False, seed=0, label=None):
    apply = lambda p, x: model.apply({"params": p}, x)
    if quantize_activations:
        apply = fake_quant_activations(apply)
    schedule = optax.cosine_decay_schedule(lr, steps)
    inner = optax.adam(schedule)
    tx = jc.optim.with_compression(inner, recipe) if recipe is not None else inner
    stream = jc.data.batches(data.x_train, data.y_train, 128, seed=seed)
    params, opt_state, _ = jc.train.fit(apply, params, tx, stream, steps, recipe=recipe, progress=label)
    return params, opt_state, apply


def error_pct(apply, params, data) -> float:
    return 100.0 * (1.0 - jc.train.accuracy(apply, params, data.x_test, data.y_test))


def interleaved_latency(fns: list, x, runs: int) -> list[float]:
    for f in fns:
        for _ in range(10):
            jax.block_until_ready(f(x))
    samples = [[] for _ in fns]
    for _ in range(runs):
        for i, f in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(f(x))
            samples[i].append(time.perf_counter() - start)
    return [float(np.median(s)) for s in samples]


def channel_prune_mask(params, fraction, paths):
    """Structured pruning fallback: zero the output channels with the smallest L2 norm."""
    out = jax.tree.map(np.array, params)
    for path in paths:
        k = out[path]["kernel"]
        norms = np.sqrt((k.reshape(-1, k.shape[-1]) ** 2).sum(0))
        dead = np.argsort(norms, kind="stable")[: round(fraction * k.shape[-1])]
        k[..., dead] = 0.0
    return out


def frozen_zeros(initial_params) -> jc.Transform:
    """Keeps the kernels' zeros in ``initial_params`` at zero: a fixed structured mask."""
    from jaxcompress import masks

    flat0 = jc.paths.flatten(initial_params)[0]
    fixed = {p: masks.pack(jnp.asarray(w) != 0) for p, w in flat0.items() if np.ndim(w) >= 2}

    def apply(params, state):
        return jc.core.map_selected(lambda p, w: jnp.where(state[p].unpack(), w, 0.0), params, list(state))

    return jc.Transform(lambda params: dict(fixed), lambda p, s, g=None, **kw: s, apply, lambda s: dict(s))


def export_and_load(model, params, recipe, cstate, example, directory, name):
    ex = jc.export.int8(model, {"params": params}, recipe, cstate, example, description=name)
    path = os.path.join(directory, f"{name}.jcx")
    size = ex.save(path)
    return ex, jc.export.load(path), size


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0, help="float training epochs per model")
    parser.add_argument("--qat-epochs", type=float, default=1.0, help="QAT fine-tuning epochs")
    parser.add_argument("--runs", type=int, default=200, help="interleaved timing runs")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test; figures meaningless)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.qat_epochs, args.runs = 0.05, 0.02, 5
    data = jc.data.mnist()
    steps = lambda e: max(1, round(e * len(data.x_train) / 128))
    x_bench = jnp.asarray(data.x_test[: args.batch])
    tmp = tempfile.mkdtemp(prefix="jaxcompress-export-bench-")
    results, agreements, report = {}, {}, {}

    for name, model, x_shape in [
        ("lenet300", lenet300_100(), (1, 28, 28, 1)),
        ("lenet5", LeNet5(), (1, 28, 28, 1)),
    ]:
        params = model.init(jax.random.key(0), jnp.zeros(x_shape))["params"]
        params, _, float_apply = train(model, params, data, steps(args.epochs), lr=1e-3, label=f"{name} float")
        recipe = jc.quant.int8()
        params_q, opt_state, qat_apply = train(
            model,
            params,
            data,
            steps(args.qat_epochs),
            lr=2e-4,
            recipe=recipe,
            quantize_activations=True,
            label=f"{name} int8 QAT",
        )
        cstate = jc.optim.compression_state(opt_state)
        fq_params = recipe.apply(params_q, cstate)
        ex, loaded, size = export_and_load(model, params_q, recipe, cstate, x_bench, tmp, name)
        fq_logits = np.asarray(qat_apply(fq_params, data.x_test))
        ex_logits = np.asarray(loaded(data.x_test))
        agreements[name] = float(np.mean(fq_logits.argmax(-1) == ex_logits.argmax(-1)))
        float_fn = jax.jit(lambda x, p=params, m=model: m.apply({"params": p}, x))
        t_float, t_int8 = interleaved_latency([float_fn, loaded], x_bench, args.runs)
        results[f"int8_over_float_latency_{name}"] = t_int8 / t_float
        report[name] = {
            "float_error_pct": error_pct(float_apply, params, data),
            "int8_error_pct": 100.0 * float(np.mean(ex_logits.argmax(-1) != data.y_test)),
            "float_ms": 1e3 * t_float,
            "int8_ms": 1e3 * t_int8,
            "max_logit_diff": float(np.max(np.abs(fq_logits - ex_logits))),
            "layers": {p: v["compute"] for p, v in ex.report["layers"].items()},
        }
        if name == "lenet300":
            results["artifact_bytes_lenet300"] = size
            results["float_bytes_lenet300"] = int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(params)))
        if name == "lenet5":
            lenet5_float = (params, float_apply, float_fn)

    # LeNet-5 with 50% of conv filters and fc1 neurons pruned (structured), int8, physically removed.
    model = LeNet5()
    params, float_apply, float_fn = lenet5_float
    pruned = channel_prune_mask(params, 0.5, ["Conv_0", "Conv_1", "Dense_0"])
    keep_zero = jc.chain(frozen_zeros(pruned), jc.quant.int8())
    params_p, opt_state, qat_apply = train(
        model,
        pruned,
        data,
        steps(args.qat_epochs + args.epochs / 2),
        lr=5e-4,
        recipe=keep_zero,
        quantize_activations=True,
        label="lenet5 50% channels + int8",
    )
    cstate = jc.optim.compression_state(opt_state)
    ex, loaded, _ = export_and_load(model, params_p, keep_zero, cstate, x_bench, tmp, "lenet5_pruned")
    fq_logits = np.asarray(qat_apply(keep_zero.apply(params_p, cstate), data.x_test))
    ex_logits = np.asarray(loaded(data.x_test))
    agreements["lenet5_pruned"] = float(np.mean(fq_logits.argmax(-1) == ex_logits.argmax(-1)))
    t_float, t_int8 = interleaved_latency([float_fn, loaded], x_bench, args.runs)
    results["pruned_int8_over_float_latency_lenet5"] = t_int8 / t_float
    pruned_error = 100.0 * float(np.mean(ex_logits.argmax(-1) != data.y_test))
    results["pruned_int8_error_delta_pts"] = pruned_error - report["lenet5"]["float_error_pct"]
    report["lenet5_pruned"] = {
        "int8_error_pct": pruned_error,
        "int8_ms": 1e3 * t_int8,
        "float_ms": 1e3 * t_float,
        "notes": ex.report["notes"],
        "layers": {p: v["compute"] for p, v in ex.report["layers"].items()},
        "max_logit_diff": float(np.max(np.abs(fq_logits - ex_logits))),
    }
    results["export_argmax_agreement"] = min(agreements.values())
    results["export_argmax_agreement_by_recipe"] = agreements
    results["batch"] = args.batch
    results["device"] = str(jax.devices()[0].device_kind)
    print(json.dumps(report, indent=1), file=sys.stderr)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
