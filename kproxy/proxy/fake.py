"""A fake kernel for unit tests: the Kernel interface (applier.py) on dicts, without root.

As kube-proxy's pkg/util/iptables/testing/fake.go: it records every restore it is given and
keeps a parsed state of the tables, so a test asserts on the ruleset that results rather than
on the commands that produced it. Its restore follows ``iptables-restore --noflush``: a
declaration creates or flushes a chain, ``-A`` appends, ``-I`` inserts (refused past the end),
``-D`` deletes a rule by its spec (refused when it is not there), ``-X`` deletes a chain
(refused while a rule still jumps to it); all or nothing. The jumps and canaries are worked out
by the real Applier's code from the fake's own listing.
"""
from __future__ import annotations

import copy
import re
from typing import Iterable

from kproxy.proxy import restoretext as rt
from kproxy.proxy.applier import CANARY, JUMPS, TABLES, Applier, IptablesError, cleanup_lines

# The built-in chains of the tables kproxy uses, as a fresh network namespace has them.
BUILTIN: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
_FAILED = "iptables-restore -w --noflush failed: "


class FakeKernel(Applier):
    """The kernel of a network namespace, as dicts: ``tables[table][chain]`` is the chain's
    rules, each as an ``-A CHAIN spec`` line.

    ``jumps``: start with kube-proxy's jumps and canaries in place (a node kproxy ran on
    before), so a first sync has nothing of them to add. ``fail_next``: the next restore fails
    (and changes nothing). Counters: ``listings`` (save() calls: the Proxier listing the
    kernel's chains), ``jump_listings`` (missing_jumps() calls), ``ensured`` (ensure_jumps())."""

    def __init__(self, jumps: bool = False) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {t: {c: [] for c in cs} for t, cs in BUILTIN.items()}
        self.restores: list[str] = []
        self.fail_next = False
        if jumps:
            super().ensure_jumps()
            self.restores.clear()
        self.listings = self.jump_listings = self.ensured = 0

    # ------------------------------------------------------------------ Kernel

    def restore(self, lines: Iterable[str], listing: bool | None = None, stream: bool = False) -> str:
        text = rt.text(lines)
        self.restores.append(text)
        if self.fail_next:
            self.fail_next = False
            raise IptablesError(_FAILED + "injected")
        tables = copy.deepcopy(self.tables)
        table: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("*"):
                table = tables.setdefault(line[1:], {})
            elif line.startswith(":"):
                table[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                self._chain(table, line.split()[1]).append(line)
            elif line.startswith("-I "):
                _, chain, pos, rest = line.split(" ", 3)
                rules = self._chain(table, chain)
                if not 1 <= int(pos) <= len(rules) + 1:
                    raise IptablesError(f"{_FAILED}index {pos} too big")
                rules.insert(int(pos) - 1, rt.append(chain, rest))
            elif line.startswith("-D "):
                chain = line.split()[1]
                rule = "-A " + line[3:]
                if rule not in self._chain(table, chain):
                    raise IptablesError(f"{_FAILED}Bad rule (does a matching rule exist in that chain?)")
                table[chain].remove(rule)
            elif line.startswith("-X "):
                self._delete(table, line.split()[1])
        self.tables = tables
        return text

    def save(self) -> str:
        self.listings += 1
        return self.saved()

    def listed_chains(self) -> str:
        return self.saved()

    def missing_jumps(self) -> dict[str, list[str]]:
        self.jump_listings += 1
        return super().missing_jumps()

    def ensure_jumps(self) -> None:
        self.ensured += 1
        super().ensure_jumps()

    def canary_present(self) -> bool:
        return all(CANARY in self.tables.get(t, {}) for t in TABLES)

    def cleanup(self) -> None:
        for table, chain, args in JUMPS:
            spec = " ".join(rt.quote(a) if " " in a else a for a in args)
            rules = self.tables.get(table, {}).get(chain, [])
            rules[:] = [r for r in rules if r != rt.append(chain, spec)]
        lines = cleanup_lines(self.saved())
        if lines:
            self.restore(lines)

    # ------------------------------------------------------------------ for tests

    def saved(self) -> str:
        """The tables as iptables-save prints them (without counters)."""
        lines = []
        for name, chains in self.tables.items():
            builtin = BUILTIN.get(name, ())
            lines += rt.section(
                name,
                rules=[*(rt.declare(c, policy="ACCEPT" if c in builtin else "-") for c in chains),
                       *(rule for rules in chains.values() for rule in rules)])
        return rt.text(lines)

    def nat_chains(self) -> set[str]:
        """The nat table's KUBE-* chains."""
        return {c for c in self.tables.get("nat", {}) if c.startswith("KUBE-")}

    def add_rule(self, table: str, chain: str, spec: str) -> None:
        """A rule someone else added (behind the Proxier's back)."""
        self.tables[table][chain].append(rt.append(chain, spec))

    @staticmethod
    def _chain(table: dict[str, list[str]], chain: str) -> list[str]:
        if chain not in table:
            raise IptablesError(f"{_FAILED}Couldn't load rule: chain {chain} does not exist")
        return table[chain]

    @staticmethod
    def _delete(table: dict[str, list[str]], chain: str) -> None:
        if any(re.search(rf" -j {chain}( |$)", rule) for rules in table.values() for rule in rules):
            raise IptablesError(f"{_FAILED}{chain} is still referenced")
        if chain not in table:
            raise IptablesError(f"{_FAILED}Couldn't find chain {chain}")
        del table[chain]
