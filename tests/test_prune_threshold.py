"""The sort-free selection: exact against a numpy stable sort, on hard inputs, in few passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress._src.prune import threshold

SHAPES = [(37, 29), (211,), (5, 4, 3)]  # 1,364 entries over three arrays
TOTAL = sum(int(np.prod(s)) for s in SHAPES)


def numpy_keep(arrays: list[np.ndarray], n_prune: int) -> np.ndarray:
    """Reference: prune the n smallest (float order, NaN highest), ties by array then index."""
    flat = np.concatenate([a.astype(np.float32).ravel() for a in arrays])
    order = np.argsort(np.where(np.isnan(flat), np.inf, flat), kind="stable")
    keep = np.ones(flat.size, bool)
    keep[order[:n_prune]] = False
    return keep


def draw(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    def one(shape):
        if kind == "normal":
            return rng.normal(size=shape)
        if kind == "abs-laplace":
            return np.abs(rng.laplace(size=shape))
        if kind == "few-values":  # heavy ties
            return rng.integers(0, 4, size=shape).astype(float)
        if kind == "mostly-zero":  # a pruned layer at the next refresh
            return np.where(rng.random(shape) < 0.8, 0.0, rng.normal(size=shape))
        if kind == "bfloat16":
            return np.asarray(jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(jnp.float32))
        if kind == "scales":  # 60 orders of magnitude
            return np.exp(rng.normal(scale=20.0, size=shape))
        if kind == "signed-zeros":
            return rng.choice([-0.0, 0.0, -1e-30, 1e-30, -1.0, 1.0], size=shape)
        raise AssertionError(kind)

    return [one(s).astype(np.float32) for s in SHAPES]


@pytest.fixture(scope="module")
def select():
    return jax.jit(lambda arrays, n: threshold.keep_largest(arrays, n))


@pytest.mark.parametrize(
    "kind", ["normal", "abs-laplace", "few-values", "mostly-zero", "bfloat16", "scales", "signed-zeros"]
)
def test_exact_against_stable_sort(select, kind):
    rng = np.random.default_rng(len(kind))
    arrays = draw(kind, rng)
    for n in [0, 1, 2, TOTAL // 2, round(0.92 * TOTAL), TOTAL - 1, TOTAL, int(rng.integers(0, TOTAL))]:
        keeps = select([jnp.asarray(a) for a in arrays], n)
        got = np.concatenate([np.asarray(k).ravel() for k in keeps])
        np.testing.assert_array_equal(got, numpy_keep(arrays, n), err_msg=f"{kind}, n={n}")


@pytest.mark.parametrize("kind", ["normal", "few-values", "mostly-zero", "bfloat16", "signed-zeros"])
def test_scores_computed_inside_the_search_match_stored_scores(kind):
    # select(w, score=|.|) never stores |w| or its keys; it must prune exactly
    # what select(|w|) and the numpy reference prune, ties (by index) included.
    rng = np.random.default_rng(len(kind) + 1)
    arrays = draw(kind, rng)
    search = jax.jit(lambda arrays, n: threshold.select([arrays], [n], score=jnp.abs)[0])
    for n in [0, 1, TOTAL // 3, round(0.9 * TOTAL), TOTAL]:
        got = np.concatenate([np.asarray(k).ravel() for k in search([jnp.asarray(a) for a in arrays], n)])
        np.testing.assert_array_equal(got, numpy_keep([np.abs(a) for a in arrays], n), err_msg=f"{kind}, n={n}")


def test_kth_key_reports_counts_and_ends_fast():
    rng = np.random.default_rng(0)
    search = jax.jit(lambda keys, k: threshold.kth_key(keys, k))
    for kind in ["normal", "scales", "few-values", "mostly-zero"]:
        arrays = draw(kind, rng)
        keys = [threshold.sortable_keys(jnp.asarray(a)) for a in arrays]
        flat = np.sort(np.concatenate([np.asarray(k).ravel() for k in keys]))
        for k in [1, 100, TOTAL // 2, TOTAL - 5, TOTAL]:
            t, n_lt, n_le, passes = search(keys, k)
            check_kth(flat, k, t, n_lt, n_le)
            assert int(passes) <= 26, (kind, k, int(passes))  # the bound the search guarantees


def check_kth(flat: np.ndarray, k: int, t, n_lt, n_le) -> None:
    """A search result against the sorted keys ``flat``: a cut, or the k-th key with its counts."""
    t, n_lt, n_le = int(t), int(n_lt), int(n_le)
    if n_lt == k:  # a cut: exactly k keys below t
        assert n_le == k and int(np.sum(flat < t)) == k
    else:  # the k-th key, with the counts below and at it
        assert t == flat[k - 1]
        assert n_lt == int(np.sum(flat < t)) and n_le == int(np.sum(flat <= t))


def test_sortable_keys_keep_float_order():
    values = np.array([-np.inf, -3.0, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], np.float32)
    keys = np.asarray(threshold.sortable_keys(jnp.asarray(values)))
    assert keys[3] == keys[4]  # -0.0 == +0.0, as floats compare
    assert np.all(np.diff(np.delete(keys, 3).astype(np.int64)) > 0)


def test_batched_groups_each_get_their_exact_count():
    rng = np.random.default_rng(7)
    shapes = [[(13, 7), (5,)], [(40, 30)], [(9, 4, 2)]]
    kinds = ["normal", "few-values", "bfloat16"]
    for trial in range(6):
        groups = []
        for i, group_shapes in enumerate(shapes):
            kind = kinds[(trial + i) % 3]
            pool = np.concatenate([a.ravel() for a in draw(kind, rng)])
            groups.append([pool[: int(np.prod(s))].reshape(s) for s in group_shapes])
        totals = [sum(a.size for a in g) for g in groups]
        ns = [0, totals[1], 1] if trial == 0 else [int(rng.integers(0, t + 1)) for t in totals]
        keeps = threshold.select([[jnp.asarray(a) for a in g] for g in groups], ns)
        for g, n, group_keeps in zip(groups, ns, keeps, strict=True):
            got = np.concatenate([np.asarray(k).ravel() for k in group_keeps])
            np.testing.assert_array_equal(got, numpy_keep(g, n), err_msg=f"trial {trial}, n={n}")


def test_any_first_pivots_give_the_same_answer_and_samples_save_passes():
    # The first pivots only steer the search: good, bad or degenerate, the
    # answer is the same. Sample-placed ones must also save passes overall.
    rng = np.random.default_rng(3)
    search = jax.jit(lambda keys, k, first: threshold.kth_keys([keys], k, first_pivots=first))
    plain = jax.jit(lambda keys, k: threshold.kth_keys([keys], k))
    sampled = jax.jit(lambda arrays, k: threshold.sample_pivots([arrays], k))
    passes = {"sample": 0, "extremes": 0}
    for kind in ["normal", "abs-laplace", "few-values", "mostly-zero", "scales"]:
        arrays = [jnp.asarray(a) for a in draw(kind, rng)]
        keys = [threshold.sortable_keys(a) for a in arrays]
        flat = np.sort(np.concatenate([np.asarray(x).ravel() for x in keys]))
        for q in [0.3, 0.5, 0.8, 0.9, 0.97]:
            k = jnp.array([round(q * TOTAL)])
            random_pivots = jnp.sort(jnp.asarray(rng.integers(0, 2**32 - 1, (1, 6), dtype=np.uint32)), axis=1)
            extremes = [jnp.zeros((1, 6), jnp.uint32), jnp.full((1, 6), 2**32 - 2, jnp.uint32)]
            for first in [sampled(arrays, k), random_pivots, *extremes]:
                t, n_lt, n_le, _ = search(keys, k, first)
                check_kth(flat, int(k[0]), t[0], n_lt[0], n_le[0])
            passes["sample"] += int(search(keys, k, sampled(arrays, k))[3])
            passes["extremes"] += int(plain(keys, k)[3])
    assert passes["sample"] < 0.9 * passes["extremes"], passes
