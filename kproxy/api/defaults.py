"""Defaulting, as the API server does it before validating and storing.

Follows pkg/apis/core/v1/defaults.go, pkg/apis/apps/v1/defaults.go, the
declarative ``+default`` markers of the v1 types, and the few normalisations
the registry applies on create (namespace handling, Service clusterIP/
clusterIPs syncing and IP family initialisation), so that stored objects look
like ``kubectl get -o yaml`` on a real cluster.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from kproxy.api import meta
from kproxy.api.schema import type_errors

DEFAULT_NAMESPACE = "default"


def apply_defaults(obj: dict) -> dict:
    """Return a defaulted deep copy of ``obj``; unknown kinds only get metadata.

    Never raises: an object with a field of the wrong type comes back undefaulted
    (defaulting would paper over the type error) and ``validation.validate`` reports it.
    """
    out = copy.deepcopy(obj)
    if not isinstance(out, dict):
        return out
    errs = type_errors(out)
    if errs:  # the API server's decoder refuses it before defaulting: validate() says why
        if not any(e.field.startswith(("metadata", "kind")) for e in errs):
            _default_metadata(out)  # only its identity (kind, namespace, name) is completed, for reports
        return out
    try:
        _default_metadata(out)
        defaulter = _DEFAULTERS.get(out.get("kind", ""))
        if defaulter:
            defaulter(out)
    except Exception:  # noqa: BLE001 - a kproxy bug: leave the object as given, validate() reports it
        return copy.deepcopy(obj)
    return out


def patch_allocated_values(old: dict, new: dict) -> dict:
    """Carry allocated clusterIPs/nodePorts from ``old`` into an update that omits them.

    Mirrors the Service registry's patchAllocatedValues, so that re-applying a
    manifest without ``clusterIP`` or ``nodePort`` keeps the allocated values
    instead of failing as an attempt to unset them. Returns a copy.
    """
    out = copy.deepcopy(new)
    if out.get("kind") != "Service":
        return out
    old_spec, spec = old.get("spec") or {}, _child(out, "spec")
    if _needs_cluster_ip(old_spec) and _needs_cluster_ip(spec):
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIPs") and old_spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_spec["clusterIPs"])
    if _needs_node_port(old_spec) and _needs_node_port(spec):
        _patch_node_ports(old_spec.get("ports") or [], spec.get("ports") or [])
    if _needs_health_check(old_spec) and _needs_health_check(spec):
        if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]
    return out


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _child(parent: dict, key: str) -> dict:
    """``parent[key]`` as a dict, created when missing or not a dict."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = parent[key] = {}
    return value


def _items(parent: dict, key: str) -> list[dict]:
    """The dict entries of list ``parent[key]`` (others are left to validation)."""
    value = parent.get(key)
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _default_metadata(obj: dict) -> None:
    """Namespaced kinds get "default"; cluster-scoped kinds drop any namespace."""
    metadata = _child(obj, "metadata")
    if meta.is_namespaced(obj.get("kind", "")):
        if not metadata.get("namespace"):
            metadata["namespace"] = DEFAULT_NAMESPACE
    else:
        metadata.pop("namespace", None)


# --------------------------------------------------------------------------
# Pods and pod templates
# --------------------------------------------------------------------------

def image_pull_policy(image: str) -> str:
    """Always for ``:latest`` or untagged images, IfNotPresent otherwise."""
    name, _, digest = (image or "").partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag and not digest and name:
        tag = "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_pod_spec(spec: dict) -> None:
    """SetDefaults_PodSpec plus container, port and probe defaults."""
    if not spec.get("dnsPolicy"):
        spec["dnsPolicy"] = "ClusterFirst"
    if not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Always"
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    if not spec.get("schedulerName"):
        spec["schedulerName"] = "default-scheduler"
    for container in _items(spec, "initContainers") + _items(spec, "containers"):
        _default_container(container, host_network=bool(spec.get("hostNetwork")))


def _default_container(container: dict, host_network: bool) -> None:
    if not container.get("imagePullPolicy"):
        container["imagePullPolicy"] = image_pull_policy(container.get("image", ""))
    if not container.get("terminationMessagePath"):
        container["terminationMessagePath"] = "/dev/termination-log"
    if not container.get("terminationMessagePolicy"):
        container["terminationMessagePolicy"] = "File"
    if container.get("resources") is None:
        container["resources"] = {}
    for port in _items(container, "ports"):
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if host_network and not port.get("hostPort"):
            port["hostPort"] = port.get("containerPort")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(probe), dict):
            _default_probe(container[probe])
    lifecycle = container.get("lifecycle")
    if isinstance(lifecycle, dict):
        for hook in ("postStart", "preStop"):
            if isinstance(lifecycle.get(hook), dict):
                _default_http_get(lifecycle[hook])


def _default_probe(probe: dict) -> None:
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10),
                       ("successThreshold", 1), ("failureThreshold", 3)):
        if not probe.get(key):
            probe[key] = value
    _default_http_get(probe)


def _default_http_get(handler: dict) -> None:
    http_get = handler.get("httpGet")
    if isinstance(http_get, dict):
        if not http_get.get("path"):
            http_get["path"] = "/"
        if not http_get.get("scheme"):
            http_get["scheme"] = "HTTP"


def _default_pod(pod: dict) -> None:
    spec = _child(pod, "spec")
    _default_pod_spec(spec)
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True


# --------------------------------------------------------------------------
# Deployments
# --------------------------------------------------------------------------

def _default_deployment(deployment: dict) -> None:
    """SetDefaults_Deployment; the selector is required in apps/v1, not defaulted."""
    spec = _child(deployment, "spec")
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = _child(spec, "strategy")
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        rolling = _child(strategy, "rollingUpdate")
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    template = _child(spec, "template")
    _default_pod_spec(_child(template, "spec"))


# --------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------

def externally_accessible(spec: dict) -> bool:
    """NodePort/LoadBalancer, or ClusterIP with externalIPs (apiservice.ExternallyAccessible)."""
    kind = spec.get("type")
    return kind in ("LoadBalancer", "NodePort") or (
        kind == "ClusterIP" and bool(spec.get("externalIPs"))
    )


def _default_service(service: dict) -> None:
    spec = _child(service, "spec")
    _default_session_affinity(spec)
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    for port in _items(spec, "ports"):
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port", 0)
    if externally_accessible(spec) and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec.get("internalTrafficPolicy") is None and spec["type"] in ("ClusterIP", "NodePort", "LoadBalancer"):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True
    _sync_cluster_ips(spec)
    _default_ip_families(spec)


def _default_session_affinity(spec: dict) -> None:
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        config = spec.get("sessionAffinityConfig")
        client_ip = config.get("clientIP") if isinstance(config, dict) else None
        if not isinstance(client_ip, dict) or client_ip.get("timeoutSeconds") is None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 10800}}


def _sync_cluster_ips(spec: dict) -> None:
    """Keep clusterIP and clusterIPs[0] in step, as the registry strategy does."""
    cluster_ip, cluster_ips = spec.get("clusterIP"), spec.get("clusterIPs")
    if cluster_ip and not cluster_ips:
        spec["clusterIPs"] = [cluster_ip]
    elif cluster_ips and isinstance(cluster_ips, list) and not cluster_ip:
        spec["clusterIP"] = cluster_ips[0]


def _is_headless(spec: dict) -> bool:
    return spec.get("clusterIPs") == ["None"]


def _default_ip_families(spec: dict) -> None:
    """Registry IP family init: SingleStack/IPv4 unless headless without selector."""
    if spec["type"] == "ExternalName":
        return
    headless_selectorless = _is_headless(spec) and not spec.get("selector")
    if not spec.get("ipFamilyPolicy"):
        spec["ipFamilyPolicy"] = "RequireDualStack" if headless_selectorless else "SingleStack"
    if spec.get("ipFamilies"):
        return
    inferred = [_family_of(ip) for ip in spec.get("clusterIPs") or [] if ip != "None"]
    families = list(dict.fromkeys(inferred)) or ["IPv4"]  # a repeated family is validation's to report
    if headless_selectorless and spec["ipFamilyPolicy"] != "SingleStack" and len(families) < 2:
        families.append("IPv6" if families[0] == "IPv4" else "IPv4")
    spec["ipFamilies"] = families


def _family_of(ip: Any) -> str:
    return "IPv6" if isinstance(ip, str) and ":" in ip else "IPv4"


def _needs_cluster_ip(spec: dict) -> bool:
    return spec.get("type") != "ExternalName"


def _needs_node_port(spec: dict) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def _needs_health_check(spec: dict) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _patch_node_ports(old_ports: list, new_ports: list) -> None:
    """Give unset nodePorts the old value of the same-named port, if still free."""
    def used(ports):
        return {p.get("nodePort") for p in ports if isinstance(p, dict) and p.get("nodePort")}

    taken = used(old_ports) & used(new_ports)
    by_name = {p.get("name", ""): p.get("nodePort") for p in old_ports if isinstance(p, dict)}
    for port in new_ports:
        if isinstance(port, dict) and not port.get("nodePort"):
            old_value = by_name.get(port.get("name", ""))
            if old_value and old_value not in taken:
                port["nodePort"] = old_value


# --------------------------------------------------------------------------
# Endpoints, EndpointSlices, Namespaces
# --------------------------------------------------------------------------

def _default_endpoints(endpoints: dict) -> None:
    for subset in _items(endpoints, "subsets"):
        for port in _items(subset, "ports"):
            if not port.get("protocol"):
                port["protocol"] = "TCP"


def _default_endpoint_slice(endpoint_slice: dict) -> None:
    """Port name "" and protocol TCP; endpoint conditions are left as given."""
    for port in _items(endpoint_slice, "ports"):
        if port.get("name") is None:
            port["name"] = ""
        if not port.get("protocol"):
            port["protocol"] = "TCP"


def _default_namespace(namespace: dict) -> None:
    """The kubernetes.io/metadata.name label and the Active phase."""
    metadata = _child(namespace, "metadata")
    if metadata.get("name"):
        labels = _child(metadata, "labels")
        labels["kubernetes.io/metadata.name"] = metadata["name"]
    status = _child(namespace, "status")
    if not status.get("phase"):
        status["phase"] = "Active"


_DEFAULTERS: dict[str, Callable[[dict], None]] = {
    "Pod": _default_pod,
    "Deployment": _default_deployment,
    "Service": _default_service,
    "Endpoints": _default_endpoints,
    "EndpointSlice": _default_endpoint_slice,
    "Namespace": _default_namespace,
}
