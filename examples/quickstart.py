"""Quickstart: prune + quantize a Flax CNN jointly while fine-tuning, export int8, deploy.

Trains a small CNN on scikit-learn's bundled digits (offline), fine-tunes it
with a cubic schedule to 80% sparsity and int8 weights, exports the int8 XLA
program to one file and runs the file the way a deployment would.

    python examples/quickstart.py [--steps 600] [--out /tmp/digits.jcx] [--dispatch measure]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcompress as jc


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="steps for each of the two phases")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--out", default=os.path.join(tempfile.mkdtemp(), "digits.jcx"))
    parser.add_argument(
        "--dispatch", default="measure", choices=("measure", "int8", "float"), help="per-layer int8 or float choice"
    )
    args = parser.parse_args(argv)

    data = jc.data.digits()
    model = CNN()
    params = model.init(jax.random.key(0), data.x_train[:1])["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    stream = jc.data.batches(data.x_train, data.y_train, 64)

    # 1. Float training.
    params, _, _ = jc.train.fit(apply_fn, params, optax.adam(1e-3), stream, args.steps)
    float_acc = jc.train.accuracy(apply_fn, params, data.x_test, data.y_test)

    # 2. Joint compression while fine-tuning: the optimizer keeps pruned weights at exactly zero.
    schedule = jc.schedules.polynomial(0.0, args.sparsity, begin=0, end=args.steps // 2, frequency=10)
    recipe = jc.chain(jc.prune.magnitude(schedule), jc.quant.int8())
    tx = jc.optim.with_compression(optax.adamw(5e-4, weight_decay=1e-4), recipe)
    params, opt_state, _ = jc.train.fit(apply_fn, params, tx, stream, args.steps, recipe=recipe)
    cstate = jc.optim.compression_state(opt_state)

    # 3. Export the int8 program and load it back, as a deployment would (JAX + numpy only).
    exported = jc.export.export(model, {"params": params}, recipe, cstate, data.x_test, dispatch=args.dispatch)
    size = exported.save(args.out)
    deployed = jc.export.load(args.out)
    deployed_acc = float(np.mean(np.asarray(deployed(data.x_test)).argmax(-1) == data.y_test))

    float_bytes = sum(np.asarray(w).nbytes for w in jax.tree.leaves(params))
    print(f"float32: accuracy {float_acc:.2%}, {float_bytes:,} bytes of weights")
    print(f"int8 artifact: accuracy {deployed_acc:.2%}, {size:,} bytes ({args.out})")
    for path, info in exported.report["layers"].items():
        print(f"  {path}: {info['compute']}")
    return {"float_accuracy": float_acc, "deployed_accuracy": deployed_acc, "artifact_bytes": size}


if __name__ == "__main__":
    main()
