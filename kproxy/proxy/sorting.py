"""Upstream's order-independent normal form of an iptables-restore text.

kube-proxy's unit tests never compare raw output: the order Services are processed in
is a Go map's. They parse the text (pkg/util/iptables/testing/parse.go) and sort it
(sortIPTablesRules in pkg/proxy/iptables/proxier_test.go). Doing the same lets our
tests compare with upstream's expected texts exactly as upstream does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Callable

from kproxy.proxy import restoretext as rt

KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_SERVICES = "KUBE-SERVICES"

_TABLE = re.compile(r"^\*(.*)$")
# Upstream only accepts the "-" policy; any policy is kept here so iptables-save dumps parse too.
_CHAIN = re.compile(r"^:(\S+) (\S+) \[([0-9]*):([0-9]*)\]$")
_RULE = re.compile(r"^-A ([^ ]*) (.*)$")
_DELETE = re.compile(r"^-X (.*)$")
# A word, or a double-quoted string, as upstream's ParseRule splits a rule.
_WORD = re.compile(r'(?:^|\s)("[^"]*"|[^"]\S*)')


@dataclass
class Chain:
    name: str
    policy: str = "-"
    packets: int = 0
    bytes: int = 0
    rules: list[str] = field(default_factory=list)
    deleted: bool = False  # a "-X NAME" line: only valid in restore input


@dataclass
class Table:
    name: str
    chains: list[Chain] = field(default_factory=list)

    def chain(self, name: str) -> Chain | None:
        return next((c for c in self.chains if c.name == name), None)


def parse(text: str) -> list[Table]:
    """Parse restore/save text into tables; ValueError on what upstream's parser rejects."""
    tables: list[Table] = []
    table: Table | None = None
    in_declarations = False
    for raw in text.strip("\n").split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if table is None:
            match = _TABLE.match(line)
            if not match:
                raise ValueError(f"table {len(tables) + 1} starts with {line!r}, not a table name")
            table = Table(match.group(1))
            tables.append(table)
            in_declarations = True
            continue
        if in_declarations:
            match = _CHAIN.match(line)
            if match:
                name, policy, packets, nbytes = match.groups()
                table.chains.append(Chain(name, policy, int(packets or 0), int(nbytes or 0)))
                continue
            in_declarations = False
        table = _parse_body_line(table, line)
    if table is not None:
        raise ValueError("no COMMIT line at the end")
    return tables


def _parse_body_line(table: Table, line: str) -> Table | None:
    """Handle one rule, deletion or COMMIT line; returns None once the table is closed."""
    if line == "COMMIT":
        return None
    if match := _RULE.match(line):
        chain = _existing_chain(table, match.group(1), line)
        if chain.deleted:
            raise ValueError(f"cannot add rules to deleted chain {chain.name!r}")
        chain.rules.append(line)
    elif match := _DELETE.match(line):
        chain = _existing_chain(table, match.group(1), line)
        if chain.rules:
            raise ValueError(f"cannot delete chain {chain.name!r} after adding rules")
        chain.deleted = True
    else:
        raise ValueError(f"error parsing rule {line!r}")
    return table


def _existing_chain(table: Table, name: str, line: str) -> Chain:
    chain = table.chain(name)
    if chain is None:
        raise ValueError(f"error parsing rule {line!r}: no such chain {name!r} in {table.name}")
    return chain


def dump(tables: list[Table]) -> str:
    """Declarations first, then rules chain by chain, then deletions (IPTablesDump.String)."""
    out: list[str] = []
    for table in tables:
        out.append(rt.header(table.name))
        out += [rt.declare(c.name, c.policy, (c.packets, c.bytes)) for c in table.chains]
        for chain in table.chains:
            out += chain.rules
        out += [rt.delete(c.name) for c in table.chains if c.deleted]
        out.append(rt.COMMIT)
    return rt.text(out) if out else ""


def rule_comment(rule: str) -> str | None:
    """The --comment value of a rule, unquoted (None if it has none)."""
    words = [w.strip('"') for w in _WORD.findall(rule)]
    comment = None
    i = 0
    while i < len(words):
        if words[i] == "-m" and i < len(words) - 1:
            i += 2  # "-m MODULE" is skipped as a pair, as upstream's ParseRule does
        elif words[i] == "--comment" and i < len(words) - 1:
            comment = words[i + 1]
            i += 2
        else:
            i += 1
    return comment


def _service_name(comment: str) -> str:
    """The service in a comment: everything up to the first space or colon."""
    return re.split(r"[ :]", comment, maxsplit=1)[0]


def _by_comment_service_name(rule1: str, rule2: str) -> bool:
    """orderByCommentServiceName: rules lacking a comment compare equal to everything."""
    c1, c2 = rule_comment(rule1), rule_comment(rule2)
    if c1 is None or c2 is None:
        return False
    return _service_name(c1) < _service_name(c2)


def _nat_services_less(rule1: str, rule2: str) -> bool:
    """By service, but the "must be the last rule" rule stays last."""
    if "must be the last rule" in (rule_comment(rule1) or ""):
        return False
    if "must be the last rule" in (rule_comment(rule2) or ""):
        return True
    return _by_comment_service_name(rule1, rule2)


def _stable_sort(rules: list[str], less: Callable[[str, str], bool]) -> list[str]:
    """Go's sort.SliceStable with a less function."""

    def cmp(a: str, b: str) -> int:
        return -1 if less(a, b) else (1 if less(b, a) else 0)

    return sorted(rules, key=cmp_to_key(cmp))


def _chain_order(name: str) -> tuple[int, str]:
    """KUBE-NODEPORTS, KUBE-SERVICES, other KUBE-* alphabetically, then the rest."""
    if name == KUBE_NODEPORTS:
        return (0, name)
    if name == KUBE_SERVICES:
        return (1, name)
    return (2 if name.startswith("KUBE-") else 3, name)


def sort_tables(tables: list[Table]) -> list[Table]:
    """Apply sortIPTablesRules to parsed tables (in place) and return them sorted."""
    tables.sort(key=lambda t: t.name)
    for table in tables:
        table.chains.sort(key=lambda c: _chain_order(c.name))
        for name in (KUBE_NODEPORTS, KUBE_SERVICES):
            chain = table.chain(name)
            if chain is None or table.name not in ("filter", "nat"):
                continue
            less = _nat_services_less if (table.name, name) == ("nat", KUBE_SERVICES) else _by_comment_service_name
            chain.rules = _stable_sort(chain.rules, less)
    return tables


def sort_restore_text(text: str) -> str:
    """Sort restore text the way upstream's tests do before comparing."""
    return dump(sort_tables(parse(text)))
