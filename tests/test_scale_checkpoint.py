"""jc.train.Checkpoints: orbax round trips, keep-last-k, resharding restore, damaged and partial checkpoints."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import standard_promotion
from jax.sharding import Mesh

import jaxcompress as jc


def mesh(n):
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")
    return Mesh(np.array(jax.devices()[:n]), ("fsdp",))


def train_state(n_devices):
    params = {"Dense_0": {"kernel": jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16), "bias": jnp.ones(16)}}
    params = jax.device_put(params, jc.train.fsdp_shardings(params, mesh(n_devices), min_size=1))
    recipe = jc.chain(jc.prune.magnitude(0.75, scope="global"), jc.quant.int8())
    tx = jc.optim.with_compression(standard_promotion(optax.sgd(0.1, momentum=0.9)), recipe)
    opt_state = tx.init(params)
    updates, opt_state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "key": jax.random.key(7)}


def assert_equal(a, b):
    raw = lambda t: jax.tree.map(
        lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, t
    )
    a, b = raw(a), raw(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_keeps_the_newest_k_and_reshards_onto_another_mesh(tmp_path):
    state = train_state(8)
    with jc.train.Checkpoints(tmp_path, keep=2, every=2) as ckpt:
        saved = [ckpt.save(s, state, data_position={"example": 32 * s}) for s in range(1, 7)]
        ckpt.wait()
        assert saved == [False, True, False, True, False, True] and ckpt.steps == [4, 6]
    like = train_state(2)  # the same tree, sharded over 2 devices
    restored = jc.train.Checkpoints(tmp_path).restore(like)
    assert restored.step == 6 and restored.data_position == {"example": 192}
    assert_equal(restored.state, state)
    assert jax.random.key_impl(restored.state["key"]) == jax.random.key_impl(state["key"])
    for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(like), strict=True):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    masks = jc.masks_of(jc.optim.compression_state(restored.state["opt_state"]))
    assert masks["Dense_0/kernel"].bits.sharding.mesh.size == 2


def damage(step_dir):
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))


# A failed read leaves tensorstore callbacks that reach orbax's closed event loop: noise on stderr, not an error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_skipped_kept_aside_and_the_previous_one_used(tmp_path):
    state = train_state(8)
    ckpt = jc.train.Checkpoints(tmp_path, keep=3)
    ckpt.save(1, state)
    ckpt.save(2, jax.tree.map(lambda x: x, state), data_position=2)
    ckpt.wait()
    damage(tmp_path / "2")
    with pytest.warns(
        jc.train.CheckpointSkipped, match=r"Skipping checkpoint 2 in .*moved to 2.unreadable; trying step 1"
    ):
        restored = ckpt.restore(state)
    assert restored.step == 1
    assert (tmp_path / "2.unreadable").is_dir() and ckpt.steps == [1]
    assert ckpt.save(2, state)  # the step can be saved again
    ckpt.close()


def test_a_partial_save_is_ignored(tmp_path):
    state = train_state(8)
    with jc.train.Checkpoints(tmp_path) as ckpt:
        ckpt.save(3, state)
    # What a process killed mid-save leaves: orbax's temporary directory, never renamed to its step.
    partial = tmp_path / "5.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = jc.train.Checkpoints(tmp_path)
        assert ckpt.steps == [3] and ckpt.restore(state).step == 3
    ckpt.close()


def test_wrong_tree_bad_step_and_bad_arguments_are_clear_errors(tmp_path):
    state = train_state(8)
    with jc.train.Checkpoints(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        other = {**state, "params": {"Dense_0": {"kernel": jnp.zeros((8, 8)), "bias": jnp.ones(16)}}}
        with pytest.raises(ValueError, match="`like` does not match checkpoint 1"):
            ckpt.restore(other)
        assert ckpt.steps == [1]  # a wrong tree is the caller's error: the checkpoint stays
        with pytest.raises(ValueError, match=r"`step` 4 has no checkpoint .* found steps \[1\]"):
            ckpt.restore(state, step=4)
        with pytest.raises(ValueError, match="`step` must be a non-negative int"):
            ckpt.save(-1, state)
        assert jc.train.Checkpoints(tmp_path / "empty").restore(state) is None
    with pytest.raises(ValueError, match="`keep` must be a positive int"):
        jc.train.Checkpoints(tmp_path, keep=0)
