"""The .jcx artifact: round trip, storage, integrity, and a loader that needs only JAX."""

import hashlib
import json
import pathlib
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib

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
    first = path.read_bytes()
    ex.save(path)
    assert path.read_bytes() == first  # saving is deterministic: a save adds nothing to the next one
    loaded = jc.export.load(path)
    assert loaded.metadata["file_bytes"] == size
    np.testing.assert_array_equal(loaded(x), ex(x))
    assert loaded(x[:3]).shape == (3, 10)
    assert loaded.metadata["layers"]["Dense_0"]["compute"] == "int8"


def test_storage_of_a_pruned_int4_layer_is_sparse_and_one_copy_per_layer(built, saved):
    ex, _, variables = built
    leaves = ex.report["leaves"]
    n = variables["params"]["Dense_0"]["kernel"].size
    dense = leaves["Dense_0"]["parts"]
    assert dense["codes"]["bytes"] == min(dense["codes"]["tried"].values())
    assert not dense["codes"]["format"].startswith("dense")  # 80% pruned: a sparse format wins
    assert dense["codes"]["bytes"] < n * 0.2 * (4 + 4) / 8  # under 8 bits per kept weight, index included
    assert dense["scale"]["storage"] in ("float16", "float32")
    conv = leaves["Conv_0"]  # a float-path kernel is stored as codes + scales too
    assert set(conv["parts"]) == {"codes", "scale"}
    assert ex.report["weight_bytes"] == sum(v["bytes"] for v in leaves.values())
    # the program's integer codes, column sums and scales are views of the stored codes: no bytes of their own
    directory = {m["name"]: m for m in artifact.read_header(saved[0].read_bytes())[0]["arrays"]}
    for name in ("layers/Dense_0/codes_t", "layers/Dense_0/colsum", "layers/Dense_0/scale", "layers/Conv_0/kernel"):
        assert directory[name]["nbytes"] == 0, name


def test_size_report_predicts_every_stored_section_byte_for_byte(built, tmp_path):
    _, x, variables = built
    model = ConvDenseNet(hidden=64)
    recipe, cstate = built_recipe(variables)
    predicted = jc.export.size_report(model, variables, recipe, cstate, x)
    for dispatch in ("int8", "float"):
        other = jc.export.export(model, variables, recipe, cstate, x, dispatch=dispatch)
        path = tmp_path / f"{dispatch}.jcx"
        other.save(path)
        header, _ = artifact.read_header(path.read_bytes())
        written = {m["name"]: m["nbytes"] for m in header["arrays"] if m["nbytes"]}
        expected = {}
        for key, leaf in predicted["leaves"].items():
            if "parts" in leaf:  # a quantized layer: one stored entry per part
                expected.update({f"stored:{key}/{what}": part["bytes"] for what, part in leaf["parts"].items()})
            elif leaf["bytes"]:
                expected[key] = leaf["bytes"]
        assert written == expected
        assert other.report["section_bytes"]["weights"] == predicted["weight_bytes"]
        sections = other.report["section_bytes"]
        assert sections["file"] == path.stat().st_size == sum(v for k, v in sections.items() if k != "file")


def built_recipe(variables):
    recipe = jc.chain(jc.prune.magnitude(0.8), jc.quant.symmetric(4))
    return recipe, recipe.update(variables["params"], recipe.init(variables["params"]))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_code_storage_is_lossless(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (37, 11)).astype(np.int8)
    codes[rng.random(codes.shape) < 0.9] = 0
    offset = 2 ** (bits - 1)
    meta, blob, how = artifact.encode_codes(codes, offset, background=offset)
    np.testing.assert_array_equal(artifact._decode(meta, blob, {}), codes)
    assert len(blob) == min(how["tried"].values()) <= -(-codes.size * bits // 8)


def test_statistics_are_stored_at_their_smallest_exact_width():
    exact = np.array([0.5, 0.25, 3.0], np.float32)
    meta, blob = artifact.encode_raw(exact)
    assert meta["dtype"] == "float16" and len(blob) == 6
    np.testing.assert_array_equal(artifact._decode(meta, blob, {}), exact)
    inexact = np.array([0.1, 1 / 3], np.float32)
    meta, blob = artifact.encode_raw(inexact)
    assert meta["dtype"] == "float32"
    np.testing.assert_array_equal(artifact._decode(meta, blob, {}), inexact)
    zp = np.array([-3, 100, 7], np.int32)
    meta, blob = artifact.encode_raw(zp)
    assert meta["dtype"] == "int8" and artifact._decode(meta, blob, {}).dtype == np.int32


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
    with pytest.raises(ValueError, match="format version 99; this jaxcompress reads version 2"):
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
    payload = data[16 + struct.unpack_from("<I", data, 12)[0] : -32]
    head = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sII", b"JAXCMPRS", 2, len(head)) + head + payload
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
    assert [p.name for p in tmp_path.iterdir()] == ["model.jcx"]  # no temporary file left behind
    jc.export.load(path)


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(built, tmp_path, monkeypatch):
    ex, _, _ = built
    path = tmp_path / "model.jcx"
    path.write_bytes(b"previous artifact")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(artifact.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        ex.save(path)
    assert path.read_bytes() == b"previous artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["model.jcx"]


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


def test_half_precision_biases_and_codebooks_are_stored_in_two_bytes(tmp_path):
    model = ConvDenseNet(hidden=64)
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    variables = {"params": jax.tree.map(lambda a: a + 0.01 * jax.numpy.ones_like(a), variables["params"])}
    kmeans = jc.quant.kmeans(3, codebook_dtype="float16", rule="Dense_0/kernel")
    recipe = jc.chain(jc.prune.magnitude(0.8), kmeans, jc.quant.int8(rule="Conv.*kernel"), jc.quant.half_precision())
    cstate = recipe.update(variables["params"], recipe.init(variables["params"]))
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch="int8")
    leaves = ex.report["leaves"]
    assert leaves["layers/Dense_0/bias"] == {"storage": "float16", "bytes": 2 * 64}
    assert leaves["Dense_0"]["parts"]["codebook"]["storage"] == "float16"
    ex.save(tmp_path / "m.jcx")
    np.testing.assert_array_equal(jc.export.load(tmp_path / "m.jcx")(x), ex(x))
    trained = model.apply({"params": recipe.apply(variables["params"], cstate)}, x)
    assert float(np.max(np.abs(np.asarray(ex(x)) - np.asarray(trained)))) < 0.1  # int8 conv inputs only


def _rewritten(data: bytes, header: dict, payload: bytes | None = None) -> bytes:
    """An artifact with ``header`` (and ``payload``) swapped in and a valid checksum: what a crafted file looks like."""
    if payload is None:
        payload = data[16 + struct.unpack_from("<I", data, 12)[0] : -32]
    head = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sII", b"JAXCMPRS", 2, len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def test_crafted_headers_and_sections_are_refused_with_a_value_error(saved):
    path, _ = saved
    data = path.read_bytes()
    header, _ = artifact.read_header(data)
    arrays = header["arrays"]
    stored = next(i for i, m in enumerate(arrays) if m["nbytes"])
    codes = next(i for i, m in enumerate(arrays) if m["encoding"] == "codes")

    def edit(i, **changes):
        return {**header, "arrays": [{**m, **changes} if j == i else m for j, m in enumerate(arrays)]}

    crafted = [
        edit(stored, nbytes=-1),
        edit(stored, nbytes=arrays[stored]["nbytes"] + 1),
        edit(stored, dtype="object"),
        edit(stored, dtype="float64"),
        edit(stored, shape=[2**40]),
        edit(stored, shape=[-3, 4]),
        edit(stored, shape="12"),
        edit(stored, encoding="pickle"),
        edit(codes, codec={**arrays[codes]["codec"], "shape": [10**9]}),
        edit(codes, offset=10**6),
        edit(codes, codec="garbage"),
        {**header, "arrays": [*arrays[:stored], ["not", "a", "dict"], *arrays[stored + 1 :]]},
        {**header, "arrays": arrays[:-1]},
        {**header, "program": {"coder": "bz2", "nbytes": header["program"]["nbytes"]}},
        {**header, "program": {"coder": "packed", "nbytes": -5, "size": 10}},
        {**header, "program": {**header["program"], "size": header["program"]["size"] + 1}},
        {k: v for k, v in header.items() if k != "program"},
    ]
    for mutation in crafted:
        path.write_bytes(_rewritten(data, mutation))
        with pytest.raises(ValueError):
            jc.export.load(path)
    # a garbage program section, checksum recomputed
    n = header["program"]["nbytes"]
    payload = data[16 + struct.unpack_from("<I", data, 12)[0] : -32]
    garbage = bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8))
    stored_as_is = {"coder": "packed", "nbytes": n, "size": n}
    path.write_bytes(_rewritten(data, {**header, "program": stored_as_is}, garbage + payload[n:]))
    with pytest.raises(ValueError, match="program section"):
        jc.export.load(path)


def test_random_byte_mutations_never_crash_the_loader(saved, built):
    """Seeded mutations of the header's values and of the payload, checksums recomputed: an error or the model."""
    path, _ = saved
    ex, x, _ = built
    data = path.read_bytes()
    header, _ = artifact.read_header(data)
    payload = data[16 + struct.unpack_from("<I", data, 12)[0] : -32]
    rng = np.random.default_rng(0)
    replacements = [0, -1, 1, 2**31, 2**62, 1.5, "x", None, [], {}, True, [1, 2]]
    expected = np.asarray(ex(x))
    for case in range(60):
        mutated = json.loads(json.dumps(header))
        body = bytearray(payload)
        if case % 2:
            entry = mutated["arrays"][int(rng.integers(len(mutated["arrays"])))]
            key = sorted(entry)[int(rng.integers(len(entry)))]
            entry[key] = replacements[int(rng.integers(len(replacements)))]
        else:
            for i in rng.integers(header["program"]["nbytes"], len(body), 3):
                body[int(i)] ^= int(rng.integers(1, 256))
        path.write_bytes(_rewritten(data, mutated, bytes(body)))
        try:
            loaded = jc.export.load(path)
        except ValueError:
            continue
        out = np.asarray(loaded(x))  # loaded anyway: a flip the format cannot see (a value bit) or a harmless edit
        assert out.shape == expected.shape


def test_metadata_is_json_at_export_and_a_directory_is_not_a_file(built, tmp_path):
    _, x, variables = built
    model = ConvDenseNet(hidden=64)
    recipe, cstate = built_recipe(variables)
    accuracy = {"numpy": np.float32(0.9), "jax": jax.numpy.float32(0.5), "python": 1}
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch="int8", accuracy=accuracy)
    assert ex.report["accuracy"] == {"numpy": float(np.float32(0.9)), "jax": 0.5, "python": 1.0}
    ex.save(tmp_path / "m.jcx")
    assert jc.export.load(tmp_path / "m.jcx").metadata["accuracy"]["jax"] == 0.5
    for bad, error in (({"test": "high"}, TypeError), ({"test": np.ones(2)}, TypeError), ({"t": np.nan}, ValueError)):
        with pytest.raises(error, match="accuracy"):
            jc.export.export(model, variables, recipe, cstate, x, dispatch="int8", accuracy=bad)
    with pytest.raises(TypeError, match="description"):
        jc.export.export(model, variables, recipe, cstate, x, dispatch="int8", description=3)
    target = tmp_path / "a_directory"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="directory"):
        ex.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory", "m.jcx"]


def test_a_nan_weight_is_an_error_naming_the_leaf_and_index_not_a_wiped_channel(built):
    _, x, variables = built
    model = ConvDenseNet(hidden=64)
    recipe, cstate = built_recipe(variables)
    params = jax.tree.map(np.array, variables["params"])
    params["Dense_0"]["kernel"][3, 5] = np.nan
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' holds 1 NaN/Inf.*index \(3, 5\)"):
        jc.integer_weights(recipe, params, cstate)
    with pytest.raises(ValueError, match=r"variables\['params'\]` leaf 'Dense_0/kernel'.*index \(3, 5\)"):
        jc.export.export(model, {"params": params}, recipe, cstate, x, dispatch="int8")
    params["Dense_0"]["kernel"][3, 5] = 0.0
    params["Dense_1"]["bias"][2] = np.inf
    with pytest.raises(ValueError, match=r"'Dense_1/bias'.*index \(2,\)"):
        jc.export.export(model, {"params": params}, recipe, cstate, x, dispatch="int8")
