"""YAML with bounded alias expansion (no "billion laughs").

YAML anchors (``&a``) and aliases (``*a``) let a 600-byte document stand for
billions of nodes: the parser shares them, but anything that walks the result
(a validator, an error message that prints a value) expands them. kubectl
never writes aliases, and hand-written manifests use a few; :class:`BoundedLoader`
counts the nodes every alias and merge key (``<<: *a``) stands for and stops
with one line past :data:`MAX_ALIAS_NODES`.
"""
from __future__ import annotations

import yaml

from ..errors import FastpathError

#: Most YAML nodes that aliases and merge keys may stand for in one file, counted with
#: every repetition (``docs/limits.md``).
MAX_ALIAS_NODES = 100_000

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class AliasLimit(FastpathError):
    """Aliases in a YAML file stand for more than :data:`MAX_ALIAS_NODES` nodes."""


class BoundedLoader(_Base):  # type: ignore[misc,valid-type]
    """libyaml's safe loader (where PyYAML has it), counting what aliases expand to.

    A node met a second time while constructing is an alias (the constructor
    hands back the object already built for it): its expanded size, every
    nested repetition counted, is added to a running total. Merge keys copy
    the merged mapping's entries, which are counted the same way.
    """

    #: The limit this loader enforces (a class attribute, so a test can lower it).
    max_alias_nodes = MAX_ALIAS_NODES

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: yaml.Node) -> int:
        """Nodes ``node`` stands for, every alias below it expanded (capped just past the limit)."""
        sizes = self._sizes
        if id(node) in sizes:
            return sizes[id(node)]
        cap = self.max_alias_nodes + 1
        total = {id(node): 1}
        stack = [(node, iter(_children(node)))]
        while stack:
            n, rest = stack[-1]
            for c in rest:
                if id(c) in sizes:
                    total[id(n)] += sizes[id(c)]
                elif id(c) in total:  # a cycle back up (the constructor refuses those): count once
                    total[id(n)] += 1
                else:
                    total[id(c)] = 1
                    stack.append((c, iter(_children(c))))
                    break
            else:
                stack.pop()
                sizes[id(n)] = size = min(cap, total.pop(id(n)))
                if stack:
                    total[id(stack[-1][0])] += size
        return sizes[id(node)]

    def _count(self, n: int) -> None:
        self._expanded += n
        if self._expanded > self.max_alias_nodes:
            mark = getattr(self, "_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise AliasLimit(f"{where}YAML aliases expand to more than {self.max_alias_nodes:,} nodes "
                             f"(a \"billion laughs\" document?); the limit is in docs/limits.md")

    def construct_object(self, node, deep=False):  # noqa: D102 -- yaml.BaseConstructor's
        if node in self.constructed_objects:  # an alias: the same node again
            self._mark = node.start_mark
            self._count(self._size(node))
        return super().construct_object(node, deep)

    def flatten_mapping(self, node) -> None:  # noqa: D102 -- yaml.SafeConstructor's
        before = len(node.value)
        merges = any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
        super().flatten_mapping(node)
        if merges:
            self._mark = node.start_mark
            self._count(max(0, len(node.value) - before) * 2)


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [c for pair in node.value for c in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def load_all(text: str) -> list:
    """Every document of ``text`` (YAML), aliases bounded; raises ``yaml.YAMLError`` or :class:`AliasLimit`."""
    return list(yaml.load_all(text, Loader=BoundedLoader))
