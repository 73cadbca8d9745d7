"""Keeps the node's `ip kube-proxy` nftables table in step with the objects (the nftables mode).

The proxy role uses an NftSyncer instead of the iptables Proxier when the lab runs with
`--proxy-mode nftables`; it has the Proxier's surface (sync(), health_check_ports(),
request_full_sync(), cfg) plus the mode's own canary_present() and cleanup().

Every sync that has something to write is a full sync, sent as ONE `nft -f` transaction, which
the kernel applies atomically (upstream's pkg/proxy/nftables/proxier.go, syncProxyRules, on a
full sync): `add table` (recreates it when it was deleted by hand), `flush table` (every rule
goes), `flush` of every set and map found in the table, then the rendered declarations, rules
and elements, then `delete` of every chain, set and map the render no longer has (stale). The
kernel is left holding exactly the rendered table. The affinity sets of ClientIP Services that
still exist are not flushed, so a client keeps its endpoint across resyncs (as upstream's).
Should the transaction be refused (e.g. a set's declaration changed under the same name), it
is tried once more as `add table` + `delete table` + the rendered table: a clean replacement.

Not yet upstream's: partial syncs (a change rewrites the whole table; the render and `nft -f`
of a lab's few dozen Services take milliseconds), and the deferred deletion of stale chains.

What the kernel holds is read with `nft -t list table` (terse: no set elements) before each
full sync. UDP/SCTP conntrack entries gone stale are deleted after each sync with the same
conntrack.Conntrack the Proxier uses. The `nft` runner is injectable, so unit tests see the
exact transactions without root (tests/unit/test_nft_syncer.py).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from kproxy.proxy.applier import IptablesError
from kproxy.proxy.conntrack import Conntrack, PortStates, port_states
from kproxy.proxy.model import ProxyConfig, digest
from kproxy.proxy.nft.names import AFFINITY_PREFIX, FAMILY, TABLE
from kproxy.proxy.nft.render import NftRenderResult, render_digest

log = logging.getLogger(__name__)

# run(argv, stdin text or None) -> the finished process (stdout, stderr, returncode)
NftRunner = Callable[[list[str], "str | None"], subprocess.CompletedProcess]
TABLE_REF = f"{FAMILY} {TABLE}"


class NftError(IptablesError):
    """`nft -f` refused the transaction: the role reports it as it does a failed iptables-restore."""


def run_nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True)


def have_nft() -> bool:
    return shutil.which("nft") is not None


def remove_table(run: NftRunner | None = None) -> bool:
    """Delete `table ip kube-proxy` of the current netns if there is one (kube-proxy's cleanup
    of the nftables mode; `kproxy down` on a host). Whether one was deleted; raises NftError."""
    if not have_nft() and run is None:
        return False
    run = run or run_nft
    if run(["nft", "-t", "list", "table", *TABLE_REF.split()], None).returncode != 0:
        return False
    res = run(["nft", "delete", "table", *TABLE_REF.split()], None)
    if res.returncode != 0:
        raise NftError(f"nft delete table failed: {(res.stderr or '').strip()}")
    return True


@dataclass
class NftSyncResult:
    """What one sync did (the fields the proxy role reads from the Proxier's SyncResult)."""

    full: bool
    applied: bool  # False when nothing changed and nothing was sent
    services_written: int
    duration: float
    render_seconds: float
    restore_seconds: float  # the `nft -f`
    result: NftRenderResult  # .text, .transaction, .service_chains of what is in the kernel
    transaction: str = ""  # the text sent to `nft -f` ("" when nothing was)
    conntrack_commands: list[list[str]] = field(default_factory=list)


def listed_objects(listing: str) -> dict[str, set[str]]:
    """Chains, sets and maps of an `nft -t list table` output, by kind."""
    out: dict[str, set[str]] = {"chain": set(), "set": set(), "map": set()}
    for kind, name in re.findall(r"^\s*(chain|set|map) (\S+) \{", listing, re.M):
        out[kind].add(name)
    return out


def sync_transaction(rendered: NftRenderResult, existing: dict[str, set[str]]) -> str:
    """One atomic `nft -f` input leaving exactly ``rendered`` in a table that held ``existing``
    (listed_objects; empty when the table is not there)."""
    table = rendered.table
    keep = {s.name for s in table.sets.values() if s.name.startswith(AFFINITY_PREFIX)}
    lines = [f"add table {TABLE_REF}", f"flush table {TABLE_REF}"]
    for kind in ("set", "map"):
        lines += [f"flush {kind} {TABLE_REF} {name}" for name in sorted(existing[kind] - keep)]
    body = rendered.transaction.splitlines()
    lines += body
    # stale objects last: once flushed and no longer referenced, deleting them cannot fail
    lines += [f"delete chain {TABLE_REF} {c}" for c in sorted(existing["chain"] - set(table.chains))]
    wanted = {(("map" if s.is_map else "set"), s.name) for s in table.sets.values()}
    for kind in ("set", "map"):
        lines += [f"delete {kind} {TABLE_REF} {name}" for name in sorted(existing[kind])
                  if (kind, name) not in wanted]
    return "".join(line + "\n" for line in lines)


def replace_transaction(rendered: NftRenderResult) -> str:
    """The fallback: the table deleted and written anew, in one transaction."""
    return f"add table {TABLE_REF}\ndelete table {TABLE_REF}\n" + rendered.transaction


class NftSyncer:
    """Drives the nftables renderer; remembers what the last successful sync left."""

    def __init__(self, cfg: ProxyConfig, service_cidrs: Iterable[str] = (), run: NftRunner | None = None,
                 conntrack: Conntrack | None = None):
        self.cfg = cfg
        self.service_cidrs = [c for c in service_cidrs if c]
        self._run = run or run_nft
        self.conntrack = conntrack or Conntrack()
        self._need_full = True
        self._last: NftRenderResult | None = None
        self._last_transaction = ""  # the rendered table last loaded (compared to skip no-op syncs)
        self._ports: PortStates = {}
        self._health: dict[int, tuple[str, str, int]] = {}

    # ------------------------------------------------------------------ the role's surface

    def request_full_sync(self) -> None:
        self._need_full = True

    def health_check_ports(self) -> dict[int, tuple[str, str, int]]:
        """healthCheckNodePort -> (namespace, name, local ready endpoints), as the last sync saw them."""
        return dict(self._health)

    def canary_present(self) -> bool:
        """nftables mode's flush detector: the table itself (someone ran `nft delete table` or
        `nft flush ruleset`). A failing `nft` counts as gone: a resync then says why."""
        return self._nft("-t", "list", "table", *TABLE_REF.split(), check=False).returncode == 0

    def table_exists(self) -> bool:
        return self.canary_present()

    def cleanup(self) -> None:
        """Remove the table (kube-proxy's cleanup of the nftables mode); no table, nothing to do."""
        remove_table(self._run)

    # ------------------------------------------------------------------ sync

    def sync(self, services: list[dict], endpoint_slices: list[dict], full: bool = False,
             changed: Iterable[str] | None = None) -> NftSyncResult:
        """Bring the table up to date; raises NftError when `nft -f` refuses the transaction.
        ``changed`` (the keys that may have changed): an empty one skips the render at once."""
        start = time.monotonic()
        full = full or self._need_full
        if not full and changed is not None and not set(changed) and self._last is not None:
            return self._nothing(start)
        d = digest(services, endpoint_slices, self.cfg)
        rendered = render_digest(d, self.cfg, self.service_cidrs)
        text = rendered.transaction
        rendered_at = time.monotonic()
        if not full and text == self._last_transaction and self._last is not None:
            self._last = rendered  # (skipped Services may differ)
            return self._nothing(start)
        self._need_full = True  # until this sync succeeds
        listing = self._nft("-t", "list", "table", *TABLE_REF.split(), check=False)
        existing = listed_objects(listing.stdout) if listing.returncode == 0 else listed_objects("")
        tx = sync_transaction(rendered, existing)
        res = self._nft("-f", "-", stdin=tx, check=False)
        if res.returncode != 0:
            log.warning("nft refused the sync transaction (%s); replacing the table whole",
                        res.stderr.strip().splitlines()[-1:] or "no message")
            tx = replace_transaction(rendered)
            self._nft("-f", "-", stdin=tx)
        done = time.monotonic()
        self._need_full = False
        old_services = self._last.service_chains if self._last is not None else {}
        written = sum(1 for key, chains in rendered.service_chains.items() if old_services.get(key) != chains) \
            if not full else len(rendered.service_chains)
        self._last, self._last_transaction = rendered, text
        self._health = {}
        local = d.local_ready_endpoints()
        for sp in d.ports:
            if sp.health_check_node_port:
                self._health[sp.health_check_node_port] = (sp.namespace, sp.name, local.get(sp.service_key, 0))
        old_ports, self._ports = self._ports, port_states(d)
        # only now that the rules are in: entries deleted earlier could be recreated stale
        commands = self.conntrack.cleanup(old_ports, self._ports)
        return NftSyncResult(full=True, applied=True, services_written=written, duration=done - start,
                             render_seconds=rendered_at - start, restore_seconds=done - rendered_at,
                             result=rendered, transaction=tx, conntrack_commands=commands)

    def _nothing(self, start: float) -> NftSyncResult:
        assert self._last is not None
        elapsed = time.monotonic() - start
        return NftSyncResult(full=False, applied=False, services_written=0, duration=elapsed,
                             render_seconds=elapsed, restore_seconds=0.0, result=self._last)

    def _nft(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["nft", *args]
        try:
            res = self._run(argv, stdin)
        except OSError as e:  # no nft binary
            raise NftError(f"{' '.join(argv[:3])} failed: {e}") from e
        if check and res.returncode != 0:
            raise NftError(f"{' '.join(argv[:3])} failed: {(res.stderr or '').strip()}")
        return res
