"""Physical removal of pruned channels: what is removed, what is kept and why, and exactness."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcompress as jc
from jaxcompress.models import ResNet


class ConvChain(nn.Module):
    """Conv -> pool -> Conv (VALID) -> pool -> flatten -> Dense -> relu -> Dense: the LeNet-5 chain."""

    padding: str = "VALID"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), padding="VALID")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(12, (3, 3), padding=self.padding)(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(24)(x))
        return nn.Dense(10)(x)


def kill(params, dead: dict[str, list[int]], bias_shift: float = 0.1):
    """Zeroes the kernels of the given output channels; biases get a nonzero value (constants to fold)."""
    params = jax.tree.map(np.array, params)
    for path, channels in dead.items():
        node = params
        for key in path.split("/"):
            node = node[key]
        node["kernel"][..., channels] = 0.0
        if "bias" in node:
            node["bias"] = node["bias"] + bias_shift
    return params


def export(model, variables, x, **kw):
    recipe = jc.quant.int8()
    cstate = recipe.init(variables["params"])
    return jc.export.export(model, variables, recipe, cstate, x, dispatch="int8", activations="dynamic", **kw)


@pytest.fixture(scope="module")
def chain_setup():
    model = ConvChain()
    x = jax.random.uniform(jax.random.key(0), (32, 14, 14, 1))
    variables = model.init(jax.random.key(1), x)
    dead = {"Conv_0": [0, 2, 5, 7], "Conv_1": [1, 3, 4, 8, 10, 11], "Dense_0": list(range(0, 24, 2))}
    return model, {"params": kill(variables["params"], dead)}, x


def test_chain_channels_are_removed_exactly(chain_setup):
    model, variables, x = chain_setup
    reduced = export(model, variables, x)
    full = export(model, variables, x, remove_pruned_channels=False)
    w = reduced.weights["layers"]
    assert w["Conv_0"]["codes"].shape == (3, 3, 1, 4)
    assert w["Conv_1"]["codes"].shape == (3, 3, 4, 6)
    assert w["Dense_0"]["codes_t"].shape == (12, 2 * 2 * 6)
    assert w["Dense_1"]["codes_t"].shape == (10, 12)
    assert reduced.report["notes"] == [
        "Conv_0: removed 4 of 8 channels",
        "Conv_1: removed 6 of 12 channels",
        "Dense_0: removed 12 of 24 channels",
    ]
    # Dead channels carried constants (their biases); the integer program still computes exactly the same.
    for n in (32, 5):
        np.testing.assert_array_equal(reduced(x[:n]), full(x[:n]))
    assert reduced.report["weight_bytes"] < 0.6 * full.report["weight_bytes"]


def test_constants_cannot_fold_through_padding(chain_setup):
    _, _, x = chain_setup
    model = ConvChain(padding="SAME")
    dead = {"Conv_0": [0, 2, 5, 7], "Conv_1": [1, 3, 4, 8, 10, 11]}
    variables = {"params": kill(model.init(jax.random.key(1), x)["params"], dead)}
    ex = export(model, variables, x)
    notes = " | ".join(ex.report["notes"])
    assert "Conv_0: 4 dead channels kept" in notes and "pads its input" in notes
    assert "Conv_1: removed 6 of 12 channels" in notes
    full = export(model, variables, x, remove_pruned_channels=False)
    np.testing.assert_array_equal(ex(x), full(x))


def test_dead_output_neurons_are_kept():
    model = ConvChain()
    x = jax.random.uniform(jax.random.key(0), (8, 14, 14, 1))
    params = kill(model.init(jax.random.key(1), x)["params"], {"Dense_1": [3]})
    ex = export(model, {"params": params}, x)
    assert ex.report["notes"] == [
        "Dense_1: 1 dead channels kept: its channels reach the model output or an unplanned module"
    ]
    assert ex(x).shape == (8, 10)


def _resnet(dead):
    model = ResNet(channels=8, blocks=2)
    x = jax.random.normal(jax.random.key(3), (16, 8, 8, 2))
    variables = model.init(jax.random.key(4), x)
    stats = jax.tree.map(lambda a: a + 0.5 * jax.random.uniform(jax.random.key(5), a.shape), variables["batch_stats"])
    return model, {"params": kill(variables["params"], dead, 0.0), "batch_stats": stats}, x


def test_residual_blocks_with_matching_channels():
    inner = {"ResidualBlock_0/Conv_0": [1, 2, 6], "ResidualBlock_1/Conv_0": [0, 7]}
    matching = {"Conv_0": [3, 5], "ResidualBlock_0/Conv_1": [3, 5], "ResidualBlock_1/Conv_1": [3, 5]}
    model, variables, x = _resnet({**inner, **matching})
    # The BatchNorm after a dead conv channel shifts it to a constant: zero it so the channels are truly dead
    for bn in ("BatchNorm_0", "ResidualBlock_0/BatchNorm_1", "ResidualBlock_1/BatchNorm_1"):
        node = variables["params"]
        for key in bn.split("/"):
            node = node[key]
        node["bias"][[3, 5]] = 0.0
        stats = variables["batch_stats"]
        for key in bn.split("/"):
            stats = stats[key]
        stats["mean"] = stats["mean"].at[jnp.array([3, 5])].set(0.0)
    reduced = export(model, variables, x)
    full = export(model, variables, x, remove_pruned_channels=False)
    notes = reduced.report["notes"]
    assert "ResidualBlock_0/Conv_0: removed 3 of 8 channels" in notes
    assert "ResidualBlock_1/Conv_0: removed 2 of 8 channels" in notes
    for path in ("Conv_0", "ResidualBlock_0/Conv_1", "ResidualBlock_1/Conv_1"):
        assert f"{path}: removed 2 of 8 channels" in notes
    assert reduced.weights["layers"]["Dense_0"]["codes_t"].shape == (10, 6)
    np.testing.assert_array_equal(reduced(x), full(x))


def test_residual_channel_dead_on_one_branch_only_is_kept():
    model, variables, x = _resnet({"ResidualBlock_0/Conv_1": [2]})
    ex = export(model, variables, x)
    (note,) = ex.report["notes"]
    assert note.startswith("ResidualBlock_0/Conv_1: 1 dead channels kept: ")
    assert "combined with live ones" in note or "constant" in note or "reach" in note
    full = export(model, variables, x, remove_pruned_channels=False)
    np.testing.assert_array_equal(ex(x), full(x))
