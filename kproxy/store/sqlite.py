"""The embedded store: one SQLite file under the state dir.

SQLite gives real transactions (BEGIN IMMEDIATE serialises writers across processes), so the
daemon and CLI commands can share the file and a crash never leaves half an allocation.

The change log (table `changes`): every write of a `/registry/` key is also appended there with
its revision (the value, or NULL for a delete), in the same transaction, and the log is trimmed
to the last CHANGE_WINDOW revisions. Why: the API server's watch cache (kproxy/apiserver/
watchcache.py) must replay what changed since a resourceVersion, as etcd's watch does, and
SQLite has no watch; any process may write the file, so the log lives in it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .base import Store, Txn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, mod_revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL,
                                    key TEXT NOT NULL, value TEXT);
CREATE INDEX IF NOT EXISTS changes_rev ON changes(rev);
"""
LOGGED = "/registry/"   # keys whose changes the API server's watch replays
CHANGE_WINDOW = 5000    # revisions the change log keeps: enough for the watch cache to catch up


class _SqliteTxn(Txn):
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._wrote = False
        self._rev: int | None = None

    def _next_rev(self) -> int:
        if self._rev is None:
            (rev,) = self._conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            self._rev = rev + 1
            self._conn.execute("UPDATE meta SET value=? WHERE name='revision'", (self._rev,))
        return self._rev

    def get(self, key: str) -> Any | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        # Keys are ASCII paths; the range scan uses the primary key index.
        rows = self._conn.execute(
            "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        return [(k, json.loads(v)) for k, v in rows]

    def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        if row and row[0] == text:
            return  # unchanged: no new revision, so watchers see no spurious change
        rev = self._next_rev()
        self._conn.execute(
            "INSERT INTO kv(key, value, mod_revision) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, mod_revision=excluded.mod_revision",
            (key, text, rev),
        )
        self._log(rev, key, text)

    def delete(self, key: str) -> bool:
        cur = self._conn.execute("DELETE FROM kv WHERE key=?", (key,))
        if cur.rowcount:
            self._log(self._next_rev(), key, None)
            return True
        return False

    def _log(self, rev: int, key: str, text: str | None) -> None:
        if not key.startswith(LOGGED):
            return
        self._conn.execute("INSERT INTO changes(rev, key, value) VALUES (?, ?, ?)", (rev, key, text))
        if rev % 256 == 0:  # trimmed now and then: an indexed range delete
            self._conn.execute("DELETE FROM changes WHERE rev <= ?", (rev - CHANGE_WINDOW,))


class SqliteStore(Store):
    """A Store in a SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # root's only: it holds every object and every error. SQLite gives its -wal and -shm
        # files the database file's mode, so they follow.
        os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600))
        for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            try:
                if name.stat().st_mode & 0o077:
                    os.chmod(name, 0o600)
            except FileNotFoundError:
                pass
        self._local = threading.local()
        with self.transaction():
            pass

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Txn]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTxn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def revision(self) -> int:
        (rev,) = self._conn().execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        return rev

    def get_with_revision(self, key: str) -> tuple[Any | None, int]:
        row = self._conn().execute("SELECT value, mod_revision FROM kv WHERE key=?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else (None, 0)

    def list_with_revisions(self, prefix: str) -> tuple[list[tuple[str, Any, int]], int]:
        with self.transaction() as t:  # one snapshot: the items and the revision agree
            conn = t._conn
            rows = conn.execute("SELECT key, value, mod_revision FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                                (prefix, prefix + "\uffff")).fetchall()
            (rev,) = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        return [(k, json.loads(v), r) for k, v, r in rows], rev

    def changes_since(self, rev: int, limit: int = 10000) -> tuple[list[tuple[int, str, Any | None]], int, int]:
        """The logged changes after revision `rev` (rev, key, value or None), in order; the store
        revision; and the oldest revision the log still holds (0: empty). A caller whose `rev`
        is older than that oldest - 1 missed changes: it re-lists."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            rows = conn.execute("SELECT rev, key, value FROM changes WHERE rev > ? ORDER BY id LIMIT ?",
                                (rev, limit)).fetchall()
            (store_rev,) = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            (oldest,) = conn.execute("SELECT COALESCE(MIN(rev), 0) FROM changes").fetchone()
        finally:
            conn.execute("COMMIT")
        return [(r, k, json.loads(v) if v is not None else None) for r, k, v in rows], store_rev, oldest

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
