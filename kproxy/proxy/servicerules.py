"""Per-Service rendering: the rules one Service port puts into the fixed chains and its own
KUBE-SVC/SVL/EXT/FW/SEP chains.

The part of upstream's syncProxyRules (pkg/proxy/iptables/proxier.go, v1.32/v1.33) that loops
over service ports. It renders one Service at a time into a ServiceRules, so the Proxier can
keep every Service rendered and re-render only those that changed; render.render_digest() uses
the same writer for a whole ruleset. Nothing here touches the system.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from kproxy.proxy import chains as ch
from kproxy.proxy import restoretext as rt
from kproxy.proxy.model import (
    LOCALHOST_CIDR,
    Categorized,
    Digest,
    Endpoint,
    ProxyConfig,
    ServicePort,
    _ipv4,
    _ipv4_cidr,
    categorize_endpoints,
    port_key,
)

@dataclass(frozen=True)
class _Plan:
    """What syncProxyRules decides for one service port before writing anything."""

    sp: ServicePort
    eps: Categorized
    internal_chain: str
    external_policy_chain: str
    has_internal: bool
    has_external: bool
    uses_ext_chain: bool
    uses_fw_chain: bool
    lb_chain: str
    refusal: tuple[str, str]  # (target, comment) for traffic with nowhere to go


def _plan(sp: ServicePort, endpoints: list[Endpoint]) -> _Plan:
    eps = categorize_endpoints(endpoints, sp)
    svc, svl = sp.chain(ch.SVC_PREFIX), sp.chain(ch.SVL_PREFIX)
    has_internal = eps.has_any and not (sp.internal_policy_local and not eps.local)
    has_external = eps.has_any and not (sp.external_policy_local and not eps.local)
    uses_fw = eps.has_any and bool(sp.lb_vips) and bool(sp.lb_source_ranges)
    return _Plan(
        sp=sp,
        eps=eps,
        internal_chain=svl if sp.internal_policy_local else svc,
        external_policy_chain=svl if sp.external_policy_local else svc,
        has_internal=has_internal,
        has_external=has_external,
        # Needed even without local endpoints, for the local-traffic short-circuit rules.
        uses_ext_chain=eps.has_any and sp.externally_accessible,
        uses_fw_chain=uses_fw,
        lb_chain=sp.chain(ch.FW_PREFIX) if uses_fw else sp.chain(ch.EXT_PREFIX),
        # No endpoints at all: REJECT. Endpoints, but none local for a Local policy: DROP
        # (traffic short-circuited by KUBE-EXT never reaches the filter rules).
        refusal=(
            ("DROP", rt.quote(f"{sp.name_string} has no local endpoints"))
            if eps.has_any
            else ("REJECT", rt.quote(f"{sp.name_string} has no endpoints"))
        ),
    )


class ServiceWriter:
    """Writes syncProxyRules' per-port output into a filter and a nat buffer (restoretext.Table).

    Its set-up (config-derived values) is kept across Services: reset() gives it new buffers."""

    def __init__(self, cfg: ProxyConfig, large_cluster: bool) -> None:
        self.cfg = cfg
        self.large_cluster = large_cluster
        self.local_cidr = _cluster_cidr(cfg.cluster_cidr)
        self.node_ip = next((ip for ip in map(_ipv4, cfg.node_ips) if ip), None)
        self.service_chains: dict[str, set[str]] = {}
        self.reset()

    def reset(self) -> None:
        """Empty buffers (the set-up stays)."""
        self.filter = rt.Table("filter")
        self.nat = rt.Table("nat")
        self.service_chains: dict[str, set[str]] = {}
        # Every per-service chain that should exist, written or not (upstream's activeNATChains).
        self.active_nat: set[str] = set()

    # -- one service port

    def write_service_port(self, sp: ServicePort, endpoints: list[Endpoint], write_chains: bool = True) -> None:
        """All rules of one service port.

        The rules in the fixed chains are always written. The port's own KUBE-SVC/SVL/EXT/FW/SEP
        chains are still worked out when ``write_chains`` is False (a partial sync of an
        unchanged service), so they count as active, but go to a throw-away buffer and stay
        as they are in the kernel, as upstream's skippedNatChains/skippedNatRules.
        """
        p = _plan(sp, endpoints)
        self.service_chains.setdefault(sp.service_key, set())
        self._write_cluster_ip(p)
        self._write_external_ips(p)
        self._write_load_balancer_ips(p)
        self._write_node_port(p)
        self._write_health_check(p)
        nat = self.nat if write_chains else rt.Table("nat")
        self._write_internal_masquerade(p, nat)
        self._write_ext_chain(p, nat)
        self._write_fw_chain(p, nat)
        if p.eps.cluster and sp.uses_cluster_endpoints:
            self._write_policy_chain(sp, sp.chain(ch.SVC_PREFIX), p.eps.cluster, nat)
        if p.eps.local and sp.uses_local_endpoints:
            self._write_policy_chain(sp, sp.chain(ch.SVL_PREFIX), p.eps.local, nat)
        for ep in p.eps.reachable:
            self._write_endpoint_chain(sp, ep, nat)

    def _declare_nat(self, sp: ServicePort, chain: str, nat: rt.Table) -> None:
        nat.declare(chain)
        self.active_nat.add(chain)
        self.service_chains[sp.service_key].add(chain)

    def _match(self, sp: ServicePort, dest: str | None, dport: int) -> list[str]:
        words = ["-m", sp.proto, "-p", sp.proto]
        if dest:
            words += ["-d", dest]
        return words + ["--dport", str(dport)]

    def _write_cluster_ip(self, p: _Plan) -> None:
        sp = p.sp
        if p.has_internal:
            self.nat.add(
                ch.KUBE_SERVICES, "-m", "comment", "--comment", rt.quote(f"{sp.name_string} cluster IP"),
                self._match(sp, sp.cluster_ip, sp.port), "-j", p.internal_chain,
            )
        else:
            target, comment = p.refusal
            self.filter.add(
                ch.KUBE_SERVICES, "-m", "comment", "--comment", comment,
                self._match(sp, sp.cluster_ip, sp.port), "-j", target,
            )

    def _refuse_external(self, p: _Plan, match: list[str]) -> None:
        target, comment = p.refusal
        self.filter.add(ch.KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", comment, match, "-j", target)

    def _write_external_ips(self, p: _Plan) -> None:
        sp = p.sp
        for ip in sp.external_ips:
            if p.eps.has_any:
                self.nat.add(
                    ch.KUBE_SERVICES, "-m", "comment", "--comment", rt.quote(f"{sp.name_string} external IP"),
                    self._match(sp, ip, sp.port), "-j", sp.chain(ch.EXT_PREFIX),
                )
            if not p.has_external:
                self._refuse_external(p, self._match(sp, ip, sp.port))

    def _write_load_balancer_ips(self, p: _Plan) -> None:
        sp = p.sp
        for ip in sp.lb_vips:
            if p.eps.has_any:
                self.nat.add(
                    ch.KUBE_SERVICES, "-m", "comment", "--comment", rt.quote(f"{sp.name_string} loadbalancer IP"),
                    self._match(sp, ip, sp.port), "-j", p.lb_chain,
                )
            if p.uses_fw_chain:
                fw = sp.chain(ch.FW_PREFIX)
                self.filter.add(
                    ch.KUBE_PROXY_FIREWALL,
                    "-m", "comment", "--comment", rt.quote(f"{sp.name_string} traffic not accepted by {fw}"),
                    self._match(sp, ip, sp.port), "-j", "DROP",
                )
        if not p.has_external:
            for ip in sp.lb_vips:
                self._refuse_external(p, self._match(sp, ip, sp.port))

    def _write_node_port(self, p: _Plan) -> None:
        sp = p.sp
        if not sp.node_port:
            return
        ext = sp.chain(ch.EXT_PREFIX)
        if p.eps.has_any:
            # NodePorts are not subject to loadBalancerSourceRanges (upstream can't change that).
            if self.cfg.localhost_nodeports and self.cfg.nfacct:
                self.nat.add(
                    ch.KUBE_NODEPORTS, "-m", "comment", "--comment", sp.name_string,
                    "-m", sp.proto, "-p", sp.proto, "-d", LOCALHOST_CIDR, "--dport", str(sp.node_port),
                    "-m", "nfacct", "--nfacct-name", ch.NFACCT_LOCALHOST_NODEPORTS_ACCEPTED,
                    "-j", ext,
                )
            self.nat.add(
                ch.KUBE_NODEPORTS, "-m", "comment", "--comment", sp.name_string,
                self._match(sp, None, sp.node_port), "-j", ext,
            )
        if not p.has_external:
            self._refuse_external(p, ["-m", "addrtype", "--dst-type", "LOCAL", *self._match(sp, None, sp.node_port)])

    def _write_health_check(self, p: _Plan) -> None:
        sp = p.sp
        if sp.health_check_node_port:
            # Accepted whether or not this node has local endpoints: the LB must get an answer.
            self.filter.add(
                ch.KUBE_NODEPORTS, "-m", "comment", "--comment", rt.quote(f"{sp.name_string} health check node port"),
                "-m", "tcp", "-p", "tcp", "--dport", str(sp.health_check_node_port), "-j", "ACCEPT",
            )

    def _write_internal_masquerade(self, p: _Plan, nat: rt.Table) -> None:
        sp = p.sp
        if not p.has_internal:
            return
        args = ["-m", "comment", "--comment", rt.quote(f"{sp.name_string} cluster IP"), *self._match(sp, sp.cluster_ip, sp.port)]
        if self.cfg.masquerade_all:
            nat.add(p.internal_chain, args, "-j", ch.KUBE_MARK_MASQ)
        elif self.local_cidr:
            # Off-cluster clients reaching a ClusterIP via a static route may bounce
            # off-node, so masquerade anything not from a pod.
            nat.add(p.internal_chain, args, "!", "-s", self.local_cidr, "-j", ch.KUBE_MARK_MASQ)

    def _write_ext_chain(self, p: _Plan, nat: rt.Table) -> None:
        sp = p.sp
        if not p.uses_ext_chain:
            return
        ext, svc = sp.chain(ch.EXT_PREFIX), sp.chain(ch.SVC_PREFIX)
        self._declare_nat(sp, ext, nat)
        name = sp.name_string
        if not sp.external_policy_local:
            # Cluster policy may cross nodes, so the reply must come back through us.
            nat.add(ext, "-m", "comment", "--comment", rt.quote(f"masquerade traffic for {name} external destinations"),
                    "-j", ch.KUBE_MARK_MASQ)
        else:
            if self.local_cidr:
                # Pods reaching an external IP behave as if they went out and came back.
                nat.add(ext, "-m", "comment", "--comment", rt.quote(f"pod traffic for {name} external destinations"),
                        "-s", self.local_cidr, "-j", svc)
            # The node's own traffic has a local (LB/node) source and must be masqueraded.
            nat.add(ext, "-m", "comment", "--comment",
                    rt.quote(f"masquerade LOCAL traffic for {name} external destinations"),
                    "-m", "addrtype", "--src-type", "LOCAL", "-j", ch.KUBE_MARK_MASQ)
            nat.add(ext, "-m", "comment", "--comment",
                    rt.quote(f"route LOCAL traffic for {name} external destinations"),
                    "-m", "addrtype", "--src-type", "LOCAL", "-j", svc)
        if p.has_external:
            nat.add(ext, "-j", p.external_policy_chain)

    def _write_fw_chain(self, p: _Plan, nat: rt.Table) -> None:
        sp = p.sp
        if not p.uses_fw_chain:
            return
        fw, ext = sp.chain(ch.FW_PREFIX), sp.chain(ch.EXT_PREFIX)
        self._declare_nat(sp, fw, nat)
        comment = ["-m", "comment", "--comment", rt.quote(f"{sp.name_string} loadbalancer IP")]
        allow_from_node = False
        for cidr in sp.lb_source_ranges:
            nat.add(fw, comment, "-s", str(cidr), "-j", ext)
            allow_from_node |= self.node_ip is not None and ipaddress.IPv4Address(self.node_ip) in cidr
        if allow_from_node:
            # A VIP-style LB IP is often local to the node, so the node's own request
            # loops back with the LB IP as source; let it through too.
            for ip in sp.lb_vips:
                nat.add(fw, comment, "-s", ip, "-j", ext)
        # Anything that falls off the end was not DNATed and KUBE-PROXY-FIREWALL drops it.
        nat.add(fw, "-m", "comment", "--comment",
                rt.quote(f"other traffic to {sp.name_string} will be dropped by KUBE-PROXY-FIREWALL"))

    def _comment(self, text: str) -> list[str]:
        """Per-endpoint comments, dropped in large clusters as upstream does."""
        return [] if self.large_cluster else ["-m", "comment", "--comment", text]

    def _write_policy_chain(self, sp: ServicePort, chain: str, endpoints: list[Endpoint], nat: rt.Table) -> None:
        """writeServiceToEndpointRules: affinity checks first, then the random spread."""
        self._declare_nat(sp, chain, nat)
        if sp.client_ip_affinity:
            for ep in endpoints:
                sep = sp.endpoint_chain(ep)
                nat.add(chain, self._comment(rt.quote(f"{sp.name_string} -> {ep}")),
                        "-m", "recent", "--name", sep, "--rcheck", "--seconds", str(sp.sticky_seconds),
                        "--reap", "-j", sep)
        n = len(endpoints)
        for i, ep in enumerate(endpoints):
            spread = []
            if i < n - 1:
                # 1/(n-i) for each remaining endpoint gives every endpoint 1/n overall.
                spread = ["-m", "statistic", "--mode", "random", "--probability", probability(n - i)]
            nat.add(chain, self._comment(rt.quote(f"{sp.name_string} -> {ep}")), spread, "-j", sp.endpoint_chain(ep))

    def _write_endpoint_chain(self, sp: ServicePort, ep: Endpoint, nat: rt.Table) -> None:
        sep = sp.endpoint_chain(ep)
        self._declare_nat(sp, sep, nat)
        comment = self._comment(sp.name_string)
        # Hairpin: a pod reaching itself through the service must be SNATed.
        nat.add(sep, comment, "-s", ep.ip, "-j", ch.KUBE_MARK_MASQ)
        affinity = ["-m", "recent", "--name", sep, "--set"] if sp.client_ip_affinity else []
        nat.add(sep, comment, affinity, "-m", sp.proto, "-p", sp.proto, "-j", "DNAT", "--to-destination", str(ep))

    # -- stale chains

    def delete_stale(self, existing_nat_chains: Iterable[str]) -> None:
        """Flush and delete per-service chains that exist but are no longer active (declared
        or not: a partial sync leaves unchanged services' chains undeclared but alive)."""
        for chain in sorted(set(existing_nat_chains) - self.active_nat):
            if ch.is_service_chain(chain):
                self.nat.delete(chain)


def probability(n: int) -> str:
    """Upstream's computeProbability: 1/n with 10 decimals."""
    return f"{1.0 / n:0.10f}"


def _cluster_cidr(value: str | None) -> str | None:
    """The IPv4 pod CIDR for the local-traffic detector (comma lists allowed, as the flag)."""
    for part in (value or "").split(","):
        cidr = _ipv4_cidr(part)
        if cidr is not None:
            return str(cidr)
    return None


# ------------------------------------------------------------- one Service alone


@dataclass
class ServiceRules:
    """What one Service puts into the ruleset, rendered alone (the Proxier keeps one per Service
    and re-renders only the Services that changed).

    ``fixed`` holds its rules in the fixed chains ((table, chain) -> rules, in order), ``chains``
    its own KUBE-SVC/SVL/EXT/FW/SEP nat chains in declaration order with their rules. A full
    render is the base rules, then every Service's block in (namespace, name) order, then the
    trailer (fixedchains.FixedRules.of): the Proxier's full sync writes the very text
    render.render_digest() writes (tests/unit/test_render_partial.py).
    """

    key: str
    order: tuple[str, str]  # (namespace, name): the render order
    ports: list[ServicePort]
    endpoints: list[list[Endpoint]]  # per port, as digested
    fixed: dict[tuple[str, str], list[str]]
    chains: dict[str, list[str]]

    @property
    def endpoint_count(self) -> int:
        return sum(len(eps) for eps in self.endpoints)

    def digest(self) -> Digest:
        """The digest it was rendered from (without ``skipped``)."""
        return Digest(list(self.ports), {port_key(sp): eps for sp, eps in zip(self.ports, self.endpoints)}, {})


def render_service(d: Digest, cfg: ProxyConfig, large_cluster: bool, r: ServiceWriter | None = None
                   ) -> ServiceRules | None:
    """Render the one Service of ``d`` (model.digest_service); None when it has no proxied port.
    ``r``: a writer to reuse (its buffers are replaced), saving its set-up per Service."""
    if not d.ports:
        return None
    if r is None or r.large_cluster != large_cluster:
        r = ServiceWriter(cfg, large_cluster=large_cluster)
    else:
        r.reset()
    eps = [d.port_endpoints(sp) for sp in d.ports]
    for sp, endpoints in zip(d.ports, eps):
        r.write_service_port(sp, endpoints)
    fixed: dict[tuple[str, str], list[str]] = {}
    for table in (r.filter, r.nat):
        for chain, rules in table.rules.items():
            if chain not in table.declared:
                fixed[(table.name, chain)] = rules
    sp = d.ports[0]
    return ServiceRules(
        key=sp.service_key, order=(sp.namespace, sp.name), ports=list(d.ports), endpoints=eps, fixed=fixed,
        chains={c: r.nat.rules.get(c, []) for c in r.nat.declared},
    )
