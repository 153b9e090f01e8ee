import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcompress import paths


def tree():
    return {
        "params": {
            "Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
            "blocks": [{"kernel": jnp.ones((3, 3))}, {"scale": jnp.ones(())}],
        }
    }


def test_flatten_joins_keys_with_slash_in_leaf_order():
    flat, treedef = paths.flatten(tree())
    assert list(flat) == [
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/blocks/0/kernel",
        "params/blocks/1/scale",
    ]
    rebuilt = paths.unflatten(treedef, flat)
    assert rebuilt["params"]["blocks"][0]["kernel"].shape == (3, 3)


def test_default_rule_selects_kernels_only():
    assert paths.select(paths.KERNELS, tree()) == ["params/Dense_0/kernel", "params/blocks/0/kernel"]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("Dense_0", ["params/Dense_0/bias", "params/Dense_0/kernel"]),
        (re.compile(r"blocks/\d+/kernel$"), ["params/blocks/0/kernel"]),
        (lambda p, x: x.ndim == 0, ["params/blocks/1/scale"]),
        (paths.regex("kernel") & ~paths.regex("blocks"), ["params/Dense_0/kernel"]),
        (paths.regex("bias") | paths.named("params/blocks/1/scale"), ["params/Dense_0/bias", "params/blocks/1/scale"]),
        (paths.all_of("params", paths.KERNELS, "Dense"), ["params/Dense_0/kernel"]),
    ],
)
def test_rules(rule, expected):
    assert paths.select(rule, tree()) == expected


def test_rule_matching_nothing_lists_available_paths():
    with pytest.raises(ValueError, match="selects no leaf") as info:
        paths.select("Conv_", tree())
    message = str(info.value)
    for p in ["params/Dense_0/kernel", "params/blocks/1/scale", "shape=(4, 3)"]:
        assert p in message


def test_bad_rule_type():
    with pytest.raises(TypeError, match="`rule` must be"):
        paths.as_selector(42)


def test_selector_repr_is_readable():
    assert repr(paths.regex("a") | paths.KERNELS) == "Selector(regex('a') | ndim >= 2)"
    assert np.ndim(jnp.ones((2, 2))) == 2


def test_an_invalid_regex_rule_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"rule '\(unclosed' is not a valid regular expression"):
        paths.select("(unclosed", {"w": jnp.ones((2, 2))})
