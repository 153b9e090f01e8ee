"""Activation quantization: hooks, dynamic/static/LSQ/PACT ranges, calibration, export interface, NNX."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcompress as jc
from jaxcompress import quant


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(6)(nn.LayerNorm()(x))


class Net(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", dtype=self.dtype)(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(16, dtype=self.dtype)(x))
        x = Block()(x)
        return nn.Dense(3, dtype=self.dtype)(x)


MODEL = Net()
X = jax.random.normal(jax.random.key(0), (8, 5, 5, 2))
PARAMS = MODEL.init(jax.random.key(1), X[:1])["params"]
MODULES = ["Conv_0", "Dense_0", "Block_0/Dense_0", "Dense_1"]


@contextlib.contextmanager
def recording(store):
    """Records every module's __call__ input and output (installed inside, it sees quantized inputs)."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and args:
            store["/".join(context.module.path)] = (args[0], out)
        return out

    with nn.intercept_methods(interceptor):
        yield


def run(cstate=None, params=PARAMS, x=X, model=MODEL):
    store = {}
    with contextlib.ExitStack() as stack:
        if cstate is not None:
            stack.enter_context(quant.quantize_activations(cstate))
        stack.enter_context(recording(store))
        y = model.apply({"params": params}, x)
    return y, store


def np_dynamic(x, bits=8):
    x = np.asarray(x, np.float32)
    scale = np.float32(np.abs(x).max() * (np.float32(1) / np.float32(2 ** (bits - 1) - 1)))
    return np.round(x * (np.float32(1) / scale)) * scale


def test_module_paths_and_a_rule_naming_no_module():
    state = quant.activations(8).init(PARAMS)
    assert sorted(state.config.modules) == sorted(MODULES)
    with pytest.raises(ValueError, match=r"selects no module\. Module paths seen") as info:
        quant.activations(8, rule="Attention").init(PARAMS)
    assert "Block_0/Dense_0" in str(info.value) and "LayerNorm" not in str(info.value)


def test_hooks_touch_exactly_the_selected_modules():
    cstate = quant.activations(2, rule="Block_0/Dense_0").init(PARAMS)
    y_float, float_io = run()
    y_q, q_io = run(cstate)
    assert sorted(q_io) == sorted(float_io)
    for path in ["Conv_0", "Dense_0", "Block_0/LayerNorm_0"]:  # upstream: untouched, bit for bit
        for a, b in zip(float_io[path], q_io[path], strict=True):
            np.testing.assert_array_equal(a, b)
    x_in = float_io["Block_0/Dense_0"][0]
    np.testing.assert_array_equal(q_io["Block_0/Dense_0"][0], np_dynamic(x_in, 2))  # its input, quantized
    assert not np.allclose(y_q, y_float)
    with quant.quantize_activations(cstate) as observed:
        MODEL.apply({"params": PARAMS}, X)
    assert observed.visited == ["Block_0/Dense_0"]
    np.testing.assert_array_equal(run()[0], y_float)  # nothing left behind after the context


def test_dynamic_and_export_convention_are_bitwise_identical():
    cstate = jc.chain(jc.quant.int8(), quant.activations(8)).init(PARAMS)
    raw, seen = {}, {}
    with recording(raw), quant.quantize_activations(cstate), recording(seen):  # inputs before and after
        MODEL.apply({"params": PARAMS}, X)
    iq = quant.input_quantization(cstate)
    assert sorted(iq) == sorted(MODULES) and all(q.dynamic and q.scale is None for q in iq.values())
    for m in MODULES:
        np.testing.assert_array_equal(seen[m][0], np_dynamic(raw[m][0], 8))
        codes, scale, zp = quant.quantize_input(raw[m][0], iq[m])
        assert codes.dtype == jnp.int8 and zp is None
        np.testing.assert_array_equal(codes.astype(jnp.float32) * scale, seen[m][0])


@pytest.mark.parametrize("symmetric, signed", [(True, True), (False, True), (False, False)])
def test_static_ranges_export_matches_fake_quant(symmetric, signed):
    aq = quant.activations(4, mode="static", symmetric=symmetric, signed=signed)
    state = aq.init(PARAMS)
    with pytest.raises(ValueError, match="was never observed"):
        quant.input_quantization(state)
    _, float_io = run()
    state = quant.calibrate(lambda p, x: MODEL.apply({"params": p}, x), PARAMS, state, [X[:4], X[4:]])
    _, q_io = run(state)
    iq = quant.input_quantization(state)["Conv_0"]
    assert not iq.dynamic and iq.scale.dtype == jnp.float32 and iq.symmetric == symmetric
    assert (iq.zero_point is None) == symmetric
    codes, scale, zp = quant.quantize_input(float_io["Conv_0"][0], iq)
    assert codes.dtype == (jnp.int8 if signed else jnp.uint8)
    zp = 0 if zp is None else zp
    np.testing.assert_array_equal((codes.astype(jnp.int32) - zp).astype(jnp.float32) * scale, q_io["Conv_0"][0])
    if not symmetric:  # zero is exactly representable
        zero_codes, _, _ = quant.quantize_input(jnp.zeros(3), iq)
        np.testing.assert_array_equal(zero_codes.astype(jnp.int32), int(iq.zero_point))


def np_observe(x, method, *, bits=8, p=99.0, k=20):
    x = np.asarray(x, np.float32).reshape(-1)
    if method in ("minmax", "ema"):
        return -np.abs(x).max(), np.abs(x).max()
    if method == "percentile":
        hi = np.percentile(np.abs(x), p)
        return -hi, hi
    amax, qmax = np.abs(x).max(), 2 ** (bits - 1) - 1
    errors = []
    for f in np.arange(1, k + 1, dtype=np.float32) / np.float32(k):
        s = np.float32(amax * f) * (np.float32(1) / np.float32(qmax))
        q = np.clip(np.round(x * (np.float32(1) / s)), -qmax - 1, qmax)
        errors.append(np.sum((q * s - x) ** 2))
    best = (np.arange(1, k + 1, dtype=np.float32) / np.float32(k))[int(np.argmin(errors))]
    return -amax * best, amax * best


@pytest.mark.parametrize("method", ["minmax", "ema", "percentile", "mse"])
def test_calibration_equals_numpy_over_the_same_batches(method):
    aq = quant.activations(8, mode="static", rule="Dense")
    batches = [X[:3], X[3:6], X[6:]]
    state = quant.calibrate(
        lambda p, x: MODEL.apply({"params": p}, x),
        PARAMS,
        aq.init(PARAMS),
        batches,
        method=method,
        percentile=99.0,
        momentum=0.8,
        candidates=20,
    )
    assert int(state.count) == 3
    for module in ["Dense_0", "Block_0/Dense_0", "Dense_1"]:
        per_batch = np.array([np_observe(run(x=b)[1][module][0], method) for b in batches])
        if method == "minmax":
            expected = per_batch[:, 0].min(), per_batch[:, 1].max()
        elif method == "ema":
            expected = per_batch[0]
            for r in per_batch[1:]:
                expected = 0.8 * expected + 0.2 * r
        else:
            expected = per_batch.mean(0)
        got = state.inputs[module]
        np.testing.assert_allclose([float(got.lo), float(got.hi)], expected, rtol=2e-5)


def test_running_statistics_fold_in_during_qat():
    recipe = jc.chain(jc.quant.int8(), quant.activations(8, mode="static", rule="Dense_1", momentum=0.5))
    tx = jc.optim.with_compression(optax.sgd(1e-3), recipe)
    opt_state = tx.init(PARAMS)

    def loss_fn(p, c, x):
        with quant.quantize_activations(c) as observed:
            y = MODEL.apply({"params": recipe.apply(p, c)}, x)
        return jnp.sum(y**2), observed.ranges

    @jax.jit
    def step(params, opt_state, x):
        cstate = jc.optim.compression_state(opt_state)
        (_, ranges), grads, lg = jc.optim.value_and_grad(loss_fn, has_aux=True)(params, cstate, x)
        updates, opt_state = tx.update(grads, opt_state, params, learned_grads=lg, activation_stats=ranges)
        return optax.apply_updates(params, updates), opt_state, ranges["inputs"]["Dense_1"]

    params, seen = PARAMS, []
    for b in (X[:4], X[4:], X[:4]):
        params, opt_state, r = step(params, opt_state, b)
        seen.append((float(r.lo), float(r.hi)))
    expected = np.array(seen[0])
    for r in seen[1:]:
        expected = 0.5 * expected + 0.5 * np.array(r)
    state = jc.optim.compression_state(opt_state)[1]
    assert int(state.count) == 3
    np.testing.assert_allclose(
        [float(state.inputs["Dense_1"].lo), float(state.inputs["Dense_1"].hi)], expected, rtol=1e-5
    )


@pytest.mark.parametrize("mode", ["lsq", "pact"])
def test_learned_activation_parameters_get_gradients_and_export(mode):
    aq = quant.activations(4, mode=mode, signed=mode == "lsq", rule="Dense_1")
    state = quant.calibrate(lambda p, x: MODEL.apply({"params": p}, x), PARAMS, aq.init(PARAMS), [X])
    learned = state.learned.values["inputs"]["Dense_1"]
    _, float_io = run()
    x_in = np.asarray(float_io["Dense_1"][0])
    if mode == "pact":
        assert float(learned) == pytest.approx(x_in.max(), rel=1e-6)
    else:
        assert float(learned) == pytest.approx(np.abs(x_in).max() / 7, rel=1e-6)

    def loss(p, c):
        with quant.quantize_activations(c):
            return jnp.sum(MODEL.apply({"params": p}, X) ** 2)

    if mode == "pact":  # clip below the max, so that some inputs exceed alpha and give it a gradient
        state = state._replace(learned=jc.Learned({"inputs": {"Dense_1": learned * 0.5}, "outputs": {}}))
    _, _, (lg,) = jc.optim.value_and_grad(loss)(PARAMS, state)
    assert float(jnp.abs(lg.values["inputs"]["Dense_1"])) > 0
    _, q_io = run(state)
    iq = quant.input_quantization(state)["Dense_1"]
    assert iq.signed == (mode == "lsq") and not iq.dynamic and iq.zero_point is None
    codes, scale, _ = quant.quantize_input(x_in, iq)
    np.testing.assert_array_equal(codes.astype(jnp.float32) * scale, q_io["Dense_1"][0])


def test_outputs_quantization_and_jit_single_trace():
    cstate = quant.activations(3, rule="^Dense_0$", outputs=True).init(PARAMS)
    traces = []

    @jax.jit
    def forward(cstate, x):
        traces.append(1)
        store = {}
        with recording(store), quant.quantize_activations(cstate):  # the recorder outside sees quantized outputs
            MODEL.apply({"params": PARAMS}, x)
        return store["Dense_0"][1]

    out = forward(cstate, X)
    forward(cstate, X + 1.0)
    assert len(traces) == 1
    assert len(np.unique(np.asarray(out))) <= 8  # 3-bit output codes
    assert sorted(quant.output_quantization(cstate)) == ["Dense_0"]


@pytest.mark.standard_promotion  # flax's LayerNorm promotes bfloat16 inputs with float32 params
def test_bfloat16_activations_keep_their_dtype():
    model = Net(dtype=jnp.bfloat16)
    cstate = quant.activations(8).init(PARAMS)
    y, io = run(cstate, model=model, x=X.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and io["Dense_0"][0].dtype == jnp.bfloat16


def test_two_transforms_on_one_module_are_rejected():
    cstate = jc.chain(quant.activations(8, rule="Dense_1"), quant.activations(4, rule="Dense")).init(PARAMS)
    with pytest.raises(ValueError, match="both quantize the input of module 'Dense_1'"):
        run(cstate)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(100, 3, rngs=rngs)
        self.mix = nnx.Einsum("ab,bc->ac", (3, 2), rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        return self.mix(self.fc(x.reshape(x.shape[0], -1)))


def test_nnx_inputs_of_selected_layers_only():
    model = NnxNet(nnx.Rngs(0))
    cstate = quant.activations(2, rule="fc").init(nnx.state(model, nnx.Param))
    assert cstate.config.modules == ("fc",)
    both = quant.activations(2, rule="fc|mix").init(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    with quant.quantize_activations_nnx(model, both) as observed:
        model(X)
    assert sorted(observed.visited) == ["fc", "mix"]
    original = model.fc.dot_general
    conv_out = nnx.relu(model.conv(X)).reshape(8, -1)
    expected = np_dynamic(conv_out, 2) @ np.asarray(model.fc.kernel[...]) + np.asarray(model.fc.bias[...])

    @nnx.jit
    def forward(model, x):
        with quant.quantize_activations_nnx(model, cstate):
            return model(x)

    mix = lambda h: h @ np.asarray(model.mix.kernel[...])
    np.testing.assert_allclose(forward(model, X), mix(expected), rtol=1e-5, atol=1e-5)
    assert model.fc.dot_general is original  # restored
    np.testing.assert_allclose(
        model.fc(conv_out),
        np.asarray(conv_out) @ np.asarray(model.fc.kernel[...]) + np.asarray(model.fc.bias[...]),
        rtol=1e-5,
        atol=1e-5,
    )
    bad = quant.activations(8, rule="Dense").init(PARAMS)
    with (
        pytest.raises(ValueError, match=r"that `model` lacks\. Module paths: \[.*'conv'"),
        quant.quantize_activations_nnx(model, bad),
    ):
        pass


class EinsumNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Einsum((4, 3), "ab,bc->ac", use_bias=False)(nn.DenseGeneral(4)(x))


def test_einsum_and_dense_general_inputs_are_quantized():
    model = EinsumNet()
    x = jax.random.normal(jax.random.key(3), (5, 6))
    params = model.init(jax.random.key(4), x)["params"]
    cstate = quant.activations(2).init(params)
    assert sorted(cstate.config.modules) == ["DenseGeneral_0", "Einsum_0"]
    raw, seen = {}, {}
    with recording(raw), quant.quantize_activations(cstate), recording(seen):
        model.apply({"params": params}, x)
    for m in ("DenseGeneral_0", "Einsum_0"):
        np.testing.assert_array_equal(seen[m][0], np_dynamic(raw[m][0], 2))


def test_an_uncalibrated_pact_level_learns_only_with_the_penalty():
    """Choi et al. 2018: without eq. 3's L2 term, an alpha above every activation gets exactly zero gradient."""
    aq = quant.activations(4, mode="pact", signed=False, rule="Dense_1")
    weight = 0.05

    def loss(p, c, penalty):
        with quant.quantize_activations(c):
            out = MODEL.apply({"params": p}, X)
        return jnp.mean((out - 1.0) ** 2) + penalty * quant.pact_penalty(c)

    state = aq.init(PARAMS)
    x_max = float(np.asarray(run()[1]["Dense_1"][0]).max())
    assert x_max < 6.0  # every input below the uncalibrated level
    _, _, (plain,) = jc.optim.value_and_grad(loss)(PARAMS, state, 0.0)
    assert float(plain.values["inputs"]["Dense_1"]) == 0.0  # stuck: the failure the penalty fixes
    _, _, (pulled,) = jc.optim.value_and_grad(loss)(PARAMS, state, weight)
    np.testing.assert_allclose(float(pulled.values["inputs"]["Dense_1"]), 2 * weight * 6.0, rtol=1e-6)  # d(w a^2)

    tx = jc.optim.with_compression(optax.identity(), aq, learned_optimizer=optax.sgd(1.0))

    @jax.jit
    def step(p, opt_state):  # only alpha trains
        _, grads, learned_grads = jc.optim.value_and_grad(loss)(p, jc.optim.compression_state(opt_state), weight)
        return tx.update(jax.tree.map(jnp.zeros_like, grads), opt_state, p, learned_grads=learned_grads)[1]

    opt_state = tx.init(PARAMS)
    for _ in range(80):
        opt_state = step(PARAMS, opt_state)
    alpha = float(jc.optim.compression_state(opt_state).learned.values["inputs"]["Dense_1"])
    assert alpha < x_max  # pulled down until inputs clip, where their gradient holds it
    assert alpha > 0.1 * x_max
