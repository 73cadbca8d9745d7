"""`kproxy explain svc/NAME`: one Service's rules in the order a packet meets them, each with a
line of plain explanation and its live counters, and how the new connections spread.

Why the counters mean something: the nat table sees only the first packet of a connection
(later packets follow the conntrack entry), so the packet counter of a KUBE-SEP chain's DNAT
rule is the number of new connections sent to that endpoint. `--reset` zeroes the Service's
own chains (and its rules in the fixed chains) so a student watches 1/3, 1/2, 1 become an even
spread. The parsing here is pure (iptables-save text in, data out) so it is unit-tested on
captured text without root; `kproxy trace` reuses `parse_save` and `explain_rule`.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from kproxy.explanations import say
from kproxy.proxy import chains as ch

# The fixed chains whose rules may concern one Service, in the order a packet meets them.
ENTRY_CHAINS = (("nat", ch.KUBE_SERVICES), ("nat", ch.KUBE_NODEPORTS), ("filter", ch.KUBE_SERVICES),
                ("filter", ch.KUBE_EXTERNAL_SERVICES), ("filter", ch.KUBE_PROXY_FIREWALL),
                ("filter", ch.KUBE_NODEPORTS))
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")


@dataclass
class Rule:
    """One `-A` line of iptables-save (counters from `-c`, 0 without)."""

    table: str
    chain: str
    text: str  # "-A CHAIN ..." as iptables-save prints it, without the counters
    packets: int = 0
    bytes: int = 0
    index: int = 0  # 1-based position in its chain (iptables' rule number)

    @property
    def words(self) -> list[str]:
        try:
            return shlex.split(self.text)
        except ValueError:
            return self.text.split()

    def option(self, name: str) -> str | None:
        w = self.words
        return w[w.index(name) + 1] if name in w and w.index(name) + 1 < len(w) else None

    @property
    def target(self) -> str | None:
        return self.option("-j") or self.option("-g")

    @property
    def comment(self) -> str:
        return self.option("--comment") or ""


@dataclass
class Saved:
    """iptables-save parsed: the rules of each (table, chain), in order."""

    rules: dict[tuple[str, str], list[Rule]] = field(default_factory=dict)

    def chain(self, table: str, chain: str) -> list[Rule]:
        return self.rules.get((table, chain), [])

    def find(self, table: str, text: str) -> Rule | None:
        """The rule whose text is `text` (an xtables-monitor line reduced to `-A ...`)."""
        parts = text.split(None, 2)
        if len(parts) < 2:
            return None
        return next((r for r in self.chain(table, parts[1]) if r.text == text), None)


def parse_save(text: str) -> Saved:
    """iptables-save output (with or without -c) into rules per (table, chain)."""
    saved, table = Saved(), ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        packets = nbytes = 0
        m = _COUNTERS.match(line)
        if m:
            packets, nbytes = int(m.group(1)), int(m.group(2))
            line = line[m.end():]
        if not line.startswith("-A "):
            continue
        chain = line.split()[1]
        rules = saved.rules.setdefault((table, chain), [])
        rules.append(Rule(table, chain, line, packets, nbytes, len(rules) + 1))
    return saved


def _mentions(rule: Rule, service: str) -> bool:
    """Whether a rule's comment names the Service ("ns/name" or "ns/name:port")."""
    c = rule.comment
    return c == service or c.startswith((f"{service}:", f"{service} "))


def service_rules(saved: Saved, service: str) -> list[Rule]:
    """The Service's rules in the order a packet meets them: its rules in the entry chains,
    each followed (depth first) by the per-service chains it jumps to, each chain once."""
    out: list[Rule] = []
    seen: set[str] = set()

    def follow(chain: str) -> None:
        if chain in seen or not ch.is_service_chain(chain):
            return
        seen.add(chain)
        rules = saved.chain("nat", chain)
        out.extend(rules)
        for r in rules:
            if r.target:
                follow(r.target)

    for table, chain in ENTRY_CHAINS:
        for r in saved.chain(table, chain):
            if _mentions(r, service) or (table == "nat" and r.target and r.target in seen):
                out.append(r)
                if table == "nat" and r.target:
                    follow(r.target)
    return out


def own_chains(rules: list[Rule]) -> list[str]:
    """The per-service nat chains among `rules` (what --reset zeroes whole)."""
    return list(dict.fromkeys(r.chain for r in rules if ch.is_service_chain(r.chain)))


def _ep(text: str) -> str:
    m = re.search(r"-> (\S+)", text)
    return m.group(1) if m else "an endpoint"


def explain_rule(rule: Rule) -> str:
    """One line of plain language for a kube-proxy rule (or a built-in hook rule)."""
    c, t, chain, w = rule.comment, rule.target or "", rule.chain, rule.words
    name = re.sub(r" (cluster IP|external IP|loadbalancer IP|has no .*|health check node port|-> .*)$", "", c)
    dport, dest = rule.option("--dport"), (rule.option("-d") or "").removesuffix("/32")
    if t == ch.KUBE_SERVICES and rule.table == "filter":
        return "the filter's Service portals: REJECT/DROP for Services without (local) endpoints"
    if t == ch.KUBE_SERVICES:
        return say("portals", chain=ch.KUBE_SERVICES)
    if t == ch.KUBE_EXTERNAL_SERVICES:
        return "the external portals (NodePort, LB, external IPs): REJECT/DROP when nothing may serve them"
    if t == ch.KUBE_PROXY_FIREWALL:
        return "the load-balancer firewall: drops sources outside loadBalancerSourceRanges"
    if t == ch.KUBE_FORWARD:
        return "kube-proxy's forwarding checks (INVALID packets dropped, known connections let through)"
    if t == ch.KUBE_FIREWALL:
        return "the kubelet's KUBE-FIREWALL: drops packets to 127.0.0.0/8 that did not come from it"
    if t == ch.KUBE_NODEPORTS and rule.table == "filter":
        return "health-check NodePorts are let in"
    if t == ch.KUBE_POSTROUTING:
        return say("postrouting", chain=ch.KUBE_POSTROUTING)
    if chain == ch.KUBE_SERVICES and t == ch.KUBE_NODEPORTS:
        return "anything addressed to this node's own addresses is checked for NodePorts (the last rule)"
    if t == "REJECT":
        return say("no endpoints", service=name, how="the connection is rejected")
    if t == "DROP" and "no local endpoints" in c:
        return say("etp local, no local endpoint", service=name, how="the packet is dropped")
    if t == "DROP" and "not accepted by" in c:
        return say("source ranges drop", service=name)
    if t == "DROP" and "INVALID" in w:
        return "a packet conntrack cannot place (INVALID) is dropped"
    if chain == ch.KUBE_SERVICES and t.startswith((ch.SVC_PREFIX, ch.SVL_PREFIX)):
        return f"{name}: a packet to the cluster IP {dest}:{dport} goes to the Service's endpoint chain {t}"
    if chain == ch.KUBE_SERVICES and t.startswith((ch.EXT_PREFIX, ch.FW_PREFIX)):
        kind = "load-balancer IP" if "loadbalancer" in c else "external IP"
        return f"{name}: a packet to the {kind} {dest}:{dport} goes to {t}"
    if chain == ch.KUBE_NODEPORTS and t.startswith(ch.EXT_PREFIX):
        return f"{name}: NodePort {dport} on this node goes to the external-traffic chain {t}"
    if chain == ch.KUBE_NODEPORTS and t == "ACCEPT":
        return f"{name}: the health-check NodePort {dport} is let in"
    if t == ch.KUBE_MARK_MASQ:
        if chain.startswith(ch.SEP_PREFIX):
            return say("hairpin masquerade", pod=(rule.option("-s") or "").removesuffix("/32"))
        if chain.startswith((ch.SVC_PREFIX, ch.SVL_PREFIX)):
            return say("outside cluster CIDR masquerade", cidr=rule.option("-s") or "")
        if "LOCAL" in c:
            return say("local external masquerade")
        if chain.startswith(ch.EXT_PREFIX):
            return say("external masquerade")
        return say("masquerade mark")
    if chain.startswith(ch.EXT_PREFIX):
        if "pod traffic" in c:
            return say("short-circuit pod traffic")
        if "route LOCAL" in c:
            return say("short-circuit local traffic")
        if t.startswith(ch.SVL_PREFIX):
            return say("etp local")
        return say("etp cluster", chain=t)
    if chain.startswith(ch.FW_PREFIX):
        if t.startswith(ch.EXT_PREFIX):
            return f"loadBalancerSourceRanges: a source in {rule.option('-s')} is let through"
        return "any other source falls off the end: not DNATed, then dropped by KUBE-PROXY-FIREWALL"
    if chain.startswith((ch.SVC_PREFIX, ch.SVL_PREFIX)) and t.startswith(ch.SEP_PREFIX):
        if "--rcheck" in w:
            return say("affinity", when=f"in the last {rule.option('--seconds')} s", endpoint=_ep(c))
        p = rule.option("--probability")
        if p:
            return f"random roll: with probability {float(p):.4g} the connection goes to {_ep(c)} ({t})"
        return f"otherwise (every roll above said no) the connection goes to {_ep(c)} ({t})"
    if t == "DNAT":
        return say("dnat", endpoint=rule.option("--to-destination"))
    if chain == ch.KUBE_POSTROUTING:
        if t == "RETURN":
            return say("not masqueraded")
        if t == "MARK":
            return say("clear masquerade mark")
        if t == "MASQUERADE":
            return say("masquerade")
    if chain == ch.KUBE_MARK_MASQ:
        return say("set masquerade mark", chain=ch.KUBE_POSTROUTING)
    if chain == ch.KUBE_FORWARD and t == "ACCEPT":
        if "--ctstate" in w:
            return "a packet of a known connection is let through"
        return "a packet marked for masquerade is forwarded"
    if t.startswith("KUBE-"):
        return f"kube-proxy's {t} checks"
    return c or ""


@dataclass
class EndpointCount:
    chain: str
    ip: str
    port: str
    pod: str | None
    node: str | None
    connections: int
    packets: int
    bytes: int


def endpoint_counts(saved: Saved, rules: list[Rule], pods_by_ip: dict[str, dict]) -> list[EndpointCount]:
    """Each KUBE-SEP chain of the Service: its DNAT rule's counters (= new connections) and the
    pod behind it; `packets`/`bytes` add up every rule of the chain."""
    out = []
    for chain in own_chains(rules):
        if not chain.startswith(ch.SEP_PREFIX):
            continue
        chain_rules = saved.chain("nat", chain)
        dnat = next((r for r in chain_rules if r.target == "DNAT"), None)
        if dnat is None:
            continue
        ip, _, port = (dnat.option("--to-destination") or "").rpartition(":")
        pod = pods_by_ip.get(ip) or {}
        out.append(EndpointCount(chain, ip, port, pod.get("name"), pod.get("node"), dnat.packets,
                                 dnat.packets, dnat.bytes))
    return out


def report(service: str, saved, pods_by_ip: dict[str, dict]) -> dict:
    """The `-o json` document of `kproxy explain`: `saved` is iptables-save -c parsed, or an
    nftables node (nftview.NftNode: kube-proxy's table and kproxy's counters), same keys."""
    if not isinstance(saved, Saved):
        from kproxy.nftview import report as nft_report
        return nft_report(service, saved, pods_by_ip)
    rules = service_rules(saved, service)
    eps = endpoint_counts(saved, rules, pods_by_ip)
    return {
        "service": service,
        "proxyMode": "iptables",
        "counted": True,
        "rules": [{"table": r.table, "chain": r.chain, "rule": r.text, "packets": r.packets, "bytes": r.bytes,
                   "stops": r.target in ("REJECT", "DROP") and "INVALID" not in r.words,
                   "explanation": explain_rule(r)} for r in rules],
        "endpoints": [{"pod": e.pod, "ip": e.ip, "port": e.port, "node": e.node, "chain": e.chain,
                       "connections": e.connections, "packets": e.packets, "bytes": e.bytes} for e in eps],
    }


def format_report(doc: dict) -> str:
    """The text form: numbered rules with counters and explanations, then the spread."""
    nft = doc.get("proxyMode") == "nftables"
    lines = [f"Service {doc['service']}: its rules in the order a packet meets them "
             + ("(nftables: map elements and chains; new connections counted by kproxy's counters table since the "
                "last reset; '-' where a rule decides no destination)" if nft
                else "(pkts/bytes since the last reset or rules change)")]
    if not doc.get("counted", True):
        lines.append("  (no counters: this lab has no node namespace to keep kproxy's counters table in)")
    if not doc["rules"]:
        lines.append("  no rules: the Service has no cluster IP rules on this node (headless, ExternalName, "
                     "or not synced yet)")
    for i, r in enumerate(doc["rules"], 1):
        count = f"[{r['packets']} pkts, {r['bytes']} B]" if r["packets"] is not None else "[-]"
        rule = f"{r['chain']}: {r['rule']}" if nft else r["rule"]
        lines.append(f"{i:3}. {count} {r['table']} {rule}")
        if r["explanation"]:
            lines.append(f"      {r['explanation']}")
    eps = doc["endpoints"]
    total = sum(e["connections"] for e in eps)
    lines.append("")
    lines.append(f"Endpoints: new connections DNATed to each (total {total})")
    if not eps:
        lines.append("  none")
    for e in eps:
        share = f"{100 * e['connections'] / total:5.1f}%" if total else "    -"
        who = f"pod {e['pod']}" if e["pod"] else "no pod known"
        lines.append(f"  {e['ip']}:{e['port']:<6} {who} on {e['node'] or '?'}: {e['connections']} connections "
                     f"({share})")
    return "\n".join(lines) + "\n"


def reset_commands(saved: Saved, service: str) -> list[list[str]]:
    """`iptables -Z` commands zeroing only this Service's counters: its own chains whole, and
    its rules in the fixed chains by rule number (rule numbers read just before)."""
    rules = service_rules(saved, service)
    cmds = [["iptables", "-w", "-t", "nat", "-Z", c] for c in own_chains(rules)]
    for r in rules:
        if not ch.is_service_chain(r.chain):
            cmds.append(["iptables", "-w", "-t", r.table, "-Z", r.chain, str(r.index)])
    return cmds
