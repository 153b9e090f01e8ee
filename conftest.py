"""Pytest set-up shared by tests/ and the doctests in jaxcompress/.

Process-wide settings are made here once, before JAX starts a backend: 8
simulated CPU devices (for pmap / sharding tests), rank promotion ``raise`` and
dtype promotion ``strict`` for the whole suite, XLA:CPU's cheaper code
generation (LLVM at -O0, the older fusion emitters) and a compilation cache shared by the run's workers:
tests check results, not speed, and most of their time is compilation. optax's Adam (a third-party
update we do not control) mixes Python floats with its int32 step count, which
strict promotion refuses: tests wrap it with ``tests/helpers.py``'s
``standard_promotion``, and tests of user-level scripts (README, examples, the
demo) that call it as users do are marked ``standard_promotion``.
"""

import os
import shutil
import tempfile

_FLAGS = {
    "--xla_force_host_platform_device_count": "8",
    "--xla_backend_optimization_level": "0",
    "--xla_llvm_disable_expensive_passes": "true",
    "--xla_cpu_use_fusion_emitters": "false",  # the older emitters compile small programs about twice as fast
}
_given = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_given, *(f"{k}={v}" for k, v in _FLAGS.items() if k not in _given)]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
# One compilation cache for the run, shared by the pytest-xdist workers (they inherit the
# variable): a program many tests build (or both workers) is compiled once.
_CACHE = "JAXCOMPRESS_TEST_COMPILATION_CACHE"
_own_cache = _CACHE not in os.environ
if _own_cache:
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="jaxcompress-test-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _own_cache and not hasattr(config, "workerinput"):  # the process that made it (not an xdist worker)
        shutil.rmtree(os.environ[_CACHE], ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "standard_promotion: run the test under standard dtype promotion (user scripts calling optax.adam)"
    )


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield
