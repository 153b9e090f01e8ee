"""Scale: a sharded compressed step against the sharded float step, the bytes a global threshold
communicates, multi-process equality, SIGKILL resume, damaged-checkpoint recovery, async save cost.

    python benchmarks/scale.py [--quick]

Runs on 8 simulated CPU devices (``--xla_force_host_platform_device_count=8``,
set here before JAX starts) unless the process already has several devices (a
GPU host). Models: LeNet-300-100 on MNIST-shaped inputs and a small
Transformer classifier (2 blocks, width 128, 64 tokens), FSDP over every
device, 90% global magnitude pruning (masks refreshed every 100 steps) + int8
weights + int8 activations, SGD with momentum. Step times are medians of
interleaved rounds after warm-up, compressed and float alike, in one process.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

if "jax" not in sys.modules and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import REPO, interleaved, log, machine
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcompress as jc

SCRIPT = REPO / "tpu_scripts" / "train_sharded.py"


class Transformer(nn.Module):
    """A small pre-norm Transformer encoder classifying token sequences (mean-pooled)."""

    vocab: int = 256
    width: int = 128
    heads: int = 4
    blocks: int = 2
    classes: int = 10

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.width)(tokens)
        x = x + self.param("position", nn.initializers.normal(0.02), (tokens.shape[1], self.width))
        for _ in range(self.blocks):
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(self.heads)(h, h)
            h = nn.LayerNorm()(x)
            x = x + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(h)))
        return nn.Dense(self.classes)(jnp.mean(nn.LayerNorm()(x), axis=1))


def recipe():
    prune = jc.prune.magnitude(jc.schedules.constant(0.9, frequency=100), scope="global")
    return jc.chain(prune, jc.quant.int8(), jc.quant.activations(8))


def setup(name: str, batch: int):
    mesh = jc.train.distributed.global_mesh({"fsdp": -1})
    rng = np.random.default_rng(0)
    if name == "lenet300":
        model, x = jc.models.lenet300_100(), rng.normal(size=(batch, 784)).astype(np.float32)
    else:
        model, x = Transformer(), rng.integers(0, 256, size=(batch, 64)).astype(np.int32)
    y = rng.integers(0, 10, size=(batch,)).astype(np.int32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    param_sh = jc.train.fsdp_shardings(params, mesh, "fsdp")
    params = jax.device_put(params, param_sh)
    batch_sh = NamedSharding(mesh, P("fsdp"))
    x, y = jax.device_put(x, batch_sh), jax.device_put(y, batch_sh)
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)
    return mesh, params, param_sh, x, y, apply_fn


def step_ratio(name: str, batch: int, rounds: int) -> dict:
    """Median sharded compressed step (no mask refresh due; and one that refreshes) over the float step."""
    _, params, param_sh, x, y, apply_fn = setup(name, batch)
    sgd = optax.sgd(0.01, momentum=0.9)
    float_state = jc.train.init_sharded(sgd.init, params)
    float_step = jc.train.make_train_step(
        apply_fn, sgd, out_shardings=(param_sh, jc.train.state_shardings(float_state, params), None)
    )
    r = recipe()
    tx = jc.optim.with_compression(sgd, r)
    state = jc.train.init_sharded(tx.init, params)
    step = jc.train.make_train_step(
        apply_fn, tx, r, out_shardings=(param_sh, jc.train.state_shardings(state, params), None)
    )
    params1, state1, _ = step(params, state, x, y)  # count 1: the next refresh is due at step 100
    due = state1._replace(compression_state=_with_count(state1.compression_state, 100))
    times = interleaved(
        {
            "float": lambda: float_step(params, float_state, x, y),
            "compressed": lambda: step(params1, state1, x, y),
            "refresh": lambda: step(params1, due, x, y),
        },
        rounds,
        warmup=5,
    )
    return {
        f"{name}_sharded_compressed_step_over_sharded_float_step": times["compressed"] / times["float"],
        f"{name}_sharded_refresh_step_over_sharded_float_step": times["refresh"] / times["float"],
        f"{name}_sharded_float_step_ms": 1e3 * times["float"],
        f"{name}_param_count": int(sum(v.size for v in jax.tree.leaves(params))),
    }


def _with_count(cstate, count):
    pruner = cstate[0]
    return (pruner._replace(count=jnp.full_like(pruner.count, count)), *cstate[1:])


def threshold_bytes(name: str, batch: int) -> dict:
    """Bytes of every collective in the compiled global-threshold refresh, over the param bytes."""
    _, params, _, _, _, _ = setup(name, batch)
    t = jc.prune.magnitude(0.9, scope="global")
    state = t.init(params)
    refresh = jax.jit(lambda p, s: t.update(p, s).masks.keep)
    found = jc.train.collectives(refresh.lower(params, state).compile())
    param_bytes = sum(v.nbytes for v in jax.tree.leaves(params))
    communicated = sum(c.bytes for c in found)
    masks = refresh(params, state)
    pruned = sum(int((~m.unpack()).sum()) for m in masks.values())
    total = sum(int(np.prod(m.shape)) for m in masks.values())
    return {
        f"{name}_global_threshold_bytes_communicated_over_param_bytes": communicated / param_bytes,
        f"{name}_global_threshold_collectives": len(found),
        f"{name}_global_threshold_largest_collective_elements": max((c.elements for c in found), default=0),
        f"{name}_global_threshold_pruned_exact": pruned == round(0.9 * total),
    }


def save_blocking(name: str, batch: int, saves: int) -> dict:
    """Median time ``Checkpoints.save`` (async) blocks the loop, over the compressed step time."""
    _, params, param_sh, x, y, apply_fn = setup(name, batch)
    r = recipe()
    tx = jc.optim.with_compression(optax.sgd(0.01, momentum=0.9), r)
    state = jc.train.init_sharded(tx.init, params)
    step = jc.train.make_train_step(
        apply_fn, tx, r, out_shardings=(param_sh, jc.train.state_shardings(state, params), None)
    )
    for _ in range(3):
        jax.block_until_ready(step(params, state, x, y))
    blocking, steps = [], []
    with tempfile.TemporaryDirectory() as directory, jc.train.Checkpoints(directory, keep=2) as ckpt:
        for i in range(saves):
            start = time.perf_counter()
            params, state, loss = step(params, state, x, y)
            jax.block_until_ready((params, state, loss))  # every device's part of the step: the save copies them
            steps.append(time.perf_counter() - start)
            start = time.perf_counter()
            ckpt.save(i + 1, {"params": params, "opt_state": state})
            blocking.append(time.perf_counter() - start)
            ckpt.wait()  # the next save starts from a finished one, as with saves far apart
    step_s, block_s = float(np.median(steps)), float(np.median(blocking))
    return {
        f"{name}_checkpoint_save_blocking_ms_over_step_ms": block_s / step_s,
        f"{name}_checkpoint_save_blocking_ms": 1e3 * block_s,
        f"{name}_checkpoint_step_ms": 1e3 * step_s,
    }


def _env(devices: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return os.environ | {
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    }


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _same(a: pathlib.Path, b: pathlib.Path) -> bool:
    x, y = np.load(a), np.load(b)
    return sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x)


def _run(args, devices, *, kill_on: str | None = None) -> str:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if kill_on is None:
        out, _ = proc.communicate(timeout=1200)
        if proc.returncode:
            raise SystemExit(f"train_sharded.py failed:\n{out.decode()[-3000:]}")
        return out.decode()
    lines = []
    for line in proc.stdout:
        lines.append(line.decode())
        if kill_on in lines[-1]:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    proc.wait(timeout=60)
    return "".join(lines)


def processes(steps: int) -> dict:
    """2 processes x 4 devices against 1 process x 8 (both gloo); SIGKILL + resume; a damaged checkpoint."""
    run = ["--steps", str(steps), "--batch-size", "64", "--save-every", "4"]
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        pair = ["--output", str(d / "pair.npz"), "--coordinator", f"localhost:{_port()}", "--num-processes", "2"]
        procs = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), *run, *pair, "--process-id", str(i)],
                env=_env(4),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        if any(p.wait(timeout=1200) for p in procs):
            raise SystemExit("the 2-process run failed")
        one = ["--output", str(d / "one.npz"), "--coordinator", f"localhost:{_port()}", "--num-processes", "1"]
        _run([*run, *one, "--process-id", "0"], 8)
        multiprocess_equal = _same(d / "pair.npz", d / "one.npz")

        _run([*run, "--output", str(d / "ref.npz")], 8)
        ckpt = ["--checkpoint-dir", str(d / "ckpt"), "--output", str(d / "out.npz")]
        _run([*run, *ckpt], 8, kill_on=f"step {steps // 2 + 1} loss")
        _run([*run, *ckpt], 8, kill_on=f"saving step {4 * (steps // 4 - 1)}")  # mid-save
        log_text = _run([*run, *ckpt], 8)
        resume_bit_identical = "resumed from step" in log_text and _same(d / "out.npz", d / "ref.npz")

        newest = max(int(p.name) for p in (d / "ckpt").iterdir() if p.name.isdigit())
        for f in (d / "ckpt" / str(newest) / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))
        (d / "out.npz").unlink()
        log_text = _run([*run, *ckpt], 8)
        recovered = f"Skipping checkpoint {newest}" in log_text and _same(d / "out.npz", d / "ref.npz")
    return {
        "multiprocess_equal": multiprocess_equal,
        "resume_bit_identical": resume_bit_identical,
        "corrupt_checkpoint_recovered": recovered,
        "process_run_steps": steps,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and training steps")
    parser.add_argument("--rounds", type=int, default=100, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=256, help="global batch size for the step timings")
    parser.add_argument("--steps", type=int, default=24, help="training steps of the process runs")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 20, 12
    before = machine()
    result: dict = {}
    names = ("lenet300", "transformer")
    for name in names:
        log(f"step timings, collectives of the global threshold, async checkpoint saves: {name}")
        result.update(step_ratio(name, args.batch, args.rounds))
        result.update(threshold_bytes(name, args.batch))
        result.update(save_blocking(name, args.batch, 10 if args.quick else 30))
    for key in (
        "sharded_compressed_step_over_sharded_float_step",
        "global_threshold_bytes_communicated_over_param_bytes",
        "checkpoint_save_blocking_ms_over_step_ms",
    ):
        result[key] = max(result[f"{name}_{key}"] for name in names)  # the worse model
    log("multi-process, SIGKILL resume, damaged checkpoint")
    result.update(processes(args.steps))
    result.update(
        devices=jax.device_count(),
        batch=args.batch,
        timing_rounds=args.rounds,
        quick=bool(args.quick),
        **machine(),
        load_average_1min_before=before["load_average_1min"],
    )
    return result


if __name__ == "__main__":
    out = main()
    print(json.dumps(out))
    ok = [out["multiprocess_equal"], out["resume_bit_identical"], out["corrupt_checkpoint_recovered"]]
    sys.exit(0 if all(ok) else 1)
