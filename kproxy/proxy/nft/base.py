"""The fixed part of kube-proxy's table: what upstream's setupNFTables writes on every sync.

Base chains hook into netfilter at upstream's priorities (filter chains 10 before DNAT, so
loadBalancerSourceRanges and no-endpoint rejects see the original destination; nat chains at
the usual dstnat/srcnat), the dispatch sets and verdict maps the per-service elements go into,
and the masquerading chains driven by the masquerade mark. Nothing here depends on a Service.
"""

from __future__ import annotations

from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft import names as n
from kproxy.proxy.nft.table import Table

IPV4_ADDR = "ipv4_addr"
_ADDR_PROTO_PORT = f"{IPV4_ADDR} . inet_proto . inet_service : verdict"
_PROTO_PORT = "inet_proto . inet_service : verdict"

# (name, type, hook, priority): upstream's base chains.
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-forward", "filter", "forward", 0),
    ("filter-input", "filter", "input", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
    ("nat-prerouting", "nat", "prerouting", -100),
)

# (base chain, condition, target): the jumps from the base chains, in upstream's order.
BASE_JUMPS = (
    ("filter-prerouting-pre-dnat", "ct state new", n.FIREWALL_CHECK_CHAIN),
    ("filter-output-pre-dnat", "ct state new", n.FIREWALL_CHECK_CHAIN),
    ("filter-forward", "ct state new", n.SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-input", "ct state new", n.NODEPORT_ENDPOINTS_CHECK_CHAIN),
    ("filter-input", "ct state new", n.SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-output", "ct state new", n.SERVICE_ENDPOINTS_CHECK_CHAIN),
    ("filter-forward", "ct state new", n.CLUSTER_IPS_CHECK_CHAIN),
    ("filter-output", "ct state new", n.CLUSTER_IPS_CHECK_CHAIN),
    ("nat-output", "", n.SERVICES_CHAIN),
    ("nat-postrouting", "", n.MASQUERADING_CHAIN),
    ("nat-prerouting", "", n.SERVICES_CHAIN),
)


def masquerade_mark(cfg: ProxyConfig) -> str:
    return f"{1 << cfg.masquerade_bit:#x}"


# The sets and maps every Service puts elements into (a partial sync edits them by key).
SHARED_SETS = (n.CLUSTER_IPS_SET, n.FIREWALL_IPS_MAP, n.NO_ENDPOINT_NODEPORTS_MAP, n.NO_ENDPOINT_SERVICES_MAP,
               n.SERVICE_IPS_MAP, n.SERVICE_NODEPORTS_MAP)


def declare_shared(t: Table) -> None:
    """Declare the dispatch sets and verdict maps the per-Service elements go into."""
    t.set(n.CLUSTER_IPS_SET, IPV4_ADDR, comment="Active ClusterIPs")
    for name, type_, comment in (
        (n.FIREWALL_IPS_MAP, _ADDR_PROTO_PORT, "destinations that are subject to LoadBalancerSourceRanges"),
        (n.NO_ENDPOINT_NODEPORTS_MAP, _PROTO_PORT,
         "vmap to drop or reject packets to service nodeports with no endpoints"),
        (n.NO_ENDPOINT_SERVICES_MAP, _ADDR_PROTO_PORT,
         "vmap to drop or reject packets to services with no endpoints"),
        (n.SERVICE_IPS_MAP, _ADDR_PROTO_PORT, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        (n.SERVICE_NODEPORTS_MAP, _PROTO_PORT, "NodePort traffic"),
    ):
        t.set(name, type_, is_map=True, comment=comment)


def write_base(t: Table, cfg: ProxyConfig, service_cidrs: list[str]) -> None:
    """Declare the fixed sets, maps and chains and fill the chains (no per-Service content)."""
    declare_shared(t)
    t.set(n.NODEPORT_IPS_SET, IPV4_ADDR, comment="IPs that accept NodePort traffic")

    for name, type_, hook, priority in BASE_CHAINS:
        t.chain(name, base=f"type {type_} hook {hook} priority {priority}")
    for name in (n.CLUSTER_IPS_CHECK_CHAIN, n.FIREWALL_CHECK_CHAIN, n.MARK_MASQ_CHAIN, n.MASQUERADING_CHAIN,
                 n.NODEPORT_ENDPOINTS_CHECK_CHAIN, n.SERVICES_CHAIN, n.SERVICE_ENDPOINTS_CHECK_CHAIN):
        t.chain(name)
    t.chain(n.REJECT_CHAIN, comment="helper for @no-endpoint-services / @no-endpoint-nodeports")

    for chain, cond, target in BASE_JUMPS:
        t.rule(chain, f"{cond} jump {target}".strip())

    mark = masquerade_mark(cfg)
    t.rule(n.MARK_MASQ_CHAIN, f"mark set mark or {mark}")
    t.rule(n.MASQUERADING_CHAIN, f"mark and {mark} == 0 return")
    t.rule(n.MASQUERADING_CHAIN, f"mark set mark xor {mark}")
    t.rule(n.MASQUERADING_CHAIN, "masquerade fully-random")

    t.rule(n.CLUSTER_IPS_CHECK_CHAIN, f"ip daddr @{n.CLUSTER_IPS_SET} reject",
           comment="Reject traffic to invalid ports of ClusterIPs")
    if service_cidrs:
        t.rule(n.CLUSTER_IPS_CHECK_CHAIN, f"ip daddr {{ {', '.join(service_cidrs)} }} drop",
               comment="Drop traffic to unallocated ClusterIPs")

    t.rule(n.FIREWALL_CHECK_CHAIN, f"ip daddr . meta l4proto . th dport vmap @{n.FIREWALL_IPS_MAP}")
    t.rule(n.REJECT_CHAIN, "reject")
    t.rule(n.SERVICES_CHAIN, f"ip daddr . meta l4proto . th dport vmap @{n.SERVICE_IPS_MAP}")
    t.rule(n.SERVICES_CHAIN, f"ip daddr @{n.NODEPORT_IPS_SET} meta l4proto . th dport vmap @{n.SERVICE_NODEPORTS_MAP}")
    t.rule(n.SERVICE_ENDPOINTS_CHECK_CHAIN,
           f"ip daddr . meta l4proto . th dport vmap @{n.NO_ENDPOINT_SERVICES_MAP}")
    t.rule(n.NODEPORT_ENDPOINTS_CHECK_CHAIN,
           f"ip daddr @{n.NODEPORT_IPS_SET} meta l4proto . th dport vmap @{n.NO_ENDPOINT_NODEPORTS_MAP}")
    for ip in cfg.node_ips:
        if ip and ip != "0.0.0.0":
            t.element(n.NODEPORT_IPS_SET, ip)
