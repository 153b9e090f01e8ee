"""examples/phases.py runs on small settings (its own file: it compiles four runs and four exports)."""

import pytest
from test_examples import load

pytestmark = pytest.mark.standard_promotion  # user-level code calling optax.adam, as users do


def test_phases():
    out = load("phases").main(["--steps", "24", "--sparsity", "0.5"])
    assert set(out) == {"float", "simultaneous", "prune_then_qat", "qat_mid_run", "frozen_masks"}
    for name, r in out.items():
        if name == "float":
            continue
        assert r["exported_accuracy"] == pytest.approx(r["accuracy"], abs=1e-6), name  # exports what it trained
        assert r["sparsity"] == pytest.approx(0.5, abs=0.01), name
        assert r["levels_per_kernel"] <= 15, name  # 4-bit symmetric: at most 15 values per channel
        assert r["accuracy"] > 0.3, name
