"""The .jcx artifact: round trip, storage, integrity, and a loader that needs only JAX."""

import hashlib
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import ConvDenseNet

import jaxcompress as jc
from jaxcompress._src.export import artifact


@pytest.fixture(scope="module")
def built():
    model = ConvDenseNet(hidden=64)
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    recipe = jc.chain(jc.prune.magnitude(0.8), jc.quant.symmetric(4))
    cstate = recipe.update(variables["params"], recipe.init(variables["params"]))
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch={"Conv_0": "float", "Dense_0": "int8"})
    return ex, x, variables


@pytest.fixture
def saved(built, tmp_path):
    ex = built[0]
    path = tmp_path / "model.jcx"
    size = ex.save(path)
    return path, size


def test_round_trip(built, saved):
    ex, x, _ = built
    path, size = saved
    assert path.stat().st_size == size == ex.report["file_bytes"]
    loaded = jc.export.load(path)
    np.testing.assert_array_equal(loaded(x), ex(x))
    assert loaded(x[:3]).shape == (3, 10)
    assert loaded.metadata["layers"]["Dense_0"]["compute"] == "int8"


def test_packed_int4_and_sparse_storage(built):
    ex, _, variables = built
    leaves = ex.report["leaves"]
    dense = leaves["layers/Dense_0/codes_t"]
    n = variables["params"]["Dense_0"]["kernel"].size
    assert dense["storage"] in ("int4 packed", "int4 sparse")
    assert dense["bytes"] <= n // 2  # at most 4 bits per weight
    assert dense["storage"] == "int4 sparse" and dense["bytes"] < n * (1 / 8 + 0.2 * 0.5 + 0.05)
    conv = leaves["layers/Conv_0/kernel"]  # a float-path kernel is stored as codes + scales too
    assert conv["storage"].startswith("int4 codes")
    assert ex.report["weight_bytes"] == sum(v["bytes"] for v in leaves.values())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_code_packing_is_lossless(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (37, 11)).astype(np.int8)
    codes[rng.random(codes.shape) < 0.9] = 0
    meta, blob = artifact.encode_codes(codes, bits, signed=True)
    np.testing.assert_array_equal(artifact._decode(meta, blob, {}), codes)
    assert len(blob) <= -(-codes.size * bits // 8)


def test_truncated_file(saved):
    path, _ = saved
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            jc.export.load(path)


def test_tampered_file(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        jc.export.load(path)


def test_wrong_version_and_magic(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    body = bytearray(data[:-32])
    struct.pack_into("<I", body, 8, 99)
    path.write_bytes(bytes(body) + hashlib.sha256(body).digest())
    with pytest.raises(ValueError, match="format version 99; this jaxcompress reads version 1"):
        jc.export.load(path)
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a jaxcompress artifact"):
        jc.export.load(path)
    with pytest.raises(FileNotFoundError):
        jc.export.load(path.with_name("missing.jcx"))


def test_inconsistent_header_with_valid_checksum(saved):
    """A well-formed file whose directory lies about an array is rejected, not half-loaded."""
    path, _ = saved
    data = path.read_bytes()
    header, _ = artifact.read_header(data)
    header["arrays"][0]["shape"] = [3, 3]
    payload = data[20 + struct.unpack_from("<Q", data, 12)[0] : -32]
    import json

    head = json.dumps(header, sort_keys=True).encode()
    body = struct.pack("<8sIQ", b"JAXCMPRS", 1, len(head)) + head + payload
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(ValueError, match="array"):
        jc.export.load(path)


def test_load_never_unpickles(saved, monkeypatch):
    path, _ = saved

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(np, "load", refuse)
    jc.export.load(path)


def test_save_is_atomic(built, tmp_path):
    ex, _, _ = built
    path = tmp_path / "model.jcx"
    path.write_bytes(b"previous artifact")
    ex.save(path)
    assert not path.with_name("model.jcx.tmp").exists()
    jc.export.load(path)


def test_loads_with_only_jax_and_numpy(saved, built):
    path, _ = saved
    ex, x, _ = built
    np.save(path.with_suffix(".x.npy"), np.asarray(x))
    np.save(path.with_suffix(".y.npy"), np.asarray(ex(x)))
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("flax", "optax", "orbax", "orbax.checkpoint", "tensorflow_datasets", "chex", "sklearn", "tqdm"):
            sys.modules[name] = None  # importing any of them now fails
        import numpy as np
        import jaxcompress.export
        model = jaxcompress.export.load({str(path)!r})
        x = np.load({str(path.with_suffix(".x.npy"))!r})
        np.testing.assert_array_equal(model(x), np.load({str(path.with_suffix(".y.npy"))!r}))
        print("ok", sorted(m for m in sys.modules if m.startswith("jaxcompress")))
        """
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jaxcompress.optim" not in done.stdout and "jaxcompress.export.builder" not in done.stdout
