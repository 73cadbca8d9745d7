"""What one service port adds to kube-proxy's nftables table.

A port of the loop body of upstream's nftables syncProxyRules (pkg/proxy/nftables/proxier.go,
the v1.33/v1.34 revision the reference case pins). It reads the same digest and endpoint
categorization (kproxy/proxy/model.py) as the iptables writer, so both modes agree on which
endpoints serve which traffic, and differ only in the shapes they write:

- destinations are elements of verdict maps (`service-ips`, `service-nodeports`), not rules;
  no-endpoint handling is elements of `no-endpoint-services` / `no-endpoint-nodeports`;
- load balancing is one `numgen random mod N vmap` rule, not N `statistic` rules;
- ClientIP affinity is a dynamic set with a timeout per endpoint, filled by `update @set`.
"""

from __future__ import annotations

import ipaddress

from kproxy.proxy.model import Categorized, Endpoint, ProxyConfig, ServicePort, categorize_endpoints
from kproxy.proxy.nft import names as n
from kproxy.proxy.nft.base import IPV4_ADDR
from kproxy.proxy.nft.table import Table


class PortNames:
    """The chain and set names of one service port."""

    def __init__(self, sp: ServicePort) -> None:
        self.sp = sp
        base = n.service_port_base(sp.namespace, sp.name, sp.proto, sp.port_name)
        self.cluster = n.CLUSTER_POLICY_PREFIX + base
        self.local = n.LOCAL_POLICY_PREFIX + base
        self.external = n.EXTERNAL_PREFIX + base
        self.firewall = n.FIREWALL_PREFIX + base

    def endpoint_base(self, ep: Endpoint) -> str:
        sp = self.sp
        return n.endpoint_base(sp.namespace, sp.name, sp.proto, sp.port_name, ep.ip, ep.port)

    def endpoint(self, ep: Endpoint) -> str:
        return n.ENDPOINT_PREFIX + self.endpoint_base(ep)

    def affinity(self, ep: Endpoint) -> str:
        return n.AFFINITY_PREFIX + self.endpoint_base(ep)


class ServiceWriter:
    """Writes service ports into a Table; config-derived values are computed once."""

    def __init__(self, t: Table, cfg: ProxyConfig) -> None:
        self.t = t
        self.cfg = cfg
        cidr = cfg.cluster_cidr
        # Upstream's LocalTrafficDetector by cluster CIDR; None is its no-op detector.
        self.if_local = f"ip saddr {cidr}" if cidr else None
        self.if_not_local = f"ip saddr != {cidr}" if cidr else None

    def write_port(self, sp: ServicePort, endpoints: list[Endpoint]) -> set[str]:
        """Add one service port's chains, sets, rules and elements; return the chains it uses."""
        t, names = self.t, PortNames(sp)
        eps: Categorized = categorize_endpoints(endpoints, sp)
        has_endpoints = eps.has_any
        proto, key_tail = sp.proto, f"{sp.proto} . {sp.port}"
        comment = sp.name_string
        active: set[str] = set()

        def ensure(chain: str) -> None:
            t.chain(chain)
            active.add(chain)

        for ep in eps.reachable:
            ensure(names.endpoint(ep))
        uses_cluster_chain = bool(eps.cluster) and sp.uses_cluster_endpoints
        if uses_cluster_chain:
            ensure(names.cluster)
        uses_local_chain = bool(eps.local) and sp.uses_local_endpoints
        if uses_local_chain:
            ensure(names.local)

        internal_chain, has_internal = names.cluster, has_endpoints
        if sp.internal_policy_local:
            internal_chain, has_internal = names.local, has_endpoints and bool(eps.local)
        external_policy_chain, has_external = names.cluster, has_endpoints
        if sp.external_policy_local:
            external_policy_chain, has_external = names.local, has_endpoints and bool(eps.local)
        # Needed even without external endpoints: the local-traffic short-circuits live there.
        uses_external_chain = has_endpoints and sp.externally_accessible
        if uses_external_chain:
            ensure(names.external)

        if not has_endpoints:
            internal_verdict = external_verdict = f"goto {n.REJECT_CHAIN}"
        else:
            internal_verdict = "" if has_internal else "drop"
            external_verdict = "" if has_external else "drop"

        # The ClusterIP.
        t.element(n.CLUSTER_IPS_SET, sp.cluster_ip)
        if has_internal:
            t.element(n.SERVICE_IPS_MAP, f"{sp.cluster_ip} . {key_tail}", f"goto {internal_chain}")
        else:
            t.element(n.NO_ENDPOINT_SERVICES_MAP, f"{sp.cluster_ip} . {key_tail}", internal_verdict, comment)

        # externalIPs.
        for ip in sp.external_ips:
            if has_endpoints:
                t.element(n.SERVICE_IPS_MAP, f"{ip} . {key_tail}", f"goto {names.external}")
            if not has_external:
                t.element(n.NO_ENDPOINT_SERVICES_MAP, f"{ip} . {key_tail}", external_verdict, comment)

        # loadBalancerSourceRanges: checked before DNAT, through firewall-ips.
        uses_firewall = bool(sp.lb_vips) and bool(sp.lb_source_ranges)
        if uses_firewall:
            ensure(names.firewall)
            sources = [str(c) for c in sp.lb_source_ranges]
            # A VIP routed to this node loops back with the VIP as source: let it in when the
            # node itself is allowed.
            node_ips = [ip for ip in self.cfg.node_ips if ip and ip != "0.0.0.0"]
            if any(_contains(c, ip) for c in sp.lb_source_ranges for ip in node_ips):
                sources.extend(sp.lb_vips)
            t.rule(names.firewall, f"ip saddr != {{ {' , '.join(sources)} }} drop")

        # LoadBalancer ingress IPs.
        for ip in sp.lb_vips:
            if has_endpoints:
                t.element(n.SERVICE_IPS_MAP, f"{ip} . {key_tail}", f"goto {names.external}")
            if uses_firewall:
                t.element(n.FIREWALL_IPS_MAP, f"{ip} . {key_tail}", f"goto {names.firewall}")
        if not has_external:
            for ip in sp.lb_vips:
                t.element(n.NO_ENDPOINT_SERVICES_MAP, f"{ip} . {key_tail}", external_verdict, comment)

        # NodePort (not subject to loadBalancerSourceRanges, as upstream).
        if sp.node_port:
            if has_endpoints:
                t.element(n.SERVICE_NODEPORTS_MAP, f"{proto} . {sp.node_port}", f"goto {names.external}")
            if not has_external:
                t.element(n.NO_ENDPOINT_NODEPORTS_MAP, f"{proto} . {sp.node_port}", external_verdict, comment)

        # Internal traffic: masquerade what comes from outside the pod network.
        if has_internal:
            if self.cfg.masquerade_all:
                t.rule(internal_chain, f"ip daddr {sp.cluster_ip} jump {n.MARK_MASQ_CHAIN}")
            elif self.if_not_local:
                t.rule(internal_chain, f"ip daddr {sp.cluster_ip} {self.if_not_local} jump {n.MARK_MASQ_CHAIN}")

        # External traffic: special cases, then the policy chain.
        if uses_external_chain:
            if not sp.external_policy_local:
                t.rule(names.external, f"jump {n.MARK_MASQ_CHAIN}")  # may cross nodes
            else:
                if self.if_local:
                    t.rule(names.external, f"{self.if_local} goto {names.cluster}",
                           comment="short-circuit pod traffic")
                t.rule(names.external, f"fib saddr type local jump {n.MARK_MASQ_CHAIN}",
                       comment="masquerade local traffic")
                t.rule(names.external, f"fib saddr type local goto {names.cluster}",
                       comment="short-circuit local traffic")
            if has_external:
                t.rule(names.external, f"goto {external_policy_chain}")

        if sp.client_ip_affinity:
            for ep in eps.reachable:
                t.set(names.affinity(ep), IPV4_ADDR, flags="dynamic,timeout", timeout=sp.sticky_seconds)

        if uses_cluster_chain:
            self._to_endpoints(names, names.cluster, eps.cluster)
        if uses_local_chain:
            self._to_endpoints(names, names.local, eps.local)

        for ep in eps.reachable:
            chain = names.endpoint(ep)
            t.rule(chain, f"ip saddr {ep.ip} jump {n.MARK_MASQ_CHAIN}")  # hairpin
            if sp.client_ip_affinity:
                t.rule(chain, f"update @{names.affinity(ep)} {{ ip saddr }}")
            t.rule(chain, f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
        return active

    def _to_endpoints(self, names: PortNames, chain: str, endpoints: list[Endpoint]) -> None:
        """Affinity first (a known client goes back to its endpoint), then the random pick."""
        if names.sp.client_ip_affinity:
            for ep in endpoints:
                self.t.rule(chain, f"ip saddr @{names.affinity(ep)} goto {names.endpoint(ep)}")
        picks = " , ".join(f"{i} : goto {names.endpoint(ep)}" for i, ep in enumerate(endpoints))
        self.t.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {picks} }}")


def _contains(cidr: ipaddress.IPv4Network, ip: str) -> bool:
    try:
        return ipaddress.IPv4Address(ip) in cidr
    except ValueError:
        return False
