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
    tour, _ = blocks("python")
    namespace: dict = {}
    exec(compile(tour, str(README), "exec"), namespace)
    kernel = namespace["kernel"]
    assert int((kernel == 0).sum()) >= 1280  # 80% of the 32x50 kernel


def test_scaling_up_runs_sharded_and_resumes():
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")
    _, scaling = blocks("python")
    namespace: dict = {}
    exec(compile(scaling, str(README), "exec"), namespace)
    jc, restored, params = namespace["jc"], namespace["restored"], namespace["params"]
    assert restored.step == 4 and restored.data_position == 256
    for state in (namespace["opt_state"], restored.state["opt_state"]):
        leaves, want = jax.tree.leaves(state), jax.tree.leaves(jc.train.state_shardings(state, params))
        assert all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(leaves, want, strict=True))
    assert params["Dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_ci_runs_the_readme_commands():
    if not CI.exists():
        pytest.skip(".ci/run is not in this checkout")
    setup, main_job, tests = blocks("bash")
    ci = CI.read_text()
    assert setup.strip() in ci
    assert tests.strip() in ci
    assert main_job.strip() == "jaxcompress demo"
