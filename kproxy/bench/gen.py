"""Generated Services and EndpointSlices (selector-less, as parsed from YAML), in memory or as
manifests, deterministic for a seed so a worker in another netns builds the very same objects.

ClusterIPs are requested (spec.clusterIP) from 10.100.0.0/16, inside the lab's default service
CIDR 10.96.0.0/12 and clear of the .1 (kubernetes) and .10 (kube-dns) addresses the lab keeps.
"""
from __future__ import annotations

import ipaddress
import random
import time
from typing import Iterator

import yaml

from kproxy.api.meta import LABEL_SERVICE_NAME

SERVICE_BASE = int(ipaddress.IPv4Address("10.100.0.0"))
SERVICE_SPAN = 1 << 16          # 10.100.0.0/16: 65,536 requested ClusterIPs at most
ENDPOINT_BASE = int(ipaddress.IPv4Address("10.244.1.0"))  # off the lab node's own 10.244.0.0/24
ENDPOINT_SPAN = 250 * 254       # 10.244.1.1 .. 10.244.250.254, never .0 or .255
PORT_NAME = "http"
SERVICE_PORT = 80
NAMESPACE = "default"
MIN_ENDPOINTS, MAX_ENDPOINTS = 2, 10


def service_name(i: int, prefix: str = "bench") -> str:
    return f"{prefix}-{i:05d}"


def cluster_ip(i: int) -> str:
    """The i-th requested ClusterIP: 10.100.0.2, 10.100.0.3, … (10.100.x.0/1/255 skipped)."""
    per_block = 253  # .2 .. .254 of each /24
    block, host = divmod(i, per_block)
    if block >= SERVICE_SPAN // 256:
        raise ValueError(f"too many services: {i}")
    return str(ipaddress.IPv4Address(SERVICE_BASE + block * 256 + 2 + host))


def endpoint_ip(j: int) -> str:
    """The j-th generated endpoint address (wraps around after 63,500: IPs may back several
    Services, as a pod behind several Services does)."""
    block, host = divmod(j % ENDPOINT_SPAN, 254)
    return str(ipaddress.IPv4Address(ENDPOINT_BASE + block * 256 + 1 + host))


def service(i: int, prefix: str = "bench", port: int = SERVICE_PORT, target_port: int | None = None) -> dict:
    """A defaulted selector-less ClusterIP Service with a requested clusterIP."""
    ip = cluster_ip(i)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(i, prefix), "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "sessionAffinity": "None",
                 "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP",
                            "targetPort": target_port or port}]},
    }


def endpoint_slice(name: str, ips: list[str], port: int = SERVICE_PORT, node_name: str = "node-1",
                   slice_suffix: str = "bench") -> dict:
    """The EndpointSlice of Service ``name``: every address ready, on ``node_name``."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-{slice_suffix}", "namespace": NAMESPACE,
                     "labels": {LABEL_SERVICE_NAME: name}},
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node_name} for ip in ips],
    }


def cluster(n: int, seed: int = 7, min_eps: int = MIN_ENDPOINTS, max_eps: int = MAX_ENDPOINTS,
            target_port: int = 8080) -> tuple[list[dict], list[dict]]:
    """n Services with min_eps..max_eps endpoints each (uniformly, seeded) and their slices."""
    rng = random.Random(seed)
    services, slices = [], []
    j = 0
    for i in range(n):
        k = rng.randint(min_eps, max_eps)
        svc = service(i, target_port=target_port)
        services.append(svc)
        slices.append(endpoint_slice(svc["metadata"]["name"], [endpoint_ip(j + e) for e in range(k)],
                                     port=target_port))
        j += k
    return services, slices


def change_endpoints(slices: list[dict], change: int, seed: int = 11) -> str:
    """Change the endpoints of one Service (picked by ``change`` and the seed): a new address
    replaces one of its endpoints, and one is added or removed. Returns the Service's name."""
    rng = random.Random(seed * 1_000_003 + change)
    sl = slices[rng.randrange(len(slices))]
    eps = sl["endpoints"]
    fresh = endpoint_ip(ENDPOINT_SPAN - 1 - (change % 5000))  # from the far end of the range
    eps[rng.randrange(len(eps))] = {"addresses": [fresh], "conditions": {"ready": True},
                                    "nodeName": eps[0].get("nodeName", "node-1")}
    if len(eps) > MIN_ENDPOINTS and rng.random() < 0.5:
        eps.pop()
    elif len(eps) < MAX_ENDPOINTS:
        eps.append({"addresses": [endpoint_ip(ENDPOINT_SPAN - 5001 - (change % 5000))],
                    "conditions": {"ready": True}, "nodeName": eps[0].get("nodeName", "node-1")})
    # two different addresses per endpoint list: duplicates would merge into one endpoint
    seen, unique = set(), []
    for ep in eps:
        if ep["addresses"][0] not in seen:
            seen.add(ep["addresses"][0])
            unique.append(ep)
    sl["endpoints"] = unique
    return sl["metadata"]["labels"][LABEL_SERVICE_NAME]


def service_changes(services: list[dict], slices: list[dict], count: int, first: int, kind: str, hint: bool,
                    budget: float) -> Iterator[str]:
    """Up to ``count`` one-Service changes made in place, each yielded (the Service's name) for
    the caller to sync and time, until ``budget`` seconds have gone: ``kind`` "endpoints" changes
    one Service's endpoints (change_endpoints, numbered from ``first``), else a new Service with
    two endpoints is added ("hinted-..." when the sync is told the changed key, else "added-...")."""
    deadline = time.monotonic() + budget
    for c in range(count):
        if time.monotonic() > deadline:
            return
        if kind == "endpoints":
            yield change_endpoints(slices, first + c)
            continue
        i = len(services)
        svc = service(i, prefix="hinted" if hint else "added", target_port=8080)
        services.append(svc)
        name = svc["metadata"]["name"]
        slices.append(endpoint_slice(name, [endpoint_ip(i), endpoint_ip(i + 1)], port=8080))
        yield name


def manifest(i: int, pod_ips: list[str], prefix: str = "bench", port: int = SERVICE_PORT) -> str:
    """The YAML of one selector-less Service (requested clusterIP) and its EndpointSlice pointing
    at ``pod_ips``, as written into a lab's manifests folder (without the API's defaults)."""
    ip = cluster_ip(i)
    name = service_name(i, prefix)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"clusterIP": ip, "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP",
                                                "targetPort": port}]}}
    sl = endpoint_slice(name, pod_ips, port=port)
    return yaml.safe_dump_all([svc, sl], sort_keys=False)


def deployment(name: str, replicas: int, port: int = 80) -> str:
    """A Deployment of the built-in pod server (no command) listening on ``port``."""
    labels = {"app": name}
    doc = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"containers": [{"name": "server", "image": "kproxy/podserver",
                                                          "ports": [{"containerPort": port}]}]}}}}
    return yaml.safe_dump(doc, sort_keys=False)


def selector_service(name: str, app: str, cluster_ip_: str, port: int = 80) -> str:
    """A ClusterIP Service selecting the pods of Deployment ``app``."""
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NAMESPACE},
           "spec": {"selector": {"app": app}, "clusterIP": cluster_ip_,
                    "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP", "targetPort": port}]}}
    return yaml.safe_dump(doc, sort_keys=False)
