"""Reliability figures (issue 14): bad inputs, fuzzing, zeros over 10,000 steps, saves killed mid-write.

    python benchmarks/reliability.py            # about 15 minutes on 2 cores
    python benchmarks/reliability.py --quick    # fewer fuzz cases and kills, 1,000 steps, CI-sized pairs

What each figure is:

* ``bad_input_cases`` / ``clear_errors``: the test cases of the suites whose every case feeds the
  public API a bad input (``tests/test_bad_input.py``, ``test_quant_bad_input.py``,
  ``test_state_checks.py``) and how many of them got the clear ``ValueError``/``TypeError`` they assert.
* ``fuzz_cases`` / ``fuzz_failures``: the hypothesis suites (codec, loader, recipes, export) run with
  ``JAXCOMPRESS_FUZZ_EXAMPLES``; cases = examples hypothesis ran (its statistics), failures = failing tests.
* ``zeros_kept_10k``: ``tests/test_zeros_long_run.py`` with ``JAXCOMPRESS_LONG_RUN=full`` (all 77
  pruner x quantizer pairs, adamw / sgd-momentum / MultiSteps, 10,000 steps each) passed.
* ``save_killed_midway_leaves_old_file``: a child process saves two different artifacts in turn onto
  one path, over and over; it is killed with SIGKILL at random moments. After every kill the target
  must be, byte for byte, one of the two complete files and must load. ``temporaries_left`` counts
  the temp files SIGKILL left behind (nothing can remove them; they never replace the target).

The last line printed is one JSON object with these keys and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from xml.etree import ElementTree

from common import REPO, log, machine

BAD_INPUT_SUITES = ["tests/test_bad_input.py", "tests/test_quant_bad_input.py", "tests/test_state_checks.py"]
FUZZ_SUITES = [
    "tests/test_fuzz_codec.py",
    "tests/test_fuzz_artifact.py",
    "tests/test_fuzz_recipes.py",
]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (checks the script, not the figures)")
    p.add_argument("--fuzz-examples", type=int, default=1200, help="JAXCOMPRESS_FUZZ_EXAMPLES for the fuzz suites")
    p.add_argument("--kills", type=int, default=40, help="SIGKILLs of a saving process")
    return p.parse_args()


def pytest(files: list[str], env: dict[str, str] | None = None, *extra: str) -> tuple[dict[str, int], str]:
    """Runs ``files`` with pytest; returns ``({"passed": n, "failed": n, "skipped": n}, output)`` (from JUnit XML)."""
    with tempfile.TemporaryDirectory() as d:
        xml = pathlib.Path(d, "report.xml")
        cmd = [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", f"--junitxml={xml}", *extra, *files]
        run = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True)
        cases = ElementTree.parse(xml).getroot().iter("testcase") if xml.exists() else []
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for case in cases:
            tags = {child.tag for child in case}
            counts["failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"] += 1
    return counts, run.stdout + run.stderr


def bad_inputs() -> dict:
    counts, _ = pytest(BAD_INPUT_SUITES)
    cases = sum(counts.values())
    log(f"bad inputs: {counts}")
    return {"bad_input_cases": cases, "clear_errors": counts.get("passed", 0)}


def fuzz(examples: int) -> dict:
    counts, output = pytest(FUZZ_SUITES, {"JAXCOMPRESS_FUZZ_EXAMPLES": str(examples)}, "--hypothesis-show-statistics")
    # "- during generate phase ...: N passing, M failing, and K invalid test cases" per test and phase
    ran = [(int(a), int(b)) for a, b in re.findall(r"(\d+) passing, (\d+) failing", output)]
    log(f"fuzz: {counts}, {sum(a + b for a, b in ran)} examples")
    return {
        "fuzz_cases": sum(a + b for a, b in ran),
        "fuzz_failures": counts["failed"],
        "fuzz_examples_setting": examples,
    }


def zeros(quick: bool) -> dict:
    env = {"JAXCOMPRESS_LONG_RUN": "" if quick else "full", "JAXCOMPRESS_LONG_RUN_STEPS": "1000" if quick else "10000"}
    t0 = time.perf_counter()
    counts, output = pytest(["tests/test_zeros_long_run.py"], env)
    log(f"zeros: {counts} in {time.perf_counter() - t0:.0f} s")
    if counts["failed"]:
        log(output[-4000:])
    return {
        "zeros_kept_10k": counts["passed"] == 4 and not counts["failed"],
        "zeros_pairs": 77 if not quick else 33,
        "zeros_steps": 1000 if quick else 10000,
    }


SAVER = textwrap.dedent(
    """
    import sys, jax, flax.linen as nn, jaxcompress as jc

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.relu(nn.Dense(512)(x)))

    x = jax.numpy.ones((2, 512))
    variables = Net().init(jax.random.key(0), x)
    exports = []
    for bits in (8, 4):
        recipe = jc.quant.symmetric(bits)
        state = recipe.init(variables["params"])
        exports.append(jc.export.export(Net(), variables, recipe, state, x, dispatch="float"))
    target, first, second = sys.argv[1:4]
    exports[0].save(first)
    exports[1].save(second)
    exports[0].save(target)
    print("ready", flush=True)
    while True:
        for ex in exports:
            ex.save(target)
    """
)


def killed_saves(kills: int) -> dict:
    import jaxcompress as jc

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        directory = pathlib.Path(d)
        target, first, second = directory / "model.jcx", directory / "a.ref", directory / "b.ref"
        script = directory / "saver.py"
        script.write_text(SAVER)
        intact, loaded = 0, 0
        for i in range(kills):
            child = subprocess.Popen(
                [sys.executable, str(script), str(target), str(first), str(second)], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.5))
            child.send_signal(signal.SIGKILL)
            child.wait()
            data = target.read_bytes() if target.exists() else b""
            intact += data in (first.read_bytes(), second.read_bytes())
            try:
                jc.export.load(target)
                loaded += 1
            except (ValueError, OSError) as e:
                log(f"kill {i}: the target does not load: {e}")
        left = [p.name for p in directory.iterdir() if p.name not in {"model.jcx", "a.ref", "b.ref", "saver.py"}]
    log(f"killed saves: {intact}/{kills} intact, {loaded}/{kills} load, {len(left)} temporaries left")
    return {
        "save_killed_midway_leaves_old_file": intact == kills and loaded == kills,
        "save_kills": kills,
        "temporaries_left": len(left),
    }


def main() -> int:
    args = parse()
    t0 = time.perf_counter()
    out: dict = {}
    out.update(bad_inputs())
    out.update(fuzz(120 if args.quick else args.fuzz_examples))
    out.update(zeros(args.quick))
    out.update(killed_saves(5 if args.quick else args.kills))
    out["quick"] = args.quick
    out["machine"] = machine()
    out["wall_s"] = round(time.perf_counter() - t0)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
