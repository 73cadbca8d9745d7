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

- The Proxier keeps each Service rendered on its own (render.ServiceRules) with a signature of
  the objects it was rendered from (marshal of the Service and its EndpointSlices): a sync
  digests and renders only Services whose signature changed, and only those whose digest
  changed count as changed. ``sync(..., changed={"ns/name", ...})`` (informer-style: the keys
  whose objects may have changed) skips even the signatures of the others.
- A partial sync writes only the changed Services' chains whose rules changed, deletes their
  stale chains, and edits the fixed chains in place (``-D`` the Service's old rules by their
  spec, ``-I`` the new ones at their position, found by bisecting who wrote each rule) instead
  of rewriting KUBE-SERVICES whole; the kernel ends up with the same ruleset as after a full
  sync (tests/unit/test_proxier.py compares them after each step). A rule deleted by its spec
  that is not there fails the restore, and the next sync is full.
- A full sync streams its text into iptables-restore while it is being rendered, so Python's
  render and iptables' parsing run on two cores at once.

The kernel-touching parts (restore, chain listing, jump rules, conntrack) are injectable so
tests run without root.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import marshal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from kproxy.proxy import applier as iptables
from kproxy.proxy.applier import Applier, IptablesError
from kproxy.proxy.chains import is_service_chain
from kproxy.proxy.conntrack import Conntrack, PortStates, port_states
from kproxy.proxy.render import (
    LABEL_SERVICE_NAME,
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    Digest,
    ProxyConfig,
    RenderResult,
    ServiceRules,
    _Renderer,
    digest,
    fixed_chains,
    render_service,
    split_digest,
)

log = logging.getLogger(__name__)

RESTORE = iptables.RESTORE


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


def iptables_restore(text: str) -> None:
    """Load ``text`` atomically; --noflush leaves every chain it does not declare alone. Large
    restores get the applier's listing line (applier.restore_input)."""
    iptables.restore(text)


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
    return sum(1 for line in text.splitlines() if line.startswith(("-A ", "-I ")))


def _service_key(obj: Mapping[str, Any]) -> str:
    m = obj.get("metadata") or {}
    return f"{m.get('namespace') or 'default'}/{m.get('name')}"


def _slice_service_key(obj: Mapping[str, Any]) -> str | None:
    m = obj.get("metadata") or {}
    name = (m.get("labels") or {}).get(LABEL_SERVICE_NAME)
    return f"{m.get('namespace') or 'default'}/{name}" if name else None


def _signature(obj: Any) -> bytes:
    """Equal bytes for equal objects (parsed YAML/JSON: dicts, lists, scalars). Version 2:
    later versions write back-references for objects referenced elsewhere, so equal objects
    could give different bytes."""
    try:
        return marshal.dumps(obj, 2)
    except ValueError:  # something marshal does not know: slower, still exact enough
        return repr(obj).encode()


_BASE, _TRAILER = (0,), (2,)


def _order(key: str) -> tuple:
    """Where a Service's rules go in the fixed chains: after the base rules, by (namespace,
    name), before the trailer."""
    ns, _, name = key.partition("/")
    return (1, ns, name)


def _fixed_with_owners(fixed, services: list[ServiceRules]):
    """Every fixed chain's rules and, for each rule, the _order of who wrote it."""
    rules: dict[tuple[str, str], list[str]] = {}
    owners: dict[tuple[str, str], list[tuple]] = {}
    for t, chains in fixed.declared.items():
        for c in chains:
            base = fixed.base.get((t, c), [])
            rules[(t, c)] = list(base)
            owners[(t, c)] = [_BASE] * len(base)
    for r in services:
        o = (1, *r.order)
        for tc, rs in r.fixed.items():
            rules[tc].extend(rs)
            owners[tc].extend([o] * len(rs))
    for tc, rs in fixed.trailer.items():
        rules[tc].extend(rs)
        owners[tc].extend([_TRAILER] * len(rs))
    return rules, owners


class Proxier:
    """Incremental driver of the renderer; remembers what the last successful sync left."""

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
        # An injected restore gets the whole text; the real one is fed while the text is made.
        self._restore = restore
        self._list_chains = list_chains or kernel_nat_chains
        self._fixed = fixed_chains(cfg)
        self._need_full = True
        # State of the last successful sync.
        self._sigs: dict[str, bytes] = {}  # "ns/name" -> signature of its Service + slices
        self._rules: dict[str, ServiceRules] = {}  # proxied Services, rendered
        self._skipped: dict[str, str] = {}
        self._kernel_fixed: dict[tuple[str, str], list[str]] = {}
        self._fixed_owners: dict[tuple[str, str], list[tuple]] = {}  # _order of each rule's Service
        self._total_endpoints = 0
        self._service_chains: dict[str, frozenset[str]] = {}
        self._port_states: dict[str, PortStates] = {}
        self._ports: PortStates = {}
        self._large_cluster: bool | None = None
        self._last: RenderResult | None = None
        self._deleted: list[str] = []
        self._pending_fixed: dict[tuple[str, str], list[str]] = {}
        self._pending_owners: dict[tuple[str, str], list[tuple]] = {}
        self._render_done = 0.0
        self._renderer: _Renderer | None = None
        self.last_listing: bool | None = None  # whether the last full sync had the listing line

    def request_full_sync(self) -> None:
        """Make the next sync full, e.g. after someone flushed or cleaned up the rules."""
        self._need_full = True

    # ------------------------------------------------------------------ input -> changes

    def _changes(self, services: Iterable[Mapping], endpoint_slices: Iterable[Mapping],
                 changed: Iterable[str] | None) -> dict[str, tuple[bytes | None, Digest | None]]:
        """Keys whose objects changed since the last successful sync: their new signature and
        digest (None, None: gone)."""
        wanted = None if changed is None else set(changed)
        names = None if wanted is None else {k.partition("/")[2] for k in wanted}
        svcs: dict[str, Mapping] = {}
        for svc in services:
            if names is not None and (svc.get("metadata") or {}).get("name") not in names:
                continue  # cheap filter before the key
            key = _service_key(svc)
            if wanted is None or key in wanted:
                svcs[key] = svc
        slices: dict[str, list[Mapping]] = {}
        for sl in endpoint_slices:
            if names is not None and ((sl.get("metadata") or {}).get("labels") or {}).get(LABEL_SERVICE_NAME) \
                    not in names:
                continue
            key = _slice_service_key(sl)
            if key is not None and (wanted is None or key in wanted):
                slices.setdefault(key, []).append(sl)
        keys = (svcs.keys() | slices.keys() | self._sigs.keys()) if wanted is None else wanted
        out: dict[str, tuple[bytes | None, Digest | None]] = {}
        changed_svcs: list[Mapping] = []
        changed_slices: list[Mapping] = []
        for key in keys:
            svc, own = svcs.get(key), slices.get(key, [])
            if svc is None and not own:
                if key in self._sigs:
                    out[key] = (None, None)
                continue
            if len(own) > 1:
                own.sort(key=lambda s: str((s.get("metadata") or {}).get("name")))
            sig = _signature((svc, own))
            if sig != self._sigs.get(key):
                out[key] = (sig, None)
                if svc is not None:
                    changed_svcs.append(svc)
                changed_slices += own
        if changed_svcs or changed_slices:
            # one digest of everything that changed (Services digest independently of each other)
            whole = digest(changed_svcs, changed_slices, self.cfg)
            parts = split_digest(whole)
            for key, (sig, _) in out.items():
                if sig is not None:
                    d = parts.get(key) or Digest([], {}, {})
                    d.skipped = {key: whole.skipped[key]} if key in whole.skipped else {}
                    out[key] = (sig, d)
        return out

    # ------------------------------------------------------------------ sync

    def sync(self, services: list[dict], endpoint_slices: list[dict], full: bool = False,
             changed: Iterable[str] | None = None) -> SyncResult:
        """Bring the kernel up to date; raises IptablesError when the restore fails.

        ``changed``: the "ns/name" keys whose Service or EndpointSlices may have changed since
        the last sync (None: any; every object's signature is compared)."""
        start = time.monotonic()
        full = full or self._need_full
        changes = self._changes(services, endpoint_slices, None if full else changed)
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
                self._remember_sig(key, sig)
            return self._nothing_to_do(time.monotonic() - start)

        self._need_full = True  # until this sync succeeds
        rerender = set(rules) if full and large_cluster != self._large_cluster else dirty
        if full:
            text, rendered, restored, written = self._full(rules, rerender, large_cluster, start)
        else:
            text, rendered, restored, written = self._partial(rules, dirty, large_cluster)
        self._need_full = False

        for key, (sig, _) in changes.items():
            self._remember_sig(key, sig)
        self._skipped = skipped
        old_ports = self._ports
        for key in dirty | (set(self._port_states) - set(self._rules)):
            r = self._rules.get(key)
            states = port_states(Digest(r.ports, {_pk(sp): eps for sp, eps in zip(r.ports, r.endpoints)}, {})) \
                if r is not None else {}
            if states:
                self._port_states[key] = states
            else:
                self._port_states.pop(key, None)
        self._ports = {k: v for states in self._port_states.values() for k, v in states.items()}
        self._large_cluster = large_cluster
        self._total_endpoints = total
        self._last = self._result(text, full)
        # Only now that the rules are in: entries deleted earlier could be recreated stale.
        commands = self.conntrack.cleanup(old_ports, self._ports)
        return SyncResult(
            full=full,
            applied=True,
            services_written=written,
            rules=_count_rules(text),
            duration=restored - start,
            render_seconds=rendered - start,
            restore_seconds=restored - rendered,
            result=self._last,
            conntrack_commands=commands,
        )

    def _remember_sig(self, key: str, sig: bytes | None) -> None:
        if sig is None:
            self._sigs.pop(key, None)
        else:
            self._sigs[key] = sig

    def _render(self, item, large_cluster: bool) -> ServiceRules:
        if isinstance(item, ServiceRules):
            item = Digest(item.ports, {_pk(sp): eps for sp, eps in zip(item.ports, item.endpoints)}, {})
        if self._renderer is None or self._renderer.large_cluster != large_cluster:
            self._renderer = _Renderer(self.cfg, large_cluster)
        out = render_service(item, self.cfg, large_cluster, self._renderer)
        assert out is not None
        return out

    def _full(self, rules: dict, rerender: set[str], large_cluster: bool, start: float):  # noqa: ARG002
        """Rewrite everything, streamed into iptables-restore while it is rendered."""
        existing = self._existing_chains()
        keys = sorted(rules, key=_order)
        done: list[ServiceRules] = []

        def lines() -> Iterator[str]:
            fixed = self._fixed
            yield "*filter"
            yield from (f":{c} - [0:0]" for c in fixed.declared["filter"])
            # the filter rules need every Service: render them all first (fast: no restore waits)
            for key in keys:
                item = rules[key]
                r = self._render(item, large_cluster) if key in rerender or not isinstance(item, ServiceRules) \
                    else item
                rules[key] = r
                done.append(r)
            fixed_rules, self._pending_owners = _fixed_with_owners(fixed, done)
            for c in fixed.declared["filter"]:
                yield from fixed_rules[("filter", c)]
            yield "COMMIT"
            yield "*nat"
            yield from (f":{c} - [0:0]" for c in fixed.declared["nat"])
            active = set()
            for r in done:
                active.update(r.chains)
                yield from (f":{c} - [0:0]" for c in r.chains)
            deleted = sorted(c for c in existing - active if is_service_chain(c))
            self._deleted = deleted
            yield from (f":{c} - [0:0]" for c in deleted)
            for c in fixed.declared["nat"]:
                yield from fixed_rules[("nat", c)]
            for r in done:
                for chain_rules in r.chains.values():
                    yield from chain_rules
            yield from (f"-X {c}" for c in deleted)
            yield "COMMIT"
            self._pending_fixed = fixed_rules
            self._render_done = time.monotonic()

        self._deleted = []
        # 50+ Services (some 350+ chains): the listing line pays for itself (applier.with_listing)
        self.last_listing = len(keys) >= 50
        text = self._apply(lines(), listing=self.last_listing, full=True)
        # Streamed: "render" ends when the last line was handed over, the rest is the restore's.
        rendered = self._render_done
        # Upstream ensures the jumps on full syncs only; ours need the chains to exist first.
        self.applier.ensure_jumps()
        restored = time.monotonic()
        self._rules = {r.key: r for r in done}
        self._kernel_fixed = self._pending_fixed
        self._fixed_owners = self._pending_owners
        self._service_chains = {r.key: frozenset(r.chains) for r in done}
        return text, rendered, restored, len(done)

    def _partial(self, rules: dict, dirty: set[str], large_cluster: bool):
        """Write the changed Services' changed chains, edit their rules in the fixed chains in
        place: O(changed Services), whatever the number of Services."""
        order = sorted(dirty, key=_order)
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
        # The fixed chains, edited on copies (kept only once the restore succeeded).
        kernel = dict(self._kernel_fixed)
        owners = dict(self._fixed_owners)
        edits: dict[str, list[str]] = {"filter": [], "nat": []}
        for key in order:
            o = _order(key)
            old, cur = self._rules.get(key), new.get(key)
            tcs = set(old.fixed if old is not None else ()) | set(cur.fixed if cur is not None else ())
            for tc in sorted(tcs, key=lambda tc: (tc[0], self._fixed.declared[tc[0]].index(tc[1]))):
                was = old.fixed.get(tc, []) if old is not None else []
                now = cur.fixed.get(tc, []) if cur is not None else []
                if was == now:
                    continue
                table, chain = tc
                rs, ow = list(kernel[tc]), list(owners[tc])
                lo, hi = bisect.bisect_left(ow, o), bisect.bisect_right(ow, o)
                cut = len("-A ") + len(chain) + 1
                edits[table] += [f"-D {chain} {line[cut:]}" for line in rs[lo:hi]]
                tail = len(rs) - hi
                for k, line in enumerate(now):
                    edits[table].append(f"-A {chain} {line[cut:]}" if tail == 0 else
                                        f"-I {chain} {lo + k + 1} {line[cut:]}")
                rs[lo:hi], ow[lo:hi] = now, [o] * len(now)
                kernel[tc], owners[tc] = rs, ow
        out: list[str] = []
        if edits["filter"]:
            out += ["*filter", *edits["filter"], "COMMIT"]
        nat = [f":{c} - [0:0]" for c in declare + deleted] + write + edits["nat"] + [f"-X {c}" for c in deleted]
        if nat:
            out += ["*nat", *nat, "COMMIT"]
        self._deleted = deleted
        rendered = time.monotonic()
        text = self._apply(iter(out), listing=False, full=False)
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
        self._kernel_fixed, self._fixed_owners = kernel, owners
        return text, rendered, restored, written

    def _apply(self, lines: Iterator[str], listing: bool, full: bool) -> str:
        if self._restore is not None:  # injected (tests, benchmark): gets the whole text
            text = "\n".join(lines) + "\n"
            self._restore(text)
            return text
        if not full:
            text = "\n".join(lines) + "\n"
            iptables.restore(text)
            return text
        return iptables.restore_lines(lines, listing=listing)

    def _existing_chains(self) -> set[str]:
        """Chains stale ones are picked from: the kernel's (full syncs only)."""
        remembered = set().union(*self._service_chains.values()) if self._service_chains else set()
        try:
            return self._list_chains()
        except IptablesError as e:
            log.error("listing nat chains failed, only known stale chains will be deleted: %s", e)
            return remembered

    def _result(self, text: str, full: bool) -> RenderResult:
        declared: dict[str, list[str]] = {"filter": [], "nat": []}
        if full:  # known without reading 200,000 lines
            declared["filter"] = list(self._fixed.declared["filter"])
            declared["nat"] = list(self._fixed.declared["nat"])
            for key in sorted(self._rules, key=_order):
                declared["nat"] += self._rules[key].chains
        else:
            table = None
            for line in text.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":") and table in declared:
                    declared[table].append(line[1:].split()[0])
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


def _pk(sp) -> tuple[str, str, str, str]:
    return (sp.namespace, sp.name, sp.port_name, sp.protocol)
