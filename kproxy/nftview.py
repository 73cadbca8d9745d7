"""Reading a node's `table ip kube-proxy` for `trace`, `explain` and `graph` in nftables mode.

kube-proxy's nftables mode does not spell a Service as a row of rules the way iptables does:
a packet meets one rule in `services` whose verdict map (`service-ips`, `service-nodeports`)
holds one element per Service address, then the Service's own chains (a `numgen random mod N
vmap` picks the endpoint chain, whose rule DNATs). So what "matched" is often a map element,
not a rule; this module finds that element from the packet's address, protocol and port, and
gives each rule and element a line of plain language (the words of a concept both modes share
come from explanations.py, as explain.py's explain_rule takes them for the iptables mode).

Counters: upstream's table carries no `counter` statements (and kproxy's render must equal
upstream's, rule for rule), so `explain` keeps its own table in the node's netns,
`<lab prefix>-counters`: one dynamic set whose elements are (original destination, protocol,
destination after DNAT, its port), each with a counter, added to by the first packet of every
new connection at filter priority -5 of forward, input and output (after kube-proxy's DNAT at
-100, before its no-endpoint REJECT/DROP at 0). The element for (ClusterIP, tcp, pod IP, 8080)
is then exactly "new connections this Service port sent to that endpoint", as the DNAT rule's
packet counter is in iptables mode. The original port is not in the key: nft 1.0.6 cannot put
`ct original proto-dst` in a concatenation (it loses the type; `typeof` segfaults), so two
ports of one Service that target the same endpoint port count together.

Everything here is pure (text in, data out): unit-tested on captured listings without root.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kproxy.explanations import say
from kproxy.proxy.nft import names as n
from kproxy.proxy.nft.base import BASE_CHAINS
from kproxy.proxy.nft.listing import _blocks, _elements

# base chain -> its type ("nat"/"filter"): the column a trace step shows, as iptables' table does
BASE_TYPES = {name: type_ for name, type_, _, _ in BASE_CHAINS}
MAPS = (n.SERVICE_IPS_MAP, n.SERVICE_NODEPORTS_MAP, n.NO_ENDPOINT_SERVICES_MAP, n.NO_ENDPOINT_NODEPORTS_MAP,
        n.FIREWALL_IPS_MAP)
# the rule of a fixed chain that looks a packet up in each map, and the type of the hook it runs in
MAP_CHAIN = {n.SERVICE_IPS_MAP: ("nat", n.SERVICES_CHAIN), n.SERVICE_NODEPORTS_MAP: ("nat", n.SERVICES_CHAIN),
             n.FIREWALL_IPS_MAP: ("filter", n.FIREWALL_CHECK_CHAIN),
             n.NO_ENDPOINT_SERVICES_MAP: ("filter", n.SERVICE_ENDPOINTS_CHECK_CHAIN),
             n.NO_ENDPOINT_NODEPORTS_MAP: ("filter", n.NODEPORT_ENDPOINTS_CHECK_CHAIN)}
_TARGET = re.compile(r"(?:goto|jump) ([^\s,}]+)")
_COMMENT = re.compile(r' comment "([^"]*)"')


@dataclass
class Element:
    """One element of a verdict map: `10.96.0.10 . tcp . 53 : goto service-...`."""

    map: str
    key: str
    verdict: str
    comment: str = ""

    @property
    def text(self) -> str:
        return self.key + (f' comment "{self.comment}"' if self.comment else "") + f" : {self.verdict}"

    @property
    def target(self) -> str | None:
        m = _TARGET.match(self.verdict)
        return m.group(1) if m else None


@dataclass
class Listing:
    """`nft list table ip kube-proxy` parsed: each chain's rules, each map's elements, the
    node addresses that take NodePorts."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    maps: dict[str, list[Element]] = field(default_factory=dict)
    nodeport_ips: list[str] = field(default_factory=list)

    def element(self, map_name: str, daddr: str, proto: str, dport: str) -> Element | None:
        """The element a packet to daddr:dport/proto looks up in `map_name`."""
        key = f"{proto} . {dport}" if map_name in (n.SERVICE_NODEPORTS_MAP, n.NO_ENDPOINT_NODEPORTS_MAP) \
            else f"{daddr} . {proto} . {dport}"
        return next((e for e in self.maps.get(map_name, []) if e.key == key), None)


def parse_listing(text: str) -> Listing:
    out = Listing()
    for kind, name, body in _blocks(text):
        if kind == "chain":
            out.chains[name] = [line.strip() for line in body
                                if line.strip() and not line.strip().startswith(("type ", "comment "))]
            continue
        head, elements = _elements(body)
        if kind == "set":
            if name == n.NODEPORT_IPS_SET:
                out.nodeport_ips = elements
            continue
        parsed = []
        for e in elements:
            key, _, verdict = e.rpartition(" : ")
            m = _COMMENT.search(key)
            comment = m.group(1) if m else ""
            parsed.append(Element(name, _COMMENT.sub("", key).strip(), verdict.strip(), comment))
        out.maps[name] = parsed
    return out


def chain_service(chain: str) -> str:
    """`service-SUSTUHLJ-default/web/tcp/http` -> `default/web:http` (`ns/name` when unnamed)."""
    base = chain.split("-", 2)[-1] if "/" in chain else chain
    parts = base.split("__")[0].split("/")
    if len(parts) < 4:
        return chain
    return f"{parts[0]}/{parts[1]}" + (f":{parts[3]}" if parts[3] else "")


def endpoint_of(chain: str) -> str:
    """`endpoint-X-ns/name/tcp/p__10.244.0.5/8080` -> `10.244.0.5:8080`."""
    _, _, ep = chain.partition("__")
    return ep.replace("/", ":") if ep else "an endpoint"


def _service_words(name: str) -> str:
    return f"Service {name}"


def explain_element(e: Element) -> str:
    """One line for the map element a packet matched."""
    who = _service_words(chain_service(e.target) if e.target else (e.comment or "?"))
    key = e.key.replace(" . ", " ")
    t = e.target or ""
    if e.map == n.SERVICE_IPS_MAP:
        kind = "cluster IP" if t.startswith((n.CLUSTER_POLICY_PREFIX, n.LOCAL_POLICY_PREFIX)) \
            else "external or load-balancer IP"
        return f"{who}: the {kind} element [{key}] of map service-ips sends the packet to {t}"
    if e.map == n.SERVICE_NODEPORTS_MAP:
        return f"{who}: NodePort element [{key}] of map service-nodeports sends the packet to {t}"
    if e.map == n.FIREWALL_IPS_MAP:
        return f"{who}: [{key}] is subject to loadBalancerSourceRanges: checked in {t}"
    what = "NodePort" if e.map == n.NO_ENDPOINT_NODEPORTS_MAP else "address"
    if t == n.REJECT_CHAIN:
        return say("no endpoints", service=_service_words(e.comment),
                   how=f"element [{key}] of {e.map} rejects the connection")
    if e.verdict == "drop":
        return say("etp local, no local endpoint", service=_service_words(e.comment),
                   how=f"element [{key}] of {e.map} drops the packet")
    return f"{_service_words(e.comment)}: {what} element [{key}] of {e.map}: {e.verdict}"


def explain_rule(chain: str, rule: str) -> str:
    """One line of plain language for a rule of kube-proxy's table."""
    target = (_TARGET.search(rule) or [None, ""])[1] if "vmap" not in rule else ""
    if rule.startswith("ct state new jump "):
        return {n.FIREWALL_CHECK_CHAIN: "new connections pass the load-balancer firewall (firewall-ips)",
                n.SERVICE_ENDPOINTS_CHECK_CHAIN: "new connections to a Service without (local) endpoints are "
                                                 "rejected or dropped here (no-endpoint-services)",
                n.NODEPORT_ENDPOINTS_CHECK_CHAIN: "new connections to a NodePort without (local) endpoints are "
                                                  "rejected or dropped here (no-endpoint-nodeports)",
                n.CLUSTER_IPS_CHECK_CHAIN: "a ClusterIP on a port no Service has is rejected, an unallocated "
                                           "ClusterIP dropped"}.get(target, f"new connections: {target}")
    if rule == f"jump {n.SERVICES_CHAIN}":
        return say("portals", chain=f"chain {n.SERVICES_CHAIN}")
    if rule == f"jump {n.MASQUERADING_CHAIN}":
        return say("postrouting", chain=f"chain {n.MASQUERADING_CHAIN}")
    if f"vmap @{n.SERVICE_IPS_MAP}" in rule:
        return "look the destination address, protocol and port up in map service-ips"
    if f"vmap @{n.SERVICE_NODEPORTS_MAP}" in rule:
        return "a packet to a node address: look the protocol and port up in map service-nodeports"
    if "vmap @" in rule and "numgen" not in rule:
        return "look the packet up in map " + rule.split("vmap @", 1)[1].split()[0]
    if rule.startswith("numgen random mod "):
        mod = rule.split()[3]
        return f"random choice: numgen picks one of {mod} endpoint chains, each with probability 1/{mod}"
    if "dnat to " in rule:
        return say("dnat", endpoint=rule.split("dnat to ", 1)[1].split()[0])
    if rule == "masquerade fully-random":
        return say("masquerade")
    if chain == n.MASQUERADING_CHAIN and rule.endswith(" return"):
        return say("not masqueraded")
    if chain == n.MASQUERADING_CHAIN and rule.startswith("meta mark set"):
        return say("clear masquerade mark")
    if chain == n.MARK_MASQ_CHAIN:
        return say("set masquerade mark", chain=f"chain {n.MASQUERADING_CHAIN}")
    if chain == n.REJECT_CHAIN:
        return "reject: the client gets an ICMP port unreachable (connection refused)"
    if chain == n.CLUSTER_IPS_CHECK_CHAIN:
        return ("a ClusterIP on a port no Service has: rejected" if "reject" in rule
                else "an address in the service CIDR no Service has: dropped")
    if chain.startswith(n.FIREWALL_PREFIX) and rule.endswith("drop"):
        return say("source ranges drop", service=chain_service(chain))
    if target == n.MARK_MASQ_CHAIN:
        if chain.startswith(n.ENDPOINT_PREFIX):
            return say("hairpin masquerade", pod=rule.split()[2])
        if chain.startswith((n.CLUSTER_POLICY_PREFIX, n.LOCAL_POLICY_PREFIX)):
            src = rule.split("ip saddr != ", 1)[1].split()[0] if "ip saddr != " in rule else ""
            return say("outside cluster CIDR masquerade", cidr=src)
        if "fib saddr type local" in rule:
            return say("local external masquerade")
        if chain.startswith(n.EXTERNAL_PREFIX):
            return say("external masquerade")
        return say("masquerade mark")
    if chain.startswith(n.EXTERNAL_PREFIX):
        if "short-circuit pod traffic" in rule:
            return say("short-circuit pod traffic")
        if "short-circuit local traffic" in rule:
            return say("short-circuit local traffic")
        if target.startswith(n.LOCAL_POLICY_PREFIX):
            return say("etp local")
        return say("etp cluster", chain=target)
    if rule.startswith("ip saddr @") and target.startswith(n.ENDPOINT_PREFIX):
        return say("affinity", when="recently (its affinity set)", endpoint=endpoint_of(target))
    if rule.startswith("update @"):
        return "session affinity: remember this client for this endpoint"
    return ""


def numgen_choice(rule: str, verdict_chain: str) -> dict:
    """The endpoint choice of a `numgen random mod N vmap { 0 : goto A, ... }` rule that went to
    `verdict_chain`: which number came up, out of how many, and the endpoint chains it did not pick."""
    mod = int(rule.split()[3])
    picks = dict(re.findall(r"(\d+) : goto (\S+?)[,} ]", rule + " "))
    value = next((int(k) for k, v in picks.items() if v == verdict_chain), None)
    return {"numgen": {"mod": mod, "value": value}, "probability": 1 / mod if mod else None,
            "others": [v for k, v in sorted(picks.items()) if v != verdict_chain]}


# -- explain: one Service's path, with counters ---------------------------------------------
def service_path(listing: Listing, service: str) -> list[dict]:
    """The Service's map elements and chains' rules in the order a packet meets them:
    {"table", "chain", "rule", "element": Element|None}. `service` is "ns/name"."""
    out: list[dict] = []
    seen: set[str] = set()

    def follow(chain: str | None) -> None:
        if not chain or chain in seen or chain not in listing.chains or not n.is_service_chain(chain):
            return
        seen.add(chain)
        rules = listing.chains[chain]
        for r in rules:
            out.append({"table": "nat", "chain": chain, "rule": r, "element": None})
        for r in rules:
            for t in _TARGET.findall(r):
                follow(t)

    def mine(e: Element) -> bool:
        name = chain_service(e.target) if e.target and "/" in e.target else e.comment
        return name == service or name.startswith(service + ":")

    for map_name in (n.FIREWALL_IPS_MAP, n.SERVICE_IPS_MAP, n.SERVICE_NODEPORTS_MAP, n.NO_ENDPOINT_SERVICES_MAP,
                     n.NO_ENDPOINT_NODEPORTS_MAP):
        table, chain = MAP_CHAIN[map_name]
        for e in listing.maps.get(map_name, []):
            if mine(e):
                out.append({"table": table, "chain": map_name, "rule": e.text, "element": e})
                follow(e.target)
    return out


COUNTER_ELEMENT = re.compile(r"(\S+) \. (\w+) \. (\S+) \. (\d+) counter packets (\d+) bytes (\d+)")


def parse_counters(text: str) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    """`nft list set ip <prefix>-counters conns` into {(orig daddr, proto, daddr, dport): (packets, bytes)}."""
    return {m.groups()[:4]: (int(m.group(5)), int(m.group(6))) for m in COUNTER_ELEMENT.finditer(text)}


def _frontends(path: list[dict], nodeport_ips: list[str]) -> dict[str, set[tuple[str, str]]]:
    """For each element of the path, the (original daddr, proto) pairs whose connections it saw."""
    out = {}
    for step in path:
        e = step["element"]
        if e is None:
            continue
        parts = e.key.split(" . ")
        if len(parts) == 3:
            out[e.text] = {(parts[0], parts[1])}
        else:
            out[e.text] = {(ip, parts[0]) for ip in nodeport_ips}
    return out


def counted_path(path: list[dict], listing: Listing, counters: dict | None) -> list[dict]:
    """Each step of the path with `packets`/`bytes` where the counters tell them (None where they
    cannot: a rule that does not decide where a connection goes, e.g. the masquerade mark)."""
    fronts = _frontends(path, listing.nodeport_ips)
    all_fronts = set().union(*fronts.values()) if fronts else set()

    def total(pred) -> tuple[int, int]:
        sel = [v for k, v in (counters or {}).items() if pred(k)]
        return sum(p for p, _ in sel), sum(b for _, b in sel)

    out = []
    for step in path:
        e, rule, chain = step["element"], step["rule"], step["chain"]
        pk = by = None
        if counters is not None:
            if e is not None:
                port = e.key.split(" . ")[-1]
                if e.target is None or e.target == n.REJECT_CHAIN:  # not DNATed: the key is the address itself
                    pk, by = total(lambda k: (k[0], k[1]) in fronts[e.text] and k[3] == port and k[2] == k[0])
                else:
                    eps = {endpoint_of(c) for c in _reachable(listing, e.target)}
                    pk, by = total(lambda k: (k[0], k[1]) in fronts[e.text] and f"{k[2]}:{k[3]}" in eps)
            elif "dnat to " in rule:
                ep = rule.split("dnat to ", 1)[1].split()[0]
                pk, by = total(lambda k: (k[0], k[1]) in all_fronts and f"{k[2]}:{k[3]}" == ep)
            elif rule.startswith("numgen ") or (chain.startswith(n.EXTERNAL_PREFIX) and rule.startswith("goto ")):
                eps = {endpoint_of(c) for t in _TARGET.findall(rule) for c in _reachable(listing, t)}
                pk, by = total(lambda k: (k[0], k[1]) in all_fronts and f"{k[2]}:{k[3]}" in eps)
        out.append({**step, "packets": pk, "bytes": by})
    return out


def _reachable(listing: Listing, chain: str | None) -> list[str]:
    """The endpoint chains a chain leads to."""
    seen, todo, eps = set(), [chain], []
    while todo:
        c = todo.pop()
        if not c or c in seen:
            continue
        seen.add(c)
        if c.startswith(n.ENDPOINT_PREFIX):
            eps.append(c)
        for r in listing.chains.get(c, []):
            todo.extend(_TARGET.findall(r))
    return eps


def endpoint_chains(path: list[dict]) -> list[tuple[str, str]]:
    """(endpoint chain, ip:port) of each endpoint chain on the path, once each."""
    out = {}
    for step in path:
        if step["chain"].startswith(n.ENDPOINT_PREFIX) and "dnat to " in step["rule"]:
            out[step["chain"]] = step["rule"].split("dnat to ", 1)[1].split()[0]
    return list(out.items())


def reset_keys(path: list[dict], listing: Listing, counters: dict) -> list[tuple[str, str, str, str]]:
    """The counter elements that belong to this Service (what `--reset` deletes)."""
    fronts = set().union(*_frontends(path, listing.nodeport_ips).values()) if path else set()
    eps = {ep for _, ep in endpoint_chains(path)}
    ports = {e.key.split(" . ")[-1] for s in path for e in [s["element"]] if e is not None}
    return [k for k in counters if (k[0], k[1]) in fronts and (f"{k[2]}:{k[3]}" in eps or (k[2] == k[0] and k[3] in ports))]


@dataclass
class NftNode:
    """What explain/graph/dashboard read of one nftables node: kube-proxy's table, and the
    counter elements of kproxy's counters table (None: no counters there, e.g. a host lab)."""

    listing: Listing
    counters: dict | None = None


def report(service: str, node: NftNode, pods_by_ip: dict[str, dict]) -> dict:
    """explain.report's document for an nftables node: the same keys, map elements as rules."""
    path = service_path(node.listing, service)
    steps = counted_path(path, node.listing, node.counters)
    rules = []
    for s in steps:
        e = s["element"]
        stops = (e is not None and (e.verdict == "drop" or e.target == n.REJECT_CHAIN)) \
            or (s["chain"].startswith(n.FIREWALL_PREFIX) and s["rule"].endswith("drop"))
        rules.append({"table": s["table"], "chain": s["chain"], "rule": s["rule"], "packets": s["packets"],
                      "bytes": s["bytes"], "stops": stops,
                      "explanation": explain_element(e) if e is not None else explain_rule(s["chain"], s["rule"])})
    endpoints = []
    for chain, ep in endpoint_chains(path):
        ip, _, port = ep.rpartition(":")
        dnat = next(s for s in steps if s["chain"] == chain and "dnat to " in s["rule"])
        pod = pods_by_ip.get(ip) or {}
        endpoints.append({"pod": pod.get("name"), "ip": ip, "port": port, "node": pod.get("node"), "chain": chain,
                          "connections": dnat["packets"] or 0, "packets": dnat["packets"] or 0,
                          "bytes": dnat["bytes"] or 0})
    return {"service": service, "proxyMode": "nftables", "counted": node.counters is not None, "rules": rules,
            "endpoints": endpoints}
