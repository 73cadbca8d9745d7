"""Service + pods -> EndpointSlices and Endpoints, as the endpoint controllers build them.

Only pods with an IP count; readiness comes from the pod's Ready condition (or from
publishNotReadyAddresses); a named targetPort is looked up in each pod's container ports, so
pods of one Service may serve it on different numbers. Selector-less Services keep the slices
the user wrote, and user-written Endpoints are mirrored into slices.
"""
from __future__ import annotations

import hashlib

from kproxy.api.meta import LABEL_SERVICE_NAME, pod_ready, selector_matches
from kproxy.controllers.replicas import safe_encode

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
# On Endpoints the Endpoints controller (and the API server, for default/kubernetes) manages: the
# mirroring controller leaves them alone, and only such Endpoints are ever removed by a controller.
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
SERVICE_NAME = LABEL_SERVICE_NAME


def resolve_target_port(svc_port: dict, pod: dict) -> int | None:
    """The pod port a Service port sends to; None when a named port is not in the pod."""
    target = svc_port.get("targetPort", svc_port["port"])
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    proto = svc_port.get("protocol", "TCP")
    for c in pod["spec"].get("containers", []):
        for p in c.get("ports", []):
            if p.get("name") == target and p.get("protocol", "TCP") == proto:
                return p["containerPort"]
    return None


def _slice_name(svc_name: str, ports: tuple) -> str:
    digest = hashlib.sha256(repr(ports).encode()).hexdigest()
    return f"{svc_name}-{safe_encode(digest[:5])}"


def slices_for_service(svc: dict, pods: list[dict], node_name: str) -> list[dict]:
    """EndpointSlices for a Service with a selector, one per distinct resolved port set."""
    meta, spec = svc["metadata"], svc["spec"]
    selector = spec.get("selector") or {}
    publish = spec.get("publishNotReadyAddresses", False)
    groups: dict[tuple, list[dict]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        pm = pod["metadata"]
        ip = pod.get("status", {}).get("podIP")
        if pm.get("namespace") != meta["namespace"] or not ip:
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if not selector_matches(selector, pm.get("labels", {})):
            continue
        ports = tuple((p.get("name", ""), p.get("protocol", "TCP"), resolve_target_port(p, pod))
                      for p in spec.get("ports", []))
        ports = tuple(p for p in ports if p[2] is not None)
        # a terminating pod stays listed, not ready, so a proxy may fall back to it
        serving = pod_ready(pod)
        terminating = bool(pm.get("deletionTimestamp"))
        groups.setdefault(ports, []).append({
            "addresses": [ip],
            "conditions": {"ready": publish or (serving and not terminating), "serving": serving,
                           "terminating": terminating},
            "nodeName": pod["spec"].get("nodeName", node_name),
            "targetRef": {"kind": "Pod", "namespace": pm["namespace"], "name": pm["name"],
                          "uid": pm.get("uid", "")},
        })
    if not groups:
        groups[()] = []
    out = []
    for ports, endpoints in sorted(groups.items()):
        out.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": _slice_name(meta["name"], ports), "namespace": meta["namespace"],
                         "labels": {SERVICE_NAME: meta["name"],
                                    MANAGED_BY: "endpointslice-controller.k8s.io"},
                         "generateName": f"{meta['name']}-"},
            "addressType": "IPv4",
            "ports": [{"name": n, "protocol": proto, "port": port} for n, proto, port in ports],
            "endpoints": endpoints,
        })
    return out


def managed(endpoints_obj: dict) -> bool:
    """Endpoints written by a controller (or the API server), not by a user: kept in step with
    their Service, never mirrored into EndpointSlices."""
    return (endpoints_obj.get("metadata", {}).get("labels") or {}).get(SKIP_MIRROR) == "true"


def endpoints_from_slices(svc: dict, slices: list[dict]) -> dict:
    """The legacy Endpoints object kubectl shows under `get endpoints`."""
    meta = svc["metadata"]
    publish = svc["spec"].get("publishNotReadyAddresses", False)
    subsets = []
    for sl in slices:
        # the Endpoints controller leaves terminating pods out unless asked to publish them
        listed = [e for e in sl["endpoints"] if publish or not e.get("conditions", {}).get("terminating")]
        ready = [e for e in listed if e.get("conditions", {}).get("ready", True)]
        not_ready = [e for e in listed if not e.get("conditions", {}).get("ready", True)]
        if not sl["endpoints"] or not sl["ports"]:
            continue
        subset: dict = {"ports": [{k: v for k, v in p.items() if v != ""} for p in sl["ports"]]}
        if ready:
            subset["addresses"] = [_address(e) for e in ready]
        if not_ready:
            subset["notReadyAddresses"] = [_address(e) for e in not_ready]
        subsets.append(subset)
    obj = {"apiVersion": "v1", "kind": "Endpoints",
           "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": {SKIP_MIRROR: "true"}}}
    if subsets:
        obj["subsets"] = subsets
    return obj


def _address(ep: dict) -> dict:
    a = {"ip": ep["addresses"][0]}
    if ep.get("nodeName"):
        a["nodeName"] = ep["nodeName"]
    if ep.get("targetRef"):
        a["targetRef"] = ep["targetRef"]
    return a


def mirror_endpoints(ep: dict) -> list[dict]:
    """EndpointSlices mirroring a user-written Endpoints object (for selector-less Services)."""
    meta = ep["metadata"]
    out = []
    for i, subset in enumerate(ep.get("subsets", [])):
        endpoints = []
        for addr, ready in [(a, True) for a in subset.get("addresses", [])] + \
                           [(a, False) for a in subset.get("notReadyAddresses", [])]:
            e = {"addresses": [addr["ip"]], "conditions": {"ready": ready}}
            if addr.get("nodeName"):
                e["nodeName"] = addr["nodeName"]
            endpoints.append(e)
        out.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-mirror-{i}", "namespace": meta["namespace"],
                         "labels": {SERVICE_NAME: meta["name"],
                                    MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"), "port": p["port"]}
                      for p in subset.get("ports", [])],
            "endpoints": endpoints,
        })
    return out
