"""Services: ValidateService and the Service registry's allocation checks that run before it.

Sources: pkg/apis/core/validation (ValidateService, ValidateServiceClusterIPsRelatedFields) and
pkg/registry/core/service (alloc.go, ipallocator, portallocator). The API server allocates
clusterIPs and nodePorts *before* it validates, and an allocation failure is reported alone, so
``service_allocation_errors`` is its own entry point; ``validate`` runs it first. Also kproxy's
own address rule (issue 12): no broadcast or multicast externalIP, no special ingress IP written
in a manifest.
"""

from __future__ import annotations

from typing import Any, Sequence

from kproxy.api.defaults import externally_accessible
from kproxy.api.errors import (
    FieldError,
    duplicate,
    forbidden,
    go_service_port,
    go_string_slice,
    invalid,
    not_supported,
    required,
    type_invalid,
)
from kproxy.api.validation.common import (
    Errors,
    as_dict,
    broadcast_or_multicast,
    dict_items,
    enum_field,
    format_errors,
    int_field,
    ip_family,
    is_dns1035_label,
    is_dns1123_subdomain,
    parse_cidr,
    parse_ip,
    port_field,
    validate_app_protocol,
    validate_cidr,
    validate_ip,
    validate_labels,
    validate_named_port,
    validate_non_special_ip,
    validate_object_meta,
    validate_port_num_or_name,
    validate_routable_ip,
)

DEFAULT_NODE_PORT_RANGE = (30000, 32767)
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")
MAX_CLIENT_IP_AFFINITY_SECONDS = 86400


def is_headless(spec: dict) -> bool:
    return spec.get("clusterIPs") == ["None"]


def validate_service(obj: dict) -> Errors:
    """ValidateService, in upstream order."""
    spec = as_dict(obj.get("spec"))
    errs = validate_object_meta(obj, is_dns1035_label, namespaced=True)
    svc_type = spec.get("type")
    ports = dict_items(errs, "spec.ports", spec.get("ports"))
    if not spec.get("ports") and not is_headless(spec) and svc_type != "ExternalName":
        errs.append(required("spec.ports"))
    errs += _validate_type_specific(spec)
    names: set[str] = set()
    for i, port in ports:
        errs += _validate_service_port(port, len(spec.get("ports")) > 1, names, f"spec.ports[{i}]")
    if spec.get("selector") is not None:
        errs += validate_labels(spec.get("selector"), "spec.selector")
    errs += _validate_session_affinity(spec)
    errs += validate_cluster_ips_related_fields(spec)
    for i, ip in enumerate(spec.get("externalIPs") or []):
        ip_errs = validate_ip(f"spec.externalIPs[{i}]", ip)
        errs += ip_errs or validate_non_special_ip(f"spec.externalIPs[{i}]", ip)
    enum_field(errs, "spec.type", svc_type, SERVICE_TYPES)
    if svc_type == "ClusterIP":
        for i, port in ports:
            if port.get("nodePort"):
                errs.append(forbidden(f"spec.ports[{i}].nodePort", "may not be used when `type` is 'ClusterIP'"))
    errs += _duplicate_service_ports(ports)
    errs += _validate_load_balancer_fields(spec)
    errs += _validate_traffic_policies(spec)
    errs += validate_service_addresses(obj)
    return errs


def validate_service_addresses(obj: dict) -> Errors:
    """Addresses kproxy would program that must never be a destination rule: a broadcast or
    multicast spec.externalIPs entry (the special ranges upstream refuses are checked above), and
    every status.loadBalancer.ingress[].ip written in a manifest (a cloud's status is trusted
    upstream; here a file could otherwise take over the node's localhost:80, issue 12 #11)."""
    spec = as_dict(obj.get("spec"))
    errs: Errors = []
    external = spec.get("externalIPs")
    for i, ip in enumerate(external if isinstance(external, list) else []):
        errs += broadcast_or_multicast(f"spec.externalIPs[{i}]", ip)
    ingress = as_dict(as_dict(obj.get("status")).get("loadBalancer")).get("ingress")
    for i, ing in enumerate(ingress if isinstance(ingress, list) else []):
        if isinstance(ing, dict) and ing.get("ip") is not None:
            path = f"status.loadBalancer.ingress[{i}].ip"
            errs += validate_ip(path, ing["ip"]) or validate_routable_ip(path, ing["ip"])
    return errs


def _validate_type_specific(spec: dict) -> Errors:
    svc_type = spec.get("type")
    if svc_type in ("LoadBalancer", "NodePort") and is_headless(spec):
        return [invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {svc_type} services")]
    if svc_type != "ExternalName":
        return []
    errs: Errors = []
    for key in ("clusterIPs", "ipFamilies"):
        if spec.get(key):
            errs.append(forbidden(f"spec.{key}", "may not be set for ExternalName services"))
    if spec.get("ipFamilyPolicy") is not None:
        errs.append(forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services"))
    cname = str(spec.get("externalName") or "").removesuffix(".")
    if cname:
        errs += format_errors("spec.externalName", cname, is_dns1123_subdomain)
    else:
        errs.append(required("spec.externalName"))
    return errs


def _validate_service_port(port: dict, require_name: bool, names: set[str], path: str) -> Errors:
    errs = validate_named_port(port, require_name, path, names)
    errs += validate_port_num_or_name(f"{path}.targetPort", port.get("targetPort"))
    return errs + validate_app_protocol(port, path)


def _validate_session_affinity(spec: dict) -> Errors:
    errs: Errors = []
    affinity = spec.get("sessionAffinity")
    enum_field(errs, "spec.sessionAffinity", affinity, SESSION_AFFINITIES)
    config = spec.get("sessionAffinityConfig")
    if affinity == "ClientIP":
        errs += _validate_client_ip_config(config)
    elif affinity == "None" and config is not None:
        errs.append(forbidden("spec.sessionAffinityConfig", "must not be set when session affinity is None"))
    return errs


def _validate_client_ip_config(config: Any) -> Errors:
    path, when = "spec.sessionAffinityConfig", "when session affinity type is ClientIP"
    if not isinstance(config, dict):
        return [required(path, when)]
    client_ip = config.get("clientIP")
    if not isinstance(client_ip, dict):
        return [required(f"{path}.clientIP", when)]
    tpath = f"{path}.clientIP.timeoutSeconds"
    if client_ip.get("timeoutSeconds") is None:
        return [required(tpath, when)]
    errs: Errors = []
    timeout = int_field(errs, tpath, client_ip["timeoutSeconds"])
    if timeout is not None and not 0 < timeout <= MAX_CLIENT_IP_AFFINITY_SECONDS:
        errs.append(invalid(tpath, timeout,
                            f"must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"))
    return errs


def validate_cluster_ips_related_fields(spec: dict) -> Errors:
    """ValidateServiceClusterIPsRelatedFields: clusterIP(s), ipFamilies, ipFamilyPolicy."""
    if spec.get("type") == "ExternalName":
        return []
    errs: Errors = []
    cluster_ip, cluster_ips = spec.get("clusterIP") or "", spec.get("clusterIPs") or []
    if not isinstance(cluster_ips, list):
        return [type_invalid("spec.clusterIPs", cluster_ips, "must be of type array")]
    ips_value = go_string_slice(cluster_ips)
    if cluster_ip:
        if not cluster_ips:
            errs.append(required("spec.clusterIPs"))
        elif cluster_ips[0] != cluster_ip:
            errs.append(invalid("spec.clusterIPs", ips_value, "first value must match `clusterIP`"))
    elif cluster_ips:
        errs.append(invalid("spec.clusterIPs", ips_value, "must be empty when `clusterIP` is not specified"))
    errs += _validate_ip_family_fields(spec)
    bad_ips = False
    for i, ip in enumerate(cluster_ips):
        if i == 0 and ip == "None":
            if len(cluster_ips) > 1:
                bad_ips = True
                errs.append(invalid("spec.clusterIPs", ips_value, "'None' must be the first and only value"))
            continue
        ip_errs = validate_ip(f"spec.clusterIPs[{i}]", ip)
        bad_ips = bad_ips or bool(ip_errs)
        errs += ip_errs
    if len(cluster_ips) > 2:
        errs.append(invalid("spec.clusterIPs", ips_value, "may only hold up to 2 values"))
    if bad_ips:
        return errs
    return errs + _validate_cluster_ip_families(spec, cluster_ips, ips_value)


def _validate_ip_family_fields(spec: dict) -> Errors:
    errs: Errors = []
    seen: set[str] = set()
    for i, family in enumerate(spec.get("ipFamilies") or []):
        if family not in IP_FAMILIES:
            errs.append(not_supported(f"spec.ipFamilies[{i}]", family, IP_FAMILIES))
        if family in seen:
            errs.append(duplicate(f"spec.ipFamilies[{i}]", family))
        seen.add(family)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errs.append(not_supported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES))
    return errs


def _validate_cluster_ip_families(spec: dict, cluster_ips: list, ips_value: Any) -> Errors:
    errs: Errors = []
    if len(cluster_ips) > 1:
        families = {ip_family(parse_ip(ip)) for ip in cluster_ips}
        if len(families) != len(cluster_ips):
            errs.append(invalid("spec.clusterIPs", ips_value, "may specify no more than one IP for each IP family"))
    families = spec.get("ipFamilies") or []
    if is_headless(spec) or not cluster_ips:
        return errs
    for i, (ip, family) in enumerate(zip(cluster_ips, families)):
        actual = ip_family(parse_ip(ip))
        if family in IP_FAMILIES and actual != family:
            errs.append(invalid(f"spec.clusterIPs[{i}]", ip,
                                f"expected an {family} value as indicated by `ipFamilies[{i}]`"))
    return errs


def _duplicate_service_ports(ports: list[tuple[int, dict]]) -> Errors:
    """(protocol, nodePort) and (protocol, port) pairs must be unique."""
    errs: Errors = []
    node_ports: set[tuple] = set()
    for i, port in ports:
        node_port = port.get("nodePort")
        if node_port:
            key = (port.get("protocol"), node_port)
            if key in node_ports:
                errs.append(duplicate(f"spec.ports[{i}].nodePort", node_port))
            node_ports.add(key)
    seen: set[tuple] = set()
    for i, port in ports:
        key = (port.get("protocol"), port.get("port"))
        if key in seen:
            errs.append(duplicate(f"spec.ports[{i}]", go_service_port(str(key[0] or ""), key[1] or 0)))
        seen.add(key)
    return errs


def _validate_load_balancer_fields(spec: dict) -> Errors:
    """loadBalancerSourceRanges and allocateLoadBalancerNodePorts (paths as upstream)."""
    errs: Errors = []
    is_lb = spec.get("type") == "LoadBalancer"
    ranges = spec.get("loadBalancerSourceRanges") or []
    if ranges:
        path = "spec.LoadBalancerSourceRanges"  # sic: upstream capitalises this path
        if not is_lb:
            errs.append(forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
        for i, value in enumerate(ranges):
            errs += validate_cidr(f"{path}[{i}]", str(value).strip())
    allocate = spec.get("allocateLoadBalancerNodePorts")
    if allocate is not None and not is_lb:
        errs.append(forbidden("spec.allocateLoadBalancerNodePorts", "may only be used when `type` is 'LoadBalancer'"))
    if is_lb and allocate is None:
        errs.append(required("allocateLoadBalancerNodePorts"))  # sic: no "spec." upstream
    return errs


def _validate_traffic_policies(spec: dict) -> Errors:
    errs: Errors = []
    policy = spec.get("externalTrafficPolicy")
    if not externally_accessible(spec):
        if policy:
            errs.append(invalid("spec.externalTrafficPolicy", policy,
                                "may only be set for externally-accessible services"))
    else:
        enum_field(errs, "spec.externalTrafficPolicy", policy, TRAFFIC_POLICIES)
    needs_health_check = spec.get("type") == "LoadBalancer" and policy == "Local"
    hc_port = spec.get("healthCheckNodePort")
    if not needs_health_check and hc_port:
        errs.append(invalid("spec.healthCheckNodePort", hc_port,
                            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    elif needs_health_check and hc_port:
        port_field(errs, "spec.healthCheckNodePort", hc_port)
    internal = spec.get("internalTrafficPolicy")
    if internal is None and spec.get("type") in ("ClusterIP", "NodePort", "LoadBalancer"):
        errs.append(required("spec.internalTrafficPolicy"))
    elif internal is not None and internal not in TRAFFIC_POLICIES:
        errs.append(not_supported("spec.internalTrafficPolicy", internal, TRAFFIC_POLICIES))
    return errs


# --------------------------------------------------------------------------
# Service allocation (runs before validation on the API server)
# --------------------------------------------------------------------------

def parse_service_cidrs(service_cidr: str | Sequence[str]) -> list:
    """``--service-cluster-ip-range`` value(s): "10.96.0.0/12" or "v4cidr,v6cidr"."""
    texts = service_cidr.split(",") if isinstance(service_cidr, str) else list(service_cidr)
    networks = [parse_cidr(t.strip()) for t in texts if t.strip()]
    if any(n is None for n in networks):
        raise ValueError(f"invalid service CIDR: {service_cidr!r}")
    return networks


def node_port_not_in_range(lo: int, hi: int) -> str:
    """portallocator.ErrNotInRange."""
    return f"provided port is not in the valid range. The range of valid ports is {lo}-{hi}"


NODE_PORT_ALLOCATED = "provided port is already allocated"


def node_port_allocation_error(index: int, node_port: int, reason: str) -> FieldError:
    """What the API server reports when nodePort ``spec.ports[index]`` cannot be allocated."""
    return invalid(f"spec.ports[{index}].nodePort", node_port, reason)


def cluster_ip_allocation_error(cluster_ips: Sequence[str], ip: str, reason: str) -> FieldError:
    """What the API server reports when a requested clusterIP cannot be allocated.

    ``reason`` is e.g. "provided IP is already allocated" (ipallocator.ErrAllocated).
    """
    return invalid("spec.clusterIPs", go_string_slice(cluster_ips), f"failed to allocate IP {ip}: {reason}")


def service_allocation_errors(obj: dict, *, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
                              service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR) -> Errors:
    """Errors from IP family init, clusterIP and nodePort allocation, in that order.

    Only range and in-object conflicts are checked here; whether a clusterIP
    or nodePort is already used by *another* Service is the store's business
    (see cluster_ip_allocation_error / node_port_allocation_error).
    """
    spec = as_dict(obj.get("spec"))
    if spec.get("type") == "ExternalName":
        return []
    cidrs = parse_service_cidrs(service_cidr)
    return (validate_cluster_ips_related_fields(spec)
            or _ip_family_allocation_errors(spec, cidrs)
            or _cluster_ip_range_errors(spec, cidrs)
            or _node_port_range_errors(spec, node_port_range))


def _ip_family_allocation_errors(spec: dict, cidrs: list) -> Errors:
    errs: Errors = []
    policy = spec.get("ipFamilyPolicy")
    cluster_ips, families = spec.get("clusterIPs") or [], spec.get("ipFamilies") or []
    if policy == "SingleStack":
        if len(cluster_ips) == 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy,
                                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"))
        if len(families) == 2:
            errs.append(invalid("spec.ipFamilyPolicy", policy,
                                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"))
    if errs or (is_headless(spec) and not spec.get("selector")):
        return errs
    configured = {ip_family(c.network_address) for c in cidrs}
    if policy == "RequireDualStack" and len(configured) < 2:
        errs.append(invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"))
    for i, family in enumerate(families):
        if family not in configured:
            errs.append(invalid(f"spec.ipFamilies[{i}]", family, "not configured on this cluster"))
    return errs


def _cluster_ip_range_errors(spec: dict, cidrs: list) -> Errors:
    """ipallocator.ErrNotInRange for the first requested IP outside the service range."""
    cluster_ips = spec.get("clusterIPs") or []
    if cluster_ips[:1] == ["None"]:
        return []
    for i, text in enumerate(cluster_ips):
        ip = parse_ip(text)
        cidr = next((c for c in cidrs if c.version == ip.version), None)
        if cidr is None:
            reason = f"{ip_family(ip)} is not configured on this cluster"
            return [invalid(f"spec.clusterIPs[{i}]", go_string_slice(cluster_ips), reason)]
        if not _in_allocatable_range(ip, cidr):
            reason = (f"the provided IP ({ip}) is not in the valid range. "
                      f"The range of valid IPs is {cidr}")
            return [cluster_ip_allocation_error(cluster_ips, text, reason)]
    return []


def _in_allocatable_range(ip, cidr) -> bool:
    """In the CIDR, but not its network address nor (IPv4) its broadcast address."""
    if ip not in cidr or ip == cidr.network_address:
        return False
    return ip.version == 6 or ip != cidr.broadcast_address


def _node_port_range_errors(spec: dict, node_port_range: tuple[int, int]) -> Errors:
    """Mirror initNodePorts: ports sharing a port number share one nodePort."""
    if spec.get("type") not in ("NodePort", "LoadBalancer"):
        return []
    lo, hi = node_port_range
    allocate_all = spec["type"] == "NodePort" or spec.get("allocateLoadBalancerNodePorts") is not False
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    by_port: dict[Any, int] = {}  # port number -> nodePort (-1: auto-allocated)
    taken: set[int] = set()
    for i, port in enumerate(ports):
        node_port = port.get("nodePort") or 0
        if not node_port and not allocate_all:
            continue
        number = port.get("port")
        if number not in by_port:
            node_port = node_port or _requested_node_port(number, ports)
            by_port[number] = node_port or -1
        elif not node_port or node_port == by_port[number]:
            continue
        if not isinstance(node_port, int) or not node_port:
            continue
        reason = _allocate_node_port(node_port, taken, lo, hi)
        if reason:
            return [node_port_allocation_error(i, node_port, reason)]
    return []


def _requested_node_port(number: Any, ports: list[dict]) -> int:
    """findRequestedNodePort: the first nodePort asked for by a port with this number."""
    return next((p["nodePort"] for p in ports if p.get("port") == number and p.get("nodePort")), 0)


def _allocate_node_port(node_port: int, taken: set[int], lo: int, hi: int) -> str | None:
    if not lo <= node_port <= hi:
        return node_port_not_in_range(lo, hi)
    if node_port in taken:
        return NODE_PORT_ALLOCATED
    taken.add(node_port)
    return None
