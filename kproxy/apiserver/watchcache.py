"""The API server's watch cache: every `/registry/` object with its revision, and a window of
recent changes to replay, fed by the store.

Why a cache: kubectl's `get -w`, `rollout status`, `wait` and every informer (the Python
client's watch) open a watch from a resourceVersion and expect the changes since then, in
order, or `410 Gone` when that version is too old; lists must say the revision they were read
at. The real API server keeps exactly this (storage/cacher/watch_cache.go) in front of etcd.
Here the cache is fed by

- SQLite (one node): its change log (kproxy/store/sqlite.py `changes_since`), polled every
  POLL_SECONDS and at once after the API server's own writes (`kick`);
- etcd (multi-node): its watch, resumed from the last revision seen.

When the feed lost its place (the SQLite log was trimmed past it, etcd compacted), the cache
re-lists and turns the difference into events, so watchers never miss a final state.

resourceVersion of an object = the store's mod revision of its key (`with_rv`); a deleted
object's last state carries the deletion's revision, as the API server sends it. Thread-safe:
the feed runs in its own (supervised) thread; readers and the server's loop take `lock`.
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import deque
from typing import Any, Callable, NamedTuple

log = logging.getLogger("kproxy")

PREFIX = "/registry/"
POLL_SECONDS = 0.025      # SQLite: how often the change log is read (watch latency's floor)
DEFAULT_CAPACITY = 10000  # events kept for replay (the real cache's default is 100 per resource, grown on demand)


class Expired(Exception):
    """A watch from a resourceVersion older than the window: the API server's 410 Expired."""


class Event(NamedTuple):
    rev: int
    type: str      # ADDED, MODIFIED, DELETED
    key: str
    obj: dict      # the new object (DELETED: its last state), resourceVersion set
    prev: dict | None = None  # MODIFIED: the object before (a selector watch needs both)


def with_rv(obj: dict, rev: int) -> dict:
    """A copy of `obj` whose metadata.resourceVersion is `rev` (the store keeps objects without it)."""
    out = dict(obj)
    out["metadata"] = {**(obj.get("metadata") or {}), "resourceVersion": str(rev)}
    return out


class WatchCache:
    """All objects under PREFIX (`objects`: key -> (object, mod revision)), the revision the
    cache reflects (`revision`) and the last `capacity` events."""

    def __init__(self, store, capacity: int = DEFAULT_CAPACITY, prefix: str = PREFIX):
        self.store = store
        self.prefix = prefix
        self.lock = threading.RLock()
        self.objects: dict[str, tuple[dict, int]] = {}
        self.revision = 0
        self.floor = 0  # a watch from a resourceVersion below this cannot be replayed
        self.events: deque[Event] = deque()
        self.capacity = capacity
        self.listeners: list[Callable[[list[Event]], None]] = []
        self.loaded = threading.Event()
        self._kick = threading.Event()

    # -- reading --------------------------------------------------------------------------
    def get(self, key: str) -> tuple[dict | None, int]:
        with self.lock:
            hit = self.objects.get(key)
        return hit if hit else (None, 0)

    def list(self, prefix: str) -> tuple[list[tuple[str, dict, int]], int]:
        """(key, object, mod revision) under `prefix`, sorted by key, and the cache's revision."""
        with self.lock:
            items = [(k, o, r) for k, (o, r) in self.objects.items() if k.startswith(prefix)]
            rev = self.revision
        items.sort(key=lambda i: i[0])
        return items, rev

    def watch(self, rev: int, listener: Callable[[list[Event]], None]) -> tuple[list[Event], Callable[[], None]]:
        """The events after `rev` (raises Expired when they are no longer all held) and, from
        then on, every new batch given to `listener` (called in the feed thread, under the
        lock: it must only hand them over). Returns (backlog, unsubscribe)."""
        with self.lock:
            if rev < self.floor:
                raise Expired(f"too old resource version: {rev} ({self.floor})")
            backlog = [e for e in self.events if e.rev > rev]
            self.listeners.append(listener)

        def unsubscribe() -> None:
            with self.lock:
                if listener in self.listeners:
                    self.listeners.remove(listener)
        return backlog, unsubscribe

    def subscribe_now(self, listener: Callable[[list[Event]], None]) -> tuple[list[tuple[str, dict, int]], int, Callable]:
        """The current objects and revision, and `listener` for every change after them (a
        watch without a resourceVersion: its ADDED events first)."""
        with self.lock:
            items, rev = self.list(self.prefix)
            _, unsubscribe = self.watch(rev, listener)
        return items, rev, unsubscribe

    # -- feeding --------------------------------------------------------------------------
    def load(self) -> None:
        """(Re-)list the store; differences from what the cache held become events."""
        items, rev = self.store.list_with_revisions(self.prefix)
        fresh = {k: (v, r) for k, v, r in items}
        with self.lock:
            first = not self.loaded.is_set()
            batch = []
            if not first:
                for key, (obj, r) in fresh.items():
                    old = self.objects.get(key)
                    if old is None or old[1] != r:
                        batch.append(Event(r, "ADDED" if old is None else "MODIFIED", key, with_rv(obj, r),
                                           None if old is None else with_rv(old[0], old[1])))
                for key, (obj, _) in self.objects.items():
                    if key not in fresh:
                        batch.append(Event(rev, "DELETED", key, with_rv(obj, rev)))
                batch.sort(key=lambda e: e.rev)
            self.objects = fresh
            if first:
                self.floor = rev
            self.revision = max(rev, self.revision)
            self._publish(batch)
        self.loaded.set()

    def apply(self, changes: list[tuple[int, str, Any | None]], store_rev: int | None = None) -> None:
        """Changes in revision order: (revision, key, new value or None for a delete)."""
        with self.lock:
            batch = []
            for rev, key, value in changes:
                old = self.objects.get(key)
                if value is None:
                    if old is None:
                        continue
                    del self.objects[key]
                    batch.append(Event(rev, "DELETED", key, with_rv(old[0], rev)))
                else:
                    self.objects[key] = (value, rev)
                    batch.append(Event(rev, "ADDED" if old is None else "MODIFIED", key, with_rv(value, rev),
                                       None if old is None else with_rv(old[0], old[1])))
                self.revision = max(self.revision, rev)
            if store_rev is not None:
                self.revision = max(self.revision, store_rev)
            self._publish(batch)

    def _publish(self, batch: list[Event]) -> None:
        for ev in batch:
            self.events.append(ev)
        while len(self.events) > self.capacity:
            dropped = self.events.popleft()
            self.floor = max(self.floor, dropped.rev)
        if batch:
            for listener in list(self.listeners):
                try:
                    listener(batch)
                except Exception:  # noqa: BLE001 - one broken watcher stops no other
                    log.exception("watch listener failed")

    def kick(self) -> None:
        """Read the store now (after a write of our own): its watchers hear of it at once."""
        self._kick.set()

    def run(self, stopping: threading.Event) -> None:
        """The feed (a supervised thread): SQLite's change log or etcd's watch (after a first
        `load` when none was made)."""
        if not self.loaded.is_set():
            self.load()
        if hasattr(self.store, "changes_since"):
            self._poll_sqlite(stopping)
        else:
            self._watch_etcd(stopping)

    def poll_once(self) -> None:
        """Read SQLite's change log once (under the lock: two polls never apply a change twice)."""
        with self.lock:
            changes, store_rev, oldest = self.store.changes_since(self.revision)
            if oldest and oldest > self.revision + 1:
                log.info("watch cache: the change log was trimmed past revision %d; re-listing", self.revision)
                self.load()
                return
            self.apply(changes, store_rev)

    def _poll_sqlite(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self.poll_once()
            self._kick.wait(POLL_SECONDS)
            self._kick.clear()

    def _watch_etcd(self, stopping: threading.Event) -> None:
        from kproxy.store.etcd import RevisionCompacted, WatchBroken
        while not stopping.is_set():
            try:
                with self.store.watch(self.prefix, self.revision + 1, idle_timeout=5) as w:
                    for ev in w:
                        self.apply([(ev.mod_revision, ev.key, ev.value if ev.kind == "put" else None)])
                        if stopping.is_set():
                            return
            except RevisionCompacted:
                self.load()
            except WatchBroken as e:
                log.warning("watch cache: %s; resuming", e)
                stopping.wait(1)
                try:
                    self.load()
                except Exception as e2:  # noqa: BLE001 - etcd away: again in a second
                    log.warning("watch cache: cannot re-list: %s", e2)


def deep(obj: dict) -> dict:
    """A copy a handler may change (the cache's objects are shared)."""
    return copy.deepcopy(obj)
