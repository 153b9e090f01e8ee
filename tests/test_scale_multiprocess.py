"""Two processes on loopback (gloo) train exactly what one process trains on the same global batch.

``tpu_scripts/train_sharded.py`` (global magnitude pruning to 90% + int8
weights and activations, FSDP over 8 devices) runs as 2 processes x 4 CPU
devices and as 1 process x 8 devices, both through ``jax.distributed`` with
gloo collectives; the final params and masks must be equal bit for bit.
"""

import subprocess
import sys

import numpy as np
from helpers import TINY_RUN, TRAIN_SHARDED, free_port, train_sharded_env

STEPS = "4"


def start(out, processes, devices, process_id, port):
    args = [sys.executable, str(TRAIN_SHARDED), *TINY_RUN, "--steps", STEPS, "--output", str(out)]
    args += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(process_id)]
    return subprocess.Popen(args, env=train_sharded_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc):
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def test_two_processes_equal_one_process_bit_for_bit(tmp_path):
    pair_port, single_port = free_port(), free_port()
    pair = [start(tmp_path / "pair.npz", 2, 4, i, pair_port) for i in range(2)]
    single = start(tmp_path / "single.npz", 1, 8, 0, single_port)
    logs = [finish(p) for p in [*pair, single]]
    assert "2 processes, 8 devices" in logs[0] and "1 processes, 8 devices" in logs[2]
    got, want = np.load(tmp_path / "pair.npz"), np.load(tmp_path / "single.npz")
    assert sorted(got) == sorted(want) and any(k.startswith("masks/") for k in got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    kept = [want[k] for k in want if k.startswith("masks/")]
    assert sum(m.size - m.sum() for m in kept) == round(0.9 * sum(m.size for m in kept))
