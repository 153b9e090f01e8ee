"""Examples run on small settings, so they never rot."""

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.standard_promotion  # user-level code calling optax.adam, as users do

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart(tmp_path):
    out = load("quickstart").main(["--steps", "80", "--out", str(tmp_path / "q.jcx"), "--dispatch", "int8"])
    assert out["deployed_accuracy"] > 0.8
    assert out["artifact_bytes"] == (tmp_path / "q.jcx").stat().st_size
