"""Pruning benchmark: mask-refresh and masked-step cost, mask memory, MNIST accuracy.

Run from the repository root (about 6 minutes on 2 CPU cores; ``--quick`` for
about 2, ``--skip-accuracy`` for the timings alone in under a minute)::

    python benchmarks/pruning.py [--quick] [--skip-accuracy] [--lenet300-epochs N] ...

Everything is measured side by side in one process, on LeNet-300-100
(784-300-100-10) and the Caffe LeNet-5 (431K weights), batch 128, jitted:

* ``mask_refresh_over_float_step``: one global magnitude-mask refresh over all
  kernels (score, exact sort-free threshold, bit packing) / one float training
  step (Adam). Warm-up, then the median of interleaved runs; the worse model.
* ``masked_step_over_float_step``: a training step through
  ``jc.optim.with_compression`` with the masks enforced (no refresh on that
  step) / the float step; the worse model. It is the step ``train.fit`` runs
  between refreshes (``steady=True``: no refresh branch in the program); the
  same step with the refresh decided by a traced ``lax.cond`` (what a single
  program serving every step costs) is reported per model as
  ``*_masked_step_with_traced_refresh_over_float_step``.
* ``mask_state_bytes_over_param_bytes``: bytes of ``MagnitudeState`` / bytes of
  all params; the worse model.
* ``lenet300_mnist_error_delta_pts``: test error after gradual (cubic) magnitude
  pruning to ``lenet300_mnist_sparsity`` of all kernels, with fine-tuning, minus
  the dense baseline's test error, in percentage points; both trained here.
  The pruned error is the mean of ``--lenet300-seeds`` fine-tuning runs (batch
  orders) from the same dense model: one run moves by about 0.1 point.
* ``nm24_lenet5_error_delta_pts``: the same for 2:4 sparsity (every kernel but
  the first conv, whose single input channel cannot form groups of 4) on LeNet-5.

The last printed line is one JSON object. Ratios are taken in one process but
still move with other load on the machine (``load_average_1min`` records it):
on a shared 2-core machine rerun at a quiet moment before comparing figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc
from jaxcompress import data, models, train
from jaxcompress._src.prune import threshold

BATCH = 128


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nbytes(tree: Any) -> int:
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- timing


def time_model(name: str, model, x: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, float]:
    """Float step, masked step and global mask refresh, interleaved; medians in microseconds."""
    params = model.init(jax.random.key(0), x[:1])["params"]
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)

    float_tx = optax.adam(1e-3)
    float_step = train.make_train_step(apply_fn, float_tx)
    float_state = float_tx.init(params)

    recipe = jc.prune.magnitude(0.9, scope="global")  # one-shot at the first update
    masked_tx = jc.optim.with_compression(optax.adam(1e-3), recipe)
    masked_step = train.make_train_step(apply_fn, masked_tx, recipe)
    masked_params, masked_state, _ = masked_step(params, masked_tx.init(params), x, y)  # the refresh happens here
    # masked_state now has count 1: every timed call enforces the masks without
    # refreshing. train.fit runs such steps as the steady program (no refresh
    # branch); the program with the traced refresh cond is timed too.
    assert not recipe.refreshes_at(1)

    refresh_state = recipe.init(params)  # count 0: every timed call refreshes
    refresh = jax.jit(lambda p, s: recipe.update(p, s).masks)

    calls = {
        "float_step": lambda: float_step(params, float_state, x, y),
        # The same float step on the pruned params: XLA:CPU runs it a few % faster than on dense ones.
        "float_step_on_pruned": lambda: float_step(masked_params, float_state, x, y),
        "masked_step": lambda: masked_step(masked_params, masked_state, x, y, steady=True),
        "masked_step_traced_refresh": lambda: masked_step(masked_params, masked_state, x, y),
        "mask_refresh": lambda: refresh(params, refresh_state),
    }
    for call in calls.values():  # compile and warm up
        for _ in range(20):
            jax.block_until_ready(call())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[key].append(time.perf_counter() - start)
    med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}

    kernels = [leaf for path, leaf in jc.paths.flatten(params)[0].items() if leaf.ndim >= 2]
    n = jnp.array([round(0.9 * sum(k.size for k in kernels))])

    def search_passes(ks):  # the search the refresh runs (threshold.select with score=|w|)
        first = threshold.sample_pivots([ks], n, score=jnp.abs)
        keys_of = lambda g, i, x: threshold.sortable_keys(jnp.abs(x))
        return threshold.kth_keys([ks], n, keys_of=keys_of, first_pivots=first)[3]

    passes = jax.jit(search_passes)(kernels)
    state_bytes = nbytes(recipe.init(params))
    result = {
        f"{name}_float_step_us": round(med["float_step"], 1),
        f"{name}_masked_step_us": round(med["masked_step"], 1),
        f"{name}_mask_refresh_us": round(med["mask_refresh"], 1),
        f"{name}_mask_refresh_over_float_step": round(med["mask_refresh"] / med["float_step"], 3),
        f"{name}_masked_step_over_float_step": round(med["masked_step"] / med["float_step"], 3),
        f"{name}_masked_step_over_float_step_on_pruned_params": round(
            med["masked_step"] / med["float_step_on_pruned"], 3
        ),
        f"{name}_masked_step_with_traced_refresh_over_float_step": round(
            med["masked_step_traced_refresh"] / med["float_step"], 3
        ),
        f"{name}_mask_state_bytes_over_param_bytes": round(state_bytes / nbytes(params), 4),
        f"{name}_refresh_search_passes": int(passes),
        f"{name}_pruned_weights": int(sum(k.size for k in kernels)),
    }
    log(f"[timing] {name}: {result}")
    return result


# ----------------------------------------------------------------------------- accuracy


def error_pct(apply_fn, params, ds) -> float:
    return 100.0 * (1.0 - train.accuracy(apply_fn, params, ds.x_test, ds.y_test))


def cosine_adam(lr: float, steps: int) -> optax.GradientTransformation:
    return optax.adam(optax.cosine_decay_schedule(lr, steps))


def train_dense(model, ds, epochs: int, lr: float, seed: int):
    steps = epochs * (len(ds.x_train) // BATCH)
    params = model.init(jax.random.key(seed), ds.x_train[:1])["params"]
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)
    stream = data.batches(ds.x_train, ds.y_train, BATCH, seed=seed)
    params, _, _ = train.fit(apply_fn, params, cosine_adam(lr, steps), stream, steps)
    return params, apply_fn


def fine_tune(apply_fn, params, ds, recipe, epochs: int, lr: float, seed: int):
    steps = epochs * (len(ds.x_train) // BATCH)
    tx = jc.optim.with_compression(cosine_adam(lr, steps), recipe)
    stream = data.batches(ds.x_train, ds.y_train, BATCH, seed=seed + 1)
    params, opt_state, _ = train.fit(apply_fn, params, tx, stream, steps, recipe=recipe)
    cstate = jc.optim.compression_state(opt_state)
    return recipe.apply(params, cstate), cstate


def kernel_sparsity(params, rule=jc.paths.KERNELS) -> float:
    flat = jc.paths.flatten(params)[0]
    chosen = [flat[p] for p in jc.paths.select(rule, params)]
    return sum(int(jnp.sum(w == 0)) for w in chosen) / sum(w.size for w in chosen)


def lenet300_accuracy(ds, args) -> dict[str, float]:
    model = models.lenet300_100()
    t0 = time.time()
    dense, apply_fn = train_dense(model, ds, args.lenet300_epochs, 1e-3, seed=0)
    dense_err = error_pct(apply_fn, dense, ds)
    log(f"[lenet300] dense error {dense_err:.2f}% ({time.time() - t0:.0f}s)")
    steps = args.lenet300_prune_epochs * (len(ds.x_train) // BATCH)
    schedule = jc.schedules.polynomial(0.0, args.sparsity, begin=0, end=int(0.6 * steps), frequency=100)
    recipe = jc.prune.magnitude(schedule, scope="global")
    # One run's test error moves by about 0.1 point with the batch order alone,
    # the size of the goal: average fine-tuning runs from the same dense model.
    errors, sparsities = [], []
    for seed in range(args.lenet300_seeds):
        pruned, _ = fine_tune(apply_fn, dense, ds, recipe, args.lenet300_prune_epochs, 5e-4, seed=seed)
        errors.append(error_pct(apply_fn, pruned, ds))
        sparsities.append(kernel_sparsity(pruned))
        elapsed = time.time() - t0
        log(f"[lenet300] seed {seed}: pruned to {sparsities[-1]:.4f}: error {errors[-1]:.2f}% ({elapsed:.0f}s)")
    pruned_err = float(np.mean(errors))
    return {
        "lenet300_mnist_error_delta_pts": round(pruned_err - dense_err, 2),
        "lenet300_mnist_sparsity": round(min(sparsities), 4),
        "lenet300_dense_error_pct": round(dense_err, 2),
        "lenet300_pruned_error_pct": round(pruned_err, 2),
        "lenet300_pruned_error_pct_per_seed": [round(e, 2) for e in errors],
    }


def lenet5_nm_accuracy(ds, args) -> dict[str, float]:
    model = models.LeNet5()
    t0 = time.time()
    dense, apply_fn = train_dense(model, ds, args.lenet5_epochs, 1e-3, seed=0)
    dense_err = error_pct(apply_fn, dense, ds)
    log(f"[lenet5] dense error {dense_err:.2f}% ({time.time() - t0:.0f}s)")
    rule = jc.paths.regex(r"^(Conv_1|Dense_\d)/kernel$")  # Conv_0 has 1 input channel: no groups of 4
    steps = args.lenet5_prune_epochs * (len(ds.x_train) // BATCH)
    schedule = jc.schedules.polynomial(0.0, 0.5, begin=0, end=int(0.4 * steps), frequency=50)
    recipe = jc.prune.n_m(2, 4, schedule, rule=rule)
    pruned, _ = fine_tune(apply_fn, dense, ds, recipe, args.lenet5_prune_epochs, 5e-4, seed=0)
    pruned_err = error_pct(apply_fn, pruned, ds)
    flat = jc.paths.flatten(pruned)[0]
    valid = all(
        bool(jnp.all(jnp.sum(jnp.moveaxis(flat[p] != 0, -2, -1).reshape(-1, 4), axis=-1) <= 2))
        for p in jc.paths.select(rule, pruned)
    )
    covered = sum(flat[p].size for p in jc.paths.select(rule, pruned)) / sum(
        w.size for w in flat.values() if w.ndim >= 2
    )
    log(f"[lenet5] 2:4 (valid {valid}): error {pruned_err:.2f}% ({time.time() - t0:.0f}s)")
    return {
        "nm24_lenet5_error_delta_pts": round(pruned_err - dense_err, 2),
        "lenet5_dense_error_pct": round(dense_err, 2),
        "lenet5_nm24_error_pct": round(pruned_err, 2),
        "lenet5_nm24_groups_valid": valid,
        "lenet5_nm24_kernel_fraction": round(covered, 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds (about 2 minutes)")
    parser.add_argument("--skip-accuracy", action="store_true", help="timings and memory only")
    parser.add_argument("--rounds", type=int, default=300, help="interleaved timing rounds per model")
    parser.add_argument("--sparsity", type=float, default=0.92, help="LeNet-300-100 target sparsity")
    parser.add_argument("--lenet300-epochs", type=int, default=20)
    parser.add_argument("--lenet300-prune-epochs", type=int, default=20)
    parser.add_argument("--lenet300-seeds", type=int, default=3, help="fine-tuning runs averaged")
    parser.add_argument("--lenet5-epochs", type=int, default=5)
    parser.add_argument("--lenet5-prune-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 100)
        args.lenet300_epochs, args.lenet300_prune_epochs, args.lenet300_seeds = 4, 4, 1
        args.lenet5_epochs, args.lenet5_prune_epochs = 2, 2

    ds = data.mnist()
    x, y = ds.x_train[:BATCH], ds.y_train[:BATCH]
    result: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    timings = {**time_model("lenet300", models.lenet300_100(), x, y, args.rounds)}
    timings.update(time_model("lenet5", models.LeNet5(), x, y, args.rounds))
    for key in ("mask_refresh_over_float_step", "masked_step_over_float_step", "mask_state_bytes_over_param_bytes"):
        result[key] = max(timings[f"lenet300_{key}"], timings[f"lenet5_{key}"])
    if not args.skip_accuracy:
        result.update(lenet300_accuracy(ds, args))
        result.update(lenet5_nm_accuracy(ds, args))
    result.update(timings)
    result.update(
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
        batch=BATCH,
        timing_rounds=args.rounds,
        quick=bool(args.quick),
        load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],  # other processes on this machine
    )
    return result


if __name__ == "__main__":
    out = main()
    print(json.dumps(out, sort_keys=False))
    sys.exit(0 if all(math.isfinite(v) for v in out.values() if isinstance(v, float)) else 1)
