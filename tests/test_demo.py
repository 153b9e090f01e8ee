import re

import jax
import pytest

from jaxcompress import cli, demo, export

pytestmark = pytest.mark.standard_promotion  # user-level code calling optax.adam, as users do


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = demo.DemoConfig(float_steps=200, compress_steps=200, out_dir=str(out), progress=False, dispatch="int8")
    with jax.numpy_dtype_promotion("standard"):  # optax.adam, as users run it (see conftest.py)
        return demo.run(config), out


def test_demo_compresses_and_reports(demo_run):
    result, tmp_path = demo_run
    assert result.sparsity >= 0.899  # 90% of kernels, plus int8 codes that round to zero
    assert result.float_accuracy > 0.9
    assert result.compressed_accuracy > result.float_accuracy - 0.05
    assert result.compressed_bytes * 4 < result.float_bytes
    assert result.weight_bytes * 10 < result.float_bytes
    assert tmp_path.joinpath("compressed.jcx").stat().st_size == result.compressed_bytes
    loaded = export.load(result.compressed_path)
    assert loaded.metadata["description"] == "digits MLP demo"
    # The reloaded artifact scores (nearly) what the fake-quantized model did.
    assert abs(result.compressed_accuracy - result.fake_quant_accuracy) <= 0.01


def test_cli_prints_the_table(demo_run, monkeypatch, capsys):
    result, tmp_path = demo_run
    seen = []

    def run(config):  # the demo's own run is the fixture's: the command line and its table are under test here
        seen.append(config)
        return result

    monkeypatch.setattr(demo, "run", run)
    argv = ["demo", "--float-steps", "100", "--compress-steps", "50", "--no-progress", "--out", str(tmp_path)]
    assert cli.main([*argv, "--dispatch", "int8"]) == 0
    (config,) = seen
    assert (config.float_steps, config.compress_steps, config.out_dir, config.dispatch) == (
        100,
        50,
        str(tmp_path),
        "int8",
    )
    out = capsys.readouterr().out
    assert re.search(r"test accuracy\s+\d+\.\d\d%\s+\d+\.\d\d%", out)
    assert re.search(r"kernel sparsity\s+0\.00%\s+9\d\.\d\d%", out)
    assert "x smaller" in out


def test_cli_reports_bad_arguments(capsys):
    assert cli.main(["demo", "--sparsity", "1.2", "--no-progress"]) == 2
    assert "`sparsity` must lie in [0, 1)" in capsys.readouterr().err
