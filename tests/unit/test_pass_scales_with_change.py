"""A pass after one changed manifest file costs the change, not the lab (issue 14's watch-latency
target: every API write waits for the front of the next pass). Counted, not timed: how many
documents the admission gate judges, how often the folder is listed, which store keys are
written; and an API write that waits for the front's step alone while the rest of the pass
(controllers, proxy) still runs, except where its answer needs them."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from multidict import MultiDict

from kproxy.api import admission, manifest
from kproxy.config import LabConfig
from kproxy.context import key_of
from kproxy.daemon import Daemon
from kproxy.frontend import MANIFEST_ERRORS, MANIFEST_KEYS
from kproxy.store.sqlite import SqliteStore

SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{seq: "{seq}"}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""
N = 30


class Counting(SqliteStore):
    """The lab's SQLite store, counting the keys written."""

    def __init__(self, path):
        super().__init__(path)
        self.puts: list[str] = []

    def put(self, key, value, **kw):
        self.puts.append(key)
        return super().put(key, value, **kw)


@pytest.fixture
def lab(tmp_path, monkeypatch):
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, cluster_dns=False)
    Path(cfg.manifests).mkdir(parents=True)
    store = Counting(tmp_path / "s.db")
    d = Daemon(cfg, controller=True, agent=False, store=store)
    d.ctx.cache.list_all()
    d.frontend.start()
    d.frontend.ensure_system_objects()
    judged: list[str] = []
    real = admission.Admission.admit

    def admit(self, obj, source="", **kw):
        judged.append(Path(source).name)
        return real(self, obj, source, **kw)
    monkeypatch.setattr(admission.Admission, "admit", admit)
    listings: list[Path] = []
    real_listing = manifest._listing
    monkeypatch.setattr(manifest, "_listing", lambda folder: listings.append(folder) or real_listing(folder))
    for i in range(N):
        write(d, i)
    for _ in range(2):  # created, then judged as updates of what was admitted
        d.frontend.signature = None
        d.frontend.poll()
    judged.clear(), listings.clear(), store.puts.clear()
    return d, store, judged, listings


def write(d: Daemon, i: int, seq: int = 0, ns: str = "default") -> None:
    (Path(d.cfg.manifests) / f"svc-{i:03d}.yaml").write_text(SVC.format(name=f"svc-{i:03d}", ns=ns, seq=seq))


def test_a_pass_after_one_changed_file_judges_that_file_alone(lab):
    d, store, judged, listings = lab
    revs = {k: r for k, _, r in store.list_with_revisions("/registry/services/")[0]}
    write(d, 7, seq=1)
    d.frontend.poll()
    assert judged == ["svc-007.yaml"]              # not the other 29 documents
    assert len(listings) == 1                       # the poll's listing is the reader's too
    svc = d.ctx.objects["Service"][key_of("Service", "default", "svc-007")]
    assert svc["metadata"]["labels"] == {"seq": "1"}
    after = {k: r for k, _, r in store.list_with_revisions("/registry/services/")[0]}
    assert [k for k in after if after[k] != revs.get(k)] == [key_of("Service", "default", "svc-007")]
    assert store.puts.count(MANIFEST_KEYS) == 1 and MANIFEST_ERRORS not in store.puts  # no new problem
    saved = store.get(MANIFEST_KEYS)
    assert saved["sources"][key_of("Service", "default", "svc-007")]["metadata"]["labels"] == {"seq": "1"}


def test_an_unchanged_folder_after_a_poke_writes_nothing(lab):
    d, store, judged, _ = lab
    d.frontend.signature = None  # as a poke's pass after which the signature must be compared again
    d.frontend.poll()
    assert judged == [] and [k for k in store.puts if not k.startswith("/registry/events/")] == []


def test_a_document_is_judged_again_when_its_admitted_version_changed(lab):
    d, store, judged, _ = lab
    key = key_of("Service", "default", "svc-003")
    changed = json.loads(json.dumps(d.ctx.objects["Service"][key]))
    changed["spec"]["clusterIP"] = changed["spec"]["clusterIPs"][0] = "10.96.200.200"
    d.ctx.objects["Service"][key] = changed  # another controller's write, refreshed into the cache
    write(d, 7, seq=2)
    d.frontend.poll()
    assert sorted(judged) == ["svc-003.yaml", "svc-007.yaml"]


def test_a_document_waiting_for_its_namespace_is_admitted_when_the_namespace_comes(lab):
    d, store, judged, _ = lab
    write(d, 40, ns="team")
    d.frontend.poll()
    assert key_of("Service", "team", "svc-040") not in d.ctx.objects["Service"]
    assert any('namespaces "team" not found' in p["message"] for p in store.get(MANIFEST_ERRORS))
    judged.clear()
    (Path(d.cfg.manifests) / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n")
    d.frontend.poll()
    assert sorted(judged) == ["ns.yaml", "svc-040.yaml"]  # its own file did not change
    assert key_of("Service", "team", "svc-040") in d.ctx.objects["Service"]
    assert not any("team" in p["message"] for p in store.get(MANIFEST_ERRORS))


def test_admission_waits_for_the_front_step_and_sync_for_the_whole_pass(tmp_path):
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, cluster_dns=False)
    Path(cfg.manifests).mkdir(parents=True)
    d = Daemon(cfg, controller=True, agent=False, store=SqliteStore(tmp_path / "s.db"))
    d.ctx.cache.list_all()
    d.frontend.start()
    held, release = threading.Event(), threading.Event()
    real = d.controllers.reconcile

    def reconcile():
        if key_of("Service", "default", "svc-001") in d.ctx.objects["Service"] and not held.is_set():
            held.set()
            release.wait(10)  # the controllers of this pass are slow
        real()
    d.controllers.reconcile = reconcile
    loop = threading.Thread(target=d._loop, daemon=True)
    loop.start()
    try:
        assert d.sync(timeout=5)  # the loop runs, idle
        write(d, 1)
        t = time.monotonic()
        assert d.admission(timeout=5, settled=False)
        assert time.monotonic() - t < 5 and not release.is_set()
        assert held.wait(5)  # the same pass goes on to its (slow) controllers
        assert key_of("Service", "default", "svc-001") in d.ctx.objects["Service"]  # admitted, allocated
        assert d.ctx.objects["Service"][key_of("Service", "default", "svc-001")]["spec"]["clusterIP"]
        assert not d.sync(timeout=0.3, settled=False)  # the pass is not over
        release.set()
        assert d.sync(timeout=5, settled=False)
    finally:
        release.set()
        d.ctx.stopping.set()
        d.ctx.poke.set()
        loop.join(5)


def test_the_api_waits_for_the_whole_pass_only_where_controllers_add_to_its_answer(tmp_path):
    from kproxy.apiserver import rest, writes
    from kproxy.apiserver.resources import find
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, cluster_dns=False)
    d = Daemon(cfg, controller=True, agent=False, store=SqliteStore(tmp_path / "s.db"))
    d.ctx.cache.list_all()
    d.frontend.start()
    d.frontend.ensure_system_objects()
    waits: list[str] = []

    def waiter(name):
        def wait(timeout=60, settled=True):
            waits.append(name)
            d.frontend.folder_settled = settled
            d.frontend.poll()
            d._pass(time.monotonic())
            return True
        return wait
    w = writes.Writer(d.ctx, d.frontend, waiter("sync"), waiter("admission"))

    def create(plural, group, body):
        res = find(group, "v1", plural)
        return w.handle("create", rest.Target(res, "default", "", ""), json.dumps(body).encode(),
                        "application/json", MultiDict())[:2]
    code, out = create("services", "", {"metadata": {"name": "web"}, "spec": {
        "type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    assert code == 201 and out["spec"]["clusterIP"] and out["spec"]["ports"][0]["nodePort"]
    assert waits == ["admission"]
    waits.clear()
    code, out = create("deployments", "apps", {"metadata": {"name": "web"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    assert code == 201 and waits == ["sync"]
    waits.clear()
    code, out = create("services", "", {"metadata": {"name": "lb"}, "spec": {
        "type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    assert code == 201 and waits == ["sync"]


def test_the_daemon_writes_the_folder_record_after_the_admission_step(lab):
    d, store, judged, _ = lab
    write(d, 9, seq=3)
    d.frontend.step(time.monotonic() + 10, record=False)
    assert judged == ["svc-009.yaml"] and MANIFEST_KEYS not in store.puts
    d.frontend.save_record()
    assert store.puts.count(MANIFEST_KEYS) == 1
    assert store.get(MANIFEST_KEYS)["sources"][key_of("Service", "default", "svc-009")]["metadata"]["labels"] == {"seq": "3"}
    d.frontend.save_record()  # nothing changed since
    assert store.puts.count(MANIFEST_KEYS) == 1


def test_a_stream_of_edits_writes_the_record_once_a_period_and_new_keys_at_once(lab):
    d, store, judged, _ = lab
    now = 1000.0
    write(d, 5, seq=9)
    d.frontend.step(now, record=False)
    d.frontend.save_record(now)  # written now: the next version waits a period
    assert store.puts.count(MANIFEST_KEYS) == 1
    store.puts.clear()
    for seq in range(5):  # five label edits within a second: the versions wait
        write(d, 5, seq=10 + seq)
        d.frontend.step(now + 10 + seq, record=False)
        d.frontend.save_record(now + 0.1 * seq)
    assert MANIFEST_KEYS not in store.puts
    write(d, 50)  # a new object: its file's keys are written at once
    d.frontend.step(now + 20, record=False)
    d.frontend.save_record(now + 0.6)
    assert store.puts.count(MANIFEST_KEYS) == 1
    write(d, 5, seq=99)
    d.frontend.step(now + 30, record=False)
    d.frontend.save_record(now + 0.7)
    assert store.puts.count(MANIFEST_KEYS) == 1
    d.frontend.save_record(now + 1.7)  # a second later, an idle pass writes the versions
    assert store.puts.count(MANIFEST_KEYS) == 2
    assert store.get(MANIFEST_KEYS)["sources"][key_of("Service", "default", "svc-005")]["metadata"]["labels"] == {"seq": "99"}


def test_the_folder_index_finds_an_object_by_its_name_as_the_full_scan_did(tmp_path):
    """An API write's folder session looks its object up by name (not by reading every entry),
    and lists the folder without a Path per file; same files, same order as before."""
    from kproxy.store import manifests
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.yaml").write_text(SVC.format(name="web", ns="default", seq=0))
    (folder / "b.yaml").write_text(SVC.format(name="web", ns="other", seq=0))
    (folder / "sub" / "d.yaml").write_text(SVC.format(name="web", ns="default", seq=1).replace("namespace: default, ", ""))
    (folder / "a-b.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: web, namespace: x}\n")
    (folder / "e.yaml").write_text(SVC.format(name="api", ns="default", seq=0))
    idx = manifests.Index(folder)
    idx.refresh()
    assert sorted(idx.entries) == ["a-b.yaml", "a.yaml", "b.yaml", "e.yaml", "sub/d.yaml"]
    assert idx.files_with(("Service", "default", "web"), "default") == [folder / "a.yaml", folder / "sub/d.yaml"]
    assert idx.files_with(("Service", "", "web"), "default") == [folder / "a.yaml", folder / "sub/d.yaml"]
    assert idx.files_with(("Namespace", "", "web"), None) == [folder / "a-b.yaml"]
    assert idx.files_with(("Service", "other", "web"), "default") == [folder / "b.yaml"]
    (folder / "a.yaml").write_text(SVC.format(name="api2", ns="default", seq=0))
    idx.update(folder / "a.yaml")
    assert idx.files_with(("Service", "default", "web"), "default") == [folder / "sub/d.yaml"]
    assert idx.files_with(("Service", "default", "api2"), "default") == [folder / "a.yaml"]
    assert idx.files_with(("Service", "default", ["not", "a", "key"]), "default") == []
