"""Property tests of ``jc.export.load`` (hypothesis): mutated and crafted files are refused or load correctly.

Each case writes a variant of one real artifact and loads it. Pass = a ``ValueError``, or an
artifact whose weights match the program's signature, hold no NaN/Inf, and whose output has the
right shape. A variant whose checksum was not recomputed must always be refused. Seeded
(``derandomize``); set ``JAXCOMPRESS_FUZZ_EXAMPLES`` for a longer run (CI runs about a thousand cases).
"""

import hashlib
import json
import os
import struct
import zlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jaxcompress as jc
from jaxcompress._src.export import artifact

EXAMPLES = int(os.environ.get("JAXCOMPRESS_FUZZ_EXAMPLES", "120"))
CASES = settings(max_examples=3 * EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    model, x = _Net(), jax.random.normal(jax.random.key(0), (2, 12))
    variables = model.init(jax.random.key(1), x)
    recipe = jc.chain(jc.prune.magnitude(0.7), jc.quant.symmetric(4), jc.quant.half_precision())
    state = recipe.update(variables["params"], recipe.init(variables["params"]))
    ex = jc.export.export(model, variables, recipe, state, x, dispatch={"Dense_0": "int8", "Dense_1": "float"})
    path = tmp_path_factory.mktemp("fuzz") / "model.jcx"
    ex.save(path)
    data = path.read_bytes()
    header, _ = artifact.read_header(data)
    payload = data[16 + struct.unpack_from("<I", data, 12)[0] : -32]
    return path, data, header, payload, x


def _file(header: dict, payload: bytes) -> bytes:
    """A file with this header and payload and a correct checksum (what a crafted file would have)."""
    head = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sII", b"JAXCMPRS", 2, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def _loads_correctly_or_refuses(path, data: bytes, x, *, must_refuse: bool = False) -> None:
    path.write_bytes(data)
    try:
        loaded = jc.export.load(path)
    except ValueError:
        event("refused")
        return
    event("loaded")
    assert not must_refuse, "a file whose checksum does not match was loaded"
    leaves = jax.tree.leaves(loaded.weights)
    avals = loaded.exported.in_avals[:-1]
    assert [(a.shape, a.dtype) for a in leaves] == [(a.shape, a.dtype) for a in avals]
    assert all(np.isfinite(a).all() for a in leaves if np.issubdtype(a.dtype, np.floating))
    assert loaded.exported.out_avals[0].shape[1:] == (4,)


def _flip(data, body: bytearray, *, most: int) -> None:
    """Flips bits of 1 to ``most`` distinct bytes (non-zero masks: ``body`` always changes)."""
    for i in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=most, unique=True)):
        body[i] ^= data.draw(st.integers(1, 255))


@CASES
@given(data=st.data())
def test_corrupted_bytes_are_always_refused(original, data):
    path, raw, _, _, x = original
    body = bytearray(raw)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":
        _flip(data, body, most=8)
    elif kind == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    else:
        body += data.draw(st.binary(min_size=1, max_size=64))
    _loads_correctly_or_refuses(path, bytes(body), x, must_refuse=True)


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON tree."""
    yield prefix, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


@CASES
@given(data=st.data())
def test_crafted_headers_with_a_valid_checksum_are_refused_or_load_correctly(original, data):
    path, _, header, payload, x = original
    mutated = json.loads(json.dumps(header))
    for _ in range(data.draw(st.integers(1, 3))):
        targets = [p for p, _ in _paths(mutated) if p and p[0] != "metadata"]  # after the last edit
        if not targets:
            break
        where = data.draw(st.sampled_from(targets))
        parent = mutated
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "number"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "number":  # off by a little: the hardest lies to see
            old = parent[where[-1]]
            parent[where[-1]] = (old if isinstance(old, int) else 0) + data.draw(st.sampled_from([-1, 1, 2**31]))
        else:
            parent[where[-1]] = data.draw(JSON_VALUES)
    _loads_correctly_or_refuses(path, _file(mutated, payload), x)


@CASES
@given(data=st.data())
def test_payload_mutations_with_a_valid_checksum_are_refused_or_load_correctly(original, data):
    path, _, header, payload, x = original
    body = bytearray(payload)
    kind = data.draw(st.sampled_from(["flip", "garbage-program", "shift"]))
    if kind == "flip":
        _flip(data, body, most=6)
    elif kind == "garbage-program":
        n = header["program"]["nbytes"]
        body[:n] = data.draw(st.binary(min_size=n, max_size=n))
    else:  # bytes inserted or removed: every later section moves
        i = data.draw(st.integers(0, len(body)))
        body[i:i] = data.draw(st.binary(min_size=0, max_size=4))
        if data.draw(st.booleans()) and len(body) > i + 1:
            del body[i]
    _loads_correctly_or_refuses(path, _file(header, bytes(body)), x)


def test_the_original_loads_and_runs(original):
    path, raw, _, _, x = original
    path.write_bytes(raw)
    loaded = jc.export.load(path)
    assert loaded(x).shape == (2, 4)
