"""Joint compression in training (issue 15): what distillation gives a compressed student, on MNIST.

    python benchmarks/joint.py            # about 15 minutes on 2 cores
    python benchmarks/joint.py --quick    # a smoke run (a few hundred steps per phase)

Built so far: knowledge distillation. A float LeNet-5 teacher and a float
LeNet-300-100 are trained here; the LeNet-300-100 is then fine-tuned into a
90%-sparse (gradual magnitude pruning) 4-bit (symmetric, per channel) student
twice, from the same weights, on the same batches: once on the labels alone,
once with ``jc.distill.distillation`` (soft targets at temperature 4 mixed with
the labels). ``kd_gain_pts`` is the test error without distillation minus the
test error with it (goal > 0.1). The issue's ADMM, Bayesian Bits, CLIP-Q and
property-case keys are printed as null: those methods are not built yet.

The last line printed is one JSON object with the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import log, machine, mnist_dir

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


def main() -> int:
    args = parse()
    t0 = time.perf_counter()
    ds = jc.data.mnist(mnist_dir())
    per_epoch = len(ds.x_train) // BATCH
    steps = lambda epochs: 200 if args.quick else max(1, int(epochs * per_epoch))
    teacher_model, student_model = LeNet5(), lenet300_100()
    teacher_params, teacher_err = train_float(teacher_model, ds, steps(args.teacher_epochs), args.seed, "teacher")
    student_params, student_err = train_float(student_model, ds, steps(args.student_epochs), args.seed, "student")
    n = steps(args.compress_epochs)
    plain_err, sparsity = compressed_fine_tune(student_model, student_params, ds, n, args.seed)
    kd_err, _ = compressed_fine_tune(
        student_model,
        student_params,
        ds,
        n,
        args.seed,
        teacher=(teacher_model, {"params": teacher_params}),
        temperature=args.temperature,
        soft_weight=args.soft_weight,
    )
    out = {
        "kd_gain_pts": round(plain_err - kd_err, 2),
        "kd_student_error_pct": kd_err,
        "labels_only_student_error_pct": plain_err,
        "student_sparsity": round(sparsity, 4),
        "student_bits": 4,
        "teacher_lenet5_error_pct": teacher_err,
        "float_lenet300_error_pct": student_err,
        "temperature": args.temperature,
        "soft_weight": args.soft_weight,
        **{k: None for k in NOT_BUILT},
        "not_built": NOT_BUILT,
        "quick": args.quick,
        "machine": machine(),
        "wall_s": round(time.perf_counter() - t0),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
