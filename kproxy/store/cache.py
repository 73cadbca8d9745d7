"""The daemon's in-memory cache of the store: the one way its roles read shared state.

Why: every role (admission front, controllers, node agent, proxy) reads the same objects many
times a pass; reading them from etcd each time would be slow and would show each role a
different moment. So one process keeps one cache, as an informer does: listed at start, listed
again when the store's watch reports a change (or every REFRESH_PERIOD, or when the watch
broke), and written through (`put`, `remove`) so a role sees its own writes at once.

The proxied kinds (Services, EndpointSlices) are `changes.Tracked` dicts: every write or
re-list notes the Service it concerns, so the proxy role compares only those (a partial sync).
`leases` are the nodes whose heartbeat lease is alive (multi-node only).
"""
from __future__ import annotations

import logging
import threading

from kproxy import supervise
from kproxy.store.base import Store, kind_prefix, object_key

log = logging.getLogger("kproxy")

NODE_LEASES = "/registry/leases/kube-node-lease/"  # a node's heartbeat, where Kubernetes keeps it
LEADER_LEASE = "/registry/leases/kube-system/kproxy-controller"  # who runs the controllers now
REFRESH_PERIOD = 5.0                         # re-list this often even when the watch is quiet
# keys whose changes tell the cache nothing (written by every process, every pass or sync)
UNCACHED = ("/registry/events/", "/kproxy/proxy-status", "/kproxy/health")


def obj_id(obj: dict) -> tuple[str, str, str]:
    m = obj["metadata"]
    return obj["kind"], m.get("namespace", ""), m["name"]


def key_of(kind: str, ns: str, name: str) -> str:
    return object_key(kind, ns or None, name)


class Cache:
    """kind -> {store key -> object}, for `kinds`; `tracked` kinds in `tracker`'s Tracked dicts.

    `shared`: other processes write the store too (multi-node): `refresh` re-lists, `watch`
    marks the cache stale, and the node leases are read with the objects."""

    def __init__(self, store: Store, kinds, tracker=None, tracked=(), shared: bool = False):
        self.store = store
        self.shared = shared
        self.objects: dict[str, dict[str, dict]] = {k: {} for k in kinds}
        for kind in tracked:
            self.objects[kind] = tracker.tracked()
        self.leases: set[str] = set()   # nodes whose heartbeat lease is alive (multi-node)
        self.stale = threading.Event()  # the store changed under us (multi-node): re-list
        self.last_refresh = 0.0

    # -- reading and writing through ------------------------------------------------------
    def __getitem__(self, kind: str) -> dict[str, dict]:
        return self.objects[kind]

    def get(self, kind: str, key: str) -> dict | None:
        return self.objects[kind].get(key)

    def list(self, kind: str) -> list[dict]:
        return list(self.objects[kind].values())

    def put(self, obj: dict) -> None:
        """Write an object to the store and the cache (no read-modify-write: the caller owns it)."""
        kind, ns, name = obj_id(obj)
        key = key_of(kind, ns, name)
        self.objects[kind][key] = obj
        self.store.put(key, obj)

    def remove(self, kind: str, key: str) -> dict | None:
        obj = self.objects[kind].pop(key, None)
        self.store.delete(key)
        return obj

    # -- listing and watching -------------------------------------------------------------
    def list_all(self) -> bool:
        """Read every cached kind from the store; True when something changed."""
        from kproxy.proxy import changes
        changed = False
        for kind in self.objects:
            fresh = {}
            for _, obj in self.store.list(kind_prefix(kind)):
                m = obj["metadata"]
                fresh[key_of(kind, m.get("namespace", ""), m["name"])] = obj
            if fresh != self.objects[kind]:
                old = self.objects[kind]
                self.objects[kind] = old.replace_with(fresh) if isinstance(old, changes.Tracked) else fresh
                changed = True
        if self.shared:
            leases = {k[len(NODE_LEASES):] for k, _ in self.store.list(NODE_LEASES)}
            changed |= leases != self.leases
            self.leases = leases
        return changed

    def due(self, now: float) -> bool:
        """Multi-node: the watch saw a change, or the cache is REFRESH_PERIOD old."""
        return self.shared and (self.stale.is_set() or now - self.last_refresh > REFRESH_PERIOD)

    def refresh(self, now: float) -> bool:
        """Bring the cache up to date with what the other processes wrote; True: it changed."""
        self.stale.clear()
        self.last_refresh = now
        return self.list_all()

    def wait_for_store(self, stopping: threading.Event, where: str) -> None:
        """Multi-node: etcd may start after us (or restart): wait for it, saying so."""
        while not stopping.is_set():
            try:
                self.store.revision()
                return
            except Exception as e:  # noqa: BLE001 - any failure to reach it means: not yet
                log.warning("waiting for the store at %s: %s", where, e)
                stopping.wait(1)

    def watch(self, stopping: threading.Event, poke: threading.Event, components: supervise.Health) -> None:
        """Supervised thread: watch everything (resuming from the last revision seen); any change
        marks the cache stale and pokes the loop. A broken watch resumes; a compacted one starts
        afresh; both force a re-list."""
        from kproxy.store.etcd import RevisionCompacted, WatchBroken
        rev = None
        while not stopping.is_set():
            try:
                if rev is None:
                    rev = self.store.revision() + 1
                    self.stale.set()
                with self.store.watch("/", rev, idle_timeout=10) as w:
                    components.ok("watch")
                    for ev in w:
                        # a Lease renewed by its holder changes nothing the cache holds
                        renewal = ev.kind == "put" and (ev.key == LEADER_LEASE or ev.key.startswith(NODE_LEASES)
                                                        and ev.key[len(NODE_LEASES):] in self.leases)
                        if not renewal and not ev.key.startswith(UNCACHED):
                            self.stale.set()
                            poke.set()
                    rev = w.resume_revision
            except RevisionCompacted:
                rev = None
            except WatchBroken as e:
                log.warning("%s; re-listing", e)
                rev = e.resume_revision
                self.stale.set()
                stopping.wait(1)
            except Exception as e:  # noqa: BLE001 - etcd away: try again
                log.warning("watch failed: %s", e)
                components.failed("watch", supervise.describe(e))
                rev = None
                stopping.wait(1)
