"""Export of every IntegerWeights form: per-group scales, zero points, codebooks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ConvDenseNet
from test_export import fake_quant_reference, float_layers

import jaxcompress as jc


def scripted_quantizer(form: str) -> jc.Quantizer:
    """A test quantizer whose integer form is computed here with numpy, independently of the library."""

    def integer_of(w: np.ndarray) -> jc.IntegerWeights:
        w = np.asarray(w, np.float64)
        if form == "group":  # 4-bit asymmetric, groups of 8 along the input axis (axis 0 of Dense kernels)
            if w.ndim != 2:
                return _per_channel(w)
            g = w.reshape(-1, 8, w.shape[1])
            lo, hi = np.minimum(g.min(1), 0), np.maximum(g.max(1), 0)
            scale = np.where(hi > lo, (hi - lo) / 15, 1.0)
            zp = np.clip(np.round(-lo / scale) - 8, -8, 7).astype(np.int32)
            codes = np.clip(np.round(g / scale[:, None]) + zp[:, None], -8, 7)
            return jc.IntegerWeights(
                jnp.asarray(codes.reshape(w.shape), jnp.int8),
                jnp.asarray(scale, jnp.float32),
                jnp.asarray(zp),
                4,
                group_axis=0,
                group_size=8,
            )
        if form == "codebook":  # 2-bit: 4 centroids spread over [min, max], nearest assignment
            book = np.linspace(w.min(), w.max(), 4)
            idx = np.abs(w[..., None] - book).argmin(-1)
            return jc.IntegerWeights(
                jnp.asarray(idx, jnp.uint8),
                jnp.ones((1,) * w.ndim, jnp.float32),
                None,
                2,
                signed=False,
                codebook=jnp.asarray(book, jnp.float32),
            )
        if form == "asymmetric":  # 8-bit asymmetric per output channel
            axes = tuple(range(w.ndim - 1))
            lo, hi = np.minimum(w.min(axes, keepdims=True), 0), np.maximum(w.max(axes, keepdims=True), 0)
            scale = np.where(hi > lo, (hi - lo) / 255, 1.0)
            zp = np.clip(np.round(-lo / scale) - 128, -128, 127).astype(np.int32)
            codes = np.clip(np.round(w / scale) + zp, -128, 127)
            return jc.IntegerWeights(jnp.asarray(codes, jnp.int8), jnp.asarray(scale, jnp.float32), jnp.asarray(zp), 8)
        raise ValueError(form)

    def _per_channel(w):
        scale = np.abs(w).reshape(-1, w.shape[-1]).max(0) / 127
        scale = np.where(scale > 0, scale, 1.0)  # all-zero (pruned) channels
        codes = np.round(w / scale)
        return jc.IntegerWeights(
            jnp.asarray(codes, jnp.int8), jnp.asarray(scale.reshape((1,) * (w.ndim - 1) + (-1,)), jnp.float32), None, 8
        )

    def quantize(params, state):
        return {p: integer_of(w) for p, w in jc.paths.leaves_at(params, state).items()}

    return jc.Quantizer(
        lambda params: jc.paths.select(jc.paths.KERNELS, params), lambda p, s, g=None, **kw: s, quantize
    )


@pytest.fixture(scope="module")
def setup():
    model = ConvDenseNet(hidden=32)
    x = jax.random.uniform(jax.random.key(0), (16, 6, 6, 2))
    return model, model.init(jax.random.key(1), x), x


@pytest.mark.parametrize("form", ["group", "codebook", "asymmetric"])
def test_export_matches_fake_quant_and_round_trips(setup, form, tmp_path):
    model, variables, x = setup
    recipe = scripted_quantizer(form)
    state = recipe.init(variables["params"])
    ex = jc.export.export(model, variables, recipe, state, x, dispatch="int8")
    compressed = {"params": recipe.apply(variables["params"], state)}
    ref = fake_quant_reference(model, compressed, x, float_layers=float_layers(ex))
    np.testing.assert_allclose(ex(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    ex.save(tmp_path / "m.jcx")
    np.testing.assert_array_equal(jc.export.load(tmp_path / "m.jcx")(x), ex(x))
    computes = {p: v["compute"] for p, v in ex.report["layers"].items()}
    leaves = ex.report["leaves"]
    if form == "group":  # the Dense layers run int8 with per-group rescaling; the conv has per-channel scales
        assert computes == {"Conv_0": "int8", "Dense_0": "int8", "Dense_1": "int8"}
        assert "group_scale" in ex.weights["layers"]["Dense_0"]
        assert leaves["Dense_0"]["parts"]["codes"]["bytes"] <= variables["params"]["Dense_0"]["kernel"].size // 2
    if form == "codebook":  # no integer matmul for a codebook: float compute, 2-bit storage
        assert set(computes.values()) == {"float32"}
        n = variables["params"]["Dense_0"]["kernel"].size
        assert leaves["Dense_0"]["parts"]["codes"]["bytes"] <= n // 4  # at most 2 bits per weight
        assert leaves["Dense_0"]["bytes"] <= n // 4 + 4 * 4 + 4  # + the codebook and its unit scale
    if form == "asymmetric":  # weight zero points fold into the int32 accumulator for Dense
        assert computes["Dense_0"] == "int8" and computes["Conv_0"] == "float32"


def test_grouped_layers_keep_their_input_width(setup):
    model, variables, x = setup
    params = jax.tree.map(np.array, variables["params"])
    params["Conv_0"]["kernel"][..., :2] = 0.0  # dead conv channels that feed the grouped Dense_0
    recipe = scripted_quantizer("group")
    state = recipe.init(params)
    ex = jc.export.export(model, {"params": params}, recipe, state, x, dispatch="int8", activations="dynamic")
    (note,) = ex.report["notes"]
    assert note.startswith("Conv_0: 2 dead channels kept") and "per-group scales" in note


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


LIBRARY_QUANTIZERS = {  # name: (factory, bits)
    "uint8-asymmetric": (lambda: jc.quant.uniform(8, signed=False, symmetric=False), 8),
    "uint4-asymmetric": (lambda: jc.quant.uniform(4, signed=False, symmetric=False), 4),
    "uint8-symmetric": (lambda: jc.quant.uniform(8, signed=False), 8),
    "int8-asymmetric": (lambda: jc.quant.uniform(8, symmetric=False), 8),
    "int4-group16": (lambda: jc.quant.uniform(4, granularity=jc.quant.per_group(16)), 4),
    "lsq4": (lambda: jc.quant.lsq(4), 4),
    "log2-4": (lambda: jc.quant.log2(4), 4),
    "kmeans2": (lambda: jc.quant.kmeans(2), 2),
}


@pytest.mark.parametrize("name", sorted(LIBRARY_QUANTIZERS))
def test_library_quantizers_export_faithfully(name, tmp_path):
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (16, 32))
    variables = model.init(jax.random.key(1), x)
    factory, bits = LIBRARY_QUANTIZERS[name]
    recipe = jc.chain(jc.prune.magnitude(0.5), factory())
    cstate = recipe.update(variables["params"], recipe.init(variables["params"]))
    ex = jc.export.export(model, variables, recipe, cstate, x, dispatch="int8", activations="dynamic")
    compressed = {"params": recipe.apply(variables["params"], cstate)}
    ref = fake_quant_reference(model, compressed, x, float_layers=float_layers(ex))
    np.testing.assert_allclose(ex(x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
    ex.save(tmp_path / "m.jcx")
    np.testing.assert_array_equal(jc.export.load(tmp_path / "m.jcx")(x), ex(x))
    codebook = name.startswith(("log2", "kmeans"))
    assert {v["compute"] for v in ex.report["layers"].values()} == {"float32" if codebook else "int8"}
    for path, leaf in ex.report["leaves"].items():
        if path.endswith(("codes_t", "kernel")):
            n = variables["params"][path.split("/")[1]]["kernel"].size
            assert leaf["bytes"] <= n * bits / 8 + 64, (path, leaf)  # never more than `bits` per weight
