"""N:M, channel and block pruning: every group valid, whole slices and blocks, exact counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress._src.prune import structures


def tree(seed=0):
    """A Dense kernel (in=16, out=6) and a conv kernel HWIO (3, 3, 8, 4)."""
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "dense": jax.random.normal(k[0], (16, 6)),
        "conv": jax.random.normal(k[1], (3, 3, 8, 4)),
        "bias": jnp.ones((6,)),
    }


def groups_along_input(w: np.ndarray, m: int) -> np.ndarray:
    """(..., groups, m) view with groups of m consecutive entries along the input axis (-2)."""
    moved = np.moveaxis(w, -2, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 8)])
def test_every_group_keeps_exactly_n_largest(n, m):
    params = tree()
    pruned, _ = jax.jit(lambda p: jc.compress(jc.prune.n_m(n, m), p))(params)
    for path in ("dense", "conv"):
        w, kept = np.asarray(params[path]), np.asarray(pruned[path]) != 0
        kept_groups = groups_along_input(kept, m)
        assert np.all(kept_groups.sum(-1) == n), path
        # The survivors are the n largest |w| of their group.
        mags = groups_along_input(np.abs(w), m)
        smallest_kept = np.where(kept_groups, mags, np.inf).min(-1)
        largest_pruned = np.where(kept_groups, -np.inf, mags).max(-1)
        assert np.all(smallest_kept >= largest_pruned), path
    np.testing.assert_array_equal(pruned["bias"], params["bias"])


def test_n_m_follows_the_schedule():
    schedule = jc.schedules.polynomial(0.0, 0.5, begin=0, end=6)
    t = jc.prune.n_m(2, 4, schedule, rule="dense")
    params = tree()
    traces = []

    @jax.jit
    def update(params, state):
        traces.append(1)
        return t.update(params, state)

    state = t.init(params)
    size = params["dense"].size
    for step in range(8):
        state = update(params, state)
        keep = np.asarray(state.masks.keep["dense"].unpack())
        s = float(schedule(step))
        assert (~keep).sum() == round(s / 0.5 * 2 * (size // 4)), step  # exact layer count on the ramp
        per_group = groups_along_input(~keep, 4).sum(-1)
        assert per_group.max() - per_group.min() <= 1 and per_group.max() <= 2  # groups differ by at most one
    assert np.all(groups_along_input(keep, 4).sum(-1) == 2)  # and end exactly 2:4
    assert len(traces) == 1


@pytest.mark.parametrize("axis, norm", [(-1, "l2"), (-2, "l1")])
def test_channel_pruning_zeroes_whole_slices(axis, norm):
    params = tree(1)
    pruned, _ = jax.jit(lambda p: jc.compress(jc.prune.channel(0.5, axis=axis, norm=norm), p))(params)
    for path in ("dense", "conv"):
        w = np.moveaxis(np.asarray(params[path]), axis, 0).reshape(params[path].shape[axis], -1)
        kept = np.moveaxis(np.asarray(pruned[path]) != 0, axis, 0).reshape(w.shape)
        alive = kept.all(1)
        assert np.all(kept.all(1) | ~kept.any(1)), "slices are kept or pruned whole"
        assert (~alive).sum() == round(0.5 * w.shape[0])
        norms = np.abs(w).sum(1) if norm == "l1" else np.sqrt((w**2).sum(1))
        assert norms[alive].min() >= norms[~alive].max()


def test_channel_global_prunes_across_layers():
    params = {"a": jnp.arange(1.0, 9.0).reshape(2, 4), "b": 10 * jnp.arange(1.0, 7.0).reshape(3, 2)}
    pruned, _ = jc.compress(jc.prune.channel(0.5, scope="global", norm="l1"), params)
    assert int(jnp.sum(jnp.all(pruned["a"] == 0, axis=0))) == 3  # 3 of the 6 columns, all from the small layer
    assert int(jnp.sum(jnp.all(pruned["b"] == 0, axis=0))) == 0


def test_block_pruning_zeroes_whole_blocks():
    params = tree(2)
    pruned, _ = jax.jit(lambda p: jc.compress(jc.prune.block(0.75, (4, 2)), p))(params)
    for path in ("dense", "conv"):
        w = np.asarray(params[path])
        lead = w.shape[:-2]
        tiles = np.abs(w).reshape(*lead, w.shape[-2] // 4, 4, w.shape[-1] // 2, 2)
        kept = (np.asarray(pruned[path]) != 0).reshape(tiles.shape)
        kept_tiles = kept.any(axis=(-3, -1))
        assert np.all(kept.all(axis=(-3, -1)) == kept_tiles), "blocks are kept or pruned whole"
        assert (~kept_tiles).sum() == round(0.75 * kept_tiles.size)
        sums = tiles.sum(axis=(-3, -1))
        assert sums[kept_tiles].min() >= sums[~kept_tiles].max()


def test_structures_select_exactly_the_counted_units():
    scores = [[jnp.arange(8.0).reshape(2, 4)], [-jnp.arange(8.0)]]
    ((keep_a,), (keep_b,)) = structures.Unstructured().select(scores, [jnp.int32(3), jnp.int32(5)])
    np.testing.assert_array_equal(keep_a, np.arange(8).reshape(2, 4) >= 3)
    np.testing.assert_array_equal(keep_b, np.arange(8) < 3)  # the 5 lowest of -i are the largest i
