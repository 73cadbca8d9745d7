"""What the last successful sync put into the kernel for each Service, as far as work after the
sync needs it: the UDP/SCTP ports for the conntrack cleanup and the health-check nodePort for the
health server. Both proxy modes' syncers (proxier.py for iptables, nft/syncer.py) keep one.

Kept per Service key and refreshed only for the Services a sync touched (a partial sync), so
what the kernel has and what is remembered stay equal without walking every Service.
"""
from __future__ import annotations

from typing import Callable, Iterable

from kproxy.proxy.conntrack import PortStates, port_states
from kproxy.proxy.model import Digest


class SyncedServices:
    def __init__(self) -> None:
        self._port_states: dict[str, PortStates] = {}
        self._health: dict[str, tuple[int, tuple[str, str, int]]] = {}  # see health_check_ports()
        self.ports: PortStates = {}  # every UDP/SCTP service port in the kernel

    def keys(self) -> set[str]:
        """The Services remembered (a syncer refreshes those it no longer has, to forget them)."""
        return self._port_states.keys() | self._health.keys()

    def refresh(self, keys: Iterable[str], digest_of: Callable[[str], Digest | None]) -> PortStates:
        """Remember `keys`' Services as `digest_of` says they now are (None: gone); the ports
        before, for the conntrack cleanup of what changed (`ports` holds the ones after)."""
        old = self.ports
        for key in keys:
            d = digest_of(key)
            states = port_states(d) if d is not None else {}
            if states:
                self._port_states[key] = states
            else:
                self._port_states.pop(key, None)
            sp = next((sp for sp in d.ports if sp.health_check_node_port), None) if d is not None else None
            if sp is not None:
                local = d.local_ready_endpoints().get(key, 0)
                self._health[key] = (sp.health_check_node_port, (sp.namespace, sp.name, local))
            else:
                self._health.pop(key, None)
        self.ports = {k: v for states in self._port_states.values() for k, v in states.items()}
        return old

    def health_check_ports(self) -> dict[int, tuple[str, str, int]]:
        """healthCheckNodePort -> (namespace, name, local ready endpoints)."""
        return dict(self._health.values())
