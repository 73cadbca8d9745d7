"""The distributed store: etcd (v3) over its JSON gRPC gateway, through etcd3gw.

Same interface as the SQLite store (`transaction()` yielding a Txn with get/list/put/delete,
`revision()`, the one-shot helpers), same keys, JSON values. What etcd adds for a multi-node
lab: watches that resume from a revision, and leases (node heartbeats).

Transactions are optimistic. Reads inside a transaction all come from one snapshot (the first
read pins the store revision R, later reads ask for revision R) and record what they saw:

* `get(key)`: the key's mod_revision, or that it was absent;
* `list(prefix)`: that the prefix was read at R.

Writes are buffered (and visible to the transaction's own reads). Leaving the `with` block
commits ONE etcd txn whose compares assert that nothing read has changed since:

* per key read: `MOD == mod_revision` (present) or `VERSION == 0` (absent);
* per prefix listed: a range compare `[prefix, range_end)` with `MOD < R + 1`, so a key
  created or modified under the prefix after the read fails the commit;

and whose success ops are the buffered puts and deletes. A failed compare raises
`kproxy.store.base.Conflict`; `retry(store, fn)` re-runs `fn(txn)` on a fresh transaction then.
A transaction that only read commits nothing (its snapshot was consistent) and never conflicts.
One known gap: a listed prefix's range compare cannot see a key DELETED under it after the read
(etcd compares cannot count keys). For allocations that is safe (a freed value merely looked
taken); a `get` of the key itself does catch its deletion.

A put whose value (and lease) is already stored makes no new revision, as in the SQLite store:
each put is a nested txn "if VALUE == v and LEASE == l then nothing else put".

etcd limits a txn to 128 compares and 128 ops by default (`--max-txn-ops`).
"""
from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, TypeVar
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc
from etcd3gw.lease import Lease

from .base import Conflict, Store, Txn

T = TypeVar("T")

__all__ = [
    "EtcdStore", "EtcdTxn", "Watch", "WatchEvent", "WatchBroken", "RevisionCompacted", "LeaseExpired",
    "retry", "encode_key", "decode_key", "prefix_range_end", "build_txn",
]


# ------------------------------------------------------------------ exceptions


class WatchBroken(Exception):
    """The watch stream ended (etcd restarted, connection lost, watch canceled).

    `resume_revision` is the revision to watch from again: every event before it was delivered.
    """

    def __init__(self, message: str, resume_revision: int | None):
        super().__init__(message)
        self.resume_revision = resume_revision


class RevisionCompacted(WatchBroken):
    """The start revision was compacted away: the events since cannot be replayed.

    The caller re-lists (`list_with_revision`) and resyncs, then watches from that revision + 1.
    `compact_revision` is the oldest revision etcd still has.
    """

    def __init__(self, requested: int | None, compact_revision: int):
        super().__init__(f"revision {requested} has been compacted (oldest kept: {compact_revision}); "
                         f"re-list and watch again", None)
        self.requested = requested
        self.compact_revision = compact_revision


class LeaseExpired(Exception):
    """The lease is gone (expired or revoked): its keys are deleted; grant a new one."""


# ------------------------------------------------------------------ pure helpers (no etcd)


def encode_key(key: str | bytes) -> str:
    """A key (or value) as the gateway wants bytes fields: base64 of its UTF-8 bytes."""
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return base64.b64encode(raw).decode("ascii")


def decode_key(data: str) -> str:
    """The inverse of `encode_key` for a key the gateway sent back."""
    return base64.b64decode(data).decode("utf-8")


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The exclusive end of the key range holding every key that starts with `prefix`.

    etcd's rule (clientv3.GetPrefixRangeEnd): increment the last byte below 0xff and cut what
    follows it; a prefix of only 0xff bytes, or the empty prefix, means "to the end" (b"\\0").
    """
    raw = bytearray(prefix.encode("utf-8") if isinstance(prefix, str) else prefix)
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def _range_start(prefix: str) -> bytes:
    # The empty prefix is every key: etcd spells that key=b"\0", range_end=b"\0".
    return prefix.encode("utf-8") if prefix else b"\0"


def dumps(value: Any) -> str:
    """The stored text of a value: the same canonical JSON as the SQLite store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def key_compare(key: str, mod_revision: int) -> dict:
    """Assert a key read in the transaction is unchanged: same mod_revision, or still absent."""
    if mod_revision:
        return {"key": encode_key(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}
    return {"key": encode_key(key), "target": "VERSION", "result": "EQUAL", "version": 0}


def range_compare(prefix: str, read_revision: int) -> dict:
    """Assert no key under `prefix` was created or modified after `read_revision`."""
    return {"key": encode_key(_range_start(prefix)), "range_end": encode_key(prefix_range_end(prefix)),
            "target": "MOD", "result": "LESS", "mod_revision": read_revision + 1}


def put_op(key: str, text: str, lease: int | None = None) -> dict:
    """Put `text` unless the key already holds exactly it (with the same lease): no spurious revision."""
    k, v = encode_key(key), encode_key(text)
    put: dict[str, Any] = {"key": k, "value": v}
    if lease:
        put["lease"] = lease
    return {"request_txn": {
        "compare": [{"key": k, "target": "VALUE", "result": "EQUAL", "value": v},
                    {"key": k, "target": "LEASE", "result": "EQUAL", "lease": lease or 0}],
        "success": [],
        "failure": [{"request_put": put}],
    }}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": encode_key(key)}}


def _covered(key: str, prefixes) -> bool:
    return any(key.startswith(p) for p in prefixes)


def build_txn(seen: dict[str, int], listed: dict[str, int],
              writes: dict[str, tuple[str, str | None, int | None]]) -> dict:
    """The commit request of one optimistic transaction.

    `seen`: key -> mod_revision read (0: absent); `listed`: prefix -> revision it was read at;
    `writes`: key -> ("put", json text, lease) or ("delete", None, None), in write order.
    An absent key under a listed prefix needs no compare of its own: the range compare fails
    if it is created.
    """
    compares = [range_compare(p, rev) for p, rev in listed.items()]
    compares += [key_compare(k, mod) for k, mod in seen.items() if mod or not _covered(k, listed)]
    ops = [put_op(k, text, lease) if op == "put" else delete_op(k) for k, (op, text, lease) in writes.items()]
    return {"compare": compares, "success": ops, "failure": []}


# ------------------------------------------------------------------ transactions


class _Read(NamedTuple):
    present: bool
    value: Any
    mod_revision: int


_ABSENT = _Read(False, None, 0)


class EtcdTxn(Txn):
    """One optimistic transaction: snapshot reads, buffered writes, one etcd txn at commit."""

    def __init__(self, store: "EtcdStore"):
        self._store = store
        self.read_revision: int | None = None      # the snapshot every read comes from
        self.committed_revision: int | None = None  # the store revision after commit
        self._cache: dict[str, _Read] = {}          # what the snapshot holds, as far as read
        self._seen: dict[str, int] = {}             # keys read with get/delete -> mod_revision
        self._listed: dict[str, int] = {}           # prefixes read with list -> read revision
        self._writes: dict[str, tuple[str, str | None, int | None]] = {}
        self._done = False

    # -------------------------------------------------------------- reads

    def _range(self, key: bytes, range_end: bytes | None) -> list[dict]:
        payload: dict[str, Any] = {"key": encode_key(key)}
        if range_end is not None:
            payload["range_end"] = encode_key(range_end)
        if self.read_revision is not None:
            payload["revision"] = self.read_revision
        try:
            resp = self._store._post("kv/range", payload)
        except etcd_exc.Etcd3Exception as exc:
            if "compacted" in str(exc.detail_text or ""):
                raise Conflict(f"snapshot revision {self.read_revision} was compacted") from exc
            raise
        if self.read_revision is None:
            self.read_revision = int(resp["header"]["revision"])
        return resp.get("kvs", [])

    def _lookup(self, key: str) -> _Read:
        """The snapshot's view of one key (not counting this transaction's writes)."""
        hit = self._cache.get(key)
        if hit is None:
            if _covered(key, self._listed):
                hit = _ABSENT  # a listed prefix would have returned it
            else:
                kvs = self._range(key.encode("utf-8"), None)
                hit = _kv_read(kvs[0]) if kvs else _ABSENT
            self._cache[key] = hit
        self._seen[key] = hit.mod_revision
        return hit

    def get(self, key: str) -> Any | None:
        if key in self._writes:
            op, text, _ = self._writes[key]
            return json.loads(text) if op == "put" else None
        return self._lookup(key).value

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        if prefix not in self._listed:
            kvs = self._range(_range_start(prefix), prefix_range_end(prefix))
            for kv in kvs:
                self._cache[decode_key(kv["key"])] = _kv_read(kv)
            self._listed[prefix] = self.read_revision
        items = {k: r.value for k, r in self._cache.items() if r.present and k.startswith(prefix)}
        for key, (op, text, _) in self._writes.items():
            if key.startswith(prefix):
                if op == "put":
                    items[key] = json.loads(text)
                else:
                    items.pop(key, None)
        return sorted(items.items(), key=lambda kv: kv[0].encode("utf-8"))

    # -------------------------------------------------------------- writes

    def put(self, key: str, value: Any, lease: int | None = None) -> None:
        self._writes.pop(key, None)  # keep write order: the last write of a key counts
        self._writes[key] = ("put", dumps(value), lease)

    def delete(self, key: str) -> bool:
        if key in self._writes:
            existed = self._writes[key][0] == "put"
        else:
            existed = self._lookup(key).present
        if existed or key in self._writes:
            self._writes.pop(key, None)
            self._writes[key] = ("delete", None, None)
        return existed

    # -------------------------------------------------------------- commit

    def request(self) -> dict:
        """The etcd txn this transaction would commit (for inspection and tests)."""
        return build_txn(self._seen, self._listed, self._writes)

    def _commit(self) -> None:
        self._done = True
        if not self._writes:
            return  # read-only: the snapshot was consistent, nothing to assert
        resp = self._store._post("kv/txn", self.request())
        self.committed_revision = int(resp["header"]["revision"])
        if not resp.get("succeeded"):
            raise Conflict("a value read in this transaction changed before it committed")

    def _discard(self) -> None:
        self._done = True
        self._writes.clear()


def _kv_read(kv: dict) -> _Read:
    value = base64.b64decode(kv.get("value", ""))
    return _Read(True, json.loads(value), int(kv["mod_revision"]))


# ------------------------------------------------------------------ watch


class WatchEvent(NamedTuple):
    kind: str          # "put" or "delete"
    key: str
    value: Any         # the new value; None for a delete
    mod_revision: int  # the revision of the change


class Watch:
    """An iterator of `WatchEvent`s under a prefix, from a start revision on.

    Iteration ends quietly after `idle_timeout` seconds without an event (when one is given),
    so a loop can check a stop flag and watch again from `resume_revision`. A broken stream
    raises `WatchBroken` (resume from its `resume_revision`); a compacted start revision raises
    `RevisionCompacted` (re-list and resync). `close()` ends it from the consuming thread.
    """

    def __init__(self, store: "EtcdStore", prefix: str, start_revision: int | None,
                 idle_timeout: float | None, connect_timeout: float):
        self.prefix = prefix
        self.start_revision = start_revision
        self.resume_revision = start_revision  # every event before it has been yielded
        self._session = requests.Session()
        client = store._client()  # the same TLS settings as every other call
        self._session.verify, self._session.cert = client.session.verify, client.session.cert
        self._session.trust_env = False
        create: dict[str, Any] = {"key": encode_key(_range_start(prefix)),
                                  "range_end": encode_key(prefix_range_end(prefix))}
        if start_revision:
            create["start_revision"] = start_revision
        try:
            self._resp = self._session.post(client.get_url("/watch"), json={"create_request": create},
                                            stream=True, timeout=(connect_timeout, idle_timeout))
            self._resp.raise_for_status()
        except requests.RequestException as exc:
            self._session.close()
            raise WatchBroken(f"cannot open watch on {prefix!r}: {exc}", start_revision) from exc
        self._gen = self._events()

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> WatchEvent:
        return next(self._gen)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._gen.close()
        self._resp.close()
        self._session.close()

    def _messages(self) -> Iterator[dict]:
        decoder, buf = json.JSONDecoder(), ""
        for chunk in self._resp.iter_content(chunk_size=None):
            buf += chunk.decode("utf-8")
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    msg, end = decoder.raw_decode(buf)
                except json.JSONDecodeError:
                    break  # an incomplete message: wait for more bytes
                buf = buf[end:]
                yield msg

    def _events(self) -> Iterator[WatchEvent]:
        try:
            for msg in self._messages():
                if "error" in msg:
                    raise WatchBroken(f"watch failed: {msg['error']}", self.resume_revision)
                result = msg.get("result", {})
                if int(result.get("compact_revision", 0) or 0):
                    raise RevisionCompacted(self.start_revision, int(result["compact_revision"]))
                if result.get("canceled"):
                    raise WatchBroken(f"watch canceled: {result.get('cancel_reason', 'no reason given')}",
                                      self.resume_revision)
                if result.get("created"):
                    if self.resume_revision is None:
                        # "from now": events after the revision at creation
                        self.resume_revision = int(result["header"]["revision"]) + 1
                    continue
                events = result.get("events", [])
                for ev in events:
                    kv = ev["kv"]
                    deleted = ev.get("type") == "DELETE"
                    yield WatchEvent("delete" if deleted else "put", decode_key(kv["key"]),
                                     None if deleted else json.loads(base64.b64decode(kv.get("value", ""))),
                                     int(kv["mod_revision"]))
                if events:
                    self.resume_revision = max(int(ev["kv"]["mod_revision"]) for ev in events) + 1
        except requests.exceptions.ConnectionError as exc:
            if _is_read_timeout(exc):
                return  # idle: end quietly, the caller watches again from resume_revision
            raise WatchBroken(f"watch stream broke: {exc}", self.resume_revision) from exc
        except requests.RequestException as exc:
            raise WatchBroken(f"watch stream broke: {exc}", self.resume_revision) from exc
        finally:
            self._resp.close()
        raise WatchBroken("watch stream ended (etcd closed it)", self.resume_revision)


def _is_read_timeout(exc: BaseException) -> bool:
    from urllib3.exceptions import ReadTimeoutError
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ReadTimeoutError, requests.exceptions.ReadTimeout)):
            return True
        if exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            exc = exc.__cause__ or exc.__context__
    return False


# ------------------------------------------------------------------ the store


class EtcdStore(Store):
    """A Store in etcd, reached at `endpoint` (`http://127.0.0.1:2379`) through its JSON gateway.

    Safe to share between threads (each thread gets its own HTTP client) and usable after fork.
    """

    def __init__(self, endpoint: str = "http://127.0.0.1:2379", timeout: float = 10.0,
                 ca: str | None = None, cert: str | None = None, key: str | None = None):
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        self.endpoint = f"{url.scheme}://{url.hostname}:{url.port or 2379}"
        self._host, self._port, self._protocol = url.hostname or "127.0.0.1", url.port or 2379, url.scheme
        self.timeout = timeout
        # https: the lab CA to trust, and the client certificate etcd's --client-cert-auth asks for
        if (cert is None) != (key is None):
            raise ValueError("an etcd client certificate needs both --store-cert and --store-key")
        for what, path in (("--store-ca", ca), ("--store-cert", cert), ("--store-key", key)):
            if path is not None and url.scheme != "https":
                raise ValueError(f"{what} needs an https:// etcd URL, not {self.endpoint}")
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{what} {path}: cannot read it (missing, or not readable by this user)")
        self._tls = {"ca_cert": ca, "cert_cert": cert, "cert_key": key}
        self._local = threading.local()
        self._clients: list[etcd3gw.client.Etcd3Client] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _client(self) -> etcd3gw.client.Etcd3Client:
        if self._pid != os.getpid():  # forked: never share the parent's sockets
            self._local, self._clients, self._lock, self._pid = threading.local(), [], threading.Lock(), os.getpid()
        client = getattr(self._local, "client", None)
        if client is None:
            client = etcd3gw.client(host=self._host, port=self._port, protocol=self._protocol,
                                    timeout=self.timeout, api_path="/v3/", **self._tls)
            # the lab's own CA and a direct connection: requests would otherwise let REQUESTS_CA_BUNDLE
            # replace the CA and HTTPS_PROXY reroute the cluster's state
            client.session.trust_env = False
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _post(self, path: str, payload: dict) -> dict:
        client = self._client()
        return client.post(client.get_url(path), json=payload)

    # -------------------------------------------------------------- the Store interface

    @contextmanager
    def transaction(self) -> Iterator[EtcdTxn]:
        txn = EtcdTxn(self)
        try:
            yield txn
        except BaseException:
            txn._discard()
            raise
        txn._commit()

    def revision(self) -> int:
        resp = self._post("kv/range", {"key": encode_key(b"\0"), "count_only": True})
        return int(resp["header"]["revision"])

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.session.close()
        self._local = threading.local()

    def put(self, key: str, value: Any, lease: int | None = None) -> None:
        """A blind write (it reads nothing, so it never conflicts), attached to `lease` if given."""
        with self.transaction() as t:
            t.put(key, value, lease=lease)

    def delete(self, key: str) -> bool:
        return retry(self, lambda t: t.delete(key))

    # -------------------------------------------------------------- beyond the interface

    def list_with_revision(self, prefix: str) -> tuple[list[tuple[str, Any]], int]:
        """The keys under `prefix` and the revision they were read at: watch from revision + 1."""
        with self.transaction() as t:
            items = t.list(prefix)
            return items, t.read_revision

    def get_with_revision(self, key: str) -> tuple[Any | None, int]:
        kvs = self._post("kv/range", {"key": encode_key(key)}).get("kvs", [])
        if not kvs:
            return None, 0
        read = _kv_read(kvs[0])
        return read.value, read.mod_revision

    def list_with_revisions(self, prefix: str) -> tuple[list[tuple[str, Any, int]], int]:
        resp = self._post("kv/range", {"key": encode_key(_range_start(prefix)),
                                       "range_end": encode_key(prefix_range_end(prefix))})
        items = []
        for kv in resp.get("kvs", []):
            read = _kv_read(kv)
            items.append((decode_key(kv["key"]), read.value, read.mod_revision))
        items.sort(key=lambda i: i[0].encode("utf-8"))
        return items, int(resp["header"]["revision"])

    def watch(self, prefix: str, start_revision: int | None = None, *, idle_timeout: float | None = None,
              connect_timeout: float = 5.0) -> Watch:
        """Changes under `prefix` with revision >= `start_revision` (None: from now on)."""
        return Watch(self, prefix, start_revision, idle_timeout, connect_timeout)

    def compact(self, revision: int, physical: bool = True) -> None:
        """Forget history before `revision` (what etcd's auto-compaction does)."""
        self._post("kv/compaction", {"revision": revision, "physical": physical})

    def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (etcd raises very short TTLs to its minimum); its id."""
        return self._client().lease(ttl=ttl).id

    def keepalive(self, lease: int) -> int:
        """Renew the lease (a heartbeat); its TTL again. Raises LeaseExpired when it is gone."""
        ttl = Lease(lease, client=self._client()).refresh()
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease:x} has expired")
        return ttl

    def lease_ttl(self, lease: int) -> int:
        """Seconds the lease has left; -1 when it is gone."""
        return Lease(lease, client=self._client()).ttl()

    def revoke(self, lease: int) -> bool:
        """End the lease now, deleting its keys; False when it was already gone."""
        try:
            return Lease(lease, client=self._client()).revoke()
        except etcd_exc.Etcd3Exception as exc:
            if "lease not found" in str(exc.detail_text or ""):
                return False
            raise


# ------------------------------------------------------------------ retry


def retry(store: Store, fn: Callable[[Txn], T], attempts: int = 10) -> T:
    """Run `fn(txn)` in a transaction, again on a fresh one when it loses a race (Conflict).

    Works with any Store: SqliteStore's transactions never conflict, so `fn` runs once there.
    `fn` must have no effects outside the transaction (it may run several times). After
    `attempts` conflicts the last Conflict is raised.
    """
    for attempt in range(attempts):
        try:
            with store.transaction() as txn:
                return fn(txn)
        except Conflict:
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, min(0.1, 0.002 * 2 ** attempt)))
    raise ValueError("attempts must be at least 1")
