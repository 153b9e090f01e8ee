"""Path rules: which leaves of a param pytree a transform touches.

A leaf's *path* is its pytree key path joined with ``/``: the kernel of a Flax
``Dense_0`` layer in ``variables['params']`` is ``"Dense_0/kernel"``. A *rule*
selects leaves by path, and is one of:

* a string or compiled regex, searched (``re.search``) in the path;
* a predicate ``(path, leaf) -> bool``;
* a :class:`Selector`, composable with ``|``, ``&`` and ``~``.

The default rule, :data:`KERNELS`, selects every leaf with ``ndim >= 2``
(dense and conv kernels, embeddings) and leaves biases, norms and scalars
alone. A rule that selects nothing is an error listing the available paths:
unused rules are never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

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
    "unflatten",
    "where",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Selector:
    """A named, composable leaf predicate ``(path, leaf) -> bool``."""

    fn: Callable[[str, Any], bool]
    description: str

    def __call__(self, path: str, leaf: Any) -> bool:
        return bool(self.fn(path, leaf))

    def __or__(self, other: Rule) -> Selector:
        return any_of(self, other)

    def __and__(self, other: Rule) -> Selector:
        return all_of(self, other)

    def __invert__(self) -> Selector:
        inner = self
        return Selector(lambda p, x: not inner(p, x), f"~{inner.description}")

    def __repr__(self) -> str:
        return f"Selector({self.description})"


Rule = str | re.Pattern | Callable[[str, Any], bool] | Selector


def regex(pattern: str | re.Pattern) -> Selector:
    """Selects leaves whose path contains a match of ``pattern`` (``re.search``)."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"rule {pattern!r} is not a valid regular expression: {e}.") from None
    return Selector(lambda p, _: compiled.search(p) is not None, f"regex({compiled.pattern!r})")


def where(predicate: Callable[[str, Any], bool], description: str | None = None) -> Selector:
    """Selects leaves for which ``predicate(path, leaf)`` is true."""
    if not callable(predicate):
        raise TypeError(f"`predicate` must be callable (path, leaf) -> bool, got {predicate!r}.")
    name = description or getattr(predicate, "__name__", repr(predicate))
    return Selector(predicate, name)


def named(*paths: str) -> Selector:
    """Selects exactly the leaves with the given full paths."""
    wanted = frozenset(paths)
    return Selector(lambda p, _: p in wanted, f"named{tuple(sorted(wanted))}")


def as_selector(rule: Rule) -> Selector:
    """Turns any accepted rule form into a :class:`Selector`."""
    if isinstance(rule, Selector):
        return rule
    if isinstance(rule, (str, re.Pattern)):
        return regex(rule)
    if callable(rule):
        return where(rule)
    raise TypeError(
        f"`rule` must be a regex string, a compiled pattern, a predicate "
        f"(path, leaf) -> bool or a jaxcompress.paths.Selector; got {type(rule).__name__}: {rule!r}."
    )


def any_of(*rules: Rule) -> Selector:
    """Selects leaves matched by at least one of ``rules``."""
    sels = tuple(as_selector(r) for r in rules)
    return Selector(lambda p, x: any(s(p, x) for s in sels), " | ".join(s.description for s in sels))


def all_of(*rules: Rule) -> Selector:
    """Selects leaves matched by every one of ``rules``."""
    sels = tuple(as_selector(r) for r in rules)
    return Selector(lambda p, x: all(s(p, x) for s in sels), " & ".join(s.description for s in sels))


KERNELS = Selector(lambda _, x: np.ndim(x) >= 2, "ndim >= 2")
"""The default rule: every leaf with at least two dimensions."""


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten(tree: PyTree) -> tuple[dict[str, Any], Any]:
    """Flattens ``tree`` into ``({path: leaf}, treedef)`` in leaf order."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat: dict[str, Any] = {}
    for key_path, leaf in with_paths:
        path = "/".join(_key_name(k) for k in key_path)
        if path in flat:
            raise ValueError(f"Two leaves share the path {path!r}; give the pytree distinct keys.")
        flat[path] = leaf
    return flat, treedef


def unflatten(treedef: Any, flat: Mapping[str, Any]) -> PyTree:
    """Inverse of :func:`flatten` (``flat`` must keep the original order)."""
    return jax.tree_util.tree_unflatten(treedef, list(flat.values()))


def select(rule: Rule, tree: PyTree, *, what: str = "rule") -> list[str]:
    """Paths of the leaves of ``tree`` selected by ``rule``, in leaf order.

    Raises:
      ValueError: if ``rule`` selects no leaf; the message lists every path.
    """
    selector = as_selector(rule)
    flat, _ = flatten(tree)
    chosen = [p for p, leaf in flat.items() if selector(p, leaf)]
    if not chosen:
        listing = "\n  ".join(f"{p}  shape={tuple(np.shape(x))}" for p, x in flat.items())
        raise ValueError(
            f"`{what}` {selector.description} selects no leaf of the params. "
            f"Available paths:\n  {listing or '(the pytree has no leaves)'}"
        )
    return chosen


def _check_present(flat: Mapping[str, Any], paths: list[str]) -> None:
    missing = [p for p in paths if p not in flat]
    if missing:
        raise ValueError(
            f"`params` lack the leaves {missing} that this method's state was built for; "
            f"pass params with the same structure as at init. Present: {list(flat)}."
        )


def leaves_at(tree: PyTree, paths: Iterable[str]) -> dict[str, Any]:
    """``{path: leaf}`` of ``tree`` for ``paths``; a ``ValueError`` listing the present paths if one is missing.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> jc.paths.leaves_at({"a": {"kernel": jnp.ones(2)}, "b": 0.0}, ["a/kernel"])
      {'a/kernel': Array([1., 1.], dtype=float32)}
    """
    paths = list(paths)
    flat, _ = flatten(tree)
    _check_present(flat, paths)
    return {p: flat[p] for p in paths}


def map_selected(fn: Callable[[str, Any], Any], tree: PyTree, paths: Iterable[str]) -> PyTree:
    """``tree`` with each leaf at one of ``paths`` replaced by ``fn(path, leaf)``; the others untouched.

    Raises the error of :func:`leaves_at` if ``tree`` lacks one of ``paths``.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> jc.paths.map_selected(lambda p, x: 2 * x, {"w": jnp.ones(2), "b": jnp.ones(1)}, ["w"])["w"].tolist()
      [2.0, 2.0]
    """
    paths = list(paths)
    flat, treedef = flatten(tree)
    _check_present(flat, paths)
    chosen = set(paths)
    return unflatten(treedef, {p: fn(p, x) if p in chosen else x for p, x in flat.items()})
