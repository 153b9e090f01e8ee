"""Pruning benchmark: mask-refresh and masked-step cost, mask memory, MNIST accuracy.

Run from the repository root (about 6 minutes on 2 CPU cores; ``--quick`` for
about 2, ``--skip-accuracy`` for the timings alone in under a minute)::

    python benchmarks/pruning.py [--quick] [--skip-accuracy] [--lenet300-epochs N] ...

MNIST comes from ``$JAXCOMPRESS_MNIST_DIR`` (default ``../shared/data/mnist``).
Everything is measured side by side in one process, on LeNet-300-100
(784-300-100-10) and the Caffe LeNet-5 (431K weights), batch 128, jitted:

* ``mask_refresh_over_float_step``: one global magnitude-mask refresh over all
  kernels (score, exact sort-free threshold, bit packing) / one float training
  step (Adam). Warm-up, then the median of interleaved runs; the worse model.
* ``masked_step_over_float_step``: the README's plain training step (loss on
  ``recipe.apply(params, cstate)``, ``tx.update`` of
  ``jc.optim.with_compression``, ``optax.apply_updates``; the mask refresh
  under its ``lax.cond``, not taken) / the float step; the worse model. Its
  parts are timed beside it per model: the same step with masks frozen (no
  refresh cond in the program), and with neither the cond nor the forward
  pass's re-masking select.
* ``mask_state_bytes_over_param_bytes``: bytes of the pruner's state / bytes of
  all params; the worse model.
* ``lenet300_mnist_error_delta_pts``: test error after gradual (cubic) magnitude
  pruning to ``lenet300_mnist_sparsity`` of all kernels, with fine-tuning, minus
  the dense baseline's test error, in percentage points; both trained here.
  The pruned error is the mean of ``--lenet300-seeds`` fine-tuning runs (batch
  orders) from the same dense model: one run moves by about 0.1 point.
* ``nm24_lenet5_error_delta_pts``: the same for 2:4 sparsity (every kernel but
  the first conv, whose single input channel cannot form groups of 4) on LeNet-5.

The last printed line is one JSON object, with the machine (CPU flags, load).
Ratios are taken in one process but still move with other load on the machine:
on a shared 2-core machine rerun at a quiet moment before comparing figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import interleaved, log, machine, mnist_dir

import jaxcompress as jc
from jaxcompress import data, models, train
from jaxcompress._src.prune import threshold

BATCH = 128


def nbytes(tree: Any) -> int:
    return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))


def frozen(recipe: jc.Transform) -> jc.Transform:
    """``recipe`` with its masks frozen: ``update`` leaves the state alone (no refresh cond in the program)."""
    return jc.Transform(recipe.init, lambda params, state, grads=None, **extra: state, recipe.apply)


def plain_step(model, tx, forward):
    """The README's loop body, with the forward view of the params given by ``forward(params, cstate)``."""

    @jax.jit
    def step(params, opt_state, x, y):
        cstate = jc.optim.compression_state(opt_state)

        def loss(p):
            logits = model.apply({"params": forward(p, cstate)}, x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


# ----------------------------------------------------------------------------- timing


def time_model(name: str, model, x: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, float]:
    """Float step, masked steps and global mask refresh, interleaved; medians in microseconds."""
    params = model.init(jax.random.key(0), x[:1])["params"]
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)

    float_tx = optax.adam(1e-3)
    float_step = train.make_train_step(apply_fn, float_tx)
    float_state = float_tx.init(params)

    recipe = jc.prune.magnitude(0.9, scope="global")  # one-shot at the first update
    masked_tx = jc.optim.with_compression(optax.adam(1e-3), recipe)
    masked_step = plain_step(model, masked_tx, recipe.apply)
    masked_params, masked_state = masked_step(params, masked_tx.init(params), x, y)  # the refresh happens here
    # masked_state now has count 1: every timed call enforces the masks; the refresh cond is not taken.
    still = frozen(recipe)
    frozen_tx = jc.optim.with_compression(optax.adam(1e-3), still)
    frozen_step = plain_step(model, frozen_tx, still.apply)
    unmasked_step = plain_step(model, frozen_tx, lambda p, c: p)  # params already zero outside the masks

    refresh_state = recipe.init(params)  # count 0: every timed call refreshes
    refresh = jax.jit(lambda p, s: recipe.update(p, s).masks)

    calls = {
        "float_step": lambda: float_step(params, float_state, x, y),
        "masked_step": lambda: masked_step(masked_params, masked_state, x, y),
        "masked_step_frozen_masks": lambda: frozen_step(masked_params, masked_state, x, y),
        "masked_step_frozen_unmasked_forward": lambda: unmasked_step(masked_params, masked_state, x, y),
        "mask_refresh": lambda: refresh(params, refresh_state),
    }
    med = {k: v * 1e6 for k, v in interleaved(calls, rounds).items()}

    kernels = [leaf for path, leaf in jc.paths.flatten(params)[0].items() if leaf.ndim >= 2]
    n = jnp.array([round(0.9 * sum(k.size for k in kernels))])

    def search_passes(ks):  # the search the refresh runs (threshold.select with score=|w|)
        first = threshold.sample_pivots([ks], n, score=jnp.abs)
        keys_of = lambda g, i, x: threshold.sortable_keys(jnp.abs(x))
        return threshold.kth_keys([ks], n, keys_of=keys_of, first_pivots=first)[3]

    passes = jax.jit(search_passes)(kernels)
    state_bytes = nbytes(recipe.init(params))
    ratio = lambda key: round(med[key] / med["float_step"], 3)
    result = {
        f"{name}_float_step_us": round(med["float_step"], 1),
        f"{name}_masked_step_us": round(med["masked_step"], 1),
        f"{name}_mask_refresh_us": round(med["mask_refresh"], 1),
        f"{name}_mask_refresh_over_float_step": ratio("mask_refresh"),
        f"{name}_masked_step_over_float_step": ratio("masked_step"),
        f"{name}_masked_step_frozen_masks_over_float_step": ratio("masked_step_frozen_masks"),
        f"{name}_masked_step_frozen_unmasked_forward_over_float_step": ratio("masked_step_frozen_unmasked_forward"),
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

    ds = data.mnist(mnist_dir())
    x, y = ds.x_train[:BATCH], ds.y_train[:BATCH]
    result: dict[str, Any] = {}
    before = machine()
    timings = {**time_model("lenet300", models.lenet300_100(), x, y, args.rounds)}
    timings.update(time_model("lenet5", models.LeNet5(), x, y, args.rounds))
    for key in ("mask_refresh_over_float_step", "masked_step_over_float_step", "mask_state_bytes_over_param_bytes"):
        result[key] = max(timings[f"lenet300_{key}"], timings[f"lenet5_{key}"])
    if not args.skip_accuracy:
        result.update(lenet300_accuracy(ds, args))
        result.update(lenet5_nm_accuracy(ds, args))
    result.update(timings)
    result.update(
        batch=BATCH,
        timing_rounds=args.rounds,
        quick=bool(args.quick),
        **machine(),
        load_average_1min_before=before["load_average_1min"],  # other processes on this machine
    )
    return result


if __name__ == "__main__":
    out = main()
    print(json.dumps(out, sort_keys=False))
    sys.exit(0 if all(math.isfinite(v) for v in out.values() if isinstance(v, float)) else 1)
