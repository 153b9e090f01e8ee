"""Phases of joint compression: four ways to combine pruning and quantization-aware training (QAT).

Trains a small CNN on scikit-learn's bundled digits (offline), then fine-tunes
copies of it four ways to 75% sparsity and 4-bit weights, each exported to an
integer program and checked to be exactly what was trained:

1. simultaneous: pruning on a schedule and QAT from the first step;
2. prune, then QAT: QAT starts (calibrated on the pruned weights) when the schedule ends, in one run;
3. QAT started mid-run: QAT joins while the pruning schedule is still moving the masks;
4. prune, then QAT with the masks frozen: a second run (new optimizer) on the first run's masks.

    python examples/phases.py [--steps 400]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


def recipes(steps: int, sparsity: float) -> dict:
    """The phase recipes, by name; each a function of the params of the run before (for frozen masks)."""
    half = steps // 2
    gradual = lambda end: jc.prune.magnitude(jc.schedules.polynomial(0.0, sparsity, begin=0, end=end, frequency=10))
    return {
        "simultaneous": jc.chain(gradual(half), jc.quant.symmetric(4)),
        "prune_then_qat": jc.chain(gradual(half), jc.joint.delayed(jc.quant.symmetric(4), start=half)),
        "qat_mid_run": jc.chain(gradual(half), jc.joint.delayed(jc.quant.symmetric(4), start=half // 2)),
    }


def fine_tune(apply_fn, params, recipe, data, steps: int):
    tx = jc.optim.with_compression(optax.adam(optax.cosine_decay_schedule(1e-3, steps)), recipe)
    stream = jc.data.batches(data.x_train, data.y_train, 64, seed=1)
    params, opt_state, _ = jc.train.fit(apply_fn, params, tx, stream, steps, recipe=recipe)
    return params, jc.optim.compression_state(opt_state)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="float training, and each fine-tuning run")
    parser.add_argument("--sparsity", type=float, default=0.75)
    args = parser.parse_args(argv)

    data = jc.data.digits()
    model = CNN()
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    params = model.init(jax.random.key(0), data.x_train[:1])["params"]
    stream = jc.data.batches(data.x_train, data.y_train, 64)
    params, _, _ = jc.train.fit(apply_fn, params, optax.adam(1e-3), stream, args.steps)
    results = {"float": {"accuracy": jc.train.accuracy(apply_fn, params, data.x_test, data.y_test)}}

    runs = recipes(args.steps, args.sparsity)
    # 4. a pruning-only run, then a second run (new optimizer, as from a checkpoint) on its frozen masks
    pruner_only = jc.prune.magnitude(
        jc.schedules.polynomial(0.0, args.sparsity, begin=0, end=args.steps // 2, frequency=10)
    )
    pruned, pruner_state = fine_tune(apply_fn, params, pruner_only, data, args.steps)
    runs["frozen_masks"] = jc.chain(jc.joint.frozen_masks(jc.masks_of(pruner_state)), jc.quant.symmetric(4))

    for name, recipe in runs.items():
        start = pruned if name == "frozen_masks" else params
        steps = args.steps // 2 if name == "frozen_masks" else args.steps
        trained, cstate = fine_tune(apply_fn, start, recipe, data, steps)
        compressed = jax.jit(recipe.apply)(trained, cstate)
        ex = jc.export.export(model, {"params": trained}, recipe, cstate, data.x_test[:64], dispatch="float")
        exported = np.mean(np.asarray(ex(data.x_test)).argmax(-1) == data.y_test)
        kernels = [w for p, w in jc.paths.flatten(compressed)[0].items() if p.endswith("kernel")]
        results[name] = {
            "accuracy": jc.train.accuracy(apply_fn, compressed, data.x_test, data.y_test),
            "exported_accuracy": float(exported),
            "sparsity": float(np.mean([np.mean(np.asarray(w) == 0) for w in kernels])),
            "levels_per_kernel": max(len(np.unique(np.asarray(w)[..., 0])) for w in kernels),
        }
    for name, r in results.items():
        print(f"{name:>15}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return results


if __name__ == "__main__":
    main()
