"""The kube-proxy table being built, and the two ways it is written out.

Upstream builds a knftables transaction and its tests dump the fake's resulting table: the
table line, then every chain (sorted by name) followed by its rules, then every set and map
(sorted) followed by its elements. `kproxy rules --render` prints that same dump, so it can be
compared line for line with upstream's expected text. That order names chains before
declaring them, which `nft -f` refuses, so loadable() writes every declaration first.

Adding an object twice keeps the first (as the fake does); adding an element whose key is
already there replaces it, so a ClusterIP shared by several ports is one element.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kproxy.proxy.nft.names import FAMILY, TABLE


def quote(text: str) -> str:
    """A comment as nft reads it (kube-proxy's comments never hold a double quote)."""
    return '"' + text.replace('"', "'") + '"'


@dataclass
class Chain:
    name: str
    base: str = ""  # "type filter hook input priority 0" for a base chain
    comment: str = ""
    rules: list[str] = field(default_factory=list)

    def declaration(self) -> str:
        parts = []
        if self.base:
            parts.append(f"{self.base} ;")
        if self.comment:
            parts.append(f"comment {quote(self.comment)} ;")
        spec = f" {{ {' '.join(parts)} }}" if parts else ""
        return f"add chain {FAMILY} {TABLE} {self.name}{spec}"


@dataclass
class Set:
    """A set, or a map when ``is_map`` (elements then carry a value after " : ")."""

    name: str
    type: str
    is_map: bool = False
    flags: str = ""
    timeout: int | None = None  # seconds
    comment: str = ""
    elements: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (comment, value)

    def declaration(self) -> str:
        parts = [f"type {self.type} ;"]
        if self.flags:
            parts.append(f"flags {self.flags} ;")
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s ;")
        if self.comment:
            parts.append(f"comment {quote(self.comment)} ;")
        kind = "map" if self.is_map else "set"
        return f"add {kind} {FAMILY} {TABLE} {self.name} {{ {' '.join(parts)} }}"

    def element_line(self, key: str, comment: str = "", value: str = "") -> str:
        """`add element` of one element (what a partial sync adds by key)."""
        text = key + (f" comment {quote(comment)}" if comment else "") + (f" : {value}" if self.is_map else "")
        return f"add element {FAMILY} {TABLE} {self.name} {{ {text} }}"

    def delete_line(self, key: str) -> str:
        """`delete element` by key (a map's value and any comment need not be given)."""
        return f"delete element {FAMILY} {TABLE} {self.name} {{ {key} }}"

    def element_lines(self) -> list[str]:
        return [self.element_line(key, comment, value) for key, (comment, value) in self.elements.items()]


class Table:
    """One `ip kube-proxy` table: chains with their rules, sets and maps with their elements."""

    comment = "rules for kube-proxy"

    def __init__(self) -> None:
        self.chains: dict[str, Chain] = {}
        self.sets: dict[str, Set] = {}

    # ------------------------------------------------------------------ building

    def chain(self, name: str, base: str = "", comment: str = "") -> Chain:
        """Declare a chain (again: no-op) and return it."""
        found = self.chains.get(name)
        if found is None:
            found = self.chains[name] = Chain(name, base, comment)
        return found

    def rule(self, chain: str, rule: str, comment: str = "") -> None:
        self.chains[chain].rules.append(rule + (f" comment {quote(comment)}" if comment else ""))

    def set(self, name: str, type_: str, *, is_map: bool = False, flags: str = "", timeout: int | None = None,
            comment: str = "") -> Set:
        found = self.sets.get(name)
        if found is None:
            found = self.sets[name] = Set(name, type_, is_map, flags, timeout, comment)
        return found

    def element(self, name: str, key: str, value: str = "", comment: str = "") -> None:
        self.sets[name].elements[key] = (comment, value)

    # ------------------------------------------------------------------ writing

    def _table_line(self) -> str:
        return f"add table {FAMILY} {TABLE} {{ comment {quote(self.comment)} ; }}"

    def _sorted_sets(self) -> list[Set]:
        """Sets then maps, each sorted by name (the fake keeps them apart)."""
        plain = sorted((s for s in self.sets.values() if not s.is_map), key=lambda s: s.name)
        maps = sorted((s for s in self.sets.values() if s.is_map), key=lambda s: s.name)
        return plain + maps

    def dump(self) -> list[str]:
        """Upstream's test-fake dump order (not loadable as it stands: see the module docstring)."""
        out = [self._table_line()]
        for name in sorted(self.chains):
            chain = self.chains[name]
            out.append(chain.declaration())
            out.extend(f"add rule {FAMILY} {TABLE} {name} {r}" for r in chain.rules)
        for s in self._sorted_sets():
            out.append(s.declaration())
            out.extend(s.element_lines())
        return out

    def loadable(self) -> list[str]:
        """The same lines as dump(), declarations first, so `nft -f` takes them as one transaction."""
        out = [self._table_line()]
        out.extend(s.declaration() for s in self._sorted_sets())
        names = sorted(self.chains)
        out.extend(self.chains[n].declaration() for n in names)
        for n in names:
            out.extend(f"add rule {FAMILY} {TABLE} {n} {r}" for r in self.chains[n].rules)
        for s in self._sorted_sets():
            out.extend(s.element_lines())
        return out
