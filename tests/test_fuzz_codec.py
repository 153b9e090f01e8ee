"""Property tests of the artifact's code storage (hypothesis): every input round-trips, every mutation is refused.

Seeded (``derandomize``) so CI runs the same cases each time; set ``JAXCOMPRESS_FUZZ_EXAMPLES`` for a longer run.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxcompress._src.export import codec

EXAMPLES = int(os.environ.get("JAXCOMPRESS_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def leaves(draw):
    """A leaf of codes: any rank 0 to 3, bits 1 to 8, a background or none, any density (empty and full included)."""
    shape = tuple(draw(st.lists(st.integers(0, 24), min_size=0, max_size=3)))
    bits = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.7, 1.0]))
    background = draw(st.one_of(st.none(), st.integers(0, 2**bits - 1)))
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**bits, shape).astype(np.uint8)
    if background is not None:
        codes[rng.random(shape) >= density] = background
    return codes, bits, background


@FUZZ
@given(leaves())
def test_every_leaf_round_trips_and_encodes_deterministically(leaf):
    codes, bits, background = leaf
    encoded = codec.encode(codes, bits, background=background)
    decoded = codec.decode(encoded.meta, encoded.blob)
    assert decoded.dtype == np.uint8 and decoded.shape == codes.shape
    np.testing.assert_array_equal(decoded, codes)
    assert len(encoded.blob) == min(encoded.tried.values())
    assert codec.encode(codes, bits, background=background).blob == encoded.blob


@FUZZ
@given(leaves(), st.data())
def test_a_mutated_blob_or_meta_is_refused_or_decodes_to_the_right_shape(leaf, data):
    codes, bits, background = leaf
    encoded = codec.encode(codes, bits, background=background)
    blob, meta = bytearray(encoded.blob), {**encoded.meta, "streams": [dict(s) for s in encoded.meta["streams"]]}
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "stream", "meta"]))
    if kind == "flip" and blob:
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate" and blob:
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "extend":
        blob += bytes(data.draw(st.integers(1, 8)))
    elif kind == "stream" and meta["streams"]:
        stream = data.draw(st.sampled_from(meta["streams"]))
        key = data.draw(st.sampled_from(sorted(stream)))
        stream[key] = data.draw(st.one_of(st.integers(-5, 10**6), st.text(max_size=3), st.none()))
    else:
        key = data.draw(st.sampled_from(sorted(meta)))
        meta[key] = data.draw(st.one_of(st.integers(-5, 40), st.booleans(), st.text(max_size=3), st.none()))
    try:
        out = codec.decode(meta, bytes(blob))
    except ValueError:
        return
    # Not every change is detectable (a flipped value bit; the artifact's SHA-256 covers those): shape and type hold.
    assert out.dtype == np.uint8
    assert out.shape == tuple(meta["shape"])


def test_encode_refuses_codes_outside_their_bits():
    with pytest.raises(ValueError, match="outside"):
        codec.encode(np.array([0, 4], np.uint8), 2)
