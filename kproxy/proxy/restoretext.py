"""The one writer of ``iptables-restore`` input.

Every restore kproxy feeds the kernel (a full render, the Proxier's full, sectioned and partial
syncs, the jumps and canaries, a host's cleanup) is spelled here and nowhere else: a section is
``*table``, the ``:CHAIN - [0:0]`` declarations (each creates or flushes a chain), the rule
lines (``-A``, ``-I``, ``-D``), the ``-X`` deletions of flushed chains, ``COMMIT``. Keeping the
format in one place is what lets the full and the partial sync produce the same ruleset: they
differ in which lines they write, never in how.

Functions that yield lines (no newlines) serve both the streamed full sync, which hands lines
to ``iptables-restore`` while it is still rendering, and the callers that want one text.
"""
from __future__ import annotations

from typing import Iterable, Iterator

COMMIT = "COMMIT"
# A command that names no chain: iptables-nft then fetches every chain of the table once instead
# of walking its list of named chains per command (see applier.with_listing for the figures).
LISTING = "-S"
_APPEND = "-A "


def header(table: str) -> str:
    return f"*{table}"


def declare(chain: str, policy: str = "-", counters: tuple[int, int] = (0, 0)) -> str:
    """Create ``chain``, or flush it if it exists (a built-in chain, with its ``policy`` and
    ``counters``, is declared so by iptables-save only)."""
    return f":{chain} {policy} [{counters[0]}:{counters[1]}]"


def delete(chain: str) -> str:
    """Delete ``chain`` (flushed by its declaration earlier in the same section)."""
    return f"-X {chain}"


def append(chain: str, spec: str) -> str:
    return f"-A {chain} {spec}"


def insert(chain: str, position: int, spec: str) -> str:
    """Insert at ``position`` (1: the top)."""
    return f"-I {chain} {position} {spec}"


def remove(chain: str, spec: str) -> str:
    """Delete the rule with this spec; the restore fails when it is not there."""
    return f"-D {chain} {spec}"


def quote(text: str) -> str:
    """Quote a comment the way upstream writes it into the restore input."""
    return f'"{text}"'


def spec(line: str, chain: str) -> str:
    """The rule spec of an ``-A chain spec`` line."""
    return line[len(_APPEND) + len(chain) + 1:]


def section(table: str, declared: Iterable[str] = (), rules: Iterable[str] = (), deleted: Iterable[str] = (),
            tail: Iterable[str] = (), listing: bool = False) -> Iterator[str]:
    """One table's commit: ``declared`` chains (created or flushed), the ``deleted`` ones
    declared too (flushed, so nothing they hold keeps another chain alive), the ``rules``
    lines, the deletions, then ``tail`` (ready lines such as the missing jumps), ``COMMIT``.
    ``listing`` puts the chainless listing command first."""
    deleted = list(deleted)
    yield header(table)
    if listing:
        yield LISTING
    yield from map(declare, declared)
    yield from map(declare, deleted)
    yield from rules
    yield from map(delete, deleted)
    yield from tail
    yield COMMIT


def text(lines: Iterable[str]) -> str:
    """The lines as one restore input."""
    return "\n".join(lines) + "\n"


def with_listing(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` with the listing command after each ``*table`` header."""
    for line in lines:
        yield line
        if line[:1] == "*":
            yield LISTING


def declared_count(text: str) -> int:
    """How many chains a restore text declares (its ``:CHAIN`` lines)."""
    return text.count("\n:") + text.startswith(":")


def declared_chains(text: str) -> dict[str, list[str]]:
    """The chains each table of a restore (or iptables-save) text declares, in order."""
    out: dict[str, list[str]] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.setdefault(table, [])
        elif line.startswith(":") and table is not None:
            out[table].append(line[1:].split()[0])
    return out


def count_rules(text: str) -> int:
    """The rules a restore text adds (``-A`` and ``-I`` lines)."""
    return sum(1 for line in text.splitlines() if line.startswith(("-A ", "-I ")))


class Table:
    """One table's chains, in declaration order, each with its rules, plus the stale chains
    to delete: a render's buffer, written out by section()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.declared: dict[str, None] = {}  # an ordered set: 70,000 chains at 10,000 Services
        self.rules: dict[str, list[str]] = {}
        self.deleted: list[str] = []

    def declare(self, chain: str) -> None:
        self.declared.setdefault(chain, None)

    def add(self, chain: str, *args: str | Iterable[str]) -> None:
        """Append a rule: words, or lists of words, joined by spaces."""
        words = ["-A", chain]
        for arg in args:
            if isinstance(arg, str):
                words.append(arg)
            else:
                words.extend(arg)
        rules = self.rules.get(chain)
        if rules is None:
            rules = self.rules[chain] = []
        rules.append(" ".join(words))

    def delete(self, chain: str) -> None:
        """Flush (via the declaration) and delete a stale chain."""
        self.deleted.append(chain)

    def lines(self) -> Iterator[str]:
        undeclared = set(self.rules) - set(self.declared)
        if undeclared:
            raise AssertionError(f"rules for undeclared {self.name} chains: {sorted(undeclared)}")
        rules = (rule for chain in self.declared for rule in self.rules.get(chain, ()))
        return section(self.name, self.declared, rules, self.deleted)
