"""The README's commands and API tour stay true."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.standard_promotion  # user-level code calling optax.adam, as users do

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
CI = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "run"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_api_tour_runs():
    (tour,) = blocks("python")
    namespace: dict = {}
    exec(compile(tour, str(README), "exec"), namespace)
    kernel = namespace["kernel"]
    assert int((kernel == 0).sum()) >= 1280  # 80% of the 32x50 kernel


def test_ci_runs_the_readme_commands():
    if not CI.exists():
        pytest.skip(".ci/run is not in this checkout")
    setup, main_job, tests = blocks("bash")
    ci = CI.read_text()
    assert setup.strip() in ci
    assert tests.strip() in ci
    assert main_job.strip() == "jaxcompress demo"
