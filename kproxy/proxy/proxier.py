"""Keeps the kernel's rules in step with the objects, syncing only what changed, as kube-proxy.

Upstream's iptables Proxier (pkg/proxy/iptables/proxier.go) restores the fixed chains on every
sync but rewrites a Service's own KUBE-SVC/SVL/EXT/FW/SEP chains only when the Service or its
EndpointSlices changed since the last successful sync (a partial sync). A full sync, which
rewrites everything, ensures the jump rules and deletes every stale chain found in the kernel,
happens first, when asked for, and after any failed sync, since what is in the kernel is then
unknown (and, unlike upstream, when large-cluster mode flips, so no chain keeps the other
mode's comments). When nothing changed, nothing is restored. After a successful sync, stale
UDP/SCTP conntrack entries are deleted.

Upstream learns what changed from informer events; here each sync gets the whole object lists,
so the Proxier fingerprints every Service from what the renderer reads of it and compares.
The kernel-touching parts (restore, chain listing, jump rules, conntrack) are injectable so
tests run without root.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from kproxy.proxy import applier as iptables
from kproxy.proxy.applier import Applier, IptablesError
from kproxy.proxy.conntrack import Conntrack, PortStates, port_states
from kproxy.proxy.render import (
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    Digest,
    ProxyConfig,
    RenderResult,
    digest,
    render_digest,
)

log = logging.getLogger(__name__)

RESTORE = ["iptables-restore", "-w", "--noflush"]


@dataclass
class SyncResult:
    """What one Proxier.sync did."""

    full: bool
    applied: bool  # False when nothing changed and no restore ran
    services_written: int  # services whose own chains were (re)written
    rules: int  # "-A" lines in the restore input
    duration: float  # render + restore
    render_seconds: float
    restore_seconds: float
    result: RenderResult  # the last rendered input (the previous one when nothing was applied)
    conntrack_commands: list[list[str]] = field(default_factory=list)  # run after the restore


def iptables_restore(text: str) -> None:
    """Load ``text`` atomically; --noflush leaves every chain it does not declare alone."""
    res = subprocess.run(RESTORE, input=text, capture_output=True, text=True)
    if res.returncode != 0:
        raise IptablesError(f"{' '.join(RESTORE)} failed: {res.stderr.strip()}")


def kernel_nat_chains() -> set[str]:
    """The KUBE-* chains the nat table holds now."""
    return iptables.kube_chains(iptables.save("nat")).get("nat", set())


def fingerprints(d: Digest) -> dict[str, str]:
    """A hash per proxied Service ("ns/name") of its ports and their endpoints, as digested
    for the renderer: equal hashes mean the Service's own chains would be written the same."""
    parts: dict[str, list[str]] = {}
    for sp in d.ports:
        parts.setdefault(sp.service_key, []).append(repr((sp, d.port_endpoints(sp))))
    return {key: hashlib.sha256("\n".join(items).encode()).hexdigest() for key, items in parts.items()}


def changed_services(old: Mapping[str, str], new: Mapping[str, str]) -> set[str]:
    """Keys added, deleted, or with a different fingerprint."""
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def _count_rules(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


class Proxier:
    """Partial-sync driver of the renderer; remembers the last successful sync."""

    def __init__(
        self,
        cfg: ProxyConfig,
        applier: Applier | None = None,
        conntrack: Conntrack | None = None,
        *,
        restore: Callable[[str], None] | None = None,
        list_chains: Callable[[], set[str]] | None = None,
    ):
        self.cfg = cfg
        self.applier = applier or Applier()
        self.conntrack = conntrack or Conntrack()
        self._restore = restore or iptables_restore
        self._list_chains = list_chains or kernel_nat_chains
        self._need_full = True
        # State of the last successful sync.
        self._fingerprints: dict[str, str] = {}
        self._service_chains: dict[str, set[str]] = {}
        self._ports: PortStates = {}
        self._large_cluster: bool | None = None
        self._last: RenderResult | None = None

    def request_full_sync(self) -> None:
        """Make the next sync full, e.g. after someone flushed or cleaned up the rules."""
        self._need_full = True

    def sync(self, services: list[dict], endpoint_slices: list[dict], full: bool = False) -> SyncResult:
        """Bring the kernel up to date; raises IptablesError when the restore fails."""
        start = time.monotonic()
        d = digest(services, endpoint_slices, self.cfg)
        prints = fingerprints(d)
        large_cluster = d.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
        # Large-cluster mode changes the comments of every chain: rewrite them all.
        full = full or self._need_full or large_cluster != self._large_cluster
        changed = None if full else changed_services(self._fingerprints, prints)
        if changed == set():
            return self._nothing_to_do(time.monotonic() - start)

        self._need_full = True  # until this sync succeeds
        result = render_digest(d, self.cfg, existing_nat_chains=self._existing_chains(full), changed=changed)
        rendered = time.monotonic()
        self._restore(result.text)
        if full:
            # Upstream ensures the jumps on full syncs only; ours need the chains to exist first.
            self.applier.ensure_jumps()
        restored = time.monotonic()
        self._need_full = False

        old_ports = self._ports
        self._remember(result, prints, d, large_cluster)
        # Only now that the rules are in: entries deleted earlier could be recreated stale.
        commands = self.conntrack.cleanup(old_ports, self._ports)
        written = len(result.service_chains) if changed is None else len(changed & result.service_chains.keys())
        return SyncResult(
            full=full,
            applied=True,
            services_written=written,
            rules=_count_rules(result.text),
            duration=restored - start,
            render_seconds=rendered - start,
            restore_seconds=restored - rendered,
            result=result,
            conntrack_commands=commands,
        )

    def _existing_chains(self, full: bool) -> set[str]:
        """Chains stale ones are picked from: the kernel's on full syncs; on partial syncs the
        ones the last sync left, which is all a partial sync can have made stale."""
        remembered = set().union(*self._service_chains.values())
        if not full:
            return remembered
        try:
            return self._list_chains()
        except IptablesError as e:
            log.error("listing nat chains failed, only known stale chains will be deleted: %s", e)
            return remembered

    def _remember(self, result: RenderResult, prints: dict[str, str], d: Digest, large_cluster: bool) -> None:
        """Record what is now in the kernel: the next sync is compared with it."""
        self._fingerprints = prints
        self._service_chains = {key: set(chains) for key, chains in result.service_chains.items()}
        self._ports = port_states(d)
        self._large_cluster = large_cluster
        self._last = result

    def _nothing_to_do(self, elapsed: float) -> SyncResult:
        assert self._last is not None
        return SyncResult(
            full=False,
            applied=False,
            services_written=0,
            rules=0,
            duration=elapsed,
            render_seconds=elapsed,
            restore_seconds=0.0,
            result=self._last,
        )

