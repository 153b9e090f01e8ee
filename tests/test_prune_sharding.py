"""A global threshold on a model sharded over 8 devices: same masks, scalar all-reduces only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import collectives
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcompress as jc


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))


def make_params():
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (64, 64)), "bias": jnp.zeros(64)},
        "Dense_1": {"kernel": jax.random.normal(k[1], (64, 32)) * 2.0, "bias": jnp.zeros(32)},
        "Conv_0": {"kernel": jax.random.normal(k[2], (3, 3, 8, 16)) * 0.5},
    }


def shard(mesh, params, conv_spec):
    specs = {  # model-parallel kernels: outputs over "model", inputs over "data"
        "Dense_0": {"kernel": P("data", "model"), "bias": P("model")},
        "Dense_1": {"kernel": P("data", "model"), "bias": P("model")},
        "Conv_0": {"kernel": conv_spec},
    }
    return jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


def test_global_refresh_on_sharded_params(mesh):
    params = make_params()
    sharded = shard(mesh, params, P(None, None, None, "model"))
    t = jc.prune.magnitude(0.8, scope="global")
    state = t.init(params)
    refresh = jax.jit(lambda p, s: t.update(p, s).masks.keep)

    expected, got = refresh(params, state), refresh(sharded, state)
    for path in expected:
        np.testing.assert_array_equal(got[path].unpack(), expected[path].unpack())
    pruned = sum(int((~m.unpack()).sum()) for m in got.values())
    assert pruned == round(0.8 * sum(int(np.prod(m.shape)) for m in got.values()))

    found = collectives(refresh.lower(sharded, state).compile().as_text())
    assert found, "the search does communicate across devices"
    # Per-device partial counts and extremes, and per-device partial sums of the
    # samples that place the first pivots (f32, two per leaf) only: never params,
    # nor masks (packing 8 rows per byte stays local where row shards are
    # multiples of 8, as here).
    assert max(n for _, n, _ in found) <= 8, found
    assert {dtype for _, _, dtype in found} <= {"s32", "u32", "f32"}, found
    assert sum(dtype == "f32" for _, _, dtype in found) <= 4 * len(got), found


def test_row_shards_not_a_multiple_of_8_still_give_the_same_masks(mesh):
    # 36 rows over 4 devices: 9 rows per shard, so a mask byte (8 rows) straddles
    # shards. XLA may then move mask bytes between devices, but the masks, the
    # exact count and the masked weights must not change.
    k = jax.random.split(jax.random.key(1), 2)
    params = {
        "Dense_0": {"kernel": jax.random.normal(k[0], (36, 64))},
        "Dense_1": {"kernel": jax.random.normal(k[1], (36, 32)) * 3.0},
    }
    spec = NamedSharding(mesh, P("data", "model"))
    sharded = jax.device_put(params, {"Dense_0": {"kernel": spec}, "Dense_1": {"kernel": spec}})
    t = jc.prune.magnitude(0.7, scope="global")
    state = t.init(params)
    step = jax.jit(lambda p, s: (lambda s2: (t.apply(p, s2), s2.masks.keep))(t.update(p, s)))

    (want_params, want_masks), (got_params, got_masks) = step(params, state), step(sharded, state)
    for path in want_masks:
        np.testing.assert_array_equal(got_masks[path].unpack(), want_masks[path].unpack())
    np.testing.assert_array_equal(got_params["Dense_0"]["kernel"], want_params["Dense_0"]["kernel"])
    pruned = sum(int((~m.unpack()).sum()) for m in got_masks.values())
    assert pruned == round(0.7 * (36 * 64 + 36 * 32))
    # The pruned weights are the smallest: every kept |w| >= every pruned |w|.
    flat = np.concatenate([np.asarray(params[p]["kernel"]).ravel() for p in ("Dense_0", "Dense_1")])
    keep = np.concatenate([np.asarray(got_masks[f"{p}/kernel"].unpack()).ravel() for p in ("Dense_0", "Dense_1")])
    assert np.abs(flat[keep]).min() >= np.abs(flat[~keep]).max()
