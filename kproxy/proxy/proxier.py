"""Keeps the kernel's rules in step with the objects, syncing only what changed, as kube-proxy.

Upstream's iptables Proxier (pkg/proxy/iptables/proxier.go) restores the fixed chains on every
sync but rewrites a Service's own KUBE-SVC/SVL/EXT/FW/SEP chains only when the Service or its
EndpointSlices changed since the last successful sync (a partial sync). A full sync, which
rewrites everything, ensures the jump rules and deletes every stale chain found in the kernel,
happens first, when asked for, and after any failed sync, since what is in the kernel is then
unknown (and, unlike upstream, when large-cluster mode flips, so no chain keeps the other
mode's comments). When nothing changed, nothing is restored. After a successful sync, stale
UDP/SCTP conntrack entries are deleted.

kproxy goes further than upstream's partial sync so that a one-Service change costs the same
at 10 Services as at 10,000 (issue 7):

- The Proxier keeps each Service rendered on its own (servicerules.ServiceRules) with a
  signature of the objects it was rendered from (changes.ServiceChanges: marshal of the Service
  and its EndpointSlices): a sync digests and renders only Services whose signature changed,
  and only those whose digest changed count as changed. ``sync(..., changed={"ns/name", ...})`` (informer-style: the keys
  whose objects may have changed) skips even the signatures of the others.
- A partial sync writes only the changed Services' chains whose rules changed, deletes their
  stale chains, and edits the fixed chains in place (``-D`` the Service's old rules by their
  spec, ``-I`` the new ones at their position, found by bisecting who wrote each rule) instead
  of rewriting KUBE-SERVICES whole; the kernel ends up with the same ruleset as after a full
  sync (tests/unit/test_proxier.py compares them after each step). A rule deleted by its spec
  that is not there fails the restore, and the next sync is full.
- A full sync streams its text into iptables-restore while it is being rendered. Most of a
  restore's work happens at its COMMIT, so into a kernel holding none of our Service chains yet
  (a node's first sync, the big one: every Service at once) the Services go in sections of up
  to 256 chains, each its own commit in the same iptables-restore, the fixed chains (which
  jump to them) last: each section commits while Python renders the next ones, so the sync
  takes about as long as the restore alone, and smaller commits are cheaper per rule than one
  huge one. Atomicity is not lost: until the last commit nothing jumps to the new chains.
  With chains of ours already in the kernel (a resync) it stays one atomic commit, since every
  commit that adds a jump makes nf_tables re-validate everything hooked (190 ms at 10,000
  Services).
- The jumps from the built-in chains and the canaries are listed while the Services render and
  the missing ones go into the same restore (upstream ensures them with separate commands).

The restore text is written by restoretext (the one writer: render.py's full render writes the
same sections); the fixed chains' in-place edits are fixedchains.FixedRules'. The kernel is
reached only through applier.Kernel (restore, save, jumps) and conntrack, both injectable, so
tests run on kproxy/proxy/fake.py's FakeKernel without root. What the last successful sync
digested also answers the health-check server (health_check_ports()).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

from kproxy.proxy import applier as iptables
from kproxy.proxy import restoretext as rt
from kproxy.proxy.applier import Applier, IptablesError, Kernel
from kproxy.proxy.chains import is_service_chain
from kproxy.proxy.changes import ServiceChanges, group, signature
from kproxy.proxy.conntrack import Conntrack
from kproxy.proxy.fixedchains import FixedRules, fixed_chains, service_order
from kproxy.proxy.model import LARGE_CLUSTER_ENDPOINTS_THRESHOLD, Digest, ProxyConfig
from kproxy.proxy.render import RenderResult
from kproxy.proxy.servicerules import ServiceRules, ServiceWriter, render_service
from kproxy.proxy.synced import SyncedServices

log = logging.getLogger(__name__)

# A full sync of this many Services into a kernel holding none of our Service chains is loaded in
# sections: the first of SECTION_FIRST_CHAINS chains, doubling up to SECTION_CHAINS.
SECTION_MIN_SERVICES = 50
SECTION_FIRST_CHAINS = 16
SECTION_CHAINS = 256


class _Later:
    """A call run on a thread (a listing that waits on subprocesses while the render goes on)."""

    def __init__(self, fn: Callable[[], Any], thread: bool = True):
        self._fn, self._out, self.failed = fn, None, False
        self._thread = threading.Thread(target=self._run, daemon=True) if thread else None
        if self._thread is not None:
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._out = self._fn()
        except Exception as e:  # noqa: BLE001 - the caller falls back to doing it afterwards
            log.warning("listing the jumps failed (%s): they are ensured after the restore", e)
            self.failed = True

    def get(self) -> Any:
        if self._thread is not None:
            self._thread.join()
        return self._out


@dataclass
class SyncResult:
    """What one Proxier.sync did."""

    full: bool
    applied: bool  # False when nothing changed and no restore ran
    services_written: int  # services whose own chains were (re)written
    rules: int  # "-A"/"-I" lines in the restore input
    duration: float  # render + restore
    render_seconds: float
    restore_seconds: float
    result: RenderResult  # the last restore input (the previous one when nothing was applied)
    conntrack_commands: list[list[str]] = field(default_factory=list)  # run after the restore


class Proxier:
    """Incremental driver of the renderer; remembers what the last successful sync left."""

    def __init__(self, cfg: ProxyConfig, applier: Kernel | None = None, conntrack: Conntrack | None = None):
        self.cfg = cfg
        self.applier: Kernel = applier or Applier()  # the kernel's iptables (a fake in unit tests)
        self.conntrack = conntrack or Conntrack()
        self._saved: str | None = None  # the iptables-save the kernel's chains were read from
        self._listed = False  # whether the last listing of the kernel's chains succeeded
        self._fixed = fixed_chains(cfg)
        self._need_full = True
        # State of the last successful sync.
        self._changes = ServiceChanges(cfg)  # each Service's signature; digests of the changed ones
        self._rules: dict[str, ServiceRules] = {}  # proxied Services, rendered
        self._skipped: dict[str, str] = {}
        self._kernel_fixed: FixedRules | None = None  # the fixed chains' rules, and who wrote each
        self._total_endpoints = 0
        self._service_chains: dict[str, frozenset[str]] = {}
        self._synced = SyncedServices()  # UDP/SCTP ports and health-check nodePorts in the kernel
        self._large_cluster: bool | None = None
        self._last: RenderResult | None = None
        self._deleted: list[str] = []
        self._pending_fixed: FixedRules | None = None
        self._render_done = 0.0
        self._renderer: ServiceWriter | None = None
        self.last_listing: bool | None = None  # whether the last full sync had the listing line

    def request_full_sync(self) -> None:
        """Make the next sync full, e.g. after someone flushed or cleaned up the rules."""
        self._need_full = True

    def health_check_ports(self) -> dict[int, tuple[str, str, int]]:
        """healthCheckNodePort -> (namespace, name, local ready endpoints) of each proxied
        Service that has one (type LoadBalancer, externalTrafficPolicy Local), as the rules in the
        kernel see them (the last successful sync): what the health-check server answers with
        (upstream's serviceHealthServer.SyncEndpoints(LocalReadyEndpoints()))."""
        return self._synced.health_check_ports()

    # ------------------------------------------------------------------ sync

    def sync(self, services: list[dict], endpoint_slices: list[dict], full: bool = False,
             changed: Iterable[str] | None = None) -> SyncResult:
        """Bring the kernel up to date; raises IptablesError when the restore fails.

        ``changed``: the "ns/name" keys whose Service or EndpointSlices may have changed since
        the last sync (None: any; every object's signature is compared)."""
        start = time.monotonic()
        full = full or self._need_full
        existing = None
        if full and not self._rules and len(services) >= SECTION_MIN_SERVICES:
            existing = self._existing_chains()
            if self._listed and not any(is_service_chain(c) for c in existing):
                return self._first_sync(services, endpoint_slices, existing, start)
        changes = self._changes.find(services, endpoint_slices, None if full else changed)
        rules = dict(self._rules)
        skipped = dict(self._skipped)
        dirty: set[str] = set()  # keys whose rules changed
        for key, (sig, d) in changes.items():
            old = rules.get(key)
            skipped.pop(key, None)
            if d is None:
                rules.pop(key, None)
                if old is not None:
                    dirty.add(key)
                continue
            skipped.update(d.skipped)
            new_ports = d.ports
            new_eps = [d.port_endpoints(sp) for sp in new_ports]
            if old is not None and old.ports == new_ports and old.endpoints == new_eps:
                continue  # nothing the rules read changed
            if not new_ports:
                rules.pop(key, None)
                if old is not None:
                    dirty.add(key)
                continue
            rules[key] = d  # type: ignore[assignment]  # rendered below, once the mode is known
            dirty.add(key)
        total = self._total_endpoints
        for key in dirty:
            old, cur = self._rules.get(key), rules.get(key)
            total -= old.endpoint_count if old is not None else 0
            total += sum(len(cur.port_endpoints(sp)) for sp in cur.ports) if cur is not None else 0
        large_cluster = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
        # Large-cluster mode changes the comments of every chain: rewrite them all.
        full = full or large_cluster != self._large_cluster
        if not full and not dirty:
            for key, (sig, _) in changes.items():  # nothing to apply: remember the new objects
                self._changes.remember(key, sig)
            if skipped != self._skipped:  # e.g. ExternalName -> headless: why it is skipped changed
                self._skipped = skipped
                if self._last is not None:
                    self._last = replace(self._last, skipped_services=dict(skipped))
            return self._nothing_to_do(time.monotonic() - start)

        self._need_full = True  # until this sync succeeds
        if full:
            rerender = set(rules) if large_cluster != self._large_cluster else dirty

            def rendered() -> Iterator[ServiceRules]:
                for key in sorted(rules, key=service_order):
                    item = rules[key]
                    yield self._render(item, large_cluster) if key in rerender or not isinstance(item, ServiceRules) \
                        else item

            if existing is None:
                existing = self._existing_chains()
            done = self._full(rendered(), len(rules), existing)
        else:
            done = self._partial(rules, dirty, large_cluster)
        return self._finish(changes, skipped, dirty, total, large_cluster, full, start, *done)

    def _first_sync(self, services: list[dict], endpoint_slices: list[dict], existing: set[str],
                    start: float) -> SyncResult:
        """A first full sync of many Services into a kernel without any of our Service chains:
        digested, rendered and restored a few Services at a time, so that iptables commits
        sections while Python digests and renders the next ones.

        Large-cluster mode (no endpoint comments) depends on the total of endpoints, known only
        at the end: it is guessed from an upper bound (endpoints x ports of every slice) and, in
        the rare case the guess was wrong, every Service's chains are rewritten in the last
        commit with the right comments."""
        self._need_full = True  # until this sync succeeds
        svcs, slices = group(services, endpoint_slices, None)
        keys = sorted(svcs.keys() | slices.keys(), key=service_order)
        bound = sum(len(sl.get("endpoints") or ()) * len(sl.get("ports") or ()) for own in slices.values() for sl in own)
        guess = bound > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
        # keys remembered from before that are gone now (a lab of skipped Services only)
        changes: dict[str, tuple[bytes | None, Digest | None]] = {k: (None, None) for k in self._changes.sigs.keys() - set(keys)}
        skipped: dict[str, str] = {}
        total = 0

        def rendered() -> Iterator[ServiceRules]:
            nonlocal total
            i, step = 0, 8
            while i < len(keys):
                batch, i, step = keys[i:i + step], i + step, min(2 * step, 128)
                sigs = {key: signature(svcs.get(key), slices.get(key, [])) for key in batch}
                for key, d in self._changes.digest(batch, svcs, slices).items():
                    changes[key] = (sigs[key], d)
                    skipped.update(d.skipped)
                    if d.ports:
                        total += sum(len(d.port_endpoints(sp)) for sp in d.ports)
                        yield self._render(d, guess)

        def fixup(done: list[ServiceRules]) -> list[ServiceRules] | None:
            large = total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
            return None if large == guess else [self._render(r, large) for r in done]

        done = self._full(rendered(), len(keys), existing, fixup)
        return self._finish(changes, skipped, set(self._rules), total, total > LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
                            True, start, *done)

    def _finish(self, changes: dict, skipped: dict[str, str], dirty: set[str], total: int, large_cluster: bool,
                full: bool, start: float, text: str, rendered: float, restored: float, written: int) -> SyncResult:
        """Remember what a successful restore put into the kernel; clean up conntrack."""
        self._need_full = False
        for key, (sig, _) in changes.items():
            self._changes.remember(key, sig)
        self._skipped = skipped
        old_ports = self._synced.refresh(dirty | (self._synced.keys() - self._rules.keys()),
                                         lambda key: r.digest() if (r := self._rules.get(key)) is not None else None)
        self._large_cluster = large_cluster
        self._total_endpoints = total
        self._last = self._result(text, full)
        # Only now that the rules are in: entries deleted earlier could be recreated stale.
        commands = self.conntrack.cleanup(old_ports, self._synced.ports)
        return SyncResult(
            full=full,
            applied=True,
            services_written=written,
            rules=rt.count_rules(text),
            duration=restored - start,
            render_seconds=rendered - start,
            restore_seconds=restored - rendered,
            result=self._last,
            conntrack_commands=commands,
        )

    def _render(self, item, large_cluster: bool) -> ServiceRules:
        if isinstance(item, ServiceRules):
            item = item.digest()
        if self._renderer is None or self._renderer.large_cluster != large_cluster:
            self._renderer = ServiceWriter(self.cfg, large_cluster)
        out = render_service(item, self.cfg, large_cluster, self._renderer)
        assert out is not None
        return out

    def _full(self, source: Iterator[ServiceRules], count: int, existing: set[str],
              fixup: Callable[[list[ServiceRules]], list[ServiceRules] | None] | None = None):
        """Rewrite everything, streamed into iptables-restore while ``source`` renders the
        ``count`` Services; the missing jumps and canaries go into the same restore (listed
        while the Services render). ``fixup`` may replace the rendered Services at the end."""
        done: list[ServiceRules] = []
        # a kernel without our Service chains (as listed: a failed listing proves nothing)
        fresh = self._listed and not any(is_service_chain(c) for c in existing)
        saved, self._saved = self._saved, None  # (the listing can be big: not kept)
        if fresh and saved is not None:  # the listing of the chains showed the jumps too
            jumps = _Later(lambda: iptables.missing_jump_lines(saved), thread=False)
        else:
            jumps = _Later(self.applier.missing_jumps)
        # Nothing of ours to replace (a node's first sync): load in sections (see module doc).
        sectioned = count >= SECTION_MIN_SERVICES and fresh

        def service_section(services: list[ServiceRules]) -> Iterator[str]:
            return rt.section("nat", (c for r in services for c in r.chains),
                              (rule for r in services for rules in r.chains.values() for rule in rules))

        def lines() -> Iterator[str]:
            nonlocal done
            fixed = self._fixed
            rewrite = not sectioned  # every Service's chains in the last nat commit
            if sectioned:
                # the fixed chains first (Service chains jump to KUBE-MARK-MASQ), then the
                # Services a section at a time, each committed while the next one renders
                yield from rt.section("nat", fixed.declared["nat"],
                                      (rule for c in fixed.declared["nat"] for rule in fixed.base.get(("nat", c), [])))
                batch: list[ServiceRules] = []
                size, limit = 0, SECTION_FIRST_CHAINS
                for r in source:
                    done.append(r)
                    batch.append(r)
                    size += len(r.chains)
                    if size >= limit:
                        yield from service_section(batch)
                        batch, size, limit = [], 0, min(2 * limit, SECTION_CHAINS)
                if batch:
                    yield from service_section(batch)
            else:
                done.extend(source)  # the filter rules need every Service: render them all first
            redo = fixup(done) if fixup is not None else None
            if redo is not None:
                done, rewrite = redo, True
            state = FixedRules.of(fixed, done)
            extra = jumps.get() or {}
            yield from rt.section("filter", fixed.declared["filter"], state.table_rules("filter"),
                                  tail=extra.get("filter", ()))
            active = {c for r in done for c in r.chains}
            deleted = sorted(c for c in existing - active if is_service_chain(c))
            self._deleted = deleted
            declared: Iterable[str] = fixed.declared["nat"]
            rules: Iterable[str] = state.table_rules("nat")
            if rewrite:
                declared = itertools.chain(declared, (c for r in done for c in r.chains))
                rules = itertools.chain(rules, (rule for r in done for rs in r.chains.values() for rule in rs))
            # a large-cluster guess gone wrong: every chain again, in one commit, with the listing line
            listing = rewrite and sectioned and len(active) >= iptables.LISTING_MIN_CHAINS
            yield from rt.section("nat", declared, rules, deleted, tail=extra.get("nat", ()), listing=listing)
            for table, body in extra.items():
                if table not in ("filter", "nat"):
                    yield from rt.section(table, rules=body)
            self._pending_fixed = state
            self._render_done = time.monotonic()

        self._deleted = []
        # 50+ Services (some 350+ chains) in one commit: the listing line pays for itself
        # (applier.with_listing); sections are small enough not to need it
        self.last_listing = count >= 50 and not sectioned
        text = self.applier.restore(lines(), listing=self.last_listing, stream=True)
        # Streamed: "render" ends when the last line was handed over, the rest is the restore's.
        rendered_at = self._render_done
        if jumps.failed:  # the listing failed: ensure them now, the upstream way
            self.applier.ensure_jumps()
        restored = time.monotonic()
        self._rules = {r.key: r for r in done}
        self._kernel_fixed = self._pending_fixed
        self._service_chains = {r.key: frozenset(r.chains) for r in done}
        return text, rendered_at, restored, len(done)

    def _partial(self, rules: dict, dirty: set[str], large_cluster: bool):
        """Write the changed Services' changed chains, edit their rules in the fixed chains in
        place: O(changed Services), whatever the number of Services."""
        order = sorted(dirty, key=service_order)
        new: dict[str, ServiceRules] = {}
        for key in order:
            if key in rules:
                new[key] = self._render(rules[key], large_cluster)
        declare, write, deleted = [], [], []
        written = 0
        for key in order:
            old, cur = self._rules.get(key), new.get(key)
            old_chains = old.chains if old is not None else {}
            cur_chains = cur.chains if cur is not None else {}
            changed_chains = [c for c, r in cur_chains.items() if c not in old_chains or old_chains[c] != r]
            if changed_chains:
                written += 1
            declare += changed_chains
            for c in changed_chains:
                write += cur_chains[c]
            deleted += sorted(set(old_chains) - set(cur_chains))
        # The fixed chains, edited on a copy (kept only once the restore succeeded).
        assert self._kernel_fixed is not None  # a full sync came first
        fixed = self._kernel_fixed.edited()
        edits: dict[str, list[str]] = {"filter": [], "nat": []}
        for key in order:
            for table, lines in fixed.replace(key, self._rules.get(key), new.get(key)).items():
                edits[table] += lines
        out: list[str] = []
        if edits["filter"]:
            out += rt.section("filter", rules=edits["filter"])
        if declare or deleted or write or edits["nat"]:
            out += rt.section("nat", declare, write + edits["nat"], deleted)
        self._deleted = deleted
        rendered = time.monotonic()
        text = self.applier.restore(out)
        restored = time.monotonic()
        merged = dict(self._rules)
        chains = dict(self._service_chains)
        for key in dirty:
            if key in new:
                merged[key] = new[key]
                chains[key] = frozenset(new[key].chains)
            else:
                merged.pop(key, None)
                chains.pop(key, None)
        self._rules, self._service_chains = merged, chains
        self._kernel_fixed = fixed
        return text, rendered, restored, written

    def _existing_chains(self) -> set[str]:
        """Chains stale ones are picked from: the kernel's (full syncs only)."""
        remembered = set().union(*self._service_chains.values()) if self._service_chains else set()
        self._saved, self._listed = None, False
        try:
            # one iptables-save of every table: when it holds no Service chain it is small, and
            # the jumps are read from the same listing
            saved = self.applier.save()
            self._saved, self._listed = saved, True
            return iptables.kube_chains(saved).get("nat", set())
        except IptablesError as e:
            log.error("listing nat chains failed, only known stale chains will be deleted: %s", e)
            return remembered

    def _result(self, text: str, full: bool) -> RenderResult:
        declared: dict[str, list[str]] = {"filter": [], "nat": []}
        if full:  # known without reading 200,000 lines
            declared["filter"] = list(self._fixed.declared["filter"])
            declared["nat"] = list(self._fixed.declared["nat"])
            for key in sorted(self._rules, key=service_order):
                declared["nat"] += self._rules[key].chains
        else:
            parsed = rt.declared_chains(text)
            declared = {t: parsed.get(t, []) for t in declared}
        deleted = set(self._deleted)
        return RenderResult(
            text=text,
            filter_chains=declared["filter"],
            nat_chains=[c for c in declared["nat"] if c not in deleted],
            service_chains=self._service_chains,  # never changed in place: each sync makes a new dict
            deleted_chains=list(self._deleted),
            skipped_services=dict(self._skipped),
        )

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

