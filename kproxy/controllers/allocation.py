"""ClusterIP, NodePort and pod IP allocation, kept in the store like the API server's bitmaps.

Each allocated value is one key (`/allocations/clusterips/10.96.0.42` -> "default/web"), so
taking a value is a put inside the caller's transaction: two writers can never both take it,
and a restarted daemon finds every Service's address where it left it.
"""
from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from kproxy.store.base import Txn

CLUSTER_IPS = "/allocations/clusterips/"
NODE_PORTS = "/allocations/nodeports/"
POD_IPS = "/allocations/podips/"


class AllocationError(Exception):
    """A requested value cannot be had; `field`/`value`/`detail` make a Kubernetes field error."""

    def __init__(self, field: str, value, detail: str):
        super().__init__(detail)
        self.field, self.value, self.detail = field, value, detail


@dataclass(frozen=True)
class ServiceRanges:
    service_cidr: str = "10.96.0.0/12"
    node_ports: tuple[int, int] = (30000, 32767)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.service_cidr)

    def nth_ip(self, n: int) -> str:
        """The n-th address of the range: 1 is default/kubernetes, 10 is cluster DNS."""
        return str(self.network.network_address + n)


def _owner(txn: Txn, prefix: str, value) -> str | None:
    return txn.get(f"{prefix}{value}")


def allocate_cluster_ip(txn: Txn, ranges: ServiceRanges, owner: str, requested: str | None,
                        rng: random.Random, field: str = "spec.clusterIPs") -> str:
    """Take `requested` (or a free random address) for `owner`, or raise AllocationError."""
    net = ranges.network
    if requested:
        ip = ipaddress.ip_address(requested)
        if ip not in net or ip in (net.network_address, net.broadcast_address):
            raise AllocationError(field, [requested],
                                  f"failed to allocate IP {requested}: the provided IP ({requested}) is not in "
                                  f"the valid range. The range of valid IPs is {net}")
        held = _owner(txn, CLUSTER_IPS, requested)
        if held not in (None, owner):
            raise AllocationError(field, [requested],
                                  f"failed to allocate IP {requested}: provided IP is already allocated")
        txn.put(f"{CLUSTER_IPS}{requested}", owner)
        return requested
    size = net.num_addresses - 2
    reserved = {ranges.nth_ip(1), ranges.nth_ip(10)}  # default/kubernetes and kube-dns
    # Random like the API server, reading only the address tried (as it creates an IPAddress
    # object): two controllers then conflict only when they pick the same address.
    for _ in range(64):
        ip = str(net.network_address + rng.randint(1, size))
        if ip not in reserved and _owner(txn, CLUSTER_IPS, ip) is None:
            break
    else:  # the range is full-ish: scan it
        used = {k.rsplit("/", 1)[1] for k, _ in txn.list(CLUSTER_IPS)}
        ip = next((str(a) for a in net.hosts() if str(a) not in used and str(a) not in reserved), None)
        if ip is None:
            raise AllocationError(field, [], "failed to allocate a serviceIP: range is full")
    txn.put(f"{CLUSTER_IPS}{ip}", owner)
    return ip


def allocate_node_port(txn: Txn, ranges: ServiceRanges, owner: str, requested: int | None,
                       rng: random.Random, field: str) -> int:
    lo, hi = ranges.node_ports
    if requested:
        held = _owner(txn, NODE_PORTS, requested)
        if held not in (None, owner):
            raise AllocationError(field, requested, "provided port is already allocated")
        txn.put(f"{NODE_PORTS}{requested}", owner)
        return requested
    for _ in range(64):  # one key read per try, as for ClusterIPs: concurrent writers rarely meet
        port = rng.randint(lo, hi)
        if _owner(txn, NODE_PORTS, port) is None:
            txn.put(f"{NODE_PORTS}{port}", owner)
            return port
    used = {int(k.rsplit("/", 1)[1]) for k, _ in txn.list(NODE_PORTS)}
    free = [p for p in range(lo, hi + 1) if p not in used]
    if not free:
        raise AllocationError(field, 0, "failed to allocate a nodePort: range is full")
    port = rng.choice(free)
    txn.put(f"{NODE_PORTS}{port}", owner)
    return port


def release_owner(txn: Txn, owner: str, keep_ips: set[str] = frozenset(), keep_ports: set[int] = frozenset()) -> None:
    """Free what `owner` holds, except the values it keeps (a Service that changed ports)."""
    for key, held in txn.list(CLUSTER_IPS):
        if held == owner and key.rsplit("/", 1)[1] not in keep_ips:
            txn.delete(key)
    for key, held in txn.list(NODE_PORTS):
        if held == owner and int(key.rsplit("/", 1)[1]) not in keep_ports:
            txn.delete(key)


def allocate_service(txn: Txn, svc: dict, old: dict | None, ranges: ServiceRanges,
                     rng: random.Random) -> dict:
    """Fill in spec.clusterIP(s), nodePorts and healthCheckNodePort of a defaulted Service.

    `old` is the admitted version of the same Service, whose allocations are kept (as the API
    server keeps them on update) unless the new spec asks for other values.
    """
    meta, spec = svc["metadata"], svc["spec"]
    owner = f"{meta['namespace']}/{meta['name']}"
    old_spec = (old or {}).get("spec", {})
    stype = spec.get("type", "ClusterIP")
    keep_ips: set[str] = set()
    keep_ports: set[int] = set()

    if stype == "ExternalName":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    elif spec.get("clusterIP") == "None" or (not spec.get("clusterIP") and old_spec.get("clusterIP") == "None"):
        spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]  # patchAllocatedValues keeps "None" too
    else:
        wanted = spec.get("clusterIP") or None
        if not wanted and old_spec.get("clusterIP") not in (None, "", "None"):
            wanted = old_spec["clusterIP"]
        ip = allocate_cluster_ip(txn, ranges, owner, wanted, rng)
        spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
        keep_ips.add(ip)

    wants_node_ports = stype == "NodePort" or (
        stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True))
    old_ports = {(p.get("name", ""), p.get("protocol", "TCP")): p.get("nodePort")
                 for p in old_spec.get("ports", [])}
    by_number: dict[int, int] = {}  # ports with one number (53/TCP, 53/UDP) share a nodePort
    for p in spec.get("ports", []):
        if p.get("nodePort"):
            by_number.setdefault(p["port"], p["nodePort"])
    for i, port in enumerate(spec.get("ports", [])):
        requested = port.get("nodePort")
        if not wants_node_ports and not requested:
            port.pop("nodePort", None)
            continue
        if not requested:
            requested = by_number.get(port["port"]) or old_ports.get((port.get("name", ""), port.get("protocol", "TCP")))
        if requested in keep_ports:
            port["nodePort"] = requested
            continue
        port["nodePort"] = allocate_node_port(txn, ranges, owner, requested, rng,
                                              f"spec.ports[{i}].nodePort")
        by_number.setdefault(port["port"], port["nodePort"])
        keep_ports.add(port["nodePort"])

    if stype == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
        requested = spec.get("healthCheckNodePort") or old_spec.get("healthCheckNodePort")
        spec["healthCheckNodePort"] = allocate_node_port(txn, ranges, owner, requested, rng,
                                                         "spec.healthCheckNodePort")
        keep_ports.add(spec["healthCheckNodePort"])
    else:
        spec.pop("healthCheckNodePort", None)

    # free what the previous version held and this one does not (only those keys are read)
    for ip in old_spec.get("clusterIPs") or [old_spec.get("clusterIP")]:
        if ip and ip != "None" and ip not in keep_ips and _owner(txn, CLUSTER_IPS, ip) == owner:
            txn.delete(f"{CLUSTER_IPS}{ip}")
    held_ports = [p.get("nodePort") for p in old_spec.get("ports", [])] + [old_spec.get("healthCheckNodePort")]
    for port in held_ports:
        if port and port not in keep_ports and _owner(txn, NODE_PORTS, port) == owner:
            txn.delete(f"{NODE_PORTS}{port}")
    return svc


def allocate_pod_ip(txn: Txn, pod_cidr: str, owner: str) -> str:
    """The lowest free address of the node's pod CIDR (.1 is the bridge), like host-local IPAM."""
    net = ipaddress.ip_network(pod_cidr)
    # only this node's share is read, so nodes allocating at once never conflict
    octets = str(net.network_address).split(".")[:min(3, net.prefixlen // 8)]
    used = {k.rsplit("/", 1)[1] for k, _ in txn.list(POD_IPS + "".join(o + "." for o in octets))}
    for addr in list(net.hosts())[1:]:
        ip = str(addr)
        if ip not in used:
            txn.put(f"{POD_IPS}{ip}", owner)
            return ip
    raise AllocationError("status.podIP", "", f"no free address in pod CIDR {pod_cidr}")


def in_cidr(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def release_pod_ip(txn: Txn, ip: str | None) -> None:
    if ip:
        txn.delete(f"{POD_IPS}{ip}")
