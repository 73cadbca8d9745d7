"""The one way to open a lab's store, for the daemon's roles and for the CLI.

A lab keeps its state in an embedded SQLite file (one node) or in etcd (a multi-node lab). Who
opens it differs in one point, hence `client`: the daemon's roles run where the store is meant
to be reached (the SQLite file is created when missing; etcd at the configured URL), while a
CLI command reads a lab from outside it: a sandbox lab's etcd is reached through node-1's
network namespace, and a lab that never stored anything has no store (None), never a new
empty file that would look like one.
"""
from __future__ import annotations

from pathlib import Path

from kproxy.config import LabConfig
from kproxy.store.base import Store
from kproxy.store.sqlite import SqliteStore


def open_store(cfg: LabConfig, *, client: bool = False) -> Store | None:
    """The lab's store: etcd when the lab has one (multi-node), else its SQLite file.

    client=True (the CLI): etcd as the lab's node-1 sees it, and None when there is no
    SQLite file yet; client=False (the daemon): etcd at cfg.store_url, the file created."""
    if cfg.store_url:
        if client:
            from kproxy.cluster.lab import lab_store
            return lab_store(cfg)
        from kproxy.store.etcd import EtcdStore
        return EtcdStore(cfg.store_url, **cfg.store_tls)
    path = Path(cfg.state_dir) / "store.db"
    if client and not path.exists():
        return None
    return SqliteStore(path)
