"""What every benchmark shares: the machine it ran on, MNIST's location, interleaved timing, logging."""

from __future__ import annotations

import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxcompress import data

REPO = pathlib.Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    """The CPU (model, SIMD flags that bound int8 speed), JAX, and the load from other processes."""
    flags, model = set(), platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {
        "cpu": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def mnist_dir() -> str:
    """``$JAXCOMPRESS_MNIST_DIR``, else this checkout's ``../shared/data/mnist``."""
    found = os.environ.get(data.MNIST_ENV) or str(REPO.parent / "shared" / "data" / "mnist")
    if not pathlib.Path(found, data.MNIST_FILES["y_test"]).exists():
        raise SystemExit(f"MNIST not found in {found!r}: set {data.MNIST_ENV} to a directory of the IDX files.")
    return found


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 20) -> dict[str, float]:
    """Median seconds of each call: warm-up, then ``rounds`` rounds calling each once, in turn."""
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[key].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}
