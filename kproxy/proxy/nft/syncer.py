"""Keeps the node's `ip kube-proxy` nftables table in step with the objects (the nftables mode).

The proxy role uses an NftSyncer instead of the iptables Proxier when the lab runs with
`--proxy-mode nftables`; it has the Proxier's surface (sync(), health_check_ports(),
request_full_sync(), cfg) plus the mode's own canary_present(), cleanup() and
delete_stale_chains().

Like upstream's nftables proxier (pkg/proxy/nftables/proxier.go, syncProxyRules), every sync
is ONE `nft -f` transaction, which the kernel applies atomically, and is either

- full: on the first sync, when asked (the role's resync period, the canary: the table deleted
  by hand), and after any refused transaction, since what the kernel holds is then unknown.
  `add table` (recreates it when it was deleted), `flush table` (every chain's rules), `flush`
  of the fixed sets and maps, then every declaration, rule and element of the render (upstream's
  setupNFTables + every Service); or
- partial: only the Services whose Service or EndpointSlices changed (their digest, what the
  rules read, differs) are written: each of their chains `add` + `flush` + its rules (upstream's
  ensureChain), their elements of the shared sets and maps added or deleted BY KEY against what
  the kernel holds (upstream's nftElementStorage: a changed value is `delete` + `add`), and
  their chains no longer used flushed. Nothing else of the table is sent, so a one-Service
  change costs the same at 10 Services as at 10,000.

Stale chains are not deleted at once: with kernels before 6.2 a chain that a just-deleted map
element pointed to still counts as referenced for a short while. They are flushed when they go
stale and deleted once they have been stale for STALE_CHAIN_GRACE (upstream: one second, its
staleChains map with timestamps), by a later sync or by delete_stale_chains(), which the role
calls between syncs. Should a transaction carrying such deletes be refused, it is tried again
without them (upstream deletes them in a transaction of their own, for the same reason: a
failed cleanup must not fail the sync) and they count as a cleanup failure. Stale affinity sets
are deleted at once (nothing can jump on them), and live ones are never flushed, so a client
keeps its endpoint across resyncs (as upstream's).

A refused partial transaction is followed at once by a full sync in the same call; a refused
full one is tried once more as `add table` + `delete table` + the rendered table (a clean
replacement); only if that is refused too does sync() raise NftError. What the kernel holds is
read (one `nft -t -f` listing chains, sets and maps, no rules) before each full sync only:
partial syncs trust what the last successful sync left, as upstream's element storage does.
UDP/SCTP conntrack entries gone stale are deleted after each sync with the same
conntrack.Conntrack the Proxier uses. The `nft` runner is injectable, so unit tests see the
exact transactions without root (tests/unit/test_nft_syncer.py).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from kproxy.proxy.changes import ServiceChanges
from kproxy.proxy.conntrack import Conntrack
from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft.base import SHARED_SETS
from kproxy.proxy.nft.kernel import (LISTING, TABLE_REF, Listing, NftError, NftRunner, have_nft,  # noqa: F401
                                     last_line, listed_objects, remove_table, run_nft)
from kproxy.proxy.nft.names import AFFINITY_PREFIX, MARK_MASQ_CHAIN, is_service_chain
from kproxy.proxy.nft.render import (Elements, NftRenderResult, ServicePiece, base_table, compose,
                                     render_service, service_order)
from kproxy.proxy.nft.table import Table
from kproxy.proxy.synced import SyncedServices

log = logging.getLogger(__name__)

STALE_CHAIN_GRACE = 1.0  # seconds a flushed stale chain waits before it is deleted (upstream's)
SECTION_SERVICES = 500  # a full sync of 3x as many Services or more writes their chains this many at a time


class ServiceChains(Mapping):
    """"ns/name" -> its chains, read from the pieces when asked (a dict of 10,000 sets built
    after every partial sync cost 16 ms)."""

    def __init__(self, pieces: dict[str, ServicePiece]):
        self._pieces = pieces

    def __getitem__(self, key: str) -> set[str]:
        return set(self._pieces[key].chains)

    def __iter__(self):
        return iter(self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)


class SyncState:
    """What the kernel holds after a sync, composed into a table only when someone asks (a
    partial sync at 10,000 Services must not pay for a whole render it does not send)."""

    def __init__(self, base: Table, pieces: dict[str, ServicePiece], skipped: dict[str, str]):
        self._base, self._pieces, self.skipped_services = base, pieces, skipped
        self._result: NftRenderResult | None = None
        self.service_chains = ServiceChains(pieces)

    def _render(self) -> NftRenderResult:
        if self._result is None:
            self._result = NftRenderResult(whole_table(self._base, self._pieces), self.service_chains,
                                           self.skipped_services)
        return self._result

    @property
    def table(self) -> Table:
        return self._render().table

    @property
    def text(self) -> str:
        return self._render().text

    @property
    def transaction(self) -> str:
        return self._render().transaction


def whole_table(base: Table, pieces: dict[str, ServicePiece]) -> Table:
    """The fixed part and every Service's piece in one table (``base`` is not changed)."""
    t = Table()
    t.chains = dict(base.chains)
    t.sets = {name: replace(s, elements=dict(s.elements)) for name, s in base.sets.items()}
    return compose(t, (pieces[k] for k in sorted(pieces, key=service_order)))


@dataclass
class NftSyncResult:
    """What one sync did (the fields the proxy role reads from the Proxier's SyncResult)."""

    full: bool
    applied: bool  # False when nothing changed and nothing was sent
    services_written: int
    duration: float
    render_seconds: float  # everything but `nft`: digests, render, composing the transaction
    restore_seconds: float  # in `nft`: the transaction(s), and on a full sync the listing before
    result: SyncState  # .text, .transaction, .service_chains, .table of what is in the kernel
    transaction: str = ""  # the text sent to `nft -f` ("" when nothing was)
    conntrack_commands: list[list[str]] = field(default_factory=list)
    sync_failures: int = 0  # transactions the kernel refused on the way (recovered from)
    cleanup_failures: int = 0  # stale-chain deletions refused (the chains wait for the next try)
    stale_chains: int = 0  # flushed chains waiting for their deletion


@dataclass
class _Plan:
    """A sync's transaction and what the syncer's memory becomes once the kernel took it."""

    lines: list[str]
    pieces: dict[str, ServicePiece]
    elements: dict[str, Elements]
    stale: dict[str, float]
    deletes: list[str]  # the `delete chain` lines of due stale chains (dropped on a refusal)
    written: int
    refused: int = 0  # transactions refused while planning (a section of a first sync)


class NftSyncer:
    """Drives the nftables renderer; remembers what the last successful sync left."""

    def __init__(self, cfg: ProxyConfig, service_cidrs: Iterable[str] = (), run: NftRunner | None = None,
                 conntrack: Conntrack | None = None, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.service_cidrs = [c for c in service_cidrs if c]
        self._run = run or run_nft
        self.conntrack = conntrack or Conntrack()
        self.clock = clock
        self._need_full = True
        # What the last successful sync left in the kernel.
        self._changes = ServiceChanges(cfg)  # each Service's signature
        self._pieces: dict[str, ServicePiece] = {}  # proxied Services, rendered
        self._skipped: dict[str, str] = {}
        self._base = base_table(cfg, self.service_cidrs)
        self._elements: dict[str, Elements] = {name: {} for name in SHARED_SETS}  # the shared sets' elements
        self._writers: dict[str, dict[str, set[str]]] = {name: {} for name in SHARED_SETS}  # key -> Services
        self.stale_chains: dict[str, float] = {}  # flushed, unused service chain -> when it went stale
        self._last: SyncState | None = None
        self._synced = SyncedServices()  # UDP/SCTP ports and health-check nodePorts in the kernel
        self.last_sync_kind = ""  # "full" / "partial" of the last sync that wrote something
        self._failed = [0, 0]  # refused sync transactions, refused stale-chain deletions (not yet taken)
        self._nft_seconds = 0.0  # time spent in `nft` (all calls), for the render/nft split of a sync

    # ------------------------------------------------------------------ the role's surface

    def request_full_sync(self) -> None:
        self._need_full = True

    def health_check_ports(self) -> dict[int, tuple[str, str, int]]:
        """healthCheckNodePort -> (namespace, name, local ready endpoints), as the last sync saw them."""
        return self._synced.health_check_ports()

    def canary_present(self) -> bool:
        """nftables mode's flush detector: the table itself (someone ran `nft delete table` or
        `nft flush ruleset`). A failing `nft` counts as gone: a resync then says why."""
        return self._nft("-t", "list", "table", *TABLE_REF.split(), check=False).returncode == 0

    def table_exists(self) -> bool:
        return self.canary_present()

    def cleanup(self) -> None:
        """Remove the table (kube-proxy's cleanup of the nftables mode); no table, nothing to do."""
        remove_table(self._run)

    def take_failures(self) -> tuple[int, int]:
        """(sync, cleanup) transactions refused since the last call: the metrics'
        kubeproxy_sync_proxy_rules_nftables_{sync,cleanup}_failures_total."""
        out, self._failed = (self._failed[0], self._failed[1]), [0, 0]
        return out

    def delete_stale_chains(self) -> tuple[int, int]:
        """Delete the stale chains whose grace is over, in a transaction of their own (between
        syncs). (deleted, refused): refused ones are tried again later."""
        now = self.clock()
        due = sorted(c for c, t in self.stale_chains.items() if now - t >= STALE_CHAIN_GRACE)
        if not due or self._need_full:
            return 0, 0
        res = self._nft("-f", "-", stdin="".join(f"delete chain {TABLE_REF} {c}\n" for c in due), check=False)
        if res.returncode != 0:
            log.warning("deleting %d stale chains failed, will retry: %s", len(due), last_line(res))
            for c in due:  # upstream: they come back with a later timestamp
                self.stale_chains[c] = now
            self._failed[1] += 1
            return 0, len(due)
        for c in due:
            del self.stale_chains[c]
        return len(due), 0

    # ------------------------------------------------------------------ sync

    def sync(self, services: list[dict], endpoint_slices: list[dict], full: bool = False,
             changed: Iterable[str] | None = None) -> NftSyncResult:
        """Bring the table up to date; raises NftError when `nft -f` refuses even a full sync.
        ``changed``: the "ns/name" keys whose objects may have changed (None: any)."""
        start = self.clock()
        self._nft_seconds = 0.0
        full = full or self._need_full
        listing = Listing(self._run) if full else None  # read while the objects are digested and rendered
        changes = self._changes.find(services, endpoint_slices, None if full else changed)
        skipped = dict(self._skipped)
        dirty: dict[str, ServicePiece | None] = {}  # changed Services: their new piece, None: gone
        for key, (sig, d) in changes.items():
            skipped.pop(key, None)
            old = self._pieces.get(key)
            if d is None or not d.ports:
                if d is not None:
                    skipped.update(d.skipped)
                if old is not None:
                    dirty[key] = None
                continue
            new_eps = [d.port_endpoints(sp) for sp in d.ports]
            if old is not None and old.ports == d.ports and old.endpoints == new_eps:
                continue  # nothing the rules read changed
            dirty[key] = render_service(key, d.ports, new_eps, self.cfg)
        if not full and not dirty:
            for key, (sig, _) in changes.items():
                self._changes.remember(key, sig)
            self._skipped = skipped
            if self._last is not None:
                self._last.skipped_services = dict(skipped)
            return self._nothing(start, skipped)

        self._need_full = True  # until this sync succeeds
        failures = cleanup_failures = 0
        sent = ""
        if not full:
            plan = self._partial(dirty, start)
            sent, ok, cleanup_failed = self._send(plan, start)
            cleanup_failures += cleanup_failed
            if not ok:
                failures += 1
                self._failed[0] += 1
                log.warning("nft refused the partial sync's transaction; doing a full sync")
                full = True
        if full:
            plan = self._full(dirty, start, listing)
            failures += plan.refused
            sent, ok, cleanup_failed = self._send(plan, start)
            cleanup_failures += cleanup_failed
            if not ok:
                failures += 1
                self._failed[0] += 1
                log.warning("nft refused the full sync's transaction; replacing the table whole")
                plan.lines = [f"add table {TABLE_REF}", f"delete table {TABLE_REF}"] + self._table(plan).loadable()
                plan.stale, plan.deletes = {}, []
                sent = "".join(line + "\n" for line in plan.lines)
                try:
                    self._nft("-f", "-", stdin=sent)
                except NftError:
                    self._failed[0] += 1
                    raise
        done = self.clock()
        self._need_full = False
        commands = self._finish(changes, skipped, dirty, plan)
        self.last_sync_kind = "full" if full else "partial"
        nft_seconds = min(self._nft_seconds, done - start)
        return NftSyncResult(full=full, applied=True, services_written=plan.written, duration=done - start,
                             render_seconds=done - start - nft_seconds, restore_seconds=nft_seconds, result=self._last,
                             transaction=sent, conntrack_commands=commands, sync_failures=failures,
                             cleanup_failures=cleanup_failures, stale_chains=len(self.stale_chains))

    def _due(self, stale: dict[str, float], now: float) -> list[str]:
        return [f"delete chain {TABLE_REF} {c}" for c in sorted(stale) if now - stale[c] >= STALE_CHAIN_GRACE]

    def _partial(self, dirty: dict[str, ServicePiece | None], now: float) -> _Plan:
        """The changed Services' chains and their elements by key; nothing else."""
        order = sorted(dirty, key=service_order)
        new = [p for k in order if (p := dirty[k]) is not None]
        stale = dict(self.stale_chains)
        declare: list[str] = []
        rules: list[str] = []
        for piece in new:
            for name in sorted(piece.chains):
                chain = piece.chains[name]
                declare += [chain.declaration(), f"flush chain {TABLE_REF} {name}"]
                rules += [f"add rule {TABLE_REF} {name} {r}" for r in chain.rules]
                stale.pop(name, None)  # used again before it was deleted
            declare += [s.declaration() for _, s in sorted(piece.affinity.items())]
        # The shared sets' and maps' elements: deleted and added by key (upstream's ensureElem).
        elements = {name: dict(els) for name, els in self._elements.items()}
        drop: list[str] = []
        add: list[str] = []
        for name in SHARED_SETS:
            s = self._base.sets[name]
            old_keys = {key for k in order if (p := self._pieces.get(k)) for key in p.elements.get(name, ())}
            wanted: Elements = {}
            for piece in new:
                wanted.update(piece.elements.get(name, {}))
            kernel = elements[name]
            writers = self._writers[name]
            for key in sorted(old_keys | wanted.keys()):
                # A key another (unchanged) Service writes too (the same externalIP and port) keeps
                # the value of the last writer in Service order, as in a full render.
                others = {k for k in writers.get(key, ()) if k not in dirty}
                if others:
                    last = max(others, key=service_order)
                    if key not in wanted or service_order(last) > service_order(
                            max((p.key for p in new if key in p.elements.get(name, {})), key=service_order)):
                        wanted[key] = self._pieces[last].elements[name][key]
                if key not in wanted:
                    if key in kernel:
                        drop.append(s.delete_line(key))
                        del kernel[key]
                    continue
                comment, value = wanted[key]
                have = kernel.get(key)
                if have == (comment, value):
                    continue
                if have is not None:
                    drop.append(s.delete_line(key))
                add.append(s.element_line(key, comment, value))
                kernel[key] = (comment, value)
        # The changed Services' chains and affinity sets no longer used.
        gone_chains: list[str] = []
        gone_sets: list[str] = []
        for key in order:
            old = self._pieces.get(key)
            if old is None:
                continue
            cur = dirty[key]
            gone_chains += sorted(set(old.chains) - set(cur.chains if cur else ()))
            gone_sets += sorted(set(old.affinity) - set(cur.affinity if cur else ()))
        flush = [f"flush chain {TABLE_REF} {c}" for c in gone_chains]
        for c in gone_chains:
            stale[c] = now
        deletes = self._due({c: t for c, t in stale.items() if c not in gone_chains}, now)
        pieces = dict(self._pieces)
        for key, piece in dirty.items():
            if piece is None:
                pieces.pop(key, None)
            else:
                pieces[key] = piece
        lines = declare + rules + drop + add + flush + [f"delete set {TABLE_REF} {s}" for s in gone_sets]
        return _Plan(lines, pieces, elements, stale, deletes, written=len(dirty))

    def _full(self, dirty: dict[str, ServicePiece | None], now: float, listing: "Listing | None") -> _Plan:
        """Everything, after reading which chains, sets and maps the kernel holds."""
        pieces = dict(self._pieces)
        for key, piece in dirty.items():
            if piece is None:
                pieces.pop(key, None)
            else:
                pieces[key] = piece
        res = listing.get() if listing is not None else None
        if res is None:  # (a partial sync was refused first: the kernel changed since)
            res = self._nft("-t", "-f", "-", stdin=LISTING, check=False)
        existing = listed_objects(res.stdout if res.returncode == 0 else "")
        self._base = base_table(self.cfg, self.service_cidrs)
        plan = _Plan([], pieces, {}, {}, [], written=len(pieces))
        table = self._table(plan)
        plan.elements = {name: dict(table.sets[name].elements) for name in SHARED_SETS}
        keep = {name for name in table.sets if name.startswith(AFFINITY_PREFIX)}
        loaded = set()
        if len(pieces) >= 3 * SECTION_SERVICES:  # below, one transaction costs less than the extra runs
            loaded = self._sections(table, plan.pieces)
            plan.refused = 0 if loaded else 1
        if loaded:  # the Services' chains are in: the rest, with no `flush table` that would empty them
            lines = [table.loadable()[0]]
            for kind in ("set", "map"):
                lines += [f"flush {kind} {TABLE_REF} {name}" for name in sorted(existing[kind] - keep)]
            lines += [s.declaration() for s in table.sets.values() if s.name not in keep]
            rest = [c for name, c in sorted(table.chains.items()) if name not in loaded]
            lines += [c.declaration() for c in rest]
            lines += [f"flush chain {TABLE_REF} {name}" for name in sorted(existing["chain"] - loaded)]
            lines += [f"add rule {TABLE_REF} {c.name} {r}" for c in rest for r in c.rules]
            lines += [line for s in table.sets.values() for line in s.element_lines()]
        else:
            lines = [table.loadable()[0], f"flush table {TABLE_REF}"]  # (an existing table keeps its comment)
            for kind in ("set", "map"):
                lines += [f"flush {kind} {TABLE_REF} {name}" for name in sorted(existing[kind] - keep)]
            lines += table.loadable()[1:]
        # Chains no render has: service chains wait for their grace (already flushed by the
        # `flush table`); any other chain of ours (of an older kproxy) goes now.
        stale = {c: self.stale_chains.get(c, now) for c in existing["chain"] - set(table.chains)
                 if is_service_chain(c)}
        lines += [f"delete chain {TABLE_REF} {c}" for c in sorted(existing["chain"] - set(table.chains) - set(stale))]
        wanted = {(("map" if s.is_map else "set"), s.name) for s in table.sets.values()}
        for kind in ("set", "map"):
            lines += [f"delete {kind} {TABLE_REF} {name}" for name in sorted(existing[kind])
                      if (kind, name) not in wanted]
        plan.lines, plan.stale, plan.deletes = lines, stale, self._due(stale, now)
        return plan

    def _sections(self, table: Table, pieces: dict[str, ServicePiece]) -> set[str]:
        """A full sync of many Services: their chains (each `add` + `flush` + its rules) and
        affinity sets go first, SECTION_SERVICES Services per transaction, so the full sync's
        own transaction is left with the fixed part, the elements and the stale chains. Why:
        the kernel's cost of a transaction grows with the square of its anonymous sets (each
        `numgen ... vmap { }` is one, and binding one walks the whole transaction:
        __nft_set_trans_bind), so one 10,000-Service transaction costs far more than 20 of 500
        (a resync of a loaded 10,000-Service table in one: 205 s). Into a fresh table nothing
        jumps to the new chains before the last transaction, which makes them live at once; in
        a loaded one each chain is swapped whole in one transaction (flush and refill), with
        the same name the maps point to, so traffic is served throughout, and the last
        transaction puts every element back as rendered. The chains loaded; none when a
        section is refused (the caller then sends everything in one transaction)."""
        keys = sorted(pieces, key=service_order)
        loaded: set[str] = set()
        head = [table.loadable()[0], table.chains[MARK_MASQ_CHAIN].declaration()]
        for i in range(0, len(keys), SECTION_SERVICES):
            batch = [pieces[k] for k in keys[i:i + SECTION_SERVICES]]
            lines = head + [s.declaration() for p in batch for _, s in sorted(p.affinity.items())]
            lines += [c.declaration() for p in batch for _, c in sorted(p.chains.items())]
            lines += [f"flush chain {TABLE_REF} {c.name}" for p in batch for _, c in sorted(p.chains.items())]
            lines += [f"add rule {TABLE_REF} {c.name} {r}" for p in batch for _, c in sorted(p.chains.items())
                      for r in c.rules]
            res = self._nft("-f", "-", stdin="".join(line + "\n" for line in lines), check=False)
            if res.returncode != 0:
                log.warning("nft refused a section of the first sync (%s); sending it whole", last_line(res))
                self._failed[0] += 1
                return set()
            loaded.update(name for p in batch for name in p.chains)
        return loaded

    def _table(self, plan: _Plan) -> Table:
        """The whole table of a plan (the base table is written anew by each full sync)."""
        return whole_table(self._base, plan.pieces)

    def _send(self, plan: _Plan, now: float) -> tuple[str, bool, int]:
        """Send the plan as one transaction: (text sent, taken?, stale deletions given up)."""
        text = "".join(line + "\n" for line in plan.lines + plan.deletes)
        res = self._nft("-f", "-", stdin=text, check=False)
        if res.returncode == 0:
            for line in plan.deletes:
                plan.stale.pop(line.rsplit(" ", 1)[1], None)
            return text, True, 0
        log.warning("nft -f refused the transaction: %s", last_line(res))
        if not plan.deletes:
            return text, False, 0
        # Perhaps a stale chain is still referenced: the sync goes without the deletes.
        text = "".join(line + "\n" for line in plan.lines)
        res = self._nft("-f", "-", stdin=text, check=False)
        if res.returncode != 0:
            return text, False, 0
        given_up = len(plan.deletes)
        self._failed[1] += 1
        for line in plan.deletes:
            plan.stale[line.rsplit(" ", 1)[1]] = now
        plan.deletes = []
        return text, True, given_up

    def _finish(self, changes: dict, skipped: dict[str, str], dirty: dict[str, ServicePiece | None],
                plan: _Plan) -> list[list[str]]:
        """Remember what the kernel took; clean up conntrack."""
        for key, (sig, _) in changes.items():
            self._changes.remember(key, sig)
        self._skipped = skipped
        before = self._pieces
        self._pieces, self._elements, self.stale_chains = plan.pieces, plan.elements, plan.stale
        if len(dirty) > 64:  # (many changed, a first sync: index them all again)
            self._writers = {name: {} for name in SHARED_SETS}
            for key, piece in plan.pieces.items():
                for name, els in piece.elements.items():
                    for k in els:
                        self._writers[name].setdefault(k, set()).add(key)
        else:
            for key in dirty:
                old, new = before.get(key), plan.pieces.get(key)
                for name in SHARED_SETS:
                    writers = self._writers[name]
                    for k in (old.elements.get(name, ()) if old else ()):
                        writers.get(k, set()).discard(key)
                        if not writers.get(k, True):
                            del writers[k]
                    for k in (new.elements.get(name, ()) if new else ()):
                        writers.setdefault(k, set()).add(key)
        self._last = SyncState(self._base, self._pieces, dict(skipped))
        old_ports = self._synced.refresh(set(dirty) | (self._synced.keys() - self._pieces.keys()),
                                         lambda key: p.digest() if (p := self._pieces.get(key)) is not None else None)
        # only now that the rules are in: entries deleted earlier could be recreated stale
        return self.conntrack.cleanup(old_ports, self._synced.ports)

    def _nothing(self, start: float, skipped: dict[str, str]) -> NftSyncResult:
        if self._last is None:
            self._last = SyncState(self._base, {}, skipped)
        elapsed = self.clock() - start
        return NftSyncResult(full=False, applied=False, services_written=0, duration=elapsed,
                             render_seconds=elapsed, restore_seconds=0.0, result=self._last,
                             stale_chains=len(self.stale_chains))

    def _nft(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["nft", *args]
        t = time.monotonic()
        try:
            res = self._run(argv, stdin)
        except OSError as e:  # no nft binary
            raise NftError(f"{' '.join(argv[:3])} failed: {e}") from e
        finally:
            self._nft_seconds += time.monotonic() - t
        if check and res.returncode != 0:
            raise NftError(f"{' '.join(argv[:3])} failed: {(res.stderr or '').strip()}")
        return res
