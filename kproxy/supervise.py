"""What keeps one failure from hiding or spreading: the daemon's component health, its
supervised background threads, and the disk-full test.

Why: a background thread that dies (the layer-2 announcer without libpcap) used to leave no log
line, and a reconcile pass that raised stopped everything while `kproxy status` said all was
well. Here every failure of a component is logged with its traceback, kept in a `Health`
record the daemon publishes (the store key `/kproxy/health`, and the control socket) for
`kproxy status`, which exits 1 while one is failed; a failed thread is started again with
back-off, as kubelet restarts containers.
"""
from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Callable

log = logging.getLogger("kproxy")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
HEALTHY_RESET = 30.0  # a thread that ran this long before failing starts its back-off afresh


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, from a file write or from SQLite ("database or disk is full")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def store_failure(exc: BaseException) -> bool:
    """The store itself failed (etcd away, SQLite locked or full): no one object's fault, so
    not confined to one; the pass fails and is retried."""
    from kproxy.store.base import Conflict
    if isinstance(exc, (Conflict, sqlite3.Error, ConnectionError, TimeoutError)):
        return True
    return (type(exc).__module__ or "").startswith(("etcd3gw", "requests", "urllib3"))


def describe(exc: BaseException) -> str:
    """One line for status and events: `disk full: ...` for ENOSPC, else `Type: message`."""
    if disk_full(exc):
        where = getattr(exc, "filename", None)
        return f"disk full: {where + ': ' if where else ''}{getattr(exc, 'strerror', None) or exc}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Health:
    """Per-daemon component health: name -> {state: ok|failed, message, since, restarts}.

    `changed` tells the loop to publish it; readers get a copy (`snapshot`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._components: dict[str, dict] = {}
        self.changed = threading.Event()

    def ok(self, name: str) -> None:
        with self._lock:
            cur = self._components.get(name)
            if cur is not None and cur["state"] == "ok":
                return
            restarts = (cur or {}).get("restarts", 0)
            self._components[name] = {"state": "ok", "since": _now(), "restarts": restarts}
        self.changed.set()

    def failed(self, name: str, message: str) -> None:
        with self._lock:
            cur = self._components.get(name) or {"restarts": 0}
            if cur.get("state") == "failed" and cur.get("message") == message:
                return
            self._components[name] = {"state": "failed", "message": message,
                                      "since": cur["since"] if cur.get("state") == "failed" else _now(),
                                      "restarts": cur.get("restarts", 0)}
        self.changed.set()

    def restarted(self, name: str) -> None:
        with self._lock:
            cur = self._components.setdefault(name, {"state": "failed", "since": _now(), "restarts": 0})
            cur["restarts"] = cur.get("restarts", 0) + 1
        self.changed.set()

    def forget(self, name: str) -> None:
        with self._lock:
            if self._components.pop(name, None) is not None:
                self.changed.set()

    def is_failed(self, name: str) -> bool:
        with self._lock:
            return (self._components.get(name) or {}).get("state") == "failed"

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in sorted(self._components.items())}


def supervised(name: str, target: Callable[[], None], health: Health, stopping: threading.Event,
               on_failure: Callable[[str, str], None] | None = None,
               backoff_max: float = BACKOFF_MAX) -> threading.Thread:
    """Run `target` in a daemon thread named `name`, for as long as the daemon runs.

    `target` is a long-running loop: its return while the daemon is not stopping, or any
    exception, is a failure: logged with its traceback, marked failed in `health`, reported to
    `on_failure(name, message)` (the daemon writes an event on its Node), and the target runs
    again after a back-off (1 s doubling to `backoff_max`, afresh after a long healthy run).
    The target marks itself ok (`health.ok(name)`) once it works: a failed component stays
    failed in `kproxy status` until it really works again."""
    def run() -> None:
        delay = BACKOFF_FIRST
        while not stopping.is_set():
            started = time.monotonic()
            try:
                target()
                if stopping.is_set():
                    return
                message = "stopped unexpectedly"
                log.error("%s %s; starting it again in %.3g s", name, message, delay)
            except Exception as e:  # noqa: BLE001 - any failure of a component is reported, then retried
                message = describe(e)
                log.exception("%s failed (%s); starting it again in %.3g s", name, message, delay)
            health.failed(name, message)
            if on_failure is not None:
                try:
                    on_failure(name, message)
                except Exception:  # noqa: BLE001 - reporting must not kill the supervisor
                    log.exception("cannot report the failure of %s", name)
            if time.monotonic() - started > HEALTHY_RESET:
                delay = BACKOFF_FIRST
            if stopping.wait(delay):
                return
            delay = min(delay * 2, backoff_max)
            health.restarted(name)
    t = threading.Thread(target=run, daemon=True, name=name)
    t.start()
    return t
