"""Reaching an emulated lab's etcd from the host: it listens inside the first node's netns.

A thread's network namespace is its own (setns(2) is per thread), so one worker thread enters
that namespace and makes every store call; the caller's own namespace never changes.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, TypeVar

from pyroute2 import netns as pr_netns

T = TypeVar("T")


def _enter(netns: str) -> None:
    pr_netns.setns(netns, flags=0)  # never create it: a missing lab is an error, not an empty netns


class NetnsCaller:
    """Runs calls in one thread living in `netns` (None: an ordinary thread)."""

    def __init__(self, netns: str | None):
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="netns", initializer=_enter if netns else None,
            initargs=(netns,) if netns else ())

    def __call__(self, fn: Callable[..., T], *args, **kwargs) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class NetnsStore:
    """The read side of a Store (get, list, values, revision), called from inside `netns`."""

    def __init__(self, store, netns: str | None):
        self.store, self.call = store, NetnsCaller(netns)

    def get(self, key: str) -> Any | None:
        return self.call(self.store.get, key)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        return self.call(self.store.list, prefix)

    def values(self, prefix: str) -> list[Any]:
        return [v for _, v in self.list(prefix)]

    def revision(self) -> int:
        return self.call(self.store.revision)

    def put(self, key: str, value: Any) -> None:
        self.call(self.store.put, key, value)

    def close(self) -> None:
        self.call.close()
