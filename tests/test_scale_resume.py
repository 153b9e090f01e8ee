"""SIGKILL at random points (mid-save included), resume, and the final params are bit-identical.

``tpu_scripts/train_sharded.py`` trains (global magnitude pruning to 90% +
int8 QAT, FSDP over 8 CPU devices) with async orbax checkpoints every 2
steps. One run goes straight through; another is killed with SIGKILL at a
random step, resumed, killed again just after a save starts (the write is
still in flight), and resumed to the end: both must end with the same bits.
(Damaged checkpoints: tests/test_scale_checkpoint.py.)
"""

import pathlib
import random
import signal
import subprocess
import sys

import jax
import numpy as np
from helpers import TINY_RUN, TRAIN_SHARDED, train_sharded_env

sys.path.insert(0, str(TRAIN_SHARDED.parent))
import train_sharded

STEPS = 8


def command(ckpt: pathlib.Path, out: pathlib.Path) -> list[str]:
    run = ["--steps", str(STEPS), "--save-every", "2", "--checkpoint-dir", str(ckpt), "--output", str(out)]
    return [sys.executable, str(TRAIN_SHARDED), *TINY_RUN, *run]


def popen(ckpt, out):
    return subprocess.Popen(
        command(ckpt, out), env=train_sharded_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_until(ckpt, out, marker: str) -> list[str]:
    """Runs until a line holds ``marker``, then SIGKILLs the process at once."""
    proc, lines = popen(ckpt, out), []
    with proc.stdout:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return lines


def resumed_from(lines) -> int | None:
    found = [int(line.split("resumed from step ")[1]) for line in lines if "resumed from step " in line]
    return found[0] if found else None


def finished(ckpt: pathlib.Path) -> set[int]:
    return {int(p.name) for p in ckpt.iterdir() if p.name.isdigit()} if ckpt.exists() else set()


def assert_same(a: pathlib.Path, b: pathlib.Path):
    got, want = np.load(a), np.load(b)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path, capsys):
    # The uninterrupted run, in this process: its programs then wait in the compilation cache the runs below share.
    with jax.numpy_dtype_promotion("standard"):
        assert train_sharded.main([*TINY_RUN, "--steps", str(STEPS), "--output", str(tmp_path / "ref.npz")]) == 0
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    kill_step = random.Random().choice([1, 3, 5])
    first = run_until(ckpt, out, f"step {kill_step} loss")
    assert not any("resumed" in line for line in first)
    second = run_until(ckpt, out, "saving step 6")  # killed while the async save of step 6 is written
    # The newest *finished* save: a save still in flight when the process died does not count.
    assert resumed_from(second) in {None, *range(2, kill_step, 2)}, second
    assert 6 not in finished(ckpt), "the kill was meant to land before the save of step 6 finished"
    capsys.readouterr()
    with jax.numpy_dtype_promotion("standard"):  # the last resume in this process (its programs are compiled)
        assert train_sharded.main([*command(ckpt, out)[2:]]) == 0
    assert resumed_from(capsys.readouterr().out.splitlines()) in {2, 4}
    assert_same(out, tmp_path / "ref.npz")
