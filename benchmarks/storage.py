"""Storage benchmark: the Deep Compression protocol end to end on MNIST, sized by the real file (issue 13).

For LeNet-300-100 and LeNet-5 (Han, Mao & Dally, ICLR 2016):

1. train the float32 baseline (Adam, cosine decay);
2. prune by magnitude to the paper's per-layer kept fractions (LeNet-300-100:
   8/9/26%; LeNet-5: 66/12/8/19%), gradually (cubic schedule), then retrain
   with the masks fixed;
3. share weights with k-means (LeNet-300-100: 6 bits; LeNet-5: conv 8 / fc 5
   bits) clustered on the pruned weights, and fine-tune the codebooks; the
   codebooks and the biases are rounded to float16 while fine-tuning (stored
   in 2 bytes each; ``--float32-extras`` keeps them float32, as the paper);
4. export (``jc.export.export``), save, load the file back and evaluate the
   loaded artifact on the 10,000 test images.

Reported per model: float32 param bytes over the file's weight section and
over the whole file, test error delta of the loaded artifact against the
float baseline, bits per kept weight (the whole weight section over the kept
kernel weights), the bytes of every section, each layer's chosen format, and
whether ``jc.export.size_report`` predicted the stored bytes exactly. Then
the codebook fine-tuning step's time and compile time over the float step's
(LeNet-300-100, interleaved medians, same process).

The last line printed is one JSON object with the issue's keys.

Usage: python benchmarks/storage.py [--quick] [--models lenet300,lenet5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import log, machine, mnist_dir

import jaxcompress as jc
from jaxcompress.models import LeNet5, lenet300_100

BATCH = 128
PROTOCOL = {
    "lenet300": {
        "kept": {"Dense_0/kernel": 0.08, "Dense_1/kernel": 0.09, "Dense_2/kernel": 0.26},
        "bits": {"Dense": 6},
        "epochs": {"float": 20, "prune": 12, "retrain": 12, "share": 4},
        "paper": {"ratio": 40, "error_float": 1.64, "error_compressed": 1.58},
    },
    "lenet5": {
        "kept": {"Conv_0/kernel": 0.66, "Conv_1/kernel": 0.12, "Dense_0/kernel": 0.08, "Dense_1/kernel": 0.19},
        "bits": {"Conv": 8, "Dense": 5},
        "epochs": {"float": 12, "prune": 6, "retrain": 4, "share": 2},
        "paper": {"ratio": 39, "error_float": 0.80, "error_compressed": 0.74},
    },
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="lenet300,lenet5")
    for phase in ("float", "prune", "retrain", "share"):
        p.add_argument(f"--{phase}-epochs", type=float, default=None, help="default: the model's PROTOCOL entry")
    p.add_argument("--timing-rounds", type=int, default=30)
    p.add_argument(
        "--float32-extras", action="store_true", help="codebooks and biases in float32, as the paper (default: float16)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few hundred steps per phase")
    return p.parse_args()


def make_step(model, tx, recipe=None):
    """A jitted training step (``jc.train.make_train_step``): float, or through the recipe with learned codebooks."""
    return jc.train.make_train_step(lambda p, x: model.apply({"params": p}, x), tx, recipe)


def run(step, params, opt_state, stream, steps, label):
    t = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, *next(stream))
        if i % 500 == 0:
            log(f"  {label} step {i}/{steps}: loss {float(loss):.4f}")
    jax.block_until_ready(params)
    log(f"  {label}: {steps} steps, {time.perf_counter() - t:.0f}s")
    return params, opt_state


def error_pct(predict, x, y) -> float:
    wrong = sum(
        int(np.sum(np.asarray(predict(x[i : i + 1000])).argmax(-1) != y[i : i + 1000])) for i in range(0, len(x), 1000)
    )
    return 100.0 * wrong / len(x)


def deep_compression(name, model, ds, args, directory):
    cfg = PROTOCOL[name]
    steps_per_epoch = len(ds.x_train) // BATCH
    steps = lambda epochs: max(1, int(epochs * steps_per_epoch)) if not args.quick else 150
    stream = jc.data.batches(ds.x_train, ds.y_train, BATCH, seed=args.seed)
    params = model.init(jax.random.key(args.seed), ds.x_train[:1])["params"]
    float_bytes = sum(4 * int(np.size(a)) for a in jax.tree.leaves(params))

    # 1. float baseline
    epochs = {k: getattr(args, f"{k}_epochs") or v for k, v in cfg["epochs"].items()}
    n = steps(epochs["float"])
    tx = optax.adam(optax.cosine_decay_schedule(1e-3, n))
    params, _ = run(make_step(model, tx), params, tx.init(params), stream, n, f"{name} float")
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    float_err = error_pct(lambda x: apply(params, x), ds.x_test, ds.y_test)
    log(f"{name}: float {float_err:.2f}% test error")

    # 2. gradual magnitude pruning to the paper's per-layer fractions, then retraining with the masks fixed
    n_prune, n_retrain = steps(epochs["prune"]), steps(epochs["retrain"])
    overrides = {path: 1.0 - kept for path, kept in cfg["kept"].items()}
    top = max(overrides.values())
    schedule = jc.schedules.polynomial(0.0, top, begin=0, end=n_prune, frequency=max(1, n_prune // 20))
    pruner = jc.prune.magnitude(schedule, overrides=overrides)
    tx = jc.optim.with_compression(optax.adam(optax.cosine_decay_schedule(5e-4, n_prune + n_retrain)), pruner)
    params, opt_state = run(
        make_step(model, tx, pruner), params, tx.init(params), stream, n_prune + n_retrain, f"{name} prune"
    )
    pruned = pruner.apply(params, jc.optim.compression_state(opt_state))
    pruned_err = error_pct(lambda x: apply(pruned, x), ds.x_test, ds.y_test)
    kept = {p: float(np.mean(np.asarray(w) != 0)) for p, w in jc.paths.flatten(pruned)[0].items() if p in cfg["kept"]}
    log(f"{name}: pruned {pruned_err:.2f}% test error, kept {kept}")

    # 3. weight sharing: k-means on the pruned weights, codebooks fine-tuned
    # float16 codebooks and biases (rounded straight through while fine-tuning) are ours, not the paper's
    half = not args.float32_extras
    stages = [
        jc.quant.kmeans(bits, rule=f"{kind}_.*/kernel", codebook_dtype="float16" if half else "float32")
        for kind, bits in cfg["bits"].items()
    ]
    recipe = jc.chain(*stages, *([jc.quant.half_precision()] if half else []))
    n_share = steps(epochs["share"])
    lr = optax.cosine_decay_schedule(1e-4, n_share)
    tx = jc.optim.with_compression(optax.adam(lr), recipe, learned_optimizer=optax.adam(lr))
    params, opt_state = run(make_step(model, tx, recipe), pruned, tx.init(pruned), stream, n_share, f"{name} share")
    cstate = jc.optim.compression_state(opt_state)
    shared = jax.jit(recipe.apply)(params, cstate)
    shared_err = error_pct(lambda x: apply(shared, x), ds.x_test, ds.y_test)
    log(f"{name}: shared weights {shared_err:.2f}% test error")

    # 4. export, save, load back, evaluate the loaded file
    variables, example = {"params": params}, ds.x_test[:BATCH]
    t = time.perf_counter()
    predicted = jc.export.size_report(model, variables, recipe, cstate, example)
    ex = jc.export.export(
        model, variables, recipe, cstate, example, dispatch="float", description=f"Deep Compression {name}"
    )
    path = os.path.join(directory, f"{name}.jcx")
    file_bytes = ex.save(path)
    loaded = jc.export.load(path)
    log(f"{name}: size report + export + save + load {time.perf_counter() - t:.0f}s")
    loaded_err = error_pct(loaded, ds.x_test, ds.y_test)
    sections = ex.report["section_bytes"]
    exact = predicted["leaves"] == ex.report["leaves"] and predicted["weight_bytes"] == sections["weights"]
    kept_weights = sum(
        int(np.sum(np.asarray(w) != 0)) for p, w in jc.paths.flatten(pruned)[0].items() if p in cfg["kept"]
    )
    layers = {p: v["parts"]["codes"]["format"] for p, v in ex.report["leaves"].items() if "parts" in v}
    # Huffman (ours, numpy) against the standard library's zlib/lzma: the best candidate each allows, per layer
    coders = {}
    for p, v in ex.report["leaves"].items():
        if "parts" in v:
            tried = v["parts"]["codes"]["tried"]
            no_stdlib = [b for d, b in tried.items() if "zlib" not in d and "lzma" not in d]
            coders[p] = {"chosen": v["parts"]["codes"]["bytes"], "packed_or_huffman_only": min(no_stdlib)}
    for p, v in ex.report["leaves"].items():
        log(
            f"  {p}: {v['bytes']} B" + (f" ({v['parts']['codes']['format']})" if "parts" in v else f" ({v['storage']})")
        )
    log(f"{name}: sections {sections}; loaded artifact {loaded_err:.2f}% test error")
    return {
        f"{name}_weight_ratio": round(float_bytes / sections["weights"], 1),
        f"{name}_file_ratio": round(float_bytes / file_bytes, 1),
        f"{name}_error_delta_pts": round(loaded_err - float_err, 2),
        f"{name}_float_error_pct": round(float_err, 2),
        f"{name}_pruned_error_pct": round(pruned_err, 2),
        f"{name}_shared_error_pct": round(shared_err, 2),
        f"{name}_loaded_error_pct": round(loaded_err, 2),
        f"{name}_float_bytes": float_bytes,
        f"{name}_section_bytes": sections,
        f"{name}_kept_fraction": {p: round(v, 4) for p, v in kept.items()},
        f"{name}_formats": layers,
        f"{name}_layers_compute": {
            p: f"{v['compute']}, input {v['input_quantization'] or 'as is'}" for p, v in ex.report["layers"].items()
        },
        f"{name}_codes_bytes_by_coder": coders,
        f"bits_per_kept_weight_{name}": round(8 * sections["weights"] / kept_weights, 2),
        f"{name}_size_report_exact": bool(exact),
        f"{name}_paper": cfg["paper"],
        f"{name}_epochs": epochs,
        f"{name}_float16_codebooks_and_biases": half,
    }, pruned


def step_timing(model, pruned, rounds: int, ds) -> dict:
    """The codebook fine-tuning step (k-means on the pruned LeNet-300-100) vs the float step: time and compile."""
    recipe = jc.quant.kmeans(6)
    float_tx = optax.adam(1e-3)
    share_tx = jc.optim.with_compression(optax.adam(1e-4), recipe, learned_optimizer=optax.adam(1e-4))
    x, y = jnp.asarray(ds.x_train[:BATCH]), jnp.asarray(ds.y_train[:BATCH])
    steps = {
        "float": (make_step(model, float_tx), float_tx),
        "codebook": (make_step(model, share_tx, recipe), share_tx),
    }
    compiled, compile_s, state = {}, {}, {}
    for key, (step, tx) in steps.items():
        opt_state = tx.init(pruned)
        t = time.perf_counter()
        compiled[key] = step.lower(pruned, opt_state, x, y).compile()
        compile_s[key] = time.perf_counter() - t
        state[key] = (pruned, opt_state)

    def timed(key: str, n: int = 20) -> float:
        p, s = state[key]
        t = time.perf_counter()
        for _ in range(n):
            p, s, loss = compiled[key](p, s, x, y)
        jax.block_until_ready((p, s, loss))
        state[key] = (p, s)
        return (time.perf_counter() - t) / n

    for key in steps:
        timed(key)
        timed(key)
    times = {k: [] for k in steps}
    for r in range(rounds):
        for key in ("float", "codebook") if r % 2 == 0 else ("codebook", "float"):
            times[key].append(timed(key))
    ratio = statistics.median(c / f for c, f in zip(times["codebook"], times["float"], strict=True))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    log(
        f"step: float {ms['float']:.2f} ms, codebook {ms['codebook']:.2f} ms ({ratio:.3f}x); "
        f"compile float {compile_s['float']:.2f}s, codebook {compile_s['codebook']:.2f}s"
    )
    return {
        "codebook_qat_step_over_float_step": round(ratio, 3),
        "codebook_compile_over_float_compile": round(compile_s["codebook"] / compile_s["float"], 2),
        "float_step_ms": round(ms["float"], 3),
        "codebook_step_ms": round(ms["codebook"], 3),
        "float_compile_s": round(compile_s["float"], 2),
        "codebook_compile_s": round(compile_s["codebook"], 2),
    }


def main() -> None:
    args = parse()
    t0 = time.perf_counter()
    ds = jc.data.mnist(mnist_dir())
    models = {"lenet300": lenet300_100(), "lenet5": LeNet5()}
    out: dict = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models.split(","):
            figures, pruned = deep_compression(name, models[name], ds, args, directory)
            out.update(figures)
            if name == "lenet300":
                out.update(step_timing(models[name], pruned, 5 if args.quick else args.timing_rounds, ds))
    out["size_report_exact"] = all(v for k, v in out.items() if k.endswith("_size_report_exact"))
    out["quick"] = args.quick
    out["machine"] = machine()
    out["wall_s"] = round(time.perf_counter() - t0)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
