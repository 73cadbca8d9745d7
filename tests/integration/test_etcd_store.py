"""The etcd store (store/etcd.py) against a real etcd: Debian's etcd-server binary, started here
as a subprocess listening on 127.0.0.1 only (random free client and peer ports, a temp data dir),
and killed by pid with its dir removed at the end, even when a test fails."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from kproxy.controllers.allocation import CLUSTER_IPS, AllocationError, ServiceRanges, allocate_cluster_ip
from kproxy.store.base import Conflict
from kproxy.store.etcd import EtcdStore, LeaseExpired, RevisionCompacted, WatchBroken, retry

ETCD = shutil.which("etcd")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian package etcd-server; run scripts/setup)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="etcd integration tests need root"),
]

RANGES = ServiceRanges(service_cidr="10.96.0.0/28")
# a /28 has 14 host addresses; .1 (default/kubernetes) and .10 (kube-dns) are reserved
FREE = {str(a) for a in ipaddress.ip_network("10.96.0.0/28").hosts()} - {"10.96.0.1", "10.96.0.10"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One single-member etcd on loopback; stop() and start() again keep its data dir."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "data"
        self.client_port = _free_port()
        self.peer_port = _free_port()
        while self.peer_port == self.client_port:
            self.peer_port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [ETCD, "--name", "kproxy-test", "--data-dir", str(self.data_dir),
               "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"kproxy-test={peer}", "--initial-cluster-state", "new",
               "--logger", "zap", "--log-outputs", str(self.root / "etcd.log")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "etcd.stderr", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(f"{self.endpoint}/health", timeout=1).json().get("health") == "true":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        log = (self.root / "etcd.log").read_text(errors="replace")[-3000:] if (self.root / "etcd.log").exists() else ""
        self.stop()
        raise RuntimeError(f"etcd did not become healthy on {self.endpoint}:\n{log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="module")
def etcd():
    root = Path(tempfile.mkdtemp(prefix="kproxy-etcd-"))
    server = EtcdServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(etcd):
    s = EtcdStore(etcd.endpoint, timeout=10)
    yield s
    s.close()


def clear(store: EtcdStore, prefix: str) -> None:
    with store.transaction() as t:
        for key, _ in t.list(prefix):
            t.delete(key)


# ================================================================== the SQLite store's behaviour


def test_get_put_delete(store):
    clear(store, "/registry/")
    assert store.get("/registry/pods/default/a") is None
    store.put("/registry/pods/default/a", {"metadata": {"name": "a"}, "n": [1, 2]})
    assert store.get("/registry/pods/default/a") == {"metadata": {"name": "a"}, "n": [1, 2]}
    store.put("/registry/pods/default/a", "replaced")
    assert store.get("/registry/pods/default/a") == "replaced"
    assert store.delete("/registry/pods/default/a") is True
    assert store.get("/registry/pods/default/a") is None
    assert store.delete("/registry/pods/default/a") is False


def test_list_by_prefix_is_sorted_and_exact(store):
    clear(store, "/registry/")
    for key in ["/registry/pods/default/b", "/registry/pods/default/a", "/registry/pods/kube-system/c",
                "/registry/podsx/default/z", "/registry/services/default/a"]:
        store.put(key, key.rsplit("/", 1)[1])
    assert store.list("/registry/pods/") == [("/registry/pods/default/a", "a"), ("/registry/pods/default/b", "b"),
                                             ("/registry/pods/kube-system/c", "c")]
    assert store.list("/registry/pods/default/") == [("/registry/pods/default/a", "a"),
                                                     ("/registry/pods/default/b", "b")]
    assert store.values("/registry/services/") == ["a"]
    assert store.list("/registry/nodes/") == []


def test_revision_grows_only_on_real_changes(store):
    r0 = store.revision()
    store.put("/k", {"a": 1})
    r1 = store.revision()
    assert r1 == r0 + 1
    store.put("/k", {"a": 1})  # same value: no change
    assert store.revision() == r1
    store.put("/k", {"b": 2, "a": 1})
    store.put("/k", {"a": 1, "b": 2})  # key order is not a change
    assert store.revision() == r1 + 1
    assert store.delete("/missing") is False
    assert store.revision() == r1 + 1
    assert store.delete("/k") is True
    assert store.revision() == r1 + 2
    store.get("/k")
    store.list("/")
    assert store.revision() == r1 + 2


def test_one_transaction_is_one_revision(store):
    r0 = store.revision()
    with store.transaction() as txn:
        txn.put("/a", 1)
        txn.put("/b", 2)
        txn.delete("/a")
    assert store.revision() == r0 + 1
    assert store.get("/a") is None and store.get("/b") == 2


def test_transaction_rolls_back_on_exception(store):
    store.put("/keep", "old")
    store.delete("/new")
    r = store.revision()
    with pytest.raises(ValueError), store.transaction() as txn:
        txn.put("/keep", "new")
        txn.put("/new", 1)
        assert txn.get("/keep") == "new"  # visible inside the transaction
        raise ValueError("boom")
    assert store.get("/keep") == "old"
    assert store.get("/new") is None
    assert store.revision() == r
    store.put("/new", 2)
    assert store.get("/new") == 2


def test_two_stores_see_each_others_writes(etcd):
    a, b = EtcdStore(etcd.endpoint), EtcdStore(etcd.endpoint)
    try:
        clear(a, "/shared/")
        a.put("/shared/x", {"from": "a"})
        assert b.get("/shared/x") == {"from": "a"}
        b.put("/shared/y", [1])
        assert a.list("/shared/") == [("/shared/x", {"from": "a"}), ("/shared/y", [1])]
        assert a.revision() == b.revision()
    finally:
        a.close()
        b.close()


# ================================================================== optimistic transactions


def test_a_stale_read_fails_the_commit(store):
    clear(store, "/race/")
    store.put("/race/k", 1)
    with pytest.raises(Conflict), store.transaction() as t:
        seen = t.get("/race/k")
        store.put("/race/k", 5)  # another writer, between our read and our commit
        t.put("/race/k", seen + 1)
    assert store.get("/race/k") == 5
    # a key that was absent and got created
    with pytest.raises(Conflict), store.transaction() as t:
        assert t.get("/race/new") is None
        store.put("/race/new", "theirs")
        t.put("/race/new", "ours")
    assert store.get("/race/new") == "theirs"
    # a listed prefix that got a new key
    with pytest.raises(Conflict), store.transaction() as t:
        t.list("/race/")
        store.put("/race/other", 1)
        t.put("/race/mine", 1)
    assert store.get("/race/mine") is None
    # retry re-reads and wins
    assert retry(store, lambda t: t.put("/race/k", t.get("/race/k") + 1) or t.get("/race/k")) == 6


def _allocate_all(store, name: str, seed: int) -> list[str]:
    rng, got = random.Random(seed), []
    while True:
        try:
            ip = retry(store, lambda t: allocate_cluster_ip(t, RANGES, f"default/{name}-{len(got)}", None, rng),
                       attempts=100)
        except AllocationError:
            return got
        got.append(ip)


def _check_allocations(store, a: list[str], b: list[str]) -> None:
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert not set(a) & set(b), f"both took {set(a) & set(b)}"
    assert set(a) | set(b) == FREE
    held = store.list(CLUSTER_IPS)
    assert sorted(k.rsplit("/", 1)[1] for k, _ in held) == sorted(FREE)
    assert len({owner for _, owner in held}) == len(FREE)


def test_two_threads_racing_never_take_the_same_ip(store):
    clear(store, CLUSTER_IPS)
    results: dict[str, list[str]] = {}
    start = threading.Barrier(2)

    def worker(name):
        start.wait()
        results[name] = _allocate_all(store, name, seed=7)  # one seed: both try the same IPs

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {"a", "b"}
    _check_allocations(store, results["a"], results["b"])


WORKER = """
import json, sys
sys.path.insert(0, sys.argv[4])
from kproxy.store.etcd import EtcdStore
from tests.integration.test_etcd_store import _allocate_all
store = EtcdStore(sys.argv[1])
print(json.dumps(_allocate_all(store, sys.argv[2], int(sys.argv[3]))))
"""


def test_two_processes_racing_never_take_the_same_ip(store, etcd):
    clear(store, CLUSTER_IPS)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, etcd.endpoint, name, "11", str(REPO)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for name in ("p", "q")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    _check_allocations(store, *outs)


# ================================================================== watch


def test_watch_resumes_from_a_revision(store):
    clear(store, "/w/")
    start = store.revision() + 1
    store.put("/w/a", 1)
    store.put("/w/b", {"x": 2})
    store.put("/other", "not watched")
    store.delete("/w/a")
    with store.watch("/w/", start, idle_timeout=1) as w:
        events = list(w)
    assert [(e.kind, e.key, e.value) for e in events] == [("put", "/w/a", 1), ("put", "/w/b", {"x": 2}),
                                                          ("delete", "/w/a", None)]
    revs = [e.mod_revision for e in events]
    assert revs == sorted(revs) and revs[0] == start
    assert w.resume_revision == revs[-1] + 1
    # resume after the first event: only what came after it
    with store.watch("/w/", revs[0] + 1, idle_timeout=1) as w:
        assert [(e.kind, e.key) for e in w] == [("put", "/w/b"), ("delete", "/w/a")]
    # a watch from now sees live changes
    got = []
    with store.watch("/w/", idle_timeout=2) as w:
        writer = threading.Timer(0.3, lambda: store.put("/w/live", "yes"))
        writer.start()
        for ev in w:
            got.append(ev)
            break
        writer.join()
    assert [(e.kind, e.key, e.value) for e in got] == [("put", "/w/live", "yes")]


def test_a_compacted_revision_raises_and_relist_resyncs(store):
    clear(store, "/c/")
    old = store.revision() + 1
    store.put("/c/a", 1)
    store.put("/c/a", 2)
    store.compact(store.revision())
    with pytest.raises(RevisionCompacted) as info, store.watch("/c/", old, idle_timeout=5) as w:
        list(w)
    assert info.value.compact_revision >= old + 1
    assert isinstance(info.value, WatchBroken)
    # the documented way back: re-list, then watch from that revision + 1
    items, rev = store.list_with_revision("/c/")
    assert items == [("/c/a", 2)]
    store.put("/c/b", 3)
    with store.watch("/c/", rev + 1, idle_timeout=1) as w:
        assert [(e.kind, e.key, e.value) for e in w] == [("put", "/c/b", 3)]


# ================================================================== leases


def test_a_lease_keeps_its_key_while_renewed_and_drops_it_when_it_expires(store):
    lease = store.grant_lease(2)
    store.put("/nodes/n1", {"ready": True}, lease=lease)
    for _ in range(8):  # 4 s of heartbeats, twice the TTL
        time.sleep(0.5)
        assert store.keepalive(lease) > 0
        assert store.get("/nodes/n1") == {"ready": True}
    deadline = time.monotonic() + 15
    while store.get("/nodes/n1") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get("/nodes/n1") is None
    with pytest.raises(LeaseExpired):
        store.keepalive(lease)


def test_revoke_deletes_the_keys_at_once(store):
    lease = store.grant_lease(60)
    store.put("/nodes/n2", "up", lease=lease)
    assert store.lease_ttl(lease) > 50
    assert store.revoke(lease) is True
    assert store.get("/nodes/n2") is None
    assert store.revoke(lease) is False


# ================================================================== restart


def test_restart_on_the_same_data_dir_loses_nothing(store, etcd):
    clear(store, "/persist/")
    store.put("/persist/a", {"n": 1})
    with store.transaction() as t:
        t.put("/persist/b", [1, 2])
        t.put(CLUSTER_IPS + "10.96.0.5", "default/web")
    rev = store.revision()
    before = store.list("/")
    watch = store.watch("/persist/", rev + 1, idle_timeout=20)
    etcd.stop()
    with pytest.raises(WatchBroken) as info:
        list(watch)
    watch.close()
    assert info.value.resume_revision == rev + 1
    etcd.start()
    assert store.revision() == rev
    assert store.list("/") == before
    store.put("/persist/c", "after")
    with store.watch("/persist/", info.value.resume_revision, idle_timeout=1) as w:
        assert [(e.kind, e.key, e.value) for e in w] == [("put", "/persist/c", "after")]
