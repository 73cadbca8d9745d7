"""Deletes stale conntrack entries of UDP and SCTP services, as kube-proxy does after a sync.

NAT is decided on a flow's first packet; later packets follow the flow's conntrack entry.
A UDP "flow" has no end while its client keeps sending, so two kinds of entries go stale:

* entries DNATed to an endpoint that stopped serving: the client keeps talking to a dead
  pod; they are deleted per (service address, endpoint IP) and (nodePort, endpoint IP);
* entries created while the service port had no endpoints (its packets were REJECTed,
  never DNATed): once it has endpoints again, everything sent to its cluster IP, external
  IPs, load-balancer IPs and nodePort is deleted so the next packet is NATed afresh.

Also, a deleted UDP/SCTP service port's cluster IP is cleared (upstream's DeletedUDPClusterIPs).
This is upstream's command-based cleanup (pkg/proxy/conntrack/cleanup.go, v1.28-v1.30) worked
out from the previous and the new sync, with the conntrack-tools options of conntrack.go.
``cleanup_commands`` is pure, so tests can check the exact commands; ``Conntrack`` runs them.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable

from kproxy.proxy.model import Digest, Endpoint, PortKey

log = logging.getLogger(__name__)

# Connectionless enough that a stale entry outlives its endpoint (upstream's IsClearConntrackNeeded).
CLEANED_PROTOCOLS = ("UDP", "SCTP")
# conntrack exits 1 with this when the filter matched nothing: not an error.
NO_CONNECTION_TO_DELETE = "0 flow entries have been deleted"


@dataclass(frozen=True)
class PortState:
    """What the cleanup needs to remember about one UDP/SCTP service port after a sync."""

    protocol: str  # as in the API: "UDP" or "SCTP"
    cluster_ip: str
    node_port: int
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    serving: frozenset[str]  # "ip:port" of the endpoints traffic may be DNATed to

    @property
    def vips(self) -> tuple[str, ...]:
        """Every address the port is reached at, in upstream's order."""
        return (self.cluster_ip, *self.external_ips, *self.lb_ips)


PortStates = dict[PortKey, PortState]


def is_serving(ep: Endpoint) -> bool:
    """Upstream's IsServing: policy, topology and terminating state deliberately do not count,
    so a UDP flow to a terminating pod drains like a TCP connection would.

    ``ready`` also counts because the renderer marks every endpoint of a
    publishNotReadyAddresses Service ready, and the rules then DNAT to it.
    """
    return ep.serving or ep.ready


def port_states(d: Digest) -> PortStates:
    """The UDP/SCTP service ports of a sync, from the renderer's own digest."""
    states: PortStates = {}
    for sp in d.ports:
        if sp.protocol not in CLEANED_PROTOCOLS:
            continue
        states[(sp.namespace, sp.name, sp.port_name, sp.protocol)] = PortState(
            protocol=sp.protocol,
            cluster_ip=sp.cluster_ip,
            node_port=sp.node_port,
            external_ips=sp.external_ips,
            lb_ips=sp.lb_vips,
            serving=frozenset(str(ep) for ep in d.port_endpoints(sp) if is_serving(ep)),
        )
    return states


# ------------------------------------------------------------------ commands


def clear_ip(proto: str, ip: str) -> list[str]:
    """Every flow to a service address (ClearEntriesForIP)."""
    return ["conntrack", "-D", "-p", proto, "--orig-dst", ip]


def clear_port(proto: str, port: int) -> list[str]:
    """Every flow to a nodePort, whatever the node address (ClearEntriesForPort)."""
    return ["conntrack", "-D", "-p", proto, "--orig-port-dst", str(port)]


def clear_nat(proto: str, vip: str, endpoint_ip: str) -> list[str]:
    """Flows to a service address DNATed to one endpoint (ClearEntriesForNAT)."""
    return ["conntrack", "-D", "-p", proto, "--orig-dst", vip, "--dst-nat", endpoint_ip]


def clear_port_nat(proto: str, port: int, endpoint_ip: str) -> list[str]:
    """Flows to a nodePort DNATed to one endpoint (ClearEntriesForPortNAT)."""
    return ["conntrack", "-D", "-p", proto, "--orig-port-dst", str(port), "--dst-nat", endpoint_ip]


def _ip(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


def _service_commands(old: PortStates, new: PortStates) -> list[list[str]]:
    """Whole-address cleanups: deleted ports' cluster IPs, then newly active ports' addresses
    and nodePorts (upstream's deleteStaleServiceConntrackEntries)."""
    ips: list[list[str]] = []
    ports: list[list[str]] = []
    for key in sorted(old.keys() - new.keys()):
        ips.append(clear_ip(old[key].protocol.lower(), old[key].cluster_ip))
    for key in sorted(new):
        state = new[key]
        was_serving = key in old and bool(old[key].serving)
        if not state.serving or was_serving:
            continue
        proto = state.protocol.lower()
        ips += [clear_ip(proto, vip) for vip in state.vips]
        if state.node_port:
            ports.append(clear_port(proto, state.node_port))
    return ips + ports


def _endpoint_commands(old: PortStates, new: PortStates) -> list[list[str]]:
    """Per-endpoint cleanups for endpoints that stopped serving a port that still exists
    (upstream's deleteStaleEndpointConntrackEntries); the port's current addresses are used."""
    commands: list[list[str]] = []
    for key in sorted(old.keys() & new.keys()):
        state = new[key]
        proto = state.protocol.lower()
        for endpoint in sorted(old[key].serving - state.serving):
            ip = _ip(endpoint)
            if state.node_port:
                commands.append(clear_port_nat(proto, state.node_port, ip))
            commands += [clear_nat(proto, vip, ip) for vip in state.vips]
    return commands


def cleanup_commands(old: PortStates, new: PortStates) -> list[list[str]]:
    """The `conntrack -D` commands that remove what the sync from ``old`` to ``new`` left stale."""
    commands = _service_commands(old, new) + _endpoint_commands(old, new)
    return _unique(commands)


def _unique(commands: Iterable[list[str]]) -> list[list[str]]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for cmd in commands:
        if tuple(cmd) not in seen:
            seen.add(tuple(cmd))
            out.append(cmd)
    return out


# ------------------------------------------------------------------ executor

Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


class Conntrack:
    """Runs `conntrack -D` commands, best effort as upstream: failures are logged, not raised."""

    def __init__(self, run: Runner | None = None):
        self._run = run or _run
        # Only the real runner needs the binary; an injected one is trusted.
        self._available = run is not None or shutil.which("conntrack") is not None
        if not self._available:
            log.warning("conntrack not found: stale UDP conntrack entries will not be deleted")

    def cleanup(self, old: PortStates, new: PortStates) -> list[list[str]]:
        """Delete what the sync from ``old`` to ``new`` left stale; returns the commands."""
        commands = cleanup_commands(old, new)
        self.execute(commands)
        return commands

    def execute(self, commands: Iterable[list[str]]) -> list[list[str]]:
        """Run each command; returns the ones that failed."""
        if not self._available:
            return []
        return [cmd for cmd in commands if not self._delete(cmd)]

    def _delete(self, cmd: list[str]) -> bool:
        try:
            res = self._run(cmd)
        except OSError as e:
            log.error("%s: %s", " ".join(cmd), e)
            return False
        if res.returncode == 0 or NO_CONNECTION_TO_DELETE in f"{res.stdout}{res.stderr}":
            log.debug("%s: %s", " ".join(cmd), (res.stderr or res.stdout).strip())
            return True
        log.error("%s failed: %s", " ".join(cmd), (res.stderr or res.stdout).strip())
        return False
