"""The store interface: a small key/value API with transactions.

Everything kproxy remembers between runs (admitted objects, allocations, pod status) goes
through this interface, keyed like the API server's etcd layout (`/registry/services/ns/name`).
The embedded backend is SQLite; a multi-node lab can put etcd behind the same methods, so the
controllers never know which one they talk to.
"""
from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any

from kproxy.api.meta import KINDS


class Conflict(Exception):
    """A transaction lost a race with another writer; the caller re-reads and retries."""


class Txn(abc.ABC):
    """Reads and writes that commit together or not at all."""

    @abc.abstractmethod
    def get(self, key: str) -> Any | None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[tuple[str, Any]]: ...

    @abc.abstractmethod
    def put(self, key: str, value: Any) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool: ...


class Store(abc.ABC):
    """A transactional key/value store of JSON values."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Txn]: ...

    @abc.abstractmethod
    def revision(self) -> int:
        """A number that grows with every committed write (etcd's revision)."""

    def close(self) -> None:
        pass

    # One-shot conveniences: each is its own transaction.
    def get(self, key: str) -> Any | None:
        with self.transaction() as t:
            return t.get(key)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        with self.transaction() as t:
            return t.list(prefix)

    def values(self, prefix: str) -> list[Any]:
        return [v for _, v in self.list(prefix)]

    def put(self, key: str, value: Any) -> None:
        with self.transaction() as t:
            t.put(key, value)

    def delete(self, key: str) -> bool:
        with self.transaction() as t:
            return t.delete(key)

    # With revisions: what the API server calls resourceVersion (the key's mod revision) and a
    # list's resourceVersion (the store revision it was read at). Both backends implement them.
    def get_with_revision(self, key: str) -> tuple[Any | None, int]:
        """The value of `key` and its mod revision ((None, 0) when absent)."""
        raise NotImplementedError

    def list_with_revisions(self, prefix: str) -> tuple[list[tuple[str, Any, int]], int]:
        """(key, value, mod revision) under `prefix`, and the store revision they were read at."""
        raise NotImplementedError


def object_key(kind: str, namespace: str | None, name: str) -> str:
    """The registry key of an object, as the API server lays it out in etcd."""
    plural = RESOURCE[kind]
    if namespace:
        return f"/registry/{plural}/{namespace}/{name}"
    return f"/registry/{plural}/{name}"


def kind_prefix(kind: str, namespace: str | None = None) -> str:
    plural = RESOURCE[kind]
    return f"/registry/{plural}/{namespace}/" if namespace else f"/registry/{plural}/"


# Store keys use the kind registry's plural (`/registry/deployments/ns/name`), as the API server's etcd does.
RESOURCE = {kind: info.plural for kind, info in KINDS.items()}
