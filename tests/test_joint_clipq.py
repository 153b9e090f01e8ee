"""CLIP-Q: clip + partition against a numpy reference, exact zeros, integer form, straight-through gradients,
one trace, config checks, the size model and the greedy search on a toy problem."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import make_params, standard_promotion

import jaxcompress as jc
from jaxcompress.joint import ClipQState, clip_q, clip_q_bytes, clip_q_quantize, clip_q_search


def numpy_clip_q(w: np.ndarray, p: float, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, codebook)`` by the paper's rule as the module documents it, written out with numpy.

    Clip: of each sign, the ``round(p n_sign)`` weights nearest zero (ties in index order), and every exact zero.
    Partition: the kept negatives' and positives' ranges get ``m_-`` and ``M - m_-`` equal intervals
    (``m_-`` in proportion to the ranges' lengths); entry = the members' mean, an empty interval's midpoint.
    """
    x = np.asarray(w, np.float32).reshape(-1)
    clipped = x == 0
    for side in (x > 0, x < 0):
        members = np.flatnonzero(side)
        k = int(np.round(np.float32(p) * np.float32(members.size)))
        clipped[members[np.argsort(np.abs(x[members]), kind="stable")[:k]]] = True
    m = 2**bits - 1
    neg, pos = (x < 0) & ~clipped, (x > 0) & ~clipped
    lo_n, hi_n = (x[neg].min(), x[neg].max()) if neg.any() else (np.float32(0), np.float32(0))
    lo_p, hi_p = (x[pos].min(), x[pos].max()) if pos.any() else (np.float32(0), np.float32(0))
    len_n, len_p = np.float32(hi_n - lo_n), np.float32(hi_p - lo_p)
    total = np.float32(len_n + len_p)
    share = len_n * (np.float32(1) / total) if total > 0 else np.float32(0.5)
    m_n = m if neg.any() else 0  # all M to the only sign kept
    if neg.any() and pos.any():  # in proportion to the ranges' lengths, at least one each
        m_n = int(np.clip(np.round(np.float32(m) * share), 1, m - 1))
    m_p = m - m_n

    def interval(v, lo, length, count):
        if length == 0:
            return np.zeros(v.shape, np.int64)
        inv = np.float32(count) * (np.float32(1) / length)
        return np.clip(np.floor((v - lo) * inv).astype(np.int64), 0, count - 1)

    codes = np.zeros(x.size, np.int64)
    codes[neg] = 1 + interval(x[neg], lo_n, len_n, m_n)
    codes[pos] = 1 + m_n + interval(x[pos], lo_p, len_p, m_p)
    codebook = np.zeros(m + 1, np.float64)
    for c in range(1, m + 1):
        members = x[(codes == c) & (neg | pos)]
        if members.size:
            codebook[c] = members.astype(np.float64).mean()
        elif c - 1 < m_n:
            codebook[c] = lo_n + (c - 1 + 0.5) * len_n / m_n
        else:
            codebook[c] = lo_p + (c - 1 - m_n + 0.5) * len_p / m_p
    return codes.reshape(np.shape(w)), codebook


def numpy_dequantized(w: np.ndarray, p: float, bits: int) -> np.ndarray:
    codes, codebook = numpy_clip_q(w, p, bits)
    return codebook[codes]


@pytest.mark.parametrize("bits", [2, 8])
def test_clip_and_partition_match_the_numpy_reference(bits):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((12, 17)) ** 3 + 0.3).astype(np.float32)  # skewed, heavy-tailed
    w[0, :3] = 0.0  # exact zeros: clipped, counted toward neither sign
    w[1, :4] = w[2, 0]  # repeated values
    n_pos, n_neg = int((w > 0).sum()), int((w < 0).sum())
    for p in (0.0, 0.3, 0.5, 0.9):  # the fraction is traced: one program per bit width
        iw = clip_q_quantize(jnp.asarray(w), p, bits)
        codes_ref, codebook_ref = numpy_clip_q(w, p, bits)
        stored = iw.stored()
        assert stored.codes.dtype == jnp.uint8 and iw.codebook.shape == (2**bits,)
        np.testing.assert_array_equal(stored.codes, codes_ref)
        np.testing.assert_allclose(iw.codebook, codebook_ref, rtol=2e-6, atol=1e-7)
        assert int((codes_ref == 0).sum()) == 3 + round(np.float32(p) * n_pos) + round(np.float32(p) * n_neg)
        book = np.asarray(iw.codebook)
        assert book[0] == 0.0 and np.all(np.diff(book[1:]) >= 0)  # the zero, then the intervals ascending
        assert np.all(np.sign(book[codes_ref]) == np.sign(np.where(codes_ref == 0, 0.0, w)))  # no mixed signs
    if bits == 8:  # some intervals are empty: their entries are midpoints
        assert len(np.unique(codes_ref)) < 2**bits


def test_ties_at_a_threshold_are_clipped_in_index_order_and_degenerate_layers():
    ties = np.array([0.1, 0.1, 0.1, 0.5, 1.0, -0.2, -0.2, -1.0], np.float32)  # k_+ = round(0.4 * 5), k_- = 1
    codes = np.asarray(clip_q_quantize(jnp.asarray(ties), 0.4, 2).stored().codes)
    np.testing.assert_array_equal(np.flatnonzero(codes == 0), [0, 1, 5])
    np.testing.assert_array_equal(codes, numpy_clip_q(ties, 0.4, 2)[0])
    positives = np.array([0.5, 1.0, 2.0, 3.0, 3.5, 4.0, 6.0, 8.0], np.float32)  # all 3 intervals theirs
    iw = clip_q_quantize(jnp.asarray(positives), 0.25, 2)
    np.testing.assert_array_equal(iw.stored().codes, numpy_clip_q(positives, 0.25, 2)[0])
    np.testing.assert_allclose(iw.dequantize(), numpy_dequantized(positives, 0.25, 2), rtol=1e-6)
    assert iw.dequantize().tolist()[:2] == [0.0, 0.0]
    zeros = clip_q_quantize(jnp.zeros(8), 0.5, 2)
    assert not np.any(np.asarray(zeros.dequantize())) and not np.any(np.asarray(zeros.stored().codes))
    constant = clip_q_quantize(jnp.full((8,), -2.0), 0.0, 2)
    assert constant.dequantize().tolist() == [-2.0] * 8


@pytest.fixture(scope="module")
def setting():
    params = make_params()
    config = {"Conv_0/kernel": (0.5, 3), "Dense_0/kernel": (0.8, 4), "Dense_1/kernel": (0.3, 2)}
    recipe = clip_q(config)
    return params, config, recipe, recipe.init(params)


def test_clipped_weights_are_exactly_zero_and_the_codes_dequantize_to_apply(setting):
    params, config, recipe, state = setting
    state = recipe.update(params, state)
    out = jc.paths.flatten(recipe.apply(params, state))[0]
    flat = jc.paths.flatten(params)[0]
    integer = jc.integer_weights(recipe, params, state)
    assert set(integer) == set(config) and jc.masks_of(state) == {}  # nothing frozen: clipped weights may return
    for path, iw in integer.items():
        p, bits = config[path]
        codes = np.asarray(iw.codes)
        assert iw.codes.dtype == jnp.uint8 and iw.bits == bits and codes.max() < 2**bits
        assert iw.codebook.shape == (2**bits,) and float(iw.codebook[0]) == 0.0
        np.testing.assert_array_equal(iw.dequantize(), out[path])  # bitwise
        np.testing.assert_array_equal(np.asarray(out[path])[codes == 0], 0.0)
        assert np.all(np.asarray(out[path])[codes != 0] != 0)
        assert abs((codes == 0).mean() - p) < 0.02
        np.testing.assert_array_equal(codes, numpy_clip_q(np.asarray(flat[path]), p, bits)[0])
    np.testing.assert_array_equal(out["Dense_0/bias"], flat["Dense_0/bias"])  # outside the rule: untouched


def test_the_gradient_is_straight_through_and_clipped_weights_come_back(setting):
    params, _, recipe, state = setting
    path = "Dense_0/kernel"
    codes = np.asarray(jc.integer_weights(recipe, params, state)[path].codes)
    clipped = tuple(int(i) for i in np.argwhere(codes == 0)[0])
    upstream = jax.tree.map(lambda w: 0.01 * jax.random.normal(jax.random.key(3), w.shape), params)
    top = float(jnp.max(jnp.abs(params["Dense_0"]["kernel"])))
    upstream["Dense_0"]["kernel"] = upstream["Dense_0"]["kernel"].at[clipped].set(-2.0 * top)
    leaves = lambda tree: jax.tree.leaves(tree)
    loss = lambda p: sum(jnp.sum(a * c) for a, c in zip(leaves(recipe.apply(p, state)), leaves(upstream), strict=True))
    grads = jax.grad(loss)(params)
    for g, c in zip(leaves(grads), leaves(upstream), strict=True):
        np.testing.assert_array_equal(g, c)  # clipped weights included: they keep training
    tx = jc.optim.with_compression(standard_promotion(optax.sgd(1.0)), recipe)
    updates, opt_state = tx.update(grads, tx.init(params), params)
    trained = optax.apply_updates(params, updates)
    after = jc.integer_weights(recipe, trained, jc.optim.compression_state(opt_state))[path].codes
    assert int(after[clipped]) == 2**4 - 1  # the clipped weight grew back, now the layer's largest


def test_a_step_traces_once_and_a_new_fraction_does_not_retrace(setting):
    params, _, recipe, state = setting
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(None)
        state = recipe.update(params, state)
        return recipe.apply(params, state), state

    for i in range(3):
        shifted = jax.tree.map(lambda w, i=i: w + 0.1 * i, params)
        _, state = step(shifted, state)
    denser = state._replace(fractions={p: jnp.float32(0.1) for p in state.fractions})
    out_denser, _ = step(params, denser)
    assert len(traces) == 1 and int(state.count) == 3
    kernel = np.asarray(out_denser["Dense_0"]["kernel"])
    assert abs((kernel == 0).mean() - 0.1) < 0.02


def test_a_chained_pruners_zeros_stay_zero(setting):
    params, config, clipq, _ = setting
    recipe = jc.chain(jc.prune.magnitude(0.5), clipq)  # CLIP-Q then clips its fraction of the weights left
    state = recipe.update(params, recipe.init(params))
    out = jc.paths.flatten(recipe.apply(params, state))[0]
    for path, iw in jc.integer_weights(recipe, params, state).items():
        codes = np.asarray(iw.codes)
        assert abs((codes == 0).mean() - (0.5 + 0.5 * config[path][0])) < 0.02
        np.testing.assert_array_equal(iw.dequantize(), out[path])


def test_config_is_checked():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 3)), "bias": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"`config` must be a \(prune_fraction, bits\) pair"):
        clip_q("0.5, 4")
    with pytest.raises(ValueError, match=r"config\[0\] \(prune_fraction\)` must lie in \[0, 1\)"):
        clip_q((1.0, 4))
    with pytest.raises(ValueError, match=r"`config\[1\] \(bits\)` must be an integer in \[2, 8\], got 9"):
        clip_q((0.5, 9))
    with pytest.raises(TypeError, match=r"bits\)` must be an int"):
        clip_q((0.5, 4.0))
    with pytest.raises(TypeError, match=r"`config\['a'\]` must be a \(prune_fraction, bits\) pair"):
        clip_q({"a": (0.5,)})
    with pytest.raises(ValueError, match="empty mapping"):
        clip_q({})
    with pytest.raises(ValueError, match="`default` applies to a `config` mapping"):
        clip_q((0.5, 4), default=(0.5, 4))
    with pytest.raises(ValueError, match=r"names \['c'\], which the rule ndim >= 2 does not select"):
        clip_q({"a": (0.5, 4), "c": (0.5, 4)}, default=(0.1, 8)).init(params)
    with pytest.raises(ValueError, match=r"no \(prune_fraction, bits\) for the selected leaves \['b'\]"):
        clip_q({"a": (0.5, 4)}).init(params)
    state = clip_q({"a": (0.5, 4)}, default=(0.25, 8)).init(params)
    assert {p: float(f) for p, f in state.fractions.items()} == {"a": 0.5, "b": 0.25}
    assert isinstance(clip_q({"a": (0.5, 4)}, rule=jc.paths.named("a")).init(params), ClipQState)
    with pytest.raises(TypeError, match="must be the ClipQState"):
        clip_q((0.5, 4)).apply(params, jc.quant.int8().init(params))


def test_the_size_model():
    n = 10_000
    assert clip_q_bytes(n, 0.0, 8) == n + 4 * 256  # dense: no positions to store
    q = 0.3
    entropy = -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
    assert clip_q_bytes(n, 0.7, 4) == math.ceil((3000 * 4 + n * entropy) / 8) + 4 * 16
    assert clip_q_bytes(n, 0.7, 4, index_bits=5) == math.ceil(3000 * 9 / 8) + 64
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        clip_q_bytes(0, 0.5, 4)
    with pytest.raises(ValueError, match="`index_bits` must be a number >= 0"):
        clip_q_bytes(10, 0.5, 4, index_bits=-1)


CANDIDATES = [(0.0, 8), (0.5, 4), (0.75, 3), (0.9, 2)]


@pytest.fixture(scope="module")
def layers():
    rng = np.random.default_rng(0)
    return {  # the same size, so the easy layer's 100x smaller errors make it the cheaper to compress
        "hard": rng.standard_normal(512).astype(np.float32),
        "easy": (0.1 * rng.standard_normal(512)).astype(np.float32),
    }


def _mse_loss(layers, calls):
    def evaluate(config):
        calls.append(dict(config))
        return sum(float(np.mean((numpy_dequantized(layers[p], *c) - layers[p]) ** 2)) for p, c in config.items())

    return evaluate


def test_the_search_meets_the_target_and_compresses_the_cheaper_layer_first(layers):
    sizes = {p: w.size for p, w in layers.items()}
    start = sum(clip_q_bytes(n, 0.0, 8) for n in sizes.values())
    calls = []
    config, record = clip_q_search(_mse_loss(layers, calls), sizes, target_bytes=start // 2, candidates=CANDIDATES)
    assert record.bytes == sum(clip_q_bytes(sizes[p], *c) for p, c in config.items()) <= start // 2
    assert list(config) == ["hard", "easy"] and record.moves[0] == ("easy", (0.5, 4))
    easy_moves = [i for i, (p, _) in enumerate(record.moves) if p == "easy"]
    assert easy_moves == list(range(len(easy_moves))) and len(easy_moves) >= 2  # easy compressed before hard
    assert record.evaluations == len(calls) <= 1 + 2**2 * (len(CANDIDATES) - 1)
    assert record.loss == pytest.approx(_mse_loss(layers, [])(config))
    assert clip_q_search(_mse_loss(layers, []), sizes, target_bytes=start, candidates=CANDIDATES)[1].moves == ()


def test_the_search_refuses_an_unreachable_target_and_bad_arguments(layers):
    sizes = {p: w.size for p, w in layers.items()}
    smallest = sum(clip_q_bytes(n, 0.9, 2) for n in sizes.values())
    calls = []
    with pytest.raises(ValueError, match=rf"unreachable: .* the estimated size is {smallest} bytes"):
        clip_q_search(_mse_loss(layers, calls), sizes, target_bytes=smallest - 1, candidates=CANDIDATES)
    assert calls == []  # refused before any evaluation
    with pytest.raises(TypeError, match="`sizes` must be a non-empty mapping"):
        clip_q_search(lambda c: 0.0, [512], target_bytes=100)
    with pytest.raises(ValueError, match="`target_bytes` must be a positive number"):
        clip_q_search(lambda c: 0.0, sizes, target_bytes=0)
    with pytest.raises(TypeError, match=r"`candidates\[1\]` must be a \(prune_fraction, bits\) pair"):
        clip_q_search(lambda c: 0.0, sizes, target_bytes=100, candidates=[(0.0, 8), 4])
    with pytest.raises(TypeError, match="`evaluate` must return a number"):
        clip_q_search(lambda c: "low", sizes, target_bytes=2000)
    with pytest.raises(ValueError, match="`evaluate` returned nan"):
        clip_q_search(lambda c: float("nan"), sizes, target_bytes=2000)
