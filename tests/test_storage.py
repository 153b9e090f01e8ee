import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.export import storage


def test_round_trip_is_exact(tmp_path):
    w = jax.random.normal(jax.random.key(0), (64, 16))
    pruned, _ = jc.compress(jc.prune.magnitude(0.75), {"w": w})
    codes, scale = jc.quant.symmetric_codes(pruned["w"], 8)
    encoded = storage.encode_sparse(np.asarray(codes), np.asarray(scale))
    size = storage.save_arrays(tmp_path / "w.npz", encoded)
    loaded = storage.load_arrays(tmp_path / "w.npz")
    np.testing.assert_array_equal(storage.decode_sparse(loaded), jc.quant.symmetric_fake_quant(pruned["w"], 8))
    # bitmap (1 bit/weight) + one byte per nonzero + scales, well under float32's 4 bytes/weight
    assert encoded["bitmap"].nbytes == 64 * 16 // 8
    assert encoded["values"].nbytes == int(jnp.sum(codes != 0))
    payload = sum(a.nbytes for a in encoded.values())
    assert payload < w.nbytes / 4
    assert size < w.nbytes / 2  # the .npz headers included


def test_corrupt_encoding_is_rejected():
    codes = np.array([[0, 3], [-2, 0]], np.int8)
    encoded = storage.encode_sparse(codes, np.ones((1, 2), np.float32))
    encoded["values"] = encoded["values"][:1]
    with pytest.raises(ValueError, match="bitmap marks 2 nonzeros but 1 values"):
        storage.decode_sparse(encoded)


def test_codes_must_be_int8():
    with pytest.raises(TypeError, match="`codes` must be int8"):
        storage.encode_sparse(np.zeros((2, 2), np.int32), np.ones(2))


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        storage.load_arrays(path)
