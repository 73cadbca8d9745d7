"""What the rules are made of: Services and EndpointSlices digested into ports and endpoints.

A port of the parts of upstream's pkg/proxy that syncProxyRules relies on (newBaseServiceInfo,
endpointInfoByServicePort, CategorizeEndpoints). Inputs are Kubernetes-shaped dicts as parsed
from YAML; the output (a Digest) is all the renderer reads, so the Proxier can compare digests
to know whether a change can alter the rules, and the health-check server can read each
Service's local endpoints from the same view. Nothing here touches the system.

Only the IPv4 family is digested (the labs are single-stack IPv4).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from kproxy.api.meta import LABEL_SERVICE_NAME  # one spelling of the label
from kproxy.proxy import chains as ch

# Above this many endpoints upstream drops per-endpoint comments to shrink the ruleset.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds

LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"

LOCALHOST_CIDR = "127.0.0.0/8"  # localhost NodePorts; KUBE-FIREWALL guards them


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


# ------------------------------------------------------------------------ digests


@dataclass
class Digest:
    """Everything render() reads from the objects, digested once.

    The Proxier compares Services by this very view, so a change it does not see is a change
    that cannot alter the rendered rules.
    """

    ports: list[ServicePort]  # proxied service ports, in render order
    endpoints: dict[PortKey, list[Endpoint]]  # per port, as the rules see them
    skipped: dict[str, str]  # "ns/name" -> why it is not proxied

    def port_endpoints(self, sp: ServicePort) -> list[Endpoint]:
        return self.endpoints.get(port_key(sp), [])

    @property
    def total_endpoints(self) -> int:
        return sum(len(self.port_endpoints(sp)) for sp in self.ports)

    def local_ready_endpoints(self) -> dict[str, int]:
        """Per proxied Service ("ns/name"), how many distinct endpoint IPs on this node are
        ready, as the rules see them (publishNotReadyAddresses counts every one ready): what
        a healthCheckNodePort answers with (upstream's EndpointsMap.LocalReadyEndpoints, which
        counts per port; kproxy counts a pod once)."""
        ips: dict[str, set[str]] = {}
        for sp in self.ports:
            ips.setdefault(sp.service_key, set()).update(
                ep.ip for ep in self.port_endpoints(sp) if ep.is_local and ep.ready)
        return {key: len(local) for key, local in ips.items()}


def port_key(sp: ServicePort) -> PortKey:
    """The key of a service port's endpoints (matched to EndpointSlice ports by name+protocol)."""
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
    ports.sort(key=port_key)

    by_port = endpoints_by_port(endpoint_slices, cfg.node_name)
    endpoints: dict[PortKey, list[Endpoint]] = {}
    for sp in ports:
        eps = by_port.get(port_key(sp), [])
        # publishNotReadyAddresses: the EndpointSlice controller would mark them all ready.
        endpoints[port_key(sp)] = [replace(ep, ready=True) for ep in eps] if sp.publish_not_ready else eps
    return Digest(ports, endpoints, skipped)


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
        one.endpoints[port_key(sp)] = d.endpoints.get(port_key(sp), [])
    return out

