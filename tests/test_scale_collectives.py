"""Global decisions on sharded arrays exchange a few scalars, never a gathered leaf.

Calibration ranges (min-max, percentile, MSE search), the activation ranges the
training hooks observe and ERK-budgeted magnitude masks are compiled for inputs
sharded over 8 simulated CPU devices; every collective in the compiled HLO is
parsed and its bytes summed (per execution: a collective inside the search loop
runs once a pass). The results equal single-device ones (computed by jnp or
numpy, to spare compiles). The sort-free percentile they rest on is checked
against numpy.
"""

import math

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import collectives
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcompress as jc
from jaxcompress._src.prune import threshold
from jaxcompress._src.quant.calibration import exact_percentile

BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4}
SYMMETRIC = jc.quant.ActivationConfig(8, True, True, "static", False, 0.9, (), ())
# An activation batch of 1 MiB: 256 rows, 32 per device.
ACTIVATION = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32) * np.linspace(
    0.5, 2.0, 1024, dtype=np.float32
)


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py (jax.device_count() < 8)")
    return Mesh(np.array(jax.devices()[:8]), ("data",))


PERCENTILE = jax.jit(exact_percentile, static_argnames="score")  # one compile per shape and score, q traced
KTH = jax.jit(lambda x, k: threshold.kth_values([x], k))


def compiled_with_collectives(fn, *args):
    """``jax.jit(fn)`` compiled for ``args``, and the (kind, elements, dtype) of every collective in it."""
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, collectives(compiled.as_text())


def assert_tiny(found: list[tuple[str, int, str]], input_bytes: int) -> int:
    """Every collective moves at most one scalar per device, all of them together at most 0.1% of the input."""
    total = sum(n * BYTES[dtype] for _, n, dtype in found)
    assert all(n <= 8 for _, n, _ in found), found
    assert total <= 0.001 * input_bytes, (total, found)
    return total


def slack(values: np.ndarray) -> np.float32:
    """How far XLA's rewrites may move a percentile (traced ``q``) from :func:`f32_formula`.

    The position of a traced ``q`` may be rounded as ``q * ((n - 1) / 100)``
    (a few ulps of ``pos``, times the gap between the order statistics), and
    a product may fuse with the sum into an FMA (an ulp of the largest value).
    """
    finite = np.abs(values[np.isfinite(values)]).astype(np.float32)
    largest = finite.max() if finite.size else np.float32(0)
    return np.float32(4) * np.spacing(np.float32(values.size)) * (2 * largest) + np.spacing(largest)


def f32_formula(values: np.ndarray, q: float) -> np.float32:
    """jnp.percentile's linear interpolation, in float32 on the sorted values (NaN if any value is NaN)."""
    v = np.sort(values.astype(np.float32).ravel())
    n32 = np.float32(v.size)
    pos = np.float32(q) / np.float32(100) * (n32 - np.float32(1))
    low, high = int(np.clip(np.floor(pos), 0, v.size - 1)), int(np.clip(np.ceil(pos), 0, v.size - 1))
    w = pos - np.floor(pos)
    with np.errstate(invalid="ignore"):
        value = v[low] * (np.float32(1) - w) + v[high] * w
    return np.float32(np.nan) if np.isnan(v).any() else value


# --- (a) calibration ranges --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibration_range_on_a_sharded_batch(mesh, method):
    x = jnp.asarray(ACTIVATION)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    observe = lambda a: jc.quant.observe_range(a, SYMMETRIC, method=method, percentile=99.0, candidates=50)
    compiled, found = compiled_with_collectives(observe, sharded)
    assert found, "the range does reduce across devices"
    assert_tiny(found, x.nbytes)

    got = compiled(sharded)
    if method == "percentile":  # one device: jnp's sort, compiled alike (the same float32 ops), and numpy's
        want = jax.jit(lambda a: jnp.percentile(jnp.abs(a), 99.0))(x)
        # numpy places the position in float64: the same order statistics, weights within float32 rounding.
        np.testing.assert_allclose(got.hi, np.percentile(np.abs(ACTIVATION), 99.0), rtol=1e-6)
    else:
        want = jax.jit(observe)(x).hi
    np.testing.assert_array_equal([got.lo, got.hi], [-want, want])


def test_calibrate_on_sharded_batches(mesh):
    # Asymmetric ranges: the 0.1st and 99.9th percentiles of x itself, averaged over the batches.
    model = nn.Dense(4)
    params = model.init(jax.random.key(1), jnp.ones((1, 1024)))["params"]
    aq = jc.quant.activations(8, mode="static", symmetric=False)
    batches = [ACTIVATION[:128], ACTIVATION[128:]]
    sharded = [jax.device_put(b, NamedSharding(mesh, P("data", None))) for b in batches]
    run = lambda p, x: model.apply({"params": p}, x)
    got = jc.quant.calibrate(run, params, aq.init(params), sharded, method="percentile", percentile=99.9).inputs[""]

    one_device = jax.jit(lambda b: jnp.stack([jnp.percentile(b, 0.1), jnp.percentile(b, 99.9)]))
    per_batch = [np.asarray(one_device(b)) for b in batches]
    np.testing.assert_array_equal([got.lo, got.hi], (per_batch[0] + per_batch[1]) / np.float32(2))
    expected = np.mean([[np.percentile(b, 0.1), np.percentile(b, 99.9)] for b in batches], axis=0)
    np.testing.assert_allclose([got.lo, got.hi], expected, rtol=1e-5)


# --- (b) the activation ranges the training hooks observe ------------------------------------


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))  # Dense_0
        return nn.Dense(16)(x)  # Dense_1


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_hook_ranges_on_a_sharded_batch(mesh, symmetric):
    model = MLP()
    x = jnp.asarray(ACTIVATION)
    params = model.init(jax.random.key(2), x[:1])["params"]
    cstate = jc.quant.activations(8, mode="static", symmetric=symmetric, outputs=True).init(params)

    def forward(p, batch):
        with jc.quant.quantize_activations(cstate) as observed:
            y = model.apply({"params": p}, batch)
        return y, observed.ranges

    sharded = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    compiled, found = compiled_with_collectives(forward, params, sharded)
    assert found, "the batch ranges do reduce across devices"
    assert_tiny(found, x.nbytes)

    (want_y, want), (got_y, got) = jax.jit(forward)(params, x), compiled(params, sharded)
    assert got_y.sharding.spec[0] == "data" and got_y.shape == want_y.shape  # the outputs stay sharded
    assert set(got["inputs"]) == set(got["outputs"]) == {"Dense_0", "Dense_1"}
    first, first_want = got["inputs"]["Dense_0"], want["inputs"]["Dense_0"]  # the batch's own range: exact
    np.testing.assert_array_equal([first.lo, first.hi], [first_want.lo, first_want.hi])
    # Later sites see matmul outputs, which per-device row blocks round differently in the last bit.
    for kind in ("inputs", "outputs"):
        for module, r in want[kind].items():
            np.testing.assert_allclose([got[kind][module].lo, got[kind][module].hi], [r.lo, r.hi], rtol=1e-6)


# --- (c) ERK budgets refreshing masks on FSDP-sharded params ----------------------------------


def unpacked(mask) -> np.ndarray:
    """A packed mask's booleans, unpacked by numpy (bit i of byte r is row 8r + i of the flattened leading axes)."""
    rows = math.prod(mask.shape[:-1])
    return np.unpackbits(np.asarray(mask.bits), axis=0, bitorder="little")[:rows].reshape(mask.shape) == 1


def numpy_masks(weights: np.ndarray, n_prune: int) -> np.ndarray:
    """Keep-mask pruning the ``n_prune`` smallest ``|w|``, ties by row-major index (the selection's order)."""
    keep = np.ones(weights.size, bool)
    keep[np.argsort(np.abs(weights).ravel(), kind="stable")[:n_prune]] = False
    return keep.reshape(weights.shape)


def test_erk_masks_on_fsdp_sharded_params(mesh):
    rng = np.random.default_rng(3)
    params = {
        "Dense_0": {"kernel": rng.normal(size=(1024, 512)).astype(np.float32), "bias": np.zeros(512, np.float32)},
        "Dense_1": {"kernel": rng.normal(size=(512, 64)).astype(np.float32) * 2, "bias": np.zeros(64, np.float32)},
    }
    # FSDP: each kernel's rows split over all devices (whole mask bytes: 8 rows each, per shard).
    specs = {"Dense_0": {"kernel": P("data", None), "bias": P()}, "Dense_1": {"kernel": P("data", None), "bias": P()}}
    sharded = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    t = jc.prune.magnitude(0.9, distribution="erk")
    state = t.init(params)
    compiled, found = compiled_with_collectives(lambda p, s: t.update(p, s).masks.keep, sharded, state)
    assert_tiny(found, sum(params[m]["kernel"].nbytes for m in params))

    got = compiled(sharded, state)
    shapes = [params[m]["kernel"].shape for m in params]
    for module, shape, s in zip(params, shapes, jc.prune.erk(shapes, 0.9), strict=True):
        budget = int(jnp.round(s * math.prod(shape)))  # the leaf's ERK share, rounded as the pruner does
        want = numpy_masks(params[module]["kernel"], budget)
        np.testing.assert_array_equal(unpacked(got[f"{module}/kernel"]), want, err_msg=module)


# --- the sort-free percentile against numpy ---------------------------------------------------

HARD = {  # eight values each (one compile per score)
    "ties": [3.0, 1.0, 3.0, 3.0, 1.0, 2.0, 3.0, 2.0],
    "negative": list(-np.exp(np.linspace(-3.0, 3.0, 8))),
    "signed-zeros": [-0.0, 0.0, -1e-30, 1e-30, -1.0, 1.0, 0.0, -0.0],
    "infinities": [-np.inf, 1.0, np.inf, 2.0, -3.0, 0.5, -np.inf, 4.0],
    "all-equal": [7.0] * 8,
}


@pytest.mark.parametrize("kind", list(HARD))
def test_percentile_on_hard_inputs(kind):
    x = np.asarray(HARD[kind], np.float32)
    for q in [0.0, 1.0, 37.5, 50.0, 99.99, 100.0]:
        for score, values in [(None, x), (jnp.abs, np.abs(x))]:
            got = np.asarray(PERCENTILE(jnp.asarray(x), jnp.float32(q), score=score))
            want = f32_formula(values, q)
            if not np.isfinite(want):
                np.testing.assert_array_equal(got, want)
                continue
            np.testing.assert_allclose(got, want, rtol=0, atol=slack(values))
            if kind != "infinities":  # numpy interpolates a + (b - a) * w: NaN between infinities
                np.testing.assert_allclose(got, np.percentile(values, q), rtol=1e-5, atol=1e-4 * np.ptp(values))
        if q in (0.0, 100.0) and kind != "infinities":  # whole positions are order statistics: exact
            assert got == np.percentile(values, q)  # (with infinities, jnp's inf * 0 weight makes NaN)


def test_percentile_of_one_value_and_of_nan():
    for q in [0.0, 42.0, 100.0]:
        assert PERCENTILE(jnp.asarray([-2.5]), jnp.float32(q)) == np.float32(-2.5)
    x = jnp.asarray([1.0, jnp.nan, 3.0, 2.0, -1.0, 0.0, 5.0, 4.0])
    assert np.isnan(PERCENTILE(x, jnp.float32(50.0))) and np.isnan(PERCENTILE(-x, jnp.float32(0.0)))


def test_percentile_bad_input():
    x = jnp.asarray([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"`q` must be a number in \[0, 100\]"):
        exact_percentile(x, 101.0)
    with pytest.raises(ValueError, match="empty"):
        exact_percentile(jnp.zeros((0, 3)), 50.0)
    with pytest.raises(ValueError, match="floating-point"):
        exact_percentile(jnp.arange(3), 50.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        jc.quant.observe_range(x, SYMMETRIC, method="median")
    with pytest.raises(ValueError, match=r"`percentile` must be a number in \(0, 100\]"):
        jc.quant.observe_range(x, SYMMETRIC, method="percentile", percentile=0.0)
    with pytest.raises(ValueError, match="no entry"):
        threshold.kth_values([jnp.zeros((2, 0))], 1)


@settings(max_examples=10, deadline=None)
@given(
    x=st.sampled_from([1, 8]).flatmap(
        lambda n: hnp.arrays(np.float32, n, elements=st.integers(-4, 4).map(float) | st.floats(-1e3, 1e3, width=32))
    ),
    q=st.floats(0.0, 100.0),
)
def test_percentile_equals_numpy(x, q):
    got = np.asarray(PERCENTILE(jnp.asarray(x), jnp.float32(q)))
    np.testing.assert_allclose(got, f32_formula(x, q), rtol=0, atol=slack(x))
    # numpy places the position in float64: weights within float32 rounding of it, times the gap.
    np.testing.assert_allclose(got, np.percentile(x, q), rtol=1e-5, atol=1e-4 * np.ptp(x))


@pytest.mark.parametrize("kind", ["ties", "signed-zeros", "negative", "all-equal"])
def test_kth_values_are_the_order_statistics(kind):
    x = np.asarray(HARD[kind], np.float32)
    values = np.sort(np.where(x == 0, np.float32(0), x))  # -0.0 comes back as 0.0
    for k in range(1, x.size + 1):
        found = KTH(jnp.asarray(x), jnp.int32(k))
        assert found.kth == values[k - 1] and found.next == values[min(k, x.size - 1)], k
        assert not found.any_nan
