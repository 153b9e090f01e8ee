"""The main job: joint pruning + int8 on the embedded digits, exported and reloaded.

Trains a small MLP on scikit-learn's digits, fine-tunes it with gradual
magnitude pruning, int8 weight fake quantization and int8 activations (static
ranges from running statistics) jointly, exports the int8 program to a
``.jcx`` artifact, loads it back (as a deployment would) and reports the
loaded artifact's own accuracy and bytes against float32.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcompress import chain, data, export, masks_of, optim, paths, prune, quant, schedules
from jaxcompress._src import validate
from jaxcompress._src.quant.grid import check_bits
from jaxcompress.models import MLP
from jaxcompress.train import accuracy, fit


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    sparsity: float = 0.9
    bits: int = 8
    float_steps: int = 1500
    compress_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    out_dir: str | None = None
    progress: bool = True
    dispatch: str = "measure"  # per-layer int8 or float choice of the export (see jc.export.export)


@dataclasses.dataclass(frozen=True)
class DemoResult:
    float_accuracy: float
    compressed_accuracy: float  # of the exported artifact, loaded back from its file
    fake_quant_accuracy: float  # of the fake-quantized model it was exported from
    sparsity: float
    float_bytes: int  # float32 params file
    float_weight_bytes: int  # float32 params in memory
    weight_bytes: int  # the artifact's compressed weights
    compressed_bytes: int  # the whole artifact file (program + weights + header)
    float_path: str
    compressed_path: str

    def table(self) -> str:
        ratio = self.float_bytes / self.compressed_bytes
        rows = [
            ("", "float32", "int8 artifact"),
            ("test accuracy", f"{self.float_accuracy:.2%}", f"{self.compressed_accuracy:.2%}"),
            ("kernel sparsity", "0.00%", f"{self.sparsity:.2%}"),
            ("weight bytes", f"{self.float_weight_bytes:,}", f"{self.weight_bytes:,}"),
            ("file bytes", f"{self.float_bytes:,}", f"{self.compressed_bytes:,} ({ratio:.1f}x smaller)"),
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)


def run(config: DemoConfig = DemoConfig()) -> DemoResult:
    """Runs the demo and returns its figures."""
    validate.check_fraction(config.sparsity, argument="sparsity")
    check_bits(config.bits)
    for name in ("float_steps", "compress_steps", "batch_size"):
        validate.check_int(getattr(config, name), argument=name, minimum=1)
    ds = data.digits(seed=config.seed)
    model = MLP(hidden=(256, 128), num_classes=ds.num_classes)
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, *ds.x_train.shape[1:])))["params"]

    def apply_fn(p: Any, x: jax.Array) -> jax.Array:
        return model.apply({"params": p}, x)

    stream = data.batches(ds.x_train, ds.y_train, config.batch_size, seed=config.seed)
    bar = "float training" if config.progress else None
    params, _, _ = fit(apply_fn, params, optax.adam(config.learning_rate), stream, config.float_steps, progress=bar)
    float_acc = accuracy(apply_fn, params, ds.x_test, ds.y_test)

    pruning = prune.magnitude(
        schedules.polynomial(0.0, config.sparsity, begin=0, end=int(config.compress_steps * 0.6), frequency=10)
    )
    recipe = chain(pruning, quant.symmetric(config.bits), quant.activations(8, mode="static"))
    tx = optim.with_compression(optax.adamw(config.learning_rate, weight_decay=1e-4), recipe)
    bar = "joint compression" if config.progress else None
    params, opt_state, _ = fit(apply_fn, params, tx, stream, config.compress_steps, recipe=recipe, progress=bar)
    cstate = optim.compression_state(opt_state)
    compressed = recipe.apply(params, cstate)

    def fake_quant_fn(p: Any, x: jax.Array) -> jax.Array:
        with quant.quantize_activations(cstate):
            return model.apply({"params": p}, x)

    fake_quant_acc = accuracy(fake_quant_fn, compressed, ds.x_test, ds.y_test)

    kernels = list(masks_of(cstate))
    flat_compressed, _ = paths.flatten(compressed)
    zeros = sum(int(jnp.sum(flat_compressed[p] == 0)) for p in kernels)
    total = sum(flat_compressed[p].size for p in kernels)

    out_dir = config.out_dir or tempfile.mkdtemp(prefix="jaxcompress-demo-")
    os.makedirs(out_dir, exist_ok=True)
    float_path = os.path.join(out_dir, "float32.npz")
    comp_path = os.path.join(out_dir, "compressed.jcx")
    flat_float, _ = paths.flatten(params)
    with open(float_path, "wb") as f:
        np.savez(f, **{p: np.asarray(w, np.float32) for p, w in flat_float.items()})
    exported = export.export(
        model, {"params": params}, recipe, cstate, ds.x_test, description="digits MLP demo", dispatch=config.dispatch
    )
    comp_bytes = exported.save(comp_path)
    loaded = export.load(comp_path)
    predictions = np.asarray(loaded(ds.x_test)).argmax(-1)
    return DemoResult(
        float_accuracy=float_acc,
        compressed_accuracy=float(np.mean(predictions == ds.y_test)),
        fake_quant_accuracy=fake_quant_acc,
        sparsity=zeros / total,
        float_bytes=os.path.getsize(float_path),
        float_weight_bytes=sum(int(np.asarray(w).nbytes) for w in flat_float.values()),
        weight_bytes=int(exported.report["weight_bytes"]),
        compressed_bytes=comp_bytes,
        float_path=float_path,
        compressed_path=comp_path,
    )
