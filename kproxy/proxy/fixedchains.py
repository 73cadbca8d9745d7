"""The fixed chains (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-FORWARD, ...): their
base and trailer rules, and how a partial sync edits them in place.

Every Service adds rules to the fixed chains; a full render writes them whole: the base rules,
every Service's rules in (namespace, name) order, the trailer. A partial sync cannot rewrite
KUBE-SERVICES whole without costing O(Services), so the Proxier keeps, per fixed chain, the
rules the kernel holds and who wrote each one (FixedRules); a changed Service's old rules are
deleted by their spec and its new ones inserted at their position, found by bisecting the
owners. The kernel then holds what a full render would have written.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from kproxy.proxy import chains as ch
from kproxy.proxy import restoretext as rt
from kproxy.proxy.model import LOCALHOST_CIDR, ProxyConfig

if TYPE_CHECKING:
    from kproxy.proxy.servicerules import ServiceRules

TableChain = tuple[str, str]  # (table, chain)


def write_base(cfg: ProxyConfig, filter_: rt.Table, nat: rt.Table) -> None:
    """Declare the fixed chains and write the rules that come before any Service's."""
    for chain in (ch.KUBE_NODEPORTS, ch.KUBE_SERVICES, ch.KUBE_EXTERNAL_SERVICES):
        filter_.declare(chain)
    if cfg.localhost_nodeports:
        # route_localnet opens a hole (issues.k8s.io/90259); this rule plugs it.
        filter_.declare(ch.KUBE_FIREWALL)
        filter_.add(
            ch.KUBE_FIREWALL,
            "-m", "comment", "--comment", rt.quote("block incoming localnet connections"),
            "-d", LOCALHOST_CIDR, "!", "-s", LOCALHOST_CIDR,
            "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
            "-j", "DROP",
        )
    filter_.declare(ch.KUBE_FORWARD)
    filter_.declare(ch.KUBE_PROXY_FIREWALL)
    for chain in (ch.KUBE_NODEPORTS, ch.KUBE_SERVICES, ch.KUBE_MARK_MASQ, ch.KUBE_POSTROUTING):
        nat.declare(chain)
    _write_masquerade_chains(cfg, nat)


def _mark(cfg: ProxyConfig) -> str:
    return hex(1 << cfg.masquerade_bit)


def _write_masquerade_chains(cfg: ProxyConfig, nat: rt.Table) -> None:
    mark = _mark(cfg)
    nat.add(ch.KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
    # Clear the mark so a packet re-traversing the stack is not masqueraded twice.
    nat.add(ch.KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
    masq = ["-m", "comment", "--comment", rt.quote("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE"]
    if cfg.random_fully:
        masq.append("--random-fully")
    nat.add(ch.KUBE_POSTROUTING, masq)
    nat.add(ch.KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)


def write_trailer(cfg: ProxyConfig, filter_: rt.Table, nat: rt.Table) -> None:
    """Rules upstream writes after all services: the NodePort tail-call and KUBE-FORWARD."""
    mark = _mark(cfg)
    destinations = ["-m", "addrtype", "--dst-type", "LOCAL"]
    if not cfg.localhost_nodeports:
        destinations += ["!", "-d", LOCALHOST_CIDR]
    nat.add(
        ch.KUBE_SERVICES,
        "-m", "comment", "--comment",
        rt.quote("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
        destinations, "-j", ch.KUBE_NODEPORTS,
    )
    if not cfg.conntrack_tcp_liberal:
        # INVALID packets would otherwise reset connections (issues.k8s.io/74839).
        rule = ["-m", "conntrack", "--ctstate", "INVALID"]
        if cfg.nfacct:
            rule += ["-m", "nfacct", "--nfacct-name", ch.NFACCT_CT_STATE_INVALID_DROPPED]
        filter_.add(ch.KUBE_FORWARD, rule, "-j", "DROP")
    # Lets marked (NodePort) traffic through even when FORWARD's policy is DROP.
    filter_.add(
        ch.KUBE_FORWARD,
        "-m", "comment", "--comment", rt.quote("kubernetes forwarding rules"),
        "-m", "mark", "--mark", f"{mark}/{mark}", "-j", "ACCEPT",
    )
    filter_.add(
        ch.KUBE_FORWARD,
        "-m", "comment", "--comment", rt.quote("kubernetes forwarding conntrack rule"),
        "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT",
    )


@dataclass
class FixedChains:
    """The fixed chains of both tables, in declaration order, with their base and trailer rules."""

    declared: dict[str, list[str]]  # table -> fixed chains in declaration order
    base: dict[TableChain, list[str]]
    trailer: dict[TableChain, list[str]]


def fixed_chains(cfg: ProxyConfig) -> FixedChains:
    base = rt.Table("filter"), rt.Table("nat")
    write_base(cfg, *base)
    trailer = rt.Table("filter"), rt.Table("nat")
    write_trailer(cfg, *trailer)
    return FixedChains(
        declared={t.name: list(t.declared) for t in base},
        base={(t.name, c): list(r) for t in base for c, r in t.rules.items()},
        trailer={(t.name, c): list(r) for t in trailer for c, r in t.rules.items()},
    )


# Who wrote a rule of a fixed chain, in the order the rules go: the base, the Services by
# (namespace, name), the trailer.
_BASE, _TRAILER = (0,), (2,)


def service_order(key: str) -> tuple:
    """Where a Service's ("ns/name") rules go in the fixed chains."""
    ns, _, name = key.partition("/")
    return (1, ns, name)


class FixedRules:
    """Every fixed chain's rules as the kernel holds them, and for each rule who wrote it."""

    def __init__(self, fixed: FixedChains, rules: dict[TableChain, list[str]],
                 owners: dict[TableChain, list[tuple]]) -> None:
        self.fixed = fixed
        self.rules = rules
        self.owners = owners

    @classmethod
    def of(cls, fixed: FixedChains, services: Iterable["ServiceRules"]) -> "FixedRules":
        """What a full sync writes: base rules, ``services`` (in render order), trailer."""
        rules: dict[TableChain, list[str]] = {}
        owners: dict[TableChain, list[tuple]] = {}
        for t, chains in fixed.declared.items():
            for c in chains:
                base = fixed.base.get((t, c), [])
                rules[(t, c)] = list(base)
                owners[(t, c)] = [_BASE] * len(base)
        for r in services:
            o = (1, *r.order)
            for tc, rs in r.fixed.items():
                rules[tc].extend(rs)
                owners[tc].extend([o] * len(rs))
        for tc, rs in fixed.trailer.items():
            rules[tc].extend(rs)
            owners[tc].extend([_TRAILER] * len(rs))
        return cls(fixed, rules, owners)

    def table_rules(self, table: str) -> Iterator[str]:
        """The table's fixed chains' rules, in declaration order."""
        for c in self.fixed.declared[table]:
            yield from self.rules[(table, c)]

    def edited(self) -> "FixedRules":
        """A copy to edit (the chains' lists are copied when edited): kept only once the
        restore succeeded."""
        return FixedRules(self.fixed, dict(self.rules), dict(self.owners))

    def replace(self, key: str, old: "ServiceRules | None", new: "ServiceRules | None") -> dict[str, list[str]]:
        """Replace Service ``key``'s rules (``old`` -> ``new``) in the fixed chains: the restore
        lines per table (its old rules deleted by spec, the new ones inserted in place)."""
        o = service_order(key)
        edits: dict[str, list[str]] = {"filter": [], "nat": []}
        tcs = set(old.fixed if old is not None else ()) | set(new.fixed if new is not None else ())
        declared = self.fixed.declared
        for tc in sorted(tcs, key=lambda tc: (tc[0], declared[tc[0]].index(tc[1]))):
            was = old.fixed.get(tc, []) if old is not None else []
            now = new.fixed.get(tc, []) if new is not None else []
            if was == now:
                continue
            table, chain = tc
            rs, ow = list(self.rules[tc]), list(self.owners[tc])
            lo, hi = bisect.bisect_left(ow, o), bisect.bisect_right(ow, o)
            edits[table] += [rt.remove(chain, rt.spec(line, chain)) for line in rs[lo:hi]]
            tail = len(rs) - hi
            for k, line in enumerate(now):
                edits[table].append(rt.append(chain, rt.spec(line, chain)) if tail == 0 else
                                    rt.insert(chain, lo + k + 1, rt.spec(line, chain)))
            rs[lo:hi], ow[lo:hi] = now, [o] * len(now)
            self.rules[tc], self.owners[tc] = rs, ow
        return edits
