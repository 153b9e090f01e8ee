"""Path rules: which leaves of a param pytree a method touches, and helpers to touch them.

A leaf's *path* is its pytree key path joined with ``/`` (``"Dense_0/kernel"``).
A *rule* is a regex string (searched in the path), a predicate
``(path, leaf) -> bool``, or a :class:`Selector` (composable with ``|``, ``&``,
``~``). The default rule, :data:`KERNELS`, selects every leaf with
``ndim >= 2``. A rule that selects nothing is an error listing every path.
"""

from jaxcompress._src.paths import (
    KERNELS,
    Rule,
    Selector,
    all_of,
    any_of,
    as_selector,
    flatten,
    leaves_at,
    map_selected,
    named,
    regex,
    select,
    unflatten,
    where,
)
from jaxcompress._src.validate import selected_weights

__all__ = [
    "KERNELS",
    "Rule",
    "Selector",
    "all_of",
    "any_of",
    "as_selector",
    "flatten",
    "leaves_at",
    "map_selected",
    "named",
    "regex",
    "select",
    "selected_weights",
    "unflatten",
    "where",
]
