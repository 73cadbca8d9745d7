"""LoadBalancer IPs from address pools, the way MetalLB's controller hands them out.

Pools are MetalLB `IPAddressPool` objects (`spec.addresses` as CIDRs or `a-b` ranges,
`spec.autoAssign`), so MetalLB users' files work unchanged; `kproxy up --lb-pool` adds one
named `default`. Each IP taken is one store key (`/allocations/lbips/<ip>` -> "ns/name"),
taken in the caller's transaction like ClusterIPs.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from kproxy.store.base import Txn

LB_IPS = "/allocations/lbips/"
ANNOTATION_IPS = ("metallb.universe.tf/loadBalancerIPs", "metallb.io/loadBalancerIPs")
ANNOTATION_POOL = ("metallb.universe.tf/address-pool", "metallb.io/address-pool")


class PoolError(Exception):
    """Why a Service gets no IP; the message is MetalLB's event text."""


@dataclass(frozen=True)
class Pool:
    name: str
    ranges: tuple[tuple[int, int], ...]   # inclusive integer ranges of IPv4 addresses
    auto_assign: bool = True
    avoid_buggy_ips: bool = False

    def contains(self, ip: str) -> bool:
        n = int(ipaddress.IPv4Address(ip))
        return any(lo <= n <= hi for lo, hi in self.ranges)

    def addresses(self):
        for lo, hi in self.ranges:
            for n in range(lo, hi + 1):
                if self.avoid_buggy_ips and n % 256 in (0, 255):
                    continue
                yield str(ipaddress.IPv4Address(n))


def parse_range(text: str) -> tuple[int, int]:
    """`192.168.49.200-192.168.49.250` or a CIDR (every address of it, as MetalLB uses them)."""
    text = text.strip()
    if "-" in text:
        a, b = (int(ipaddress.IPv4Address(x.strip())) for x in text.split("-", 1))
        if b < a:
            raise ValueError(f"invalid range {text!r}: end before start")
        return a, b
    net = ipaddress.IPv4Network(text, strict=False)
    return int(net.network_address), int(net.broadcast_address)


def pool_from_object(obj: dict) -> Pool:
    spec = obj.get("spec") or {}
    ranges = tuple(parse_range(a) for a in spec.get("addresses") or [])
    if not ranges:
        raise ValueError("spec.addresses: Required value")
    return Pool(obj["metadata"]["name"], ranges, spec.get("autoAssign", True), spec.get("avoidBuggyIPs", False))


def lab_addresses(cfg, nodes: list[dict] = ()) -> dict[str, str]:
    """Addresses a pool must never hand out (ip -> what holds it): every node's address (the
    configured ones of a sandbox lab and each Node object's), and in a sandbox the `outside`
    host's; a LoadBalancer IP there would take over that host's own traffic (issue 12 #11)."""
    out: dict[str, str] = {}
    if cfg.sandbox:  # the plan of kproxy/node/network.py and kproxy/cluster/lab.py: .2.. nodes, .100 outside
        from kproxy.node.network import NodeConfig  # noqa: PLC0415
        net = ipaddress.ip_network(cfg.lab_cidr)
        out[NodeConfig(lab_cidr=cfg.lab_cidr).outside_ip] = "the lab's outside host"
        for i in range(1, max(1, cfg.nodes) + 1):
            out[str(net.network_address + 1 + i)] = f"node node-{i}" if cfg.nodes > 1 else f"node {cfg.node_name}"
    if cfg.node_ip:
        out.setdefault(cfg.node_ip, f"node {cfg.node_name}")
    for node in nodes:
        for a in (node.get("status") or {}).get("addresses") or []:
            if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address"):
                out.setdefault(a["address"], f"node {node['metadata']['name']}")
    return out


def pool_conflicts(ranges: list[str], reserved: dict[str, str]) -> list[tuple[int, str, str]]:
    """(index in spec.addresses, ip, what holds it) for each reserved address a range holds."""
    found = []
    for i, text in enumerate(ranges):
        try:
            lo, hi = parse_range(str(text))
        except ValueError:
            continue  # reported by pool_from_object
        for ip, what in sorted(reserved.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])):
            try:
                n = int(ipaddress.IPv4Address(ip))
            except ValueError:
                continue
            if lo <= n <= hi:
                found.append((i, ip, what))
    return found


def conflict_message(ip: str, what: str) -> str:
    return f"holds {ip}, the address of {what}: a pool may not hand out a node's or the lab's own address"


def wants_ip(svc: dict) -> bool:
    """A LoadBalancer Service that this implementation (no loadBalancerClass) serves."""
    spec = svc.get("spec", {})
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def requested_ips(svc: dict) -> list[str]:
    ann = svc["metadata"].get("annotations") or {}
    for key in ANNOTATION_IPS:
        if ann.get(key):
            return [x.strip() for x in ann[key].split(",") if x.strip()]
    ip = svc["spec"].get("loadBalancerIP")
    return [ip] if ip else []


def requested_pool(svc: dict) -> str | None:
    ann = svc["metadata"].get("annotations") or {}
    return next((ann[k] for k in ANNOTATION_POOL if ann.get(k)), None)


def allocate(txn: Txn, svc: dict, pools: list[Pool], current: list[str]) -> list[str]:
    """The IPs `svc` should hold: its current ones if still allowed, else new ones; raises
    PoolError with MetalLB's reason when none can be had."""
    owner = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
    wanted, pool_name = requested_ips(svc), requested_pool(svc)
    if pool_name and pool_name not in {p.name for p in pools}:
        raise PoolError(f'Failed to allocate IP for "{owner}": unknown pool "{pool_name}"')
    candidates = [p for p in pools if (p.name == pool_name if pool_name else True)]
    if wanted:
        for ip in wanted:
            if not any(p.contains(ip) for p in candidates):
                raise PoolError(f'Failed to allocate IP for "{owner}": ["{ip}"] is not allowed in config')
            holder = txn.get(f"{LB_IPS}{ip}")
            if holder not in (None, owner):
                raise PoolError(f'Failed to allocate IP for "{owner}": can\'t change sharing key for "{owner}", '
                                f'address also in use by {holder}')
        ips = wanted
    elif current and all(any(p.contains(ip) for p in candidates) for ip in current):
        ips = current
    else:
        ips = []
        used = {k.rsplit("/", 1)[1] for k, _ in txn.list(LB_IPS)}
        for p in candidates:
            if not p.auto_assign and not pool_name:
                continue
            ip = next((a for a in p.addresses() if a not in used), None)
            if ip:
                ips = [ip]
                break
        if not ips:
            raise PoolError(f'Failed to allocate IP for "{owner}": no available IPs')
    release(txn, owner, keep=set(ips))
    for ip in ips:
        txn.put(f"{LB_IPS}{ip}", owner)
    return ips


def release(txn: Txn, owner: str, keep: set[str] = frozenset()) -> None:
    for key, held in txn.list(LB_IPS):
        if held == owner and key.rsplit("/", 1)[1] not in keep:
            txn.delete(key)


def announcing_node(ip: str, nodes: list[str]) -> str | None:
    """The one node that announces `ip`, as MetalLB's layer-2 mode picks it: the first eligible
    node ordered by sha256(node + "#" + ip), so every speaker agrees without talking."""
    if not nodes:
        return None
    return min(nodes, key=lambda n: hashlib.sha256(f"{n}#{ip}".encode()).digest())


def advertised(pool: str, l2ads: list[dict]) -> bool:
    """MetalLB announces a pool only when an L2Advertisement selects it (none listed: all)."""
    for ad in l2ads:
        names = (ad.get("spec") or {}).get("ipAddressPools")
        if not names or pool in names:
            return True
    return False
