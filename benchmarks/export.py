"""Export benchmark: exported int8 program vs jitted float32, sizes, fidelity (issue 5).

Trains LeNet-300-100 and LeNet-5 on MNIST in float32, fine-tunes each with
int8 weights and int8 activations (QAT: static ranges from running statistics,
or dynamic with ``--activations dynamic``), exports through the real artifact
file (``save`` then ``load``) and measures, in this one process, at batch 256:

* latency of the loaded artifact over the jitted float32 model with its
  weights folded in as constants (warm-up, then the median of interleaved
  runs); also over the float32 model taking its weights as arguments, as the
  artifact does (``int8_over_float_args_latency_*``);
* LeNet-5 with 50% of the filters of both convs and of the fc1 neurons pruned
  (``jc.prune.channel``, gradual, fine-tuned with int8 W+A), physically removed
  at export: latency and test error against the float baseline;
* the artifact file's bytes against the float32 params' bytes;
* argmax agreement of each exported model with the fake-quantized model it came
  from, over the 10,000 MNIST test images (and the max logit difference).

The last line printed is one JSON object with the issue's keys.

Usage: python benchmarks/export.py [--epochs 3] [--qat-epochs 1] [--runs 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import machine, mnist_dir

import jaxcompress as jc
from jaxcompress._src.export import program
from jaxcompress.models import LeNet5, lenet300_100


def fit(model, params, data, steps, *, lr, recipe=None, seed=0, label=None):
    """Adam with cosine decay; with a recipe, QAT through jc.train (activation hooks included)."""
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    inner = optax.adam(optax.cosine_decay_schedule(lr, steps))
    tx = jc.optim.with_compression(inner, recipe) if recipe is not None else inner
    stream = jc.data.batches(data.x_train, data.y_train, 128, seed=seed)
    params, opt_state, _ = jc.train.fit(apply_fn, params, tx, stream, steps, recipe=recipe, progress=label)
    return params, (jc.optim.compression_state(opt_state) if recipe is not None else None)


def fake_quantized_logits(model, params, recipe, cstate, x):
    fn = jax.jit(lambda p, c, xb: _fq(model, p, recipe, c, xb))
    return batched(lambda xb: fn(params, cstate, xb), x)


def _fq(model, params, recipe, cstate, x):
    with jc.quant.quantize_activations(cstate):
        return model.apply({"params": recipe.apply(params, cstate)}, x)


def interleaved_latency(fns: list, x, runs: int) -> list[float]:
    """Median seconds per call of each fn, after warm-up, runs interleaved so drift hits all alike."""
    return program.timed_interleaved(
        [(lambda _, xb, f=f: f(xb), None) for f in fns], x, rounds=runs, repeats=1, warmup=20
    )


def error_pct(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(-1) != labels))


def export_and_load(model, params, recipe, cstate, example, directory, name):
    ex = jc.export.export(model, {"params": params}, recipe, cstate, example, description=name)
    path = os.path.join(directory, f"{name}.jcx")
    size = ex.save(path)
    return ex, jc.export.load(path), size


def batched(fn, x, batch=1000) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3.0, help="float training epochs per model")
    parser.add_argument("--qat-epochs", type=float, default=1.0, help="int8 QAT fine-tuning epochs")
    parser.add_argument("--prune-epochs", type=float, default=3.0, help="structured pruning + QAT epochs")
    parser.add_argument("--activations", choices=["static", "dynamic"], default="static")
    parser.add_argument("--runs", type=int, default=300, help="interleaved timing runs")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test; figures meaningless)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.qat_epochs, args.prune_epochs, args.runs = 0.05, 0.02, 0.05, 5
    data = jc.data.mnist(mnist_dir())
    steps = lambda e: max(1, round(e * len(data.x_train) / 128))
    x_bench = jnp.asarray(data.x_test[: args.batch])
    tmp = tempfile.mkdtemp(prefix="jaxcompress-export-bench-")
    results, agreements, report = {}, {}, {"settings": vars(args)}

    def int8_wa():
        return jc.chain(jc.quant.int8(), jc.quant.activations(8, mode=args.activations))

    def measure(name, model, params, recipe, cstate, float_params):
        ex, loaded, size = export_and_load(model, params, recipe, cstate, x_bench, tmp, name)
        fq = fake_quantized_logits(model, params, recipe, cstate, data.x_test)
        exported = batched(loaded, data.x_test)
        agreements[name] = float(np.mean(fq.argmax(-1) == exported.argmax(-1)))
        # Two float32 baselines: weights folded in as constants (XLA fuses the whole
        # model; the stronger one, used for the ratios) and weights as arguments,
        # as the artifact's program takes them.
        float_fn = jax.jit(lambda x: model.apply({"params": float_params}, x))
        float_args = jax.jit(lambda p, x: model.apply({"params": p}, x))
        device_params = jax.device_put(float_params)
        t_float, t_float_args, t_int8 = interleaved_latency(
            [float_fn, lambda x: float_args(device_params, x), loaded], x_bench, args.runs
        )
        report[name] = {
            "fake_quant_error_pct": error_pct(fq, data.y_test),
            "exported_error_pct": error_pct(exported, data.y_test),
            "max_logit_diff": float(np.max(np.abs(fq - exported))),
            "float_ms": 1e3 * t_float,
            "float_weights_as_args_ms": 1e3 * t_float_args,
            "int8_ms": 1e3 * t_int8,
            "artifact_bytes": size,
            "layers": {p: v["compute"] for p, v in ex.report["layers"].items()},
            "timings_us": {
                p: {k: v[k] for k in ("int8_s", "float_s") if k in v} for p, v in ex.report["layers"].items()
            },
            "notes": ex.report["notes"],
        }
        results[f"int8_over_float_args_latency_{name}"] = t_int8 / t_float_args
        return t_int8 / t_float, size, exported

    floats = {}
    for name, model in [("lenet300", lenet300_100()), ("lenet5", LeNet5())]:
        params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        params, _ = fit(model, params, data, steps(args.epochs), lr=1e-3, label=f"{name} float32")
        float_logits = batched(jax.jit(lambda x, m=model, p=params: m.apply({"params": p}, x)), data.x_test)
        floats[name] = (model, params, error_pct(float_logits, data.y_test))
        recipe = int8_wa()
        qparams, cstate = fit(model, params, data, steps(args.qat_epochs), lr=2e-4, recipe=recipe, label=f"{name} QAT")
        ratio, size, _ = measure(name, model, qparams, recipe, cstate, params)
        report[name]["float_error_pct"] = floats[name][2]
        results[f"int8_over_float_latency_{name}"] = ratio
        if name == "lenet300":
            results["artifact_bytes_lenet300"] = size
            results["float_bytes_lenet300"] = int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(params)))

    # LeNet-5, 50% of conv filters and fc1 neurons pruned (structured), int8 W+A, removed at export.
    model, params, float_error = floats["lenet5"]
    n = steps(args.prune_epochs)
    prune = jc.prune.channel(
        jc.schedules.polynomial(0.0, 0.5, begin=0, end=n // 2, frequency=max(1, n // 40)),
        rule=r"^(Conv_0|Conv_1|Dense_0)/kernel$",
    )
    recipe = jc.chain(prune, jc.quant.int8(), jc.quant.activations(8, mode=args.activations))
    pparams, cstate = fit(model, params, data, n, lr=5e-4, recipe=recipe, label="lenet5 50% channels + int8")
    ratio, _, exported = measure("lenet5_pruned", model, pparams, recipe, cstate, params)
    results["pruned_int8_over_float_latency_lenet5"] = ratio
    results["pruned_int8_error_delta_pts"] = error_pct(exported, data.y_test) - float_error
    report["lenet5_pruned"]["float_error_pct"] = float_error

    results["export_argmax_agreement"] = min(agreements.values())
    results["export_argmax_agreement_by_recipe"] = agreements
    results["max_logit_diff_by_recipe"] = {k: report[k]["max_logit_diff"] for k in agreements}
    results["activations"] = args.activations
    results["batch"] = args.batch
    results.update(machine())
    print(json.dumps(report, indent=1), file=sys.stderr)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
