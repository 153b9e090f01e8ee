"""Pytest set-up shared by tests/ and the doctests in jaxcompress/.

Process-wide settings are made here once, before JAX starts a backend: 8
simulated CPU devices (for pmap / sharding tests) and strict rank promotion.
Strict *dtype* promotion cannot be global (optax's own adam breaks under it);
tests/test_contract.py runs every jaxcompress transform under it instead.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
