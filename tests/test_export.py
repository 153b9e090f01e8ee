"""Export: the integer program against independent references."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import adam

import jaxcompress as jc
from jaxcompress._src.export import layers
from jaxcompress.models import ResNet


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def fake_quant_reference(model, variables, x, *, float_layers=(), **kwargs):
    """Every Dense/Conv input on a dynamic symmetric int8 grid (but those of ``float_layers``, as they are),
    written independently of jaxcompress."""

    def interceptor(next_fun, args, kw, context):
        dense_or_conv = isinstance(context.module, (nn.Dense, nn.Conv))
        if context.method_name == "__call__" and dense_or_conv and "/".join(context.module.path) not in float_layers:
            a = args[0]
            s = jnp.max(jnp.abs(a)) / 127.0
            args = (jnp.clip(jnp.round(a / s), -127, 127) * s, *args[1:])
        return next_fun(*args, **kw)

    with nn.intercept_methods(interceptor):
        return model.apply(variables, x, **kwargs)


def float_layers(ex) -> set[str]:
    """The layers an export computes in float32: their inputs are not quantized (the recipe trained none)."""
    return {p for p, v in ex.report["layers"].items() if v["compute"] == "float32"}


def fake_quantized_model(model, variables, recipe, cstate, x):
    """The model as trained: compressed weights, activations through jc.quant.quantize_activations."""
    compressed = {**variables, "params": recipe.apply(variables["params"], cstate)}
    with jc.quant.quantize_activations(cstate):
        return model.apply(compressed, x)


@pytest.fixture(scope="module")
def trained():
    """SmallCNN fine-tuned on digits: 60% magnitude pruning, int8 weights, int8 dynamic activations."""
    ds = jc.data.digits()
    model = SmallCNN()
    params = model.init(jax.random.key(0), ds.x_train[:1])["params"]
    schedule = jc.schedules.polynomial(0.0, 0.6, begin=0, end=100)
    recipe = jc.chain(jc.prune.magnitude(schedule), jc.quant.int8(), jc.quant.activations(8))
    tx = jc.optim.with_compression(adam(3e-3), recipe)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    stream = jc.data.batches(ds.x_train, ds.y_train, 64)
    params, opt_state, _ = jc.train.fit(apply_fn, params, tx, stream, 100, recipe=recipe)
    return model, {"params": params}, recipe, jc.optim.compression_state(opt_state), ds


@pytest.fixture(scope="module")
def exported_int8(trained):
    model, variables, recipe, cstate, ds = trained
    return jc.export.export(model, variables, recipe, cstate, ds.x_test[:64], dispatch="int8")


def test_exported_agrees_with_the_fake_quantized_model(trained, exported_int8):
    model, variables, recipe, cstate, ds = trained
    x = ds.x_test
    ref = fake_quantized_model(model, variables, recipe, cstate, x)
    # ...which is what an independent implementation of the same quantization computes, too.
    independent = fake_quant_reference(model, {"params": recipe.apply(variables["params"], cstate)}, x)
    assert float(jnp.mean(jnp.argmax(independent, -1) == jnp.argmax(ref, -1))) >= 0.999
    got = exported_int8(x)
    agreement = float(jnp.mean(jnp.argmax(got, -1) == jnp.argmax(ref, -1)))
    assert agreement >= 0.999
    # Same computation: logits agree to float rounding, except on the rare image
    # where a value inside the network sits on an activation rounding boundary and
    # the two orders of float operations put it one int8 code apart.
    scale = float(jnp.max(jnp.abs(ref)))
    off = np.any(np.abs(np.asarray(got) - np.asarray(ref)) > 1e-4 * scale, axis=-1)
    assert off.mean() <= 0.01, f"{off.sum()} of {len(off)} images differ"
    np.testing.assert_allclose(got, ref, atol=0.02 * scale)
    assert float(jnp.mean(jnp.argmax(got, -1) == ds.y_test)) > 0.85


def test_int8_layers_are_i8_x_i8_to_i32_ops_in_stablehlo(exported_int8):
    text = exported_int8.stablehlo()
    int_ops = re.findall(
        r"stablehlo\.(dot_general|convolution)[^\n]*\(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>", text
    )
    i8_ops = [
        (lhs, rhs)
        for _, lhs, rhs, out in int_ops
        if lhs.endswith("xi8") and rhs.endswith("xi8") and out.endswith("xi32")
    ]
    chosen = [p for p, info in exported_int8.report["layers"].items() if info["compute"] == "int8"]
    assert len(chosen) == 4
    weights = exported_int8.weights["layers"]
    for path in chosen:
        codes = weights[path].get("codes_t", weights[path].get("codes"))
        rhs_type = "x".join(str(d) for d in codes.shape) + "xi8"
        assert any(rhs == rhs_type for _, rhs in i8_ops), (path, rhs_type)
    assert len(i8_ops) == len(chosen)


def test_weights_are_arguments_not_constants(exported_int8):
    text = exported_int8.stablehlo()
    n_weight_args = len(jax.tree.leaves(exported_int8.weights))
    assert len(exported_int8.exported.in_avals) == n_weight_args + 1
    big_constants = [c for c in re.findall(r"stablehlo\.constant dense<[^>]*> : tensor<([^>]*)>", text) if "x" in c]
    assert not any(int(np.prod([int(d) for d in c.split("x")[:-1]])) >= 64 for c in big_constants)


def test_symbolic_batch(exported_int8, trained):
    ds = trained[-1]
    assert str(exported_int8.exported.in_avals[-1].shape[0]) == "b"
    full = exported_int8(ds.x_test[:10])
    for n in (1, 3, 7):
        assert exported_int8(ds.x_test[:n]).shape == (n, 10)
    np.testing.assert_array_equal(exported_int8(ds.x_test[:10]), full)


def test_float_dispatch_is_exact_fake_quant(trained):
    model, variables, recipe, cstate, ds = trained
    ex = jc.export.export(model, variables, recipe, cstate, ds.x_test[:32], dispatch="float")
    ref = fake_quantized_model(model, variables, recipe, cstate, ds.x_test[:32])
    np.testing.assert_allclose(ex(ds.x_test[:32]), ref, rtol=1e-5, atol=1e-5)
    assert {v["compute"] for v in ex.report["layers"].values()} == {"float32"}


def test_measured_dispatch_is_reported(trained):
    model, variables, recipe, cstate, ds = trained
    choice = {"Conv_0": "float", "Conv_1": "measure", "Dense_0": "int8", "Dense_1": "measure"}
    ex = jc.export.export(model, variables, recipe, cstate, ds.x_test[:32], dispatch=choice)
    layers_report = ex.report["layers"]
    assert layers_report["Conv_0"]["compute"] == "float32" and layers_report["Dense_0"]["compute"] == "int8"
    for path in ("Conv_1", "Dense_1"):
        info = layers_report[path]
        assert info["int8_s"] > 0 and info["float_s"] > 0
        assert info["compute"] == ("int8" if info["int8_s"] < info["float_s"] else "float32")


@pytest.mark.parametrize("signed", [False, True])
def test_static_asymmetric_inputs_fold_zero_points_in_int32(signed):
    """Dense and padded Conv with a static asymmetric input grid vs a numpy reference."""
    rng = np.random.default_rng(0)
    spec = layers.InputSpec(jc.quant.InputQuant(8, signed, False, np.float32(0.05), np.int32(17)))
    qmin, qmax = (-128, 127) if signed else (0, 255)
    x = rng.uniform(-1, 3, (4, 6, 6, 3)).astype(np.float32)
    codes = rng.integers(-127, 128, (3, 3, 3, 5)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, 5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    inv = np.float32(1) / np.float32(0.05)  # the library's convention: x * (1 / s)
    xq = np.clip(np.round(x * inv) + 17, qmin, qmax)
    x_deq = (xq - 17) * 0.05  # what the quantized input stands for; padding is real 0.0
    w = codes.astype(np.float64) * scale
    cfg = layers.ConvConfig((3, 3), (1, 1), "SAME", (1, 1), (1, 1), 1)
    ref = jax.lax.conv_general_dilated(
        jnp.asarray(x_deq, jnp.float32),
        jnp.asarray(w, jnp.float32),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + bias.reshape(1, 1, 1, -1)
    conv = layers.Conv(spec=spec, config=cfg)
    weights = conv.integer_weights(codes, scale, None, bias)
    got = conv.with_form(type(weights))(jnp.asarray(x), weights.arguments())
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    xd = x.reshape(4, -1)[:, :20]
    codes_d = rng.integers(-127, 128, (20, 7)).astype(np.int8)
    zp_w = rng.integers(-3, 4, 7).astype(np.int32)
    dense = layers.Dense(spec=spec)
    weights_d = dense.integer_weights(codes_d, scale[:1].repeat(7), zp_w, None)
    got_d = dense.with_form(type(weights_d))(jnp.asarray(xd), weights_d.arguments())
    xdq = (np.clip(np.round(xd * inv) + 17, qmin, qmax) - 17) * 0.05
    ref_d = xdq @ ((codes_d.astype(np.float64) - zp_w) * scale[0])
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-5, atol=1e-4)


def test_batchnorm_is_folded_into_its_producer():
    model = ResNet(channels=8, blocks=1)
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    variables = model.init(jax.random.key(1), x)
    stats = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(2), a.shape), variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    recipe = jc.quant.int8()
    cstate = recipe.init(variables["params"])
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch="int8")
    compressed = {**variables, "params": recipe.apply(variables["params"], cstate)}
    ref = fake_quant_reference(model, compressed, x)
    np.testing.assert_allclose(ex(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    folded = [p for p, info in ex.report["layers"].items() if info["kind"] == "identity"]
    assert sorted(folded) == ["BatchNorm_0", "ResidualBlock_0/BatchNorm_0", "ResidualBlock_0/BatchNorm_1"]
    assert "batch_stats" not in jax.tree.leaves(ex.weights["variables"], is_leaf=lambda n: isinstance(n, dict))


def test_bad_arguments(trained):
    model, variables, recipe, cstate, ds = trained
    x = ds.x_test[:4]
    with pytest.raises(TypeError, match="must quantize weights"):
        jc.export.export(model, variables, jc.prune.magnitude(0.5), cstate[0], x)
    with pytest.raises(ValueError, match="`dispatch` values must be one of"):
        jc.export.export(model, variables, recipe, cstate, x, dispatch="fast")
    with pytest.raises(ValueError, match="leading batch axis"):
        jc.export.export(model, variables, recipe, cstate, jnp.float32(1.0))
    with pytest.raises(TypeError, match="'params' collection"):
        jc.export.export(model, variables["params"], recipe, cstate, x)
    with pytest.raises(ValueError, match=r"failed on an `example` of shape \(4, 5, 5, 1\)"):
        jc.export.export(model, variables, recipe, cstate, jnp.zeros((4, 5, 5, 1)))
    bn_model = ResNet(channels=4, blocks=0)
    v = bn_model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="inference mode"):
        jc.export.export(
            bn_model, v, jc.quant.int8(), jc.quant.int8().init(v["params"]), x, apply_kwargs={"train": True}
        )


class WithDenseGeneral(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.DenseGeneral((2, 4))(x)  # no integer kernel in export: the model's own code runs it
        return nn.Dense(10)(jnp.reshape(x, (x.shape[0], -1)))


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_recipe_activation_quantization_is_exported(mode):
    model = WithDenseGeneral()
    x = jax.random.normal(jax.random.key(0), (32, 12))
    variables = model.init(jax.random.key(1), x)
    recipe = jc.chain(jc.quant.int8(), jc.quant.activations(8, mode=mode, symmetric=False, outputs=True))
    cstate = recipe.init(variables["params"])
    if mode == "static":
        apply_fn = lambda p, xb: model.apply({"params": p}, xb)
        cstate = jc.quant.calibrate(apply_fn, recipe.apply(variables["params"], cstate), cstate, [x], method="minmax")
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch="int8")
    ref = np.asarray(fake_quantized_model(model, variables, recipe, cstate, x))
    got = np.asarray(ex(x))
    # Integer accumulation is exact, float accumulation rounds: a value on an output rounding
    # boundary may land one step of the output grid away. Anything else must agree.
    step = (ref.max() - min(ref.min(), 0.0)) / 255
    off = ~np.isclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert off.mean() <= 0.01
    assert np.abs(got - ref).max() <= 1.01 * step
    layers_report = ex.report["layers"]
    assert layers_report["DenseGeneral_0"]["compute"] == "the model's own code"
    assert layers_report["Dense_0"]["input_quantization"] == f"{mode} asymmetric int8"
    assert layers_report["Dense_0"]["output_quantization"] == f"{mode} asymmetric int8"
    assert ex.report["notes"] == [
        "DenseGeneral_0: left to the model's own float code (DenseGeneral layers have no integer kernel yet)"
    ]


def test_report_names_layers_whose_inputs_the_recipe_left_in_float(trained):
    model, variables, _, _, ds = trained
    recipe = jc.quant.int8()
    ex = jc.export.export(model, variables, recipe, recipe.init(variables["params"]), ds.x_test[:8], dispatch="int8")
    (note,) = ex.report["notes"]
    assert "Conv_0, Conv_1, Dense_0, Dense_1 in float" in note and "dynamically to int8" in note


def test_float_layers_take_untrained_inputs_as_they_are(trained):
    # Weights-only recipes: a float layer computes exactly the trained model; an int8 layer says it quantizes.
    model, variables, _, _, ds = trained
    x = ds.x_test[:16]
    recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.kmeans(3, rule="Dense.*kernel"), jc.quant.int8(rule="Conv"))
    _, cstate = jc.compress(recipe, variables["params"])
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch={"Conv_0": "int8", "Conv_1": "float"})
    report = ex.report["layers"]
    for path in ("Conv_1", "Dense_0", "Dense_1"):
        assert report[path]["compute"] == "float32" and report[path]["input_quantization"] is None, path
    assert report["Conv_0"]["compute"] == "int8" and report["Conv_0"]["input_quantization"] == "dynamic symmetric int8"
    compressed = {"params": recipe.apply(variables["params"], cstate)}
    ref = fake_quant_reference(model, compressed, x, float_layers=float_layers(ex))
    np.testing.assert_allclose(ex(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    assert ex.report["description"] == "pruner (sparsity 0.5) -> kmeans -> uniform"


def test_any_chain_order_exports_what_it_trains():
    # chain(quantize, prune): the integer form is taken from the final weights,
    # so the zeros the pruner adds after quantization are in the exported codes.
    model = SmallCNN()
    x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 1))
    params = model.init(jax.random.key(1), x)["params"]
    recipe = jc.chain(jc.quant.int8(), jc.prune.magnitude(0.5))
    _, cstate = jc.compress(recipe, params)
    integer = jc.integer_weights(recipe, params, cstate)
    for path, mask in jc.masks_of(cstate).items():
        np.testing.assert_array_equal(np.asarray(integer[path].codes)[~np.asarray(mask.unpack())], 0)
    ex = jc.export.export(model, {"params": params}, recipe, cstate, x, dispatch="int8", activations="dynamic")
    ref = fake_quant_reference(model, {"params": recipe.apply(params, cstate)}, x)
    np.testing.assert_allclose(ex(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_an_order_whose_integer_form_cannot_hold_the_final_weights_is_refused():
    # k-means shares 4 values fitted before pruning; the zeros pruning adds afterwards are none of them.
    model = SmallCNN()
    x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 1))
    params = model.init(jax.random.key(1), x)["params"]
    recipe = jc.chain(jc.quant.kmeans(2, keep_zeros=False, rule="Dense_0/kernel"), jc.prune.magnitude(0.5))
    _, cstate = jc.compress(recipe, params)
    with pytest.raises(ValueError, match=r"Leaf 'Dense_0/kernel': its integer form does not dequantize"):
        jc.export.export(model, {"params": params}, recipe, cstate, x, dispatch="int8")
