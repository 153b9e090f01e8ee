"""Pytest set-up shared by tests/ and the doctests in jaxcompress/.

Process-wide settings are made here once, before JAX starts a backend: 8
simulated CPU devices (for pmap / sharding tests), rank promotion ``raise`` and
dtype promotion ``strict`` for the whole suite. optax's Adam (a third-party
update we do not control) mixes Python floats with its int32 step count, which
strict promotion refuses: tests wrap it with ``tests/helpers.py``'s
``standard_promotion``, and tests of user-level scripts (README, examples, the
demo) that call it as users do are marked ``standard_promotion``.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "standard_promotion: run the test under standard dtype promotion (user scripts calling optax.adam)"
    )


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield
