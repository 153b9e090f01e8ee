"""Joint pruning + int8 QAT fine-tuning, sharded over every device of every process, resumable.

The entry point `pod.py launch` starts on every worker (one process per host):

    python tpu_scripts/train_sharded.py --checkpoint-dir gs://bucket/run --steps 2000     # TPU VM: auto-detected
    python tpu_scripts/train_sharded.py --coordinator host0:1234 --num-processes 2 --process-id 0 ...  # elsewhere

Every process builds the same global mesh (``--mesh``, default FSDP over all
devices), feeds only its own rows of each global batch, and runs the same
jitted step: global magnitude pruning to ``--sparsity`` with int8 weights and
int8 activations, SGD with momentum. Params, optimizer state (with the
compression state) and the PRNG key are checkpointed with orbax every
``--save-every`` steps; a restarted run resumes from the newest good
checkpoint, bit for bit, on whatever mesh it now has. The data is a
deterministic stream (synthetic, or MNIST with ``--mnist DIR``) indexed by the
step, so resuming needs only the step. ``--output`` writes the final params and
masks (``.npz``, process 0, atomically).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", help="host:port of process 0 (not needed on TPU VMs and SLURM)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--auto-distributed", action="store_true", help="detect the cluster (TPU VM, SLURM)")
    parser.add_argument("--mesh", default="fsdp=-1", help="mesh axes, slowest first, e.g. data=-1,fsdp=4")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--hidden", default="300,100", help="hidden layer widths (LeNet-300-100 by default)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist", help="directory of MNIST idx files (default: a synthetic stream)")
    parser.add_argument("--checkpoint-dir", help="orbax checkpoints (shared by every process); resume from here")
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--output", help=".npz of the final params and masks (written by process 0)")
    args = parser.parse_args(argv)
    distributed = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in distributed) and not all(v is not None for v in distributed):
        parser.error("give all of --coordinator, --num-processes and --process-id, or none")
    return args


def mesh_axes(text: str) -> dict[str, int]:
    axes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        axes[name.strip()] = int(size)
    return axes


class Stream:
    """Global batch ``i`` of a deterministic stream: every process computes the same rows, keeps its own."""

    def __init__(self, batch_size: int, seed: int, mnist: str | None):
        self.batch_size, self.seed = batch_size, seed
        if mnist:
            import jaxcompress as jc

            data = jc.data.mnist(mnist)
            self.x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
            self.y = data.y_train.astype(np.int32)
        else:  # a fixed random teacher labels Gaussian inputs
            rng = np.random.default_rng(seed)
            self.teacher = rng.normal(size=(784, 10)).astype(np.float32)
            self.x = self.y = None

    def batch(self, step: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        if self.x is None:
            x = np.random.default_rng([self.seed, step]).normal(size=(self.batch_size, 784)).astype(np.float32)
            y = np.argmax(x @ self.teacher, axis=1).astype(np.int32)
        else:
            epoch, offset = divmod(step * self.batch_size, len(self.x))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
            index = order[np.arange(offset, offset + self.batch_size) % len(self.x)]
            x, y = self.x[index], self.y[index]
        return x[rows], y[rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    import jaxcompress as jc

    if args.auto_distributed or args.num_processes is not None:
        jc.train.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    log = lambda *a: print(f"[process {jax.process_index()}]", *a, flush=True)
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jc.train.distributed.global_mesh(mesh_axes(args.mesh))
    log(f"{jax.process_count()} processes, {jax.device_count()} devices, mesh {dict(mesh.shape)}")
    model = jc.models.MLP(tuple(int(h) for h in args.hidden.split(",")), 10)
    recipe = jc.chain(jc.prune.magnitude(args.sparsity, scope="global"), jc.quant.int8(), jc.quant.activations(8))
    tx = jc.optim.with_compression(optax.sgd(args.lr, momentum=0.9), recipe)
    apply_fn = lambda p, x: model.apply({"params": p}, x)

    make_params = lambda: model.init(jax.random.key(args.seed), jnp.ones((1, 784)))["params"]
    abstract = jax.eval_shape(make_params)
    param_sh = jc.train.fsdp_shardings(abstract, mesh, list(mesh.shape)[-1])
    placed = _with(abstract, param_sh)
    init_params = jax.jit(make_params, out_shardings=param_sh)
    abstract_opt = jax.eval_shape(tx.init, placed)
    opt_sh = jc.train.state_shardings(abstract_opt, placed)
    replicated = NamedSharding(mesh, P())
    shardings = {"params": param_sh, "opt_state": opt_sh, "key": replicated}

    train_step = jc.train.make_train_step(apply_fn, tx, recipe)

    def step_fn(state, x, y):
        key, noise_key = jax.random.split(state["key"])
        x = x + 0.01 * jax.random.normal(noise_key, x.shape, x.dtype)  # input noise: the key is training state
        params, opt_state, loss = train_step(state["params"], state["opt_state"], x, y)
        return {"params": params, "opt_state": opt_state, "key": key}, loss

    step_fn = jax.jit(step_fn, out_shardings=(shardings, replicated), donate_argnums=0)

    ckpt = jc.train.Checkpoints(args.checkpoint_dir, keep=args.keep) if args.checkpoint_dir else None
    key = jax.jit(lambda: jax.random.key(args.seed + 1), out_shardings=replicated)()
    like = {"params": placed, "opt_state": _with(abstract_opt, opt_sh), "key": key}
    restored = ckpt.restore(like) if ckpt else None
    if restored is not None:
        state, start = restored.state, restored.step
        log(f"resumed from step {start}")
    else:
        params = init_params()
        state = {"params": params, "opt_state": jc.train.init_sharded(tx.init, params), "key": key}
        start = 0

    stream = Stream(args.batch_size, args.seed, args.mnist)
    batch_sh = NamedSharding(mesh, P(tuple(mesh.shape)))
    rows = jc.train.distributed.process_rows(args.batch_size, batch_sh)
    for step in range(start, args.steps):
        x, y = jc.train.distributed.global_batch(stream.batch(step, rows), batch_sh, args.batch_size)
        started = time.perf_counter()
        state, loss = step_fn(state, x, y)
        loss = float(loss)
        log(f"step {step + 1} loss {loss:.4f} ({time.perf_counter() - started:.3f} s)")
        if ckpt and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            ckpt.save(step + 1, state, data_position=(step + 1) * args.batch_size)
            log(f"saving step {step + 1}")
    if ckpt:
        ckpt.save(args.steps, state, data_position=args.steps * args.batch_size, force=True)
        ckpt.close()
    if args.output:
        _write_output(args.output, state)
    log("done")
    return 0


def _with(abstract, shardings):
    import jax

    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _write_output(path: str, state) -> None:
    """The params and masks as one .npz, gathered to every process; process 0 writes it atomically."""
    import jax
    from jax.experimental import multihost_utils

    import jaxcompress as jc

    masks = {p: m.unpack() for p, m in jc.masks_of(jc.optim.compression_state(state["opt_state"])).items()}
    flat, _ = jc.paths.flatten(state["params"])
    arrays = {f"params/{p}": v for p, v in flat.items()} | {f"masks/{p}": v for p, v in masks.items()}
    arrays = multihost_utils.process_allgather(arrays, tiled=True)
    if jax.process_index() == 0:
        out = pathlib.Path(path)
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(main())
