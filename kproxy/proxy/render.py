"""Pure renderer of kube-proxy's iptables-mode ruleset.

A port of what upstream's syncProxyRules (pkg/proxy/iptables/proxier.go, v1.32/v1.33)
writes into ``iptables-restore``, plus the bits of pkg/proxy it relies on (service and
EndpointSlice digestion, CategorizeEndpoints). Inputs are Kubernetes-shaped dicts as
parsed from YAML; nothing here touches the system, so the applier can diff, log and
test the exact text before loading it.

Only the IPv4 family is rendered (the labs are single-stack IPv4).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from kproxy.proxy import chains as ch

# Above this many endpoints upstream drops per-endpoint comments to shrink the ruleset.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"

_LOCALHOST_CIDR = "127.0.0.0/8"


@dataclass
class ProxyConfig:
    """The kube-proxy flags that change the rendered rules."""

    cluster_cidr: str | None  # local-traffic detector; None = upstream's no-op detector
    node_name: str
    node_ips: list[str]
    masquerade_bit: int = 14
    masquerade_all: bool = False
    localhost_nodeports: bool = True
    # The two `-m nfacct` matches only load where the nfacct objects exist.
    nfacct: bool = False
    # Upstream adds --random-fully when the iptables binary supports it.
    random_fully: bool = False
    # Upstream skips the INVALID-drop rule when nf_conntrack_tcp_be_liberal is set.
    conntrack_tcp_liberal: bool = False


@dataclass
class RenderResult:
    """The restore input plus an index of what it declares."""

    text: str
    filter_chains: list[str]
    nat_chains: list[str]  # active chains; stale ones being deleted are in deleted_chains
    service_chains: dict[str, set[str]]  # "ns/name" -> its per-service nat chains
    deleted_chains: list[str] = field(default_factory=list)
    skipped_services: dict[str, str] = field(default_factory=dict)  # "ns/name" -> reason


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a service port, as upstream's BaseEndpointInfo."""

    ip: str
    port: int
    is_local: bool
    ready: bool
    serving: bool
    terminating: bool

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service, as upstream's BaseServicePortInfo (IPv4 values only)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # upper case, as in the API
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    lb_vips: tuple[str, ...] = ()
    lb_source_ranges: tuple[ipaddress.IPv4Network, ...] = ()
    client_ip_affinity: bool = False
    sticky_seconds: int = 0
    health_check_node_port: int = 0
    external_policy_local: bool = False
    internal_policy_local: bool = False
    publish_not_ready: bool = False

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def name_string(self) -> str:
        """ServicePortName.String(): "ns/name:port", or "ns/name" for an unnamed port."""
        return f"{self.service_key}:{self.port_name}" if self.port_name else self.service_key

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_vips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with ETP Local, external traffic needs Cluster endpoints for short-circuiting.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)

    def chain(self, prefix: str) -> str:
        return ch.service_port_chain(prefix, self.name_string, self.proto)

    def endpoint_chain(self, ep: Endpoint) -> str:
        return ch.endpoint_chain(self.name_string, self.proto, str(ep))


def _ipv4(text: Any) -> str | None:
    """Parse an IPv4 address like Go's ParseIPSloppy (leading zeros are decimal)."""
    if not isinstance(text, str):
        return None
    return _ipv4_str(text)


@functools.lru_cache(maxsize=1 << 16)
def _ipv4_str(text: str) -> str | None:
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and int(p) <= 255 for p in parts):
        return None
    return ".".join(str(int(p)) for p in parts)


def _ipv4_cidr(text: Any) -> ipaddress.IPv4Network | None:
    """Parse an IPv4 CIDR like ParseCIDRSloppy; host bits are masked off as upstream prints it."""
    if not isinstance(text, str) or "/" not in text:
        return None
    addr, _, prefix = text.strip().partition("/")
    ip = _ipv4(addr)
    if ip is None or not (prefix.isascii() and prefix.isdigit()) or int(prefix) > 32:
        return None
    return ipaddress.IPv4Network(f"{ip}/{int(prefix)}", strict=False)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _skip_reason(service: Mapping[str, Any]) -> str | None:
    """Why upstream would not proxy this Service (informer label filter, ShouldSkipService)."""
    labels = _labels(service)
    spec = service.get("spec") or {}
    if LABEL_SERVICE_PROXY_NAME in labels:
        return f"label {LABEL_SERVICE_PROXY_NAME}"
    if LABEL_HEADLESS in labels:
        return f"label {LABEL_HEADLESS}"
    if spec.get("type") == "ExternalName":
        return "type ExternalName"
    if spec.get("clusterIP", (spec.get("clusterIPs") or [""])[0]) in ("", "None", None):
        return "no cluster IP (headless)"
    if _service_cluster_ip(spec) is None:
        return "no IPv4 cluster IP"
    return None


def _service_cluster_ip(spec: Mapping[str, Any]) -> str | None:
    """GetClusterIPByFamily for IPv4."""
    families = spec.get("ipFamilies") or []
    if families:
        ips = spec.get("clusterIPs") or []
        for idx, family in enumerate(families):
            if family == "IPv4" and idx < len(ips):
                return _ipv4(ips[idx])
        return None
    return _ipv4(spec.get("clusterIP") or (spec.get("clusterIPs") or [""])[0])


def _externally_accessible_service(spec: Mapping[str, Any]) -> bool:
    """apiservice.ExternallyAccessible: decided by type, not by the ports."""
    svc_type = spec.get("type") or "ClusterIP"
    return svc_type in ("LoadBalancer", "NodePort") or (
        svc_type == "ClusterIP" and bool(spec.get("externalIPs"))
    )


def _lb_vips(service: Mapping[str, Any]) -> tuple[str, ...]:
    """IPv4 load-balancer ingress IPs; ipMode Proxy ones are the LB's job, not ours."""
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    vips = []
    for ing in ingress:
        if ing.get("ipMode", "VIP") != "VIP":
            continue
        ip = _ipv4(ing.get("ip"))
        if ip:
            vips.append(ip)
    return tuple(vips)


def service_ports(service: Mapping[str, Any]) -> list[ServicePort]:
    """Digest one (non-skipped) Service into its ports, like newBaseServiceInfo."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    external_local = _externally_accessible_service(spec) and spec.get("externalTrafficPolicy") == "Local"
    client_ip = spec.get("sessionAffinity") == "ClientIP"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
    needs_health_check = (spec.get("type") == "LoadBalancer") and external_local
    common = dict(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        cluster_ip=_service_cluster_ip(spec),
        external_ips=tuple(ip for ip in map(_ipv4, spec.get("externalIPs") or []) if ip),
        lb_vips=_lb_vips(service),
        # Validation lets whitespace through; upstream trims it.
        lb_source_ranges=tuple(
            c for c in map(_ipv4_cidr, spec.get("loadBalancerSourceRanges") or []) if c
        ),
        client_ip_affinity=client_ip,
        sticky_seconds=int(timeout or DEFAULT_AFFINITY_TIMEOUT_SECONDS) if client_ip else 0,
        health_check_node_port=int(spec.get("healthCheckNodePort") or 0) if needs_health_check else 0,
        external_policy_local=external_local,
        internal_policy_local=spec.get("internalTrafficPolicy") == "Local",
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
    )
    ports = {}
    for p in spec.get("ports") or []:
        if not p.get("port"):
            continue  # invalid in the API; skip rather than fail the whole sync
        sp = ServicePort(
            port_name=p.get("name") or "",
            protocol=(p.get("protocol") or "TCP").upper(),
            port=int(p["port"]),
            node_port=int(p.get("nodePort") or 0),
            **common,
        )
        ports[(sp.port_name, sp.protocol)] = sp
    return list(ports.values())


PortKey = tuple[str, str, str, str]  # namespace, service, port name, PROTOCOL


def _slice_endpoints(eps_slice: Mapping[str, Any], node_name: str) -> Iterable[tuple[PortKey, Endpoint]]:
    """Endpoints of one IPv4 EndpointSlice per service port, like endpointInfoByServicePort."""
    meta = eps_slice.get("metadata") or {}
    labels = meta.get("labels") or {}
    service = labels.get(LABEL_SERVICE_NAME)
    if not service or LABEL_SERVICE_PROXY_NAME in labels or LABEL_HEADLESS in labels:
        return
    if eps_slice.get("addressType", "IPv4") != "IPv4":
        return
    namespace = meta.get("namespace") or "default"
    for port in eps_slice.get("ports") or []:
        if not port.get("port"):
            continue
        key = (namespace, service, port.get("name") or "", (port.get("protocol") or "TCP").upper())
        for endpoint in eps_slice.get("endpoints") or []:
            ip = _ipv4((endpoint.get("addresses") or [None])[0])
            if ip is None:
                continue
            cond = endpoint.get("conditions") or {}
            yield key, Endpoint(
                ip=ip,
                port=int(port["port"]),
                is_local=bool(node_name) and endpoint.get("nodeName") == node_name,
                ready=cond.get("ready") is not False,  # nil counts as ready
                serving=cond.get("serving") is not False,
                terminating=cond.get("terminating") is True,
            )


def endpoints_by_port(endpoint_slices: Iterable[Mapping[str, Any]], node_name: str) -> dict[PortKey, list[Endpoint]]:
    """Merge all slices into sorted endpoint lists per service port (matched by name+protocol)."""
    merged: dict[PortKey, dict[str, Endpoint]] = {}
    ordered = sorted(
        endpoint_slices,
        key=lambda s: ((s.get("metadata") or {}).get("namespace") or "", (s.get("metadata") or {}).get("name") or ""),
    )
    for eps_slice in ordered:
        for key, ep in _slice_endpoints(eps_slice, node_name):
            seen = merged.setdefault(key, {})
            # A pod IP reused while the old pod terminates: prefer the non-terminating one.
            if str(ep) not in seen or not ep.terminating:
                seen[str(ep)] = ep
    return {key: sorted(eps.values(), key=str) for key, eps in merged.items()}


# ---------------------------------------------------------------- endpoint choice


@dataclass(frozen=True)
class Categorized:
    cluster: list[Endpoint]
    local: list[Endpoint]
    reachable: list[Endpoint]
    has_any: bool


def categorize_endpoints(endpoints: list[Endpoint], sp: ServicePort) -> Categorized:
    """Upstream's CategorizeEndpoints, without topology hints.

    Ready endpoints win; when none are ready, serving+terminating ones are used so that
    connections drain instead of being rejected.
    """
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if sp.uses_cluster_endpoints:
        cluster = [ep for ep in endpoints if ep.ready]
        if not cluster:
            cluster = [ep for ep in endpoints if ep.serving and ep.terminating]
        has_any = bool(cluster)
    if not sp.uses_local_endpoints:
        return Categorized(cluster, [], cluster, has_any)

    has_local_ready = has_local_serving_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            has_local_ready |= ep.is_local
        elif ep.serving and ep.terminating:
            has_any = True
            has_local_serving_terminating |= ep.is_local
    if has_local_ready:
        local = [ep for ep in endpoints if ep.is_local and ep.ready]
    elif has_local_serving_terminating:
        local = [ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating]

    if not sp.uses_cluster_endpoints:
        return Categorized([], local, local, has_any)
    if not has_local_serving_terminating or has_local_ready:
        # local holds only ready endpoints, all of them already in cluster.
        return Categorized(cluster, local, cluster, has_any)
    union = {str(ep): ep for ep in cluster} | {str(ep): ep for ep in local}
    return Categorized(cluster, local, sorted(union.values(), key=str), has_any)


# ------------------------------------------------------------------- rule buffers


def _q(text: str) -> str:
    """Quote a comment the way upstream writes it into the restore input."""
    return f'"{text}"'


class _Table:
    """Chains of one table, in declaration order, each with its rules."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.declared: dict[str, None] = {}  # an ordered set: 70,000 chains at 10,000 Services
        self.rules: dict[str, list[str]] = {}
        self.deleted: list[str] = []

    def declare(self, chain: str) -> None:
        self.declared.setdefault(chain, None)

    def add(self, chain: str, *args: str | Iterable[str]) -> None:
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

    def lines(self) -> list[str]:
        undeclared = set(self.rules) - set(self.declared)
        if undeclared:
            raise AssertionError(f"rules for undeclared {self.name} chains: {sorted(undeclared)}")
        out = [f"*{self.name}"]
        out += [f":{c} - [0:0]" for c in [*self.declared, *self.deleted]]
        for chain in self.declared:
            out += self.rules.get(chain, [])
        out += [f"-X {c}" for c in self.deleted]
        out.append("COMMIT")
        return out


# --------------------------------------------------------------------- per port


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
            ("DROP", _q(f"{sp.name_string} has no local endpoints"))
            if eps.has_any
            else ("REJECT", _q(f"{sp.name_string} has no endpoints"))
        ),
    )


class _Renderer:
    """Writes syncProxyRules' output into two _Table buffers."""

    def __init__(self, cfg: ProxyConfig, large_cluster: bool) -> None:
        self.cfg = cfg
        self.large_cluster = large_cluster
        self.filter = _Table("filter")
        self.nat = _Table("nat")
        self.mark = hex(1 << cfg.masquerade_bit)
        self.local_cidr = _cluster_cidr(cfg.cluster_cidr)
        self.node_ip = next((ip for ip in map(_ipv4, cfg.node_ips) if ip), None)
        self.service_chains: dict[str, set[str]] = {}
        # Every per-service chain that should exist, written or not (upstream's activeNATChains).
        self.active_nat: set[str] = set()

    # -- fixed chains

    def write_base(self) -> None:
        for chain in (ch.KUBE_NODEPORTS, ch.KUBE_SERVICES, ch.KUBE_EXTERNAL_SERVICES):
            self.filter.declare(chain)
        if self.cfg.localhost_nodeports:
            # route_localnet opens a hole (issues.k8s.io/90259); this rule plugs it.
            self.filter.declare(ch.KUBE_FIREWALL)
            self.filter.add(
                ch.KUBE_FIREWALL,
                "-m", "comment", "--comment", _q("block incoming localnet connections"),
                "-d", _LOCALHOST_CIDR, "!", "-s", _LOCALHOST_CIDR,
                "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
                "-j", "DROP",
            )
        self.filter.declare(ch.KUBE_FORWARD)
        self.filter.declare(ch.KUBE_PROXY_FIREWALL)
        for chain in (ch.KUBE_NODEPORTS, ch.KUBE_SERVICES, ch.KUBE_MARK_MASQ, ch.KUBE_POSTROUTING):
            self.nat.declare(chain)
        self._write_masquerade_chains()

    def _write_masquerade_chains(self) -> None:
        mark = self.mark
        self.nat.add(ch.KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{mark}/{mark}", "-j", "RETURN")
        # Clear the mark so a packet re-traversing the stack is not masqueraded twice.
        self.nat.add(ch.KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark)
        masq = ["-m", "comment", "--comment", _q("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE"]
        if self.cfg.random_fully:
            masq.append("--random-fully")
        self.nat.add(ch.KUBE_POSTROUTING, masq)
        self.nat.add(ch.KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark)

    def write_trailer(self) -> None:
        """Rules upstream writes after all services: the NodePort tail-call and KUBE-FORWARD."""
        destinations = ["-m", "addrtype", "--dst-type", "LOCAL"]
        if not self.cfg.localhost_nodeports:
            destinations += ["!", "-d", _LOCALHOST_CIDR]
        self.nat.add(
            ch.KUBE_SERVICES,
            "-m", "comment", "--comment",
            _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
            destinations, "-j", ch.KUBE_NODEPORTS,
        )
        if not self.cfg.conntrack_tcp_liberal:
            # INVALID packets would otherwise reset connections (issues.k8s.io/74839).
            rule = ["-m", "conntrack", "--ctstate", "INVALID"]
            if self.cfg.nfacct:
                rule += ["-m", "nfacct", "--nfacct-name", ch.NFACCT_CT_STATE_INVALID_DROPPED]
            self.filter.add(ch.KUBE_FORWARD, rule, "-j", "DROP")
        # Lets marked (NodePort) traffic through even when FORWARD's policy is DROP.
        self.filter.add(
            ch.KUBE_FORWARD,
            "-m", "comment", "--comment", _q("kubernetes forwarding rules"),
            "-m", "mark", "--mark", f"{self.mark}/{self.mark}", "-j", "ACCEPT",
        )
        self.filter.add(
            ch.KUBE_FORWARD,
            "-m", "comment", "--comment", _q("kubernetes forwarding conntrack rule"),
            "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT",
        )

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
        nat = self.nat if write_chains else _Table("nat")
        self._write_internal_masquerade(p, nat)
        self._write_ext_chain(p, nat)
        self._write_fw_chain(p, nat)
        if p.eps.cluster and sp.uses_cluster_endpoints:
            self._write_policy_chain(sp, sp.chain(ch.SVC_PREFIX), p.eps.cluster, nat)
        if p.eps.local and sp.uses_local_endpoints:
            self._write_policy_chain(sp, sp.chain(ch.SVL_PREFIX), p.eps.local, nat)
        for ep in p.eps.reachable:
            self._write_endpoint_chain(sp, ep, nat)

    def _declare_nat(self, sp: ServicePort, chain: str, nat: _Table) -> None:
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
                ch.KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{sp.name_string} cluster IP"),
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
                    ch.KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{sp.name_string} external IP"),
                    self._match(sp, ip, sp.port), "-j", sp.chain(ch.EXT_PREFIX),
                )
            if not p.has_external:
                self._refuse_external(p, self._match(sp, ip, sp.port))

    def _write_load_balancer_ips(self, p: _Plan) -> None:
        sp = p.sp
        for ip in sp.lb_vips:
            if p.eps.has_any:
                self.nat.add(
                    ch.KUBE_SERVICES, "-m", "comment", "--comment", _q(f"{sp.name_string} loadbalancer IP"),
                    self._match(sp, ip, sp.port), "-j", p.lb_chain,
                )
            if p.uses_fw_chain:
                fw = sp.chain(ch.FW_PREFIX)
                self.filter.add(
                    ch.KUBE_PROXY_FIREWALL,
                    "-m", "comment", "--comment", _q(f"{sp.name_string} traffic not accepted by {fw}"),
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
                    "-m", sp.proto, "-p", sp.proto, "-d", _LOCALHOST_CIDR, "--dport", str(sp.node_port),
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
                ch.KUBE_NODEPORTS, "-m", "comment", "--comment", _q(f"{sp.name_string} health check node port"),
                "-m", "tcp", "-p", "tcp", "--dport", str(sp.health_check_node_port), "-j", "ACCEPT",
            )

    def _write_internal_masquerade(self, p: _Plan, nat: _Table) -> None:
        sp = p.sp
        if not p.has_internal:
            return
        args = ["-m", "comment", "--comment", _q(f"{sp.name_string} cluster IP"), *self._match(sp, sp.cluster_ip, sp.port)]
        if self.cfg.masquerade_all:
            nat.add(p.internal_chain, args, "-j", ch.KUBE_MARK_MASQ)
        elif self.local_cidr:
            # Off-cluster clients reaching a ClusterIP via a static route may bounce
            # off-node, so masquerade anything not from a pod.
            nat.add(p.internal_chain, args, "!", "-s", self.local_cidr, "-j", ch.KUBE_MARK_MASQ)

    def _write_ext_chain(self, p: _Plan, nat: _Table) -> None:
        sp = p.sp
        if not p.uses_ext_chain:
            return
        ext, svc = sp.chain(ch.EXT_PREFIX), sp.chain(ch.SVC_PREFIX)
        self._declare_nat(sp, ext, nat)
        name = sp.name_string
        if not sp.external_policy_local:
            # Cluster policy may cross nodes, so the reply must come back through us.
            nat.add(ext, "-m", "comment", "--comment", _q(f"masquerade traffic for {name} external destinations"),
                    "-j", ch.KUBE_MARK_MASQ)
        else:
            if self.local_cidr:
                # Pods reaching an external IP behave as if they went out and came back.
                nat.add(ext, "-m", "comment", "--comment", _q(f"pod traffic for {name} external destinations"),
                        "-s", self.local_cidr, "-j", svc)
            # The node's own traffic has a local (LB/node) source and must be masqueraded.
            nat.add(ext, "-m", "comment", "--comment",
                    _q(f"masquerade LOCAL traffic for {name} external destinations"),
                    "-m", "addrtype", "--src-type", "LOCAL", "-j", ch.KUBE_MARK_MASQ)
            nat.add(ext, "-m", "comment", "--comment",
                    _q(f"route LOCAL traffic for {name} external destinations"),
                    "-m", "addrtype", "--src-type", "LOCAL", "-j", svc)
        if p.has_external:
            nat.add(ext, "-j", p.external_policy_chain)

    def _write_fw_chain(self, p: _Plan, nat: _Table) -> None:
        sp = p.sp
        if not p.uses_fw_chain:
            return
        fw, ext = sp.chain(ch.FW_PREFIX), sp.chain(ch.EXT_PREFIX)
        self._declare_nat(sp, fw, nat)
        comment = ["-m", "comment", "--comment", _q(f"{sp.name_string} loadbalancer IP")]
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
                _q(f"other traffic to {sp.name_string} will be dropped by KUBE-PROXY-FIREWALL"))

    def _comment(self, text: str) -> list[str]:
        """Per-endpoint comments, dropped in large clusters as upstream does."""
        return [] if self.large_cluster else ["-m", "comment", "--comment", text]

    def _write_policy_chain(self, sp: ServicePort, chain: str, endpoints: list[Endpoint], nat: _Table) -> None:
        """writeServiceToEndpointRules: affinity checks first, then the random spread."""
        self._declare_nat(sp, chain, nat)
        if sp.client_ip_affinity:
            for ep in endpoints:
                sep = sp.endpoint_chain(ep)
                nat.add(chain, self._comment(_q(f"{sp.name_string} -> {ep}")),
                        "-m", "recent", "--name", sep, "--rcheck", "--seconds", str(sp.sticky_seconds),
                        "--reap", "-j", sep)
        n = len(endpoints)
        for i, ep in enumerate(endpoints):
            spread = []
            if i < n - 1:
                # 1/(n-i) for each remaining endpoint gives every endpoint 1/n overall.
                spread = ["-m", "statistic", "--mode", "random", "--probability", probability(n - i)]
            nat.add(chain, self._comment(_q(f"{sp.name_string} -> {ep}")), spread, "-j", sp.endpoint_chain(ep))

    def _write_endpoint_chain(self, sp: ServicePort, ep: Endpoint, nat: _Table) -> None:
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


# --------------------------------------------------------------------- entry point


@dataclass
class Digest:
    """Everything render() reads from the objects, digested once.

    The Proxier fingerprints services from this very view, so a change it does not see is a
    change that cannot alter the rendered rules.
    """

    ports: list[ServicePort]  # proxied service ports, in render order
    endpoints: dict[PortKey, list[Endpoint]]  # per port, as the rules see them
    skipped: dict[str, str]  # "ns/name" -> why it is not proxied

    def port_endpoints(self, sp: ServicePort) -> list[Endpoint]:
        return self.endpoints.get(_port_key(sp), [])

    @property
    def total_endpoints(self) -> int:
        return sum(len(self.port_endpoints(sp)) for sp in self.ports)


def _port_key(sp: ServicePort) -> PortKey:
    return (sp.namespace, sp.name, sp.port_name, sp.protocol)


def digest(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    cfg: ProxyConfig,
) -> Digest:
    """Digest Services and EndpointSlices into the ports and endpoints the rules are made of."""
    skipped: dict[str, str] = {}
    ports: list[ServicePort] = []
    for svc in services:
        meta = svc.get("metadata") or {}
        key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        reason = _skip_reason(svc)
        if reason:
            skipped[key] = reason
        else:
            ports.extend(service_ports(svc))
    ports.sort(key=_port_key)

    by_port = endpoints_by_port(endpoint_slices, cfg.node_name)
    endpoints: dict[PortKey, list[Endpoint]] = {}
    for sp in ports:
        eps = by_port.get(_port_key(sp), [])
        # publishNotReadyAddresses: the EndpointSlice controller would mark them all ready.
        endpoints[_port_key(sp)] = [replace(ep, ready=True) for ep in eps] if sp.publish_not_ready else eps
    return Digest(ports, endpoints, skipped)


def render(
    services: Iterable[Mapping[str, Any]],
    endpoint_slices: Iterable[Mapping[str, Any]],
    cfg: ProxyConfig,
    *,
    existing_nat_chains: Iterable[str] | None = None,
    changed: set[str] | None = None,
) -> RenderResult:
    """Render the iptables-restore input for the given objects.

    ``existing_nat_chains`` (the chains the nat table holds now) is optional: when given,
    stale KUBE-SVC/SVL/EXT/FW/SEP chains are flushed and deleted as upstream does.
    ``changed`` ("ns/name" keys) asks for a partial sync; see render_digest().
    """
    return render_digest(
        digest(services, endpoint_slices, cfg), cfg, existing_nat_chains=existing_nat_chains, changed=changed
    )


def render_digest(
    d: Digest,
    cfg: ProxyConfig,
    *,
    existing_nat_chains: Iterable[str] | None = None,
    changed: set[str] | None = None,
) -> RenderResult:
    """Render a digest; ``changed`` None is a full sync.

    With a set, as upstream's partial sync (tryPartialSync): the fixed chains are still
    written whole, but the KUBE-SVC/SVL/EXT/FW/SEP chains of services not in ``changed`` are
    neither declared nor written, so ``iptables-restore --noflush`` leaves them alone.
    ``service_chains`` stays complete, and unwritten chains still count as active.
    """
    r = _Renderer(cfg, large_cluster=d.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD)
    r.write_base()
    for sp in d.ports:
        r.write_service_port(sp, d.port_endpoints(sp), write_chains=changed is None or sp.service_key in changed)
    if existing_nat_chains is not None:
        r.delete_stale(existing_nat_chains)
    r.write_trailer()

    text = "\n".join(r.filter.lines() + r.nat.lines()) + "\n"
    return RenderResult(
        text=text,
        filter_chains=list(r.filter.declared),
        nat_chains=list(r.nat.declared),
        service_chains=r.service_chains,
        deleted_chains=list(r.nat.deleted),
        skipped_services=dict(d.skipped),
    )


# ------------------------------------------------------------- per-Service rendering


@dataclass
class ServiceRules:
    """What one Service puts into the ruleset, rendered alone (the Proxier keeps one per Service
    and re-renders only the Services that changed).

    ``fixed`` holds its rules in the fixed chains ((table, chain) -> rules, in order), ``chains``
    its own KUBE-SVC/SVL/EXT/FW/SEP nat chains in declaration order with their rules. A full
    render is the base rules, then every Service's block in (namespace, name) order, then the
    trailer: ``assemble`` builds the very text render_digest() writes.
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


def digest_service(
    service: Mapping[str, Any] | None, endpoint_slices: Iterable[Mapping[str, Any]], cfg: ProxyConfig
) -> Digest:
    """The digest of one Service (None: deleted) and its EndpointSlices."""
    return digest([service] if service is not None else [], endpoint_slices, cfg)


def split_digest(d: Digest) -> dict[str, Digest]:
    """One digest per proxied Service ("ns/name") of a digest of several (ports stay in order)."""
    out: dict[str, Digest] = {}
    for sp in d.ports:
        one = out.get(sp.service_key)
        if one is None:
            one = out[sp.service_key] = Digest([], {}, {})
        one.ports.append(sp)
        one.endpoints[_port_key(sp)] = d.endpoints.get(_port_key(sp), [])
    return out


def render_service(d: Digest, cfg: ProxyConfig, large_cluster: bool, r: "_Renderer | None" = None
                   ) -> ServiceRules | None:
    """Render the one Service of ``d`` (digest_service); None when it has no proxied port.
    ``r``: a renderer to reuse (its tables are replaced), saving its set-up per Service."""
    if not d.ports:
        return None
    if r is None or r.large_cluster != large_cluster:
        r = _Renderer(cfg, large_cluster=large_cluster)
    else:
        r.filter, r.nat, r.service_chains, r.active_nat = _Table("filter"), _Table("nat"), {}, set()
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


@dataclass
class FixedChains:
    """The fixed chains of both tables, in declaration order, with their base and trailer rules."""

    declared: dict[str, list[str]]  # table -> fixed chains in declaration order
    base: dict[tuple[str, str], list[str]]
    trailer: dict[tuple[str, str], list[str]]

    def rules(self, services: Iterable[ServiceRules]) -> dict[tuple[str, str], list[str]]:
        """Every fixed chain's rules with ``services`` (in render order) in them."""
        out = {(t, c): list(self.base.get((t, c), [])) for t, chains in self.declared.items() for c in chains}
        for s in services:
            for tc, rules in s.fixed.items():
                out[tc].extend(rules)
        for tc, rules in self.trailer.items():
            out[tc].extend(rules)
        return out


def fixed_chains(cfg: ProxyConfig) -> FixedChains:
    base = _Renderer(cfg, large_cluster=False)
    base.write_base()
    trailer = _Renderer(cfg, large_cluster=False)
    trailer.write_trailer()
    return FixedChains(
        declared={t.name: list(t.declared) for t in (base.filter, base.nat)},
        base={(t.name, c): list(r) for t in (base.filter, base.nat) for c, r in t.rules.items()},
        trailer={(t.name, c): list(r) for t in (trailer.filter, trailer.nat) for c, r in t.rules.items()},
    )


def assemble(
    fixed: FixedChains,
    services: list[ServiceRules],
    deleted: Iterable[str] = (),
    fixed_rules: dict[tuple[str, str], list[str]] | None = None,
) -> str:
    """The full restore text of ``services`` (in render order), deleting ``deleted`` nat chains:
    the same text render_digest() writes for the same objects."""
    rules = fixed_rules if fixed_rules is not None else fixed.rules(services)
    deleted = list(deleted)
    out = ["*filter"]
    out += [f":{c} - [0:0]" for c in fixed.declared["filter"]]
    for c in fixed.declared["filter"]:
        out += rules[("filter", c)]
    out.append("COMMIT")
    out.append("*nat")
    out += [f":{c} - [0:0]" for c in fixed.declared["nat"]]
    for s in services:
        out += [f":{c} - [0:0]" for c in s.chains]
    out += [f":{c} - [0:0]" for c in deleted]
    for c in fixed.declared["nat"]:
        out += rules[("nat", c)]
    for s in services:
        for chain_rules in s.chains.values():
            out += chain_rules
    out += [f"-X {c}" for c in deleted]
    out.append("COMMIT")
    return "\n".join(out) + "\n"
