"""Joint compression in training (issue 15) on MNIST: distillation, ADMM, Bayesian Bits, CLIP-Q, the zeros property.

    python benchmarks/joint.py                       # every section; about 75 minutes on 2 cores
    python benchmarks/joint.py --sections admm,bb    # some of them
    python benchmarks/joint.py --quick               # a smoke run (200 steps per phase)
    python benchmarks/joint.py --cache /tmp/jc       # keep the float models between runs (flax msgpack)

A float LeNet-5 is trained first (8 epochs); every LeNet-5 section starts from it.

* ``kd``: a float LeNet-300-100 fine-tuned into a 90%-sparse 4-bit student
  twice, from the same weights on the same batches: on the labels alone and
  by ``jc.distill.distillation`` from the LeNet-5. ``kd_gain_pts`` is the
  error difference (goal > 0.1).
* ``admm``: ``jc.joint.admm`` with per-layer kept fractions and bits
  (``ADMM_LAYERS``), ``hard_projection``, masked retraining on the grid,
  export. ``admm_lenet5_weight_ratio`` is float bytes over the saved file's
  weight section (goal >= 200 at <= 0.2 pt).
* ``bb``: ``jc.joint.bayesian_bits`` under the ``relative_bops`` penalty
  (8-bit activations), ``finalize``, fine-tuning, export
  (goal <= 1% of float BOPs at <= 0.8% error).
* ``clipq``: ``jc.joint.clip_q_search`` (validation loss on the last 2,000
  training images) at each ``--clipq-targets`` size, ``clip_q`` fine-tuning,
  export; ``clipq_lenet5_weight_ratio`` is the best measured ratio within 0.2
  pt of float.
* ``zeros``: the hypothesis property test at ``--property-examples``.

Errors are of the saved file, loaded back, on the 10,000 test images. The
last line printed is one JSON object with the figures and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import REPO, log, machine, mnist_dir

import jaxcompress as jc
from jaxcompress.models import LeNet5, lenet300_100

BATCH = 128
NOT_BUILT = [
    "admm_lenet5_weight_ratio",
    "admm_lenet5_error_delta_pts",
    "bayesian_bits_lenet5_relative_bops",
    "bayesian_bits_lenet5_error_pts",
    "clipq_lenet5_weight_ratio",
    "zeros_invariant_cases",
]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-epochs", type=float, default=8)
    p.add_argument("--student-epochs", type=float, default=10, help="the float LeNet-300-100 before compression")
    p.add_argument("--compress-epochs", type=float, default=8, help="each compressed fine-tune (labels, KD)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--soft-weight", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="kd,admm,bb,clipq,zeros", help="comma-separated: kd, admm, bb, clipq, zeros")
    p.add_argument("--admm-epochs", type=float, default=8, help="the ADMM phase (penalty + projections)")
    p.add_argument("--admm-dual-steps", type=int, default=20, help="Z and dual updates over the ADMM phase")
    p.add_argument("--admm-rho", type=float, default=5e-3, help="the initial penalty weight")
    p.add_argument("--admm-rho-growth", type=float, default=1.5, help="rho's factor at each dual update")
    p.add_argument("--retrain-epochs", type=float, default=4, help="masked retraining on the projection's grid")
    p.add_argument("--bb-epochs", type=float, default=6, help="Bayesian Bits: gates and weights under the penalty")
    p.add_argument("--bb-tune-epochs", type=float, default=2, help="Bayesian Bits: fine-tuning the finalized gates")
    p.add_argument("--bb-strength", type=float, default=1.0, help="Bayesian Bits: weight of the BOPs penalty")
    p.add_argument("--bb-gate-lr", type=float, default=1e-2)
    p.add_argument("--clipq-targets", default="100,200", help="CLIP-Q: size targets, as float-bytes ratios")
    p.add_argument("--clipq-epochs", type=float, default=1.5, help="CLIP-Q: fine-tuning at each target")
    p.add_argument("--property-examples", type=int, default=110, help="zeros: hypothesis examples (11 pruner kinds)")
    p.add_argument("--cache", default=None, help="a directory to keep the float models in between runs")
    p.add_argument("--quick", action="store_true")
    return p.parse_args()


def error_pct(predict, x, y) -> float:
    wrong = sum(
        int(np.sum(np.asarray(predict(x[i : i + 1000])).argmax(-1) != y[i : i + 1000])) for i in range(0, len(x), 1000)
    )
    return 100.0 * wrong / len(x)


def train_float(model, ds, steps, seed, label):
    params = model.init(jax.random.key(seed), ds.x_train[:1])["params"]
    tx = optax.adam(optax.cosine_decay_schedule(1e-3, steps))
    step = jc.train.make_train_step(lambda p, x: model.apply({"params": p}, x), tx)
    opt_state = tx.init(params)
    stream = jc.data.batches(ds.x_train, ds.y_train, BATCH, seed=seed)
    t = time.perf_counter()
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *next(stream))
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    err = error_pct(lambda x: apply(params, x), ds.x_test, ds.y_test)
    log(f"{label}: {steps} steps in {time.perf_counter() - t:.0f}s, {err:.2f}% test error")
    return params, err


def compressed_fine_tune(model, params, ds, steps, seed, *, teacher=None, temperature=4.0, soft_weight=0.7):
    """Fine-tunes ``params`` into the 90% sparse 4-bit student; with ``teacher=(model, variables)``, by distillation."""
    schedule = jc.schedules.polynomial(0.0, 0.9, begin=0, end=steps // 2, frequency=max(1, steps // 40))
    recipe = jc.chain(jc.prune.magnitude(schedule), jc.quant.symmetric(4))
    tx = jc.optim.with_compression(optax.adam(optax.cosine_decay_schedule(5e-4, steps)), recipe)

    def student(p, c, x):
        return model.apply({"params": recipe.apply(p, c)}, x)

    if teacher is None:

        def loss_fn(p, c, teacher_variables, x, y):
            del teacher_variables
            loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(student(p, c, x), y))
            return loss, {"hard": loss}

        teacher_variables = None
    else:
        teacher_model, teacher_variables = teacher
        loss_fn = jc.distill.distillation(
            student, teacher_model.apply, temperature=temperature, soft_weight=soft_weight
        )
    grad_fn = jc.optim.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def step(p, opt_state, x, y):
        (loss, _), grads, _ = grad_fn(p, jc.optim.compression_state(opt_state), teacher_variables, x, y)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    stream = jc.data.batches(ds.x_train, ds.y_train, BATCH, seed=seed + 1)  # the same batches for both runs
    t = time.perf_counter()
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *next(stream))
    cstate = jc.optim.compression_state(opt_state)
    predict = jax.jit(lambda x: student(params, cstate, x))
    err = error_pct(predict, ds.x_test, ds.y_test)
    sparsity = float(np.mean([np.mean(np.asarray(m.unpack()) == 0) for m in jc.masks_of(cstate).values()]))
    label = "distilled" if teacher is not None else "labels only"
    log(f"compressed ({label}): {steps} steps in {time.perf_counter() - t:.0f}s, {err:.2f}% test error")
    return err, sparsity


# Kept fraction and bits per LeNet-5 layer for ADMM (Ye et al. keep about 0.6% at 2-3 bits; ours more, ternary)
ADMM_LAYERS = {
    "Conv_0/kernel": (0.50, 3),
    "Conv_1/kernel": (0.05, 2),
    "Dense_0/kernel": (0.01, 2),
    "Dense_1/kernel": (0.10, 2),
}


def load_or_train(model, ds, steps, seed, label, cache):
    """The float model: trained here, or read back from ``cache`` (flax msgpack, no pickle)."""
    path = os.path.join(cache, f"{label}_{steps}_{seed}.msgpack") if cache else None
    if path and os.path.exists(path):
        template = model.init(jax.random.key(seed), ds.x_train[:1])["params"]
        with open(path, "rb") as f:
            params = flax.serialization.from_bytes(template, f.read())
        apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
        err = error_pct(lambda x: apply(params, x), ds.x_test, ds.y_test)
        log(f"{label}: read from {path}, {err:.2f}% test error")
        return params, err
    params, err = train_float(model, ds, steps, seed, label)
    if path:
        os.makedirs(cache, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(flax.serialization.to_bytes(params))
        os.replace(path + ".tmp", path)
    return params, err


def export_and_measure(model, params, recipe, cstate, ds, label):
    """Exports (with and without removing pruned channels, keeping the smaller), saves, loads back and
    evaluates the file: ``(weight ratio, loaded error, report)``."""
    float_bytes = 4 * sum(int(np.size(w)) for w in jax.tree.leaves(params))
    exports = [
        jc.export.export(
            model,
            {"params": params},
            recipe,
            cstate,
            ds.x_test[:BATCH],
            dispatch="float",
            remove_pruned_channels=remove,
        )
        for remove in (True, False)
    ]
    with tempfile.TemporaryDirectory() as directory:
        paths = [os.path.join(directory, f"{label}_{i}.jcx") for i in range(len(exports))]
        files = [e.save(p) for e, p in zip(exports, paths, strict=True)]  # the sections are known once saved
        best = min(range(len(exports)), key=lambda i: exports[i].report["section_bytes"]["weights"])
        ex, file_bytes, removed = exports[best], files[best], best == 0
        loaded = jc.export.load(paths[best])
    err = error_pct(loaded, ds.x_test, ds.y_test)
    weights = ex.report["section_bytes"]["weights"]
    for p, v in ex.report["leaves"].items():
        log(f"  {p}: {v['bytes']} B ({v['parts']['codes']['format'] if 'parts' in v else v['storage']})")
    log(
        f"{label}: file {file_bytes} B, weights {weights} B (float {float_bytes} B; pruned channels "
        f"{'removed' if removed else 'kept'}), loaded file {err:.2f}% error"
    )
    sizes = {
        "file_bytes": file_bytes,
        "weight_bytes": weights,
        "float_bytes": float_bytes,
        "pruned_channels_removed": removed,
        "weight_bytes_other_choice": exports[1 - best].report["section_bytes"]["weights"],
    }
    return float_bytes / weights, err, sizes


def cross_entropy(model, params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y))


def fine_tune_recipe(model, params, recipe, ds, stream, steps, lr):
    """``steps`` of Adam (cosine from ``lr``) on the labels through a fixed recipe: ``(params, cstate, error)``."""
    tx = jc.optim.with_compression(optax.adam(optax.cosine_decay_schedule(lr, steps)), recipe)

    @jax.jit
    def step(p, opt_state, x, y):
        cstate = jc.optim.compression_state(opt_state)
        loss, grads = jax.value_and_grad(lambda q: cross_entropy(model, recipe.apply(q, cstate), x, y))(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, *next(stream))
    cstate = jc.optim.compression_state(opt_state)
    apply = jax.jit(lambda p, c, x: model.apply({"params": recipe.apply(p, c)}, x))
    return params, cstate, error_pct(lambda x: apply(params, cstate, x), ds.x_test, ds.y_test)


def admm_section(model, params, float_err, ds, args) -> dict:
    """ADMM (penalty + projections) from the float LeNet-5, hard projection, masked retraining, export."""
    steps = lambda epochs: 200 if args.quick else max(1, int(epochs * len(ds.x_train) // BATCH))
    n_admm, n_retrain = steps(args.admm_epochs), steps(args.retrain_epochs)
    sparsity = {p: 1.0 - kept for p, (kept, _) in ADMM_LAYERS.items()}
    method = jc.joint.admm(
        0.0,
        3,
        every=max(1, n_admm // args.admm_dual_steps),
        rho=args.admm_rho,
        rho_growth=args.admm_rho_growth,
        overrides=sparsity,
        bits_overrides={p: b for p, (_, b) in ADMM_LAYERS.items()},
    )
    tx = jc.optim.with_compression(optax.adam(optax.cosine_decay_schedule(5e-4, n_admm, alpha=0.2)), method)

    ce = functools.partial(cross_entropy, model)

    @jax.jit
    def admm_step(p, opt_state, x, y):
        cstate = jc.optim.compression_state(opt_state)
        loss, grads = jax.value_and_grad(lambda q: ce(q, x, y) + jc.joint.admm_penalty(q, cstate))(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    t = time.perf_counter()
    opt_state, stream = tx.init(params), jc.data.batches(ds.x_train, ds.y_train, BATCH, seed=args.seed + 2)
    for _ in range(n_admm):
        params, opt_state, _ = admm_step(params, opt_state, *next(stream))
    cstate = jc.optim.compression_state(opt_state)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    dense_err = error_pct(lambda x: apply(params, x), ds.x_test, ds.y_test)
    projected, quantizer = jc.joint.hard_projection(params, cstate)
    projected_err = error_pct(lambda x: apply(projected, x), ds.x_test, ds.y_test)
    log(
        f"ADMM: {n_admm} steps in {time.perf_counter() - t:.0f}s (rho {float(cstate.rho):.3g}); dense "
        f"{dense_err:.2f}%, hard projection {projected_err:.2f}% test error"
    )

    recipe = jc.chain(quantizer, jc.quant.half_precision())
    t = time.perf_counter()
    params, cstate, retrained_err = fine_tune_recipe(model, projected, recipe, ds, stream, n_retrain, 2e-4)
    compressed = jax.jit(recipe.apply)(params, cstate)
    log(f"ADMM masked retraining: {n_retrain} steps in {time.perf_counter() - t:.0f}s, {retrained_err:.2f}% test error")
    ratio, loaded_err, sizes = export_and_measure(model, params, recipe, cstate, ds, "admm_lenet5")
    kept = {p: int(np.count_nonzero(np.asarray(w))) for p, w in jc.paths.flatten(compressed)[0].items()}
    return {
        "admm_lenet5_weight_ratio": round(ratio, 1),
        "admm_lenet5_error_delta_pts": round(loaded_err - float_err, 2),
        "admm_lenet5_error_pct": loaded_err,
        "admm_lenet5_hard_projection_error_pct": projected_err,
        "admm_lenet5_dense_after_admm_error_pct": dense_err,
        "admm_lenet5_sizes": sizes,
        "admm_lenet5_layers": {p: {"kept": kept[p], "bits": b} for p, (_, b) in ADMM_LAYERS.items()},
        "admm_lenet5_steps": {"admm": n_admm, "retrain": n_retrain},
    }


def bayesian_bits_section(model, params, ds, args) -> dict:
    """Bayesian Bits from the float LeNet-5: gates learned under the BOPs penalty, finalized, fine-tuned, exported."""
    steps = lambda epochs: 200 if args.quick else max(1, int(epochs * len(ds.x_train) // BATCH))
    n_gates, n_tune = steps(args.bb_epochs), steps(args.bb_tune_epochs)
    variables = {"params": params}
    macs = jc.joint.count_macs(model, variables, ds.x_test[:1])
    method = jc.joint.bayesian_bits(seed=args.seed)
    tx = jc.optim.with_compression(
        optax.adam(optax.cosine_decay_schedule(2e-4, n_gates)),
        method,
        learned_optimizer=optax.adam(args.bb_gate_lr),
    )

    ce = functools.partial(cross_entropy, model)

    def loss_fn(p, cstate, x, y):
        return ce(method.apply(p, cstate), x, y) + args.bb_strength * jc.joint.relative_bops(cstate, macs)

    grad_fn = jc.optim.value_and_grad(loss_fn)

    @jax.jit
    def gate_step(p, opt_state, x, y):
        loss, grads, learned_grads = grad_fn(p, jc.optim.compression_state(opt_state), x, y)
        updates, opt_state = tx.update(grads, opt_state, p, learned_grads=learned_grads)
        return optax.apply_updates(p, updates), opt_state, loss

    t = time.perf_counter()
    opt_state, stream = tx.init(params), jc.data.batches(ds.x_train, ds.y_train, BATCH, seed=args.seed + 3)
    for _ in range(n_gates):
        params, opt_state, _ = gate_step(params, opt_state, *next(stream))
    cstate = jc.optim.compression_state(opt_state)
    bops = float(jc.joint.relative_bops(cstate, macs, expected=False))
    final_params, recipe, choices = jc.joint.finalize(params, cstate)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    rstate = recipe.init(final_params)
    gated_err = error_pct(lambda x: apply(jax.jit(recipe.apply)(final_params, rstate), x), ds.x_test, ds.y_test)
    log(
        f"Bayesian Bits: {n_gates} steps in {time.perf_counter() - t:.0f}s; {choices}; BOPs {100 * bops:.3f}% of "
        f"float, finalized {gated_err:.2f}% test error"
    )

    recipe = jc.chain(recipe, jc.quant.half_precision())
    t = time.perf_counter()
    params, cstate, tuned_err = fine_tune_recipe(model, final_params, recipe, ds, stream, n_tune, 1e-4)
    log(f"Bayesian Bits fine-tuning: {n_tune} steps in {time.perf_counter() - t:.0f}s, {tuned_err:.2f}% test error")
    if all(c["bits"] > 8 for c in choices.values()):  # every gate stayed on: nothing to export as integers
        ratio, loaded_err, sizes = 1.0, tuned_err, None
    else:
        ratio, loaded_err, sizes = export_and_measure(model, params, recipe, cstate, ds, "bayesian_bits_lenet5")
    return {
        "bayesian_bits_lenet5_relative_bops": round(bops, 5),
        "bayesian_bits_lenet5_error_pts": loaded_err,
        "bayesian_bits_lenet5_finalized_error_pct": gated_err,
        "bayesian_bits_lenet5_fine_tuned_error_pct": tuned_err,
        "bayesian_bits_lenet5_weight_ratio": round(ratio, 1),
        "bayesian_bits_lenet5_sizes": sizes,
        "bayesian_bits_lenet5_layers": {p: {**c, "macs": macs[p]} for p, c in choices.items()},
        "bayesian_bits_lenet5_activation_bits": 8,
        "bayesian_bits_lenet5_strength": args.bb_strength,
        "bayesian_bits_lenet5_steps": {"gates": n_gates, "fine_tune": n_tune},
    }


CLIPQ_CANDIDATES = tuple((p, b) for p in (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99) for b in (6, 4, 3, 2))


def clipq_section(model, params, float_err, ds, args) -> dict:
    """CLIP-Q from the float LeNet-5: (prune fraction, bits) per layer by clip_q_search at each size target
    (validation loss on held-out training images), fine-tuned in parallel, exported."""
    x_val, y_val = jnp.asarray(ds.x_train[-2000:]), jnp.asarray(ds.y_train[-2000:])
    flat = jc.paths.flatten(params)[0]
    kernels = {p: int(np.size(w)) for p, w in flat.items() if p.endswith("kernel")}
    float_bytes = 4 * sum(int(np.size(w)) for w in flat.values())
    loss_of = jax.jit(functools.partial(cross_entropy, model))

    def evaluate(config):
        compressed = dict(flat)
        for p, (fraction, bits) in config.items():
            compressed[p] = jc.joint.clip_q_quantize(flat[p], fraction, bits).dequantize()
        return float(loss_of(jc.paths.unflatten(jax.tree.structure(params), compressed), x_val, y_val))

    steps = 200 if args.quick else max(1, int(args.clipq_epochs * len(ds.x_train) // BATCH))
    runs = []
    for target_ratio in [float(r) for r in args.clipq_targets.split(",")]:
        t = time.perf_counter()
        config, record = jc.joint.clip_q_search(
            evaluate, kernels, target_bytes=float_bytes / target_ratio, candidates=CLIPQ_CANDIDATES
        )
        log(
            f"CLIP-Q search for {target_ratio}x: {record.evaluations} evaluations in "
            f"{time.perf_counter() - t:.0f}s: {config}"
        )
        recipe = jc.chain(jc.joint.clip_q(config), jc.quant.half_precision())
        stream = jc.data.batches(ds.x_train[:-2000], ds.y_train[:-2000], BATCH, seed=args.seed + 4)
        t = time.perf_counter()
        tuned, cstate, err = fine_tune_recipe(model, params, recipe, ds, stream, steps, 2e-4)
        log(f"CLIP-Q fine-tuning ({target_ratio}x): {steps} steps in {time.perf_counter() - t:.0f}s, {err:.2f}% error")
        ratio, loaded_err, sizes = export_and_measure(model, tuned, recipe, cstate, ds, f"clipq_{target_ratio:g}x")
        runs.append(
            {
                "target_ratio": target_ratio,
                "weight_ratio": round(ratio, 1),
                "error_pct": loaded_err,
                "error_delta_pts": round(loaded_err - float_err, 2),
                "config": {p: list(c) for p, c in config.items()},
                "search_evaluations": record.evaluations,
                "sizes": sizes,
            }
        )
    within = [r["weight_ratio"] for r in runs if r["error_delta_pts"] <= 0.2]
    return {
        "clipq_lenet5_weight_ratio": max(within) if within else None,
        "clipq_lenet5_runs": runs,
        "clipq_lenet5_steps": steps,
    }


def zeros_section(args) -> dict:
    """tests/test_zeros_property.py at ``--property-examples``: the hypothesis cases run and those that failed."""
    env = {**os.environ, "JAXCOMPRESS_PROPERTY_EXAMPLES": str(args.property_examples)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
    ]
    t = time.perf_counter()
    run = subprocess.run(
        [*command, "tests/test_zeros_property.py"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    # hypothesis's statistics, per test and phase: "- N passing, M failing, and K invalid test cases"
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+) passing, (\d+) failing", run.stdout)]
    passing, failing = sum(a for a, _ in counts), sum(b for _, b in counts)
    log(
        f"zeros property: {passing} passing, {failing} failing cases in {time.perf_counter() - t:.0f}s "
        f"(rc {run.returncode})"
    )
    return {
        "zeros_invariant_cases": passing + failing,
        "zeros_invariant_failures": failing if run.returncode == 0 else max(failing, 1),
        "zeros_invariant_wall_s": round(time.perf_counter() - t),
    }


def kd_section(teacher, ds, args, steps) -> dict:
    """The same 90%-sparse 4-bit LeNet-300-100 fine-tuned on labels alone and by distillation."""
    student_model = lenet300_100()
    student_params, student_err = load_or_train(
        student_model, ds, steps(args.student_epochs), args.seed, "lenet300", args.cache
    )
    n = steps(args.compress_epochs)
    plain_err, sparsity = compressed_fine_tune(student_model, student_params, ds, n, args.seed)
    kd_err, _ = compressed_fine_tune(
        student_model,
        student_params,
        ds,
        n,
        args.seed,
        teacher=teacher,
        temperature=args.temperature,
        soft_weight=args.soft_weight,
    )
    return {
        "kd_gain_pts": round(plain_err - kd_err, 2),
        "kd_student_error_pct": kd_err,
        "labels_only_student_error_pct": plain_err,
        "student_sparsity": round(sparsity, 4),
        "student_bits": 4,
        "float_lenet300_error_pct": student_err,
        "temperature": args.temperature,
        "soft_weight": args.soft_weight,
    }


SECTIONS = ("kd", "admm", "bb", "clipq", "zeros")


def main() -> int:
    args = parse()
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from {SECTIONS}")
    t0 = time.perf_counter()
    ds = jc.data.mnist(mnist_dir())
    per_epoch = len(ds.x_train) // BATCH
    steps = lambda epochs: 200 if args.quick else max(1, int(epochs * per_epoch))
    lenet5 = LeNet5()
    lenet5_params, lenet5_err = load_or_train(lenet5, ds, steps(args.teacher_epochs), args.seed, "lenet5", args.cache)
    out = {"float_lenet5_error_pct": lenet5_err}
    if "kd" in sections:
        out.update(kd_section((lenet5, {"params": lenet5_params}), ds, args, steps))
    if "admm" in sections:
        out.update(admm_section(lenet5, lenet5_params, lenet5_err, ds, args))
    if "zeros" in sections:
        out.update(zeros_section(args))
    if "clipq" in sections:
        out.update(clipq_section(lenet5, lenet5_params, lenet5_err, ds, args))
    if "bb" in sections:
        out.update(bayesian_bits_section(lenet5, lenet5_params, ds, args))
    not_built = [k for k in NOT_BUILT if k not in out]
    out.update(
        {
            **{k: None for k in not_built},
            "not_built": not_built,
            "sections": sections,
            "quick": args.quick,
            "machine": machine(),
            "wall_s": round(time.perf_counter() - t0),
        }
    )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
