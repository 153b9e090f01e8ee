"""Sharded training: state shardings derived from the params', placed at init, kept by the step; pmap.

Global magnitude pruning at 90% + int8 weights + int8 activations trained over
8 simulated devices (data parallel, FSDP, pmap) gives the params, masks and
activation ranges one device gives on the same global batch.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import adam, standard_promotion
from jax import ShapeDtypeStruct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcompress as jc

STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


MODEL = MLP()
APPLY = lambda p, x: MODEL.apply({"params": p}, x)


def sgd():  # linear in the gradients: the step's rounding differences across layouts stay at rounding level
    return standard_promotion(optax.sgd(0.1, momentum=0.9))


def recipe():
    return jc.chain(jc.prune.magnitude(0.9, scope="global"), jc.quant.int8(), jc.quant.activations(8))


def batches():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(STEPS, 32, 16)).astype(np.float32)
    ys = rng.integers(0, 10, size=(STEPS, 32)).astype(np.int32)
    return xs, ys


def init_params():
    return MODEL.init(jax.random.key(0), jnp.ones((1, 16)))["params"]


def train_one_device():
    params, r = init_params(), recipe()
    tx = jc.optim.with_compression(sgd(), r)
    step, state = jc.train.make_train_step(APPLY, tx, r), tx.init(params)
    for x, y in zip(*batches(), strict=True):
        params, state, _ = step(params, state, x, y)
    return params, state


@pytest.fixture(scope="module")
def reference():
    return train_one_device()


def masks(state):
    return {p: np.asarray(m.unpack()) for p, m in jc.masks_of(jc.optim.compression_state(state)).items()}


def assert_placed(tree, shardings):
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (jax.tree_util.keystr(path), leaf.sharding, want)


def mesh_2x4():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))


@pytest.mark.parametrize("layout", ["data-parallel", "fsdp"])
def test_sharded_training_matches_one_device_and_keeps_every_leaf_placed(layout, reference):
    mesh = mesh_2x4()
    params = init_params()
    if layout == "fsdp":
        param_sh = jc.train.fsdp_shardings(params, mesh, "fsdp", min_size=256)
    else:
        param_sh = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    params = jax.device_put(params, param_sh)
    r = recipe()
    tx = jc.optim.with_compression(sgd(), r)
    state = tx.init(params)
    state_sh = jc.train.state_shardings(state, params)
    assert_placed(state, state_sh)  # init placed every leaf, before any step
    step = jc.train.make_train_step(APPLY, tx, r, out_shardings=(param_sh, state_sh, None))
    batch_sh = NamedSharding(mesh, P(("data", "fsdp")))
    for x, y in zip(*batches(), strict=True):
        params, state, _ = step(params, state, jax.device_put(x, batch_sh), jax.device_put(y, batch_sh))
    assert_placed(params, param_sh)
    assert_placed(state, state_sh)

    want_params, want_state = reference
    for path, want in masks(want_state).items():
        np.testing.assert_array_equal(masks(state)[path], want, err_msg=path)
    chex_close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    jax.tree.map(chex_close, params, want_params)
    jax.tree.map(chex_close, jc.optim.compression_state(state), jc.optim.compression_state(want_state))
    kept = sum(int(m.sum()) for m in masks(state).values())
    total = sum(m.size for m in masks(state).values())
    assert total - kept == round(0.9 * total)


def test_fsdp_state_specs_follow_the_kernels():
    mesh = mesh_2x4()
    params = init_params()
    params = jax.device_put(params, jc.train.fsdp_shardings(params, mesh, "fsdp", min_size=256))
    tx = jc.optim.with_compression(adam(1e-2), recipe())
    for state in (tx.init(params), jc.train.init_sharded(tx.init, params)):
        bits = {p: m.bits.sharding.spec for p, m in jc.masks_of(jc.optim.compression_state(state)).items()}
        # (16, 64) split on its columns; (64, 32) and (32, 10) on rows, 16 and 8 rows (whole bytes) per device.
        assert bits == {"Dense_0/kernel": P(None, "fsdp"), "Dense_1/kernel": P("fsdp"), "Dense_2/kernel": P("fsdp")}
        mu = state.inner_state[0].mu
        assert mu["Dense_1"]["kernel"].sharding.spec == P("fsdp", None)
        assert state.compression_state[0].count.sharding.spec == P()


def test_derived_specs_for_per_channel_packed_and_indivisible_leaves():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    s = lambda shape, spec: ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))
    params = {
        "dense": {"kernel": s((16, 64), P("data", "model"))},
        "conv": {"kernel": s((3, 3, 8, 16), P(None, None, None, "model"))},
        "odd": {"kernel": s((36, 64), P("data", "model"))},
    }
    leaf = lambda *shape: ShapeDtypeStruct(shape, jnp.float32)
    state = {
        "scale": {"dense/kernel": leaf(1, 64), "conv/kernel": leaf(1, 1, 1, 16)},
        "rows": {"dense/kernel": leaf(16, 1)},
        "channels": {"dense/kernel": leaf(64)},
        "masks": jc.Masks(
            {
                "conv/kernel": jc.masks.PackedMask(leaf(9, 16), (3, 3, 8, 16)),
                "odd/kernel": jc.masks.PackedMask(leaf(5, 64), (36, 64)),  # 9 rows per device: bytes straddle
                "dense/kernel": jc.masks.PackedMask(leaf(2, 64), (16, 64)),  # 4 rows per device: bytes straddle
            }
        ),
        "other": leaf(5, 64),  # no param owns it
        "count": leaf(),
    }
    got = jax.tree.map(lambda sh: sh.spec, jc.train.state_shardings(state, params))
    assert got["scale"] == {"dense/kernel": P(None, "model"), "conv/kernel": P(None, None, None, "model")}
    assert got["rows"] == {"dense/kernel": P("data")}
    assert got["channels"] == {"dense/kernel": P("model")}
    assert got["masks"].keep["conv/kernel"].bits == P(None, "model")
    assert got["masks"].keep["odd/kernel"].bits == P(None, "model")
    assert got["masks"].keep["dense/kernel"].bits == P(None, "model")
    assert got["other"] == P() and got["count"] == P()


def test_state_shardings_names_a_leaf_without_sharding():
    with pytest.raises(TypeError, match=r"\['w'\] has no sharding"):
        jc.train.state_shardings({}, {"w": np.ones(3)})
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        jc.train.fsdp_shardings({"w": jnp.ones(4)}, mesh_2x4(), "model")


def test_pmap_step_with_axis_name_matches_one_device(reference):
    params, r = init_params(), recipe()
    tx = jc.optim.with_compression(sgd(), r)
    state = tx.init(params)
    replicate = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (8, *jnp.shape(x))), tree)
    step = jax.pmap(jc.train.make_train_step(APPLY, tx, r, axis_name="batch"), axis_name="batch")
    params, state = replicate(params), replicate(state)
    for x, y in zip(*batches(), strict=True):
        params, state, _ = step(params, state, x.reshape(8, 4, 16), y.reshape(8, 4))
    first = lambda tree: jax.tree.map(lambda v: np.asarray(v[0]), tree)
    for tree in (params, state):  # every replica took the same step
        jax.tree.map(lambda v: np.testing.assert_array_equal(np.asarray(v), np.broadcast_to(v[0], v.shape)), tree)
    want_params, want_state = reference
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    jax.tree.map(close, first(params), want_params)
    jax.tree.map(close, jc.optim.compression_state(first(state)), jc.optim.compression_state(want_state))
