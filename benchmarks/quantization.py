"""Quantization on LeNet-5 / MNIST: QAT step speed and accuracy of QAT, LSQ, PTQ and k-means.

Everything runs in this one process, batch 128, jitted:

1. a float LeNet-5 (Caffe variant) is trained from scratch (``--float-steps``,
   adam with cosine decay to zero, so that it has converged);
2. speed: the int8 QAT training step (per-channel int8 weights + int8
   dynamic activations on every Conv/Dense input, fake-quantized, adam) over
   the float training step (adam), timed in interleaved rounds after a
   warm-up; the ratio is the median over rounds;
3. accuracy, each from the float model, test error minus float test error in
   percentage points:

   * ``int8_qat``: int8 per-channel weights + int8 dynamic activations,
     fine-tuned ``--qat-steps``;
   * ``w4a8_lsq``: 4-bit LSQ weights (per channel, learned step sizes) + int8
     dynamic activations, fine-tuned ``--lsq-steps``;
   * ``int8_ptq``: int8 per-channel weights + int8 static activations
     calibrated (``--calibration``) on ``--calib-batches`` training batches,
     no training;
   * ``w2_kmeans_fc``: 2-bit k-means codebooks (4 shared values per layer) on
     both Dense layers + int8 per-channel conv weights, codebooks and conv
     weights fine-tuned ``--kmeans-steps``.

Every fine-tuning uses adam with a cosine decay from ``--finetune-lr``. As a
control, the float model is fine-tuned the same way for ``--qat-steps``
(``float_finetuned_error_pct``): fine-tuning alone does not move the error.

The last printed line is one JSON object. Defaults take about 6 to 8 minutes
on 2 CPU cores; ``--quick`` is a smoke run (a minute, meaningless figures).

    python benchmarks/quantization.py [--float-steps 1500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import log, machine, mnist_dir

import jaxcompress as jc
from jaxcompress import data
from jaxcompress._src.quant.calibration import METHODS as CALIBRATION_METHODS
from jaxcompress.models import LeNet5
from jaxcompress.train import cross_entropy

BATCH = 128


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float-steps", type=int, default=1500)
    p.add_argument("--qat-steps", type=int, default=400)
    p.add_argument("--lsq-steps", type=int, default=800)
    p.add_argument("--kmeans-steps", type=int, default=600)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--calibration", default="percentile", choices=CALIBRATION_METHODS)
    p.add_argument("--timing-rounds", type=int, default=15)
    p.add_argument("--timing-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.float_steps, args.qat_steps, args.lsq_steps, args.kmeans_steps = 30, 5, 5, 5
        args.timing_rounds, args.timing_steps, args.calib_batches = 2, 1, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    ds = data.mnist(mnist_dir())
    model = LeNet5()
    params = model.init(jax.random.key(args.seed), jnp.zeros((1, 28, 28, 1)))["params"]
    stream = data.batches(ds.x_train, ds.y_train, BATCH, seed=args.seed)

    def forward(p, x):
        return model.apply({"params": p}, x)

    def error_pct(recipe, p, cstate, *, activations: bool) -> float:
        @jax.jit
        def predict(p, x):
            q = recipe.apply(p, cstate) if recipe is not None else p
            if activations:
                with jc.quant.quantize_activations(cstate):
                    return jnp.argmax(forward(q, x), -1)
            return jnp.argmax(forward(q, x), -1)

        correct = 0
        for i in range(0, len(ds.x_test), 1000):
            correct += int(np.sum(np.asarray(predict(p, ds.x_test[i : i + 1000])) == ds.y_test[i : i + 1000]))
        return 100.0 * (1.0 - correct / len(ds.x_test))

    # -- float baseline -------------------------------------------------------------------------------------
    float_tx = optax.adam(optax.cosine_decay_schedule(args.lr, args.float_steps))

    @jax.jit
    def float_step(p, opt_state, x, y):
        loss, g = jax.value_and_grad(lambda p: cross_entropy(forward(p, x), y))(p)
        updates, opt_state = float_tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    t0 = time.perf_counter()
    opt_state = float_tx.init(params)
    for i in range(args.float_steps):
        params, opt_state, loss = float_step(params, opt_state, *next(stream))
        if i % 250 == 0:
            log(f"float step {i}: loss {float(loss):.4f}")
    float_params = params
    float_err = error_pct(None, float_params, None, activations=False)
    log(f"float: {float_err:.2f}% test error ({time.perf_counter() - t0:.0f}s)")

    # -- QAT training steps -----------------------------------------------------------------------------------
    def make_qat(recipe, *, activations: bool, lr, learned_lr=None):
        learned_tx = optax.adam(learned_lr) if learned_lr is not None else None
        tx = jc.optim.with_compression(optax.adam(lr), recipe, learned_optimizer=learned_tx)

        def loss_fn(p, cstate, x, y):
            q = recipe.apply(p, cstate)
            if activations:
                with jc.quant.quantize_activations(cstate):
                    return cross_entropy(forward(q, x), y)
            return cross_entropy(forward(q, x), y)

        grad_fn = jc.optim.value_and_grad(loss_fn)

        @jax.jit
        def step(p, opt_state, x, y):
            loss, grads, learned_grads = grad_fn(p, jc.optim.compression_state(opt_state), x, y)
            updates, opt_state = tx.update(grads, opt_state, p, learned_grads=learned_grads)
            return optax.apply_updates(p, updates), opt_state, loss

        return tx, step

    def finetune(name, recipe, steps, *, activations=True, learned=False):
        t = time.perf_counter()
        schedule = optax.cosine_decay_schedule(args.finetune_lr, max(steps, 1))
        tx, step = make_qat(recipe, activations=activations, lr=schedule, learned_lr=schedule if learned else None)
        p, opt_state = float_params, tx.init(float_params)
        for i in range(steps):
            p, opt_state, loss = step(p, opt_state, *next(stream))
            if i % 200 == 0:
                log(f"{name} step {i}: loss {float(loss):.4f}")
        cstate = jc.optim.compression_state(opt_state)
        err = error_pct(recipe, p, cstate, activations=activations)
        log(f"{name}: {err:.2f}% test error ({time.perf_counter() - t:.0f}s)")
        return err, p, cstate

    # -- speed: int8 QAT step over float step, interleaved ---------------------------------------------------
    int8_recipe = jc.chain(jc.quant.int8(), jc.quant.activations(8))
    timing_tx = optax.adam(args.lr)

    @jax.jit
    def float_timing_step(p, opt_state, x, y):
        loss, g = jax.value_and_grad(lambda p: cross_entropy(forward(p, x), y))(p)
        updates, opt_state = timing_tx.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    qat_tx, qat_step = make_qat(int8_recipe, activations=True, lr=args.lr)
    timing_batches = [next(stream) for _ in range(args.timing_steps)]
    states = {
        "float": (float_timing_step, float_params, timing_tx.init(float_params)),
        "qat": (qat_step, float_params, qat_tx.init(float_params)),
    }

    def timed(name: str) -> float:
        step, p, s = states[name]
        start = time.perf_counter()
        for x, y in timing_batches:
            p, s, loss = step(p, s, x, y)
        jax.block_until_ready((p, s, loss))
        states[name] = (step, p, s)
        return (time.perf_counter() - start) / len(timing_batches)

    for name in states:  # warm-up: compile and run a few steps
        timed(name)
        timed(name)
    float_times, qat_times = [], []
    for r in range(args.timing_rounds):
        first, second = ("float", "qat") if r % 2 == 0 else ("qat", "float")
        t = {first: timed(first), second: timed(second)}
        float_times.append(t["float"])
        qat_times.append(t["qat"])
    ratio = statistics.median(q / f for q, f in zip(qat_times, float_times, strict=True))
    log(
        f"step time: float {1e3 * statistics.median(float_times):.1f} ms, "
        f"int8 QAT {1e3 * statistics.median(qat_times):.1f} ms, ratio {ratio:.3f}"
    )

    # -- accuracy -----------------------------------------------------------------------------------------------
    control_err, _, _ = finetune("float fine-tuned (control)", jc.identity(), args.qat_steps, activations=False)
    int8_err, _, _ = finetune("int8 QAT", int8_recipe, args.qat_steps)

    lsq_recipe = jc.chain(jc.quant.lsq(4), jc.quant.activations(8))
    lsq_err, _, _ = finetune("W4A8 LSQ", lsq_recipe, args.lsq_steps, learned=True)

    t = time.perf_counter()
    ptq_recipe = jc.chain(jc.quant.int8(), jc.quant.activations(8, mode="static"))
    ptq_state = ptq_recipe.init(float_params)
    calib = [ds.x_train[i * BATCH : (i + 1) * BATCH] for i in range(args.calib_batches)]
    ptq_state = jc.quant.calibrate(
        forward, ptq_recipe.apply(float_params, ptq_state), ptq_state, calib, method=args.calibration
    )
    ptq_err = error_pct(ptq_recipe, float_params, ptq_state, activations=True)
    log(f"int8 PTQ ({args.calibration}): {ptq_err:.2f}% test error ({time.perf_counter() - t:.0f}s)")

    kmeans_recipe = jc.chain(jc.quant.kmeans(2, rule="Dense.*kernel"), jc.quant.int8(rule="Conv.*kernel"))
    kmeans_err, kmeans_params, kmeans_state = finetune(
        "W2 k-means fc + int8 conv",
        kmeans_recipe,
        args.kmeans_steps,
        activations=False,
        learned=True,
    )
    codebooks = {
        p: int(np.unique(np.asarray(iw.dequantize())).size)
        for p, iw in jc.integer_weights(kmeans_recipe, kmeans_params, kmeans_state).items()
        if iw.codebook is not None
    }

    result = {
        "qat_step_over_float_step": round(ratio, 3),
        "int8_qat_error_delta_pts": round(int8_err - float_err, 2),
        "w4a8_lsq_error_delta_pts": round(lsq_err - float_err, 2),
        "int8_ptq_error_delta_pts": round(ptq_err - float_err, 2),
        "w2_kmeans_fc_error_delta_pts": round(kmeans_err - float_err, 2),
        "float_error_pct": round(float_err, 2),
        "float_finetuned_error_pct": round(control_err, 2),
        "float_step_ms": round(1e3 * statistics.median(float_times), 1),
        "qat_step_ms": round(1e3 * statistics.median(qat_times), 1),
        "kmeans_distinct_values_per_fc_layer": codebooks,
        "settings": {k: v for k, v in vars(args).items()},
        **machine(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
