import re

import pytest

from jaxcompress import cli, demo, export

pytestmark = pytest.mark.standard_promotion  # user-level code calling optax.adam, as users do


def test_demo_compresses_and_reports(tmp_path):
    config = demo.DemoConfig(float_steps=300, compress_steps=300, out_dir=str(tmp_path), progress=False)
    result = demo.run(config)
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


def test_cli_prints_the_table(tmp_path, capsys):
    argv = ["demo", "--float-steps", "100", "--compress-steps", "100", "--no-progress", "--out", str(tmp_path)]
    code = cli.main(argv)
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"test accuracy\s+\d+\.\d\d%\s+\d+\.\d\d%", out)
    assert re.search(r"kernel sparsity\s+0\.00%\s+9\d\.\d\d%", out)
    assert "x smaller" in out


def test_cli_reports_bad_arguments(capsys):
    assert cli.main(["demo", "--sparsity", "1.2", "--no-progress"]) == 2
    assert "`sparsity` must lie in [0, 1)" in capsys.readouterr().err
