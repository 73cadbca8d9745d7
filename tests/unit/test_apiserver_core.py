"""The API server's core without a lab: the watch cache (resume, 410, re-list), the write path
(admission, folder, conflicts, Status words) with an in-memory store and the real admission
front, and the SQLite change log."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from multidict import MultiDict

from kproxy.apiserver import rest, watchcache, writes
from kproxy.apiserver import status as st
from kproxy.apiserver.resources import find
from kproxy.store.base import Store, Txn
from kproxy.store.sqlite import SqliteStore


class FakeStore(Store):
    """An in-memory Store with etcd's revision semantics and SQLite's change log."""

    def __init__(self):
        self.kv: dict[str, tuple[str, int]] = {}
        self.rev = 0
        self.log: list[tuple[int, str, object]] = []
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self):
        with self.lock:
            yield _FakeTxn(self)

    def revision(self) -> int:
        return self.rev

    def get_with_revision(self, key):
        hit = self.kv.get(key)
        return (json.loads(hit[0]), hit[1]) if hit else (None, 0)

    def list_with_revisions(self, prefix):
        with self.lock:
            return [(k, json.loads(v), r) for k, (v, r) in sorted(self.kv.items()) if k.startswith(prefix)], self.rev

    def changes_since(self, rev, limit=10000):
        with self.lock:
            rows = [c for c in self.log if c[0] > rev]
            return rows, self.rev, (self.log[0][0] if self.log else 0)


class _FakeTxn(Txn):
    def __init__(self, store: FakeStore):
        self.s = store

    def get(self, key):
        return self.s.get_with_revision(key)[0]

    def list(self, prefix):
        return [(k, v) for k, v, _ in self.s.list_with_revisions(prefix)[0]]

    def put(self, key, value):
        text = json.dumps(value, sort_keys=True)
        if key in self.s.kv and self.s.kv[key][0] == text:
            return
        self.s.rev += 1
        self.s.kv[key] = (text, self.s.rev)
        if key.startswith("/registry/"):
            self.s.log.append((self.s.rev, key, json.loads(text)))

    def delete(self, key):
        if key not in self.s.kv:
            return False
        self.s.rev += 1
        del self.s.kv[key]
        self.s.log.append((self.s.rev, key, None))
        return True


def svc(name: str, port: int = 80, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": port}], **spec}}


# -- the watch cache -------------------------------------------------------------------------
def test_watch_cache_resumes_from_a_revision_and_says_410_past_its_window():
    store = FakeStore()
    store.put("/registry/services/default/a", svc("a"))
    cache = watchcache.WatchCache(store, capacity=3)
    cache.load()
    (key, obj, rev_a), = cache.list("/registry/services/")[0]
    assert rev_a == 1 and cache.revision == 1
    got = []
    backlog, unsubscribe = cache.watch(1, got.extend)
    assert backlog == []
    store.put("/registry/services/default/a", svc("a", 81))
    store.put("/registry/services/default/b", svc("b"))
    store.delete("/registry/services/default/a")
    cache.poll_once()
    assert [(e.type, e.key.rsplit("/", 1)[1], e.rev) for e in got] == [("MODIFIED", "a", 2), ("ADDED", "b", 3),
                                                                      ("DELETED", "a", 4)]
    assert got[0].obj["metadata"]["resourceVersion"] == "2"
    assert got[2].obj["metadata"]["resourceVersion"] == "4"  # a deleted object carries the deletion's revision
    assert got[2].obj["spec"]["ports"][0]["port"] == 81       # ... and its last state
    # a watch from revision 2 replays what came after it
    backlog, _ = cache.watch(2, lambda b: None)
    assert [e.rev for e in backlog] == [3, 4]
    # four more changes: the window of 3 events no longer reaches revision 2
    for i in range(4):
        store.put("/registry/services/default/b", svc("b", 100 + i))
    cache.poll_once()
    with pytest.raises(watchcache.Expired, match=r"too old resource version: 2 \(5\)"):
        cache.watch(2, lambda b: None)
    unsubscribe()


def test_watch_cache_relists_when_the_change_log_was_trimmed_past_it():
    store = FakeStore()
    store.put("/registry/services/default/a", svc("a"))
    cache = watchcache.WatchCache(store)
    cache.load()
    got = []
    cache.watch(cache.revision, got.extend)
    store.put("/registry/services/default/b", svc("b"))
    store.delete("/registry/services/default/a")
    store.log.clear()  # trimmed: the cache cannot replay, so it re-lists and diffs
    store.put("/kproxy/other", {"x": 1})
    store.log.append((store.rev + 1, "/registry/x", None))
    cache.poll_once()
    assert sorted((e.type, e.key) for e in got) == [("ADDED", "/registry/services/default/b"),
                                                    ("DELETED", "/registry/services/default/a")]


def test_sqlite_change_log_and_revisions(tmp_path: Path):
    store = SqliteStore(tmp_path / "store.db")
    store.put("/registry/services/default/a", svc("a"))
    store.put("/kproxy/health", {"ok": True})  # not a registry key: not logged
    store.delete("/registry/services/default/a")
    changes, rev, oldest = store.changes_since(0)
    assert [(r, k, v is None) for r, k, v in changes] == [(1, "/registry/services/default/a", False),
                                                         (3, "/registry/services/default/a", True)]
    assert rev == 3 and oldest == 1
    store.put("/registry/services/default/b", svc("b"))
    assert store.get_with_revision("/registry/services/default/b")[1] == 4
    items, rev = store.list_with_revisions("/registry/services/")
    assert [(k, r) for k, _, r in items] == [("/registry/services/default/b", 4)] and rev == 4
    cache = watchcache.WatchCache(store)
    cache.load()
    assert cache.get("/registry/services/default/b")[1] == 4


# -- the write path --------------------------------------------------------------------------
@pytest.fixture
def lab(tmp_path: Path):
    """A Writer over the real admission front (frontend.py) on an in-memory store; `sync` runs
    one front pass, as the daemon's loop does."""
    from kproxy.config import LabConfig
    from kproxy.context import Context
    from kproxy.frontend import Frontend
    cfg = LabConfig(state_dir=str(tmp_path), cluster_dns=False, sandbox=True)
    store = FakeStore()
    ctx = Context(cfg, store=store, node_ip="192.168.49.2")
    front = Frontend(ctx)
    ctx.cache.list_all()
    front.start()
    front.ensure_system_objects()

    def sync(timeout=60, settled=True):
        front.folder_settled = settled
        front.poll()
        front.handle_requests()
        return True
    return writes.Writer(ctx, front, sync), store, cfg


def target(plural="services", name="", group="", sub="", ns="default") -> rest.Target:
    res = find(group, "v1", plural)
    return rest.Target(res, ns if res.namespaced else None, name, sub)


def call(w, verb, t, body=None, ctype="application/json", query=None):
    raw = json.dumps(body).encode() if body is not None else b""
    return w.handle(verb, t, raw, ctype, MultiDict(query or {}))[:2]


def refusal(fn) -> dict:
    with pytest.raises(st.ApiError) as e:
        fn()
    return e.value.status


def test_create_writes_the_folder_and_answers_the_stored_object(lab):
    w, store, cfg = lab
    code, out = call(w, "create", target(), svc("web"))
    assert code == 201
    assert out["spec"]["clusterIP"].startswith("10.")             # allocated by the front
    assert out["metadata"]["resourceVersion"] == str(store.get_with_revision("/registry/services/default/web")[1])
    assert out["metadata"]["uid"] and out["metadata"]["creationTimestamp"]
    files = list(Path(cfg.manifests).glob("*.yaml"))
    assert [f.name for f in files] == ["service-default-web.yaml"]
    assert "resourceVersion" not in files[0].read_text() and "uid" not in files[0].read_text()
    again = refusal(lambda: call(w, "create", target(), svc("web")))
    assert (again["code"], again["reason"], again["message"]) == (409, "AlreadyExists", 'services "web" already exists')


def test_update_with_a_stale_resource_version_is_a_conflict(lab):
    w, store, _ = lab
    _, first = call(w, "create", target(), svc("web"))
    changed = json.loads(json.dumps(first))
    changed["metadata"]["labels"] = {"tier": "front"}
    code, second = call(w, "update", target(name="web"), changed)
    assert code == 200 and second["metadata"]["labels"] == {"tier": "front"}
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["spec"]["clusterIP"] == first["spec"]["clusterIP"]
    stale = json.loads(json.dumps(first))
    stale["metadata"]["labels"] = {"tier": "back"}
    st_ = refusal(lambda: call(w, "update", target(name="web"), stale))
    assert st_["code"] == 409 and st_["reason"] == "Conflict"
    assert st_["message"] == ('Operation cannot be fulfilled on services "web": the object has been modified; '
                              "please apply your changes to the latest version and try again")


def test_refusals_are_the_api_servers_statuses(lab):
    w, _, cfg = lab
    bad = svc("bad", type="NodePort")
    bad["spec"]["ports"][0]["nodePort"] = 80
    st_ = refusal(lambda: call(w, "create", target(), bad))
    assert st_["code"] == 422 and st_["reason"] == "Invalid"
    assert st_["message"].startswith('Service "bad" is invalid: spec.ports[0].nodePort: Invalid value: 80')
    assert st_["details"]["causes"][0]["field"] == "spec.ports[0].nodePort"
    nf = refusal(lambda: call(w, "update", target(name="nope"), svc("nope")))
    assert (nf["code"], nf["message"]) == (404, 'services "nope" not found')
    other = svc("x")
    st_ = refusal(lambda: call(w, "create", target(ns="elsewhere"), other))  # the body says default
    assert st_["code"] == 400 and "does not match the namespace" in st_["message"]
    del other["metadata"]["namespace"]
    ns = refusal(lambda: call(w, "create", target(ns="nowhere"), other))
    assert (ns["code"], ns["message"]) == (404, 'namespaces "nowhere" not found')
    ro = refusal(lambda: call(w, "delete", target(name="kubernetes")))
    assert ro["code"] == 405  # the lab's own Service is not in the folder
    assert not list(Path(cfg.manifests).glob("*.yaml"))


def test_generate_name_dry_run_patch_scale_and_delete(lab):
    w, store, cfg = lab
    code, dry = call(w, "create", target(), {"metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 80}]}},
                     query={"dryRun": "All"})
    assert code == 201 and dry["metadata"]["name"].startswith("gen-") and not list(Path(cfg.manifests).iterdir())
    _, made = call(w, "create", target(), {"metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 80}]}})
    assert len(made["metadata"]["name"]) == len("gen-") + 5
    code, patched, _ = w.handle("patch", target(name=made["metadata"]["name"]), b'{"metadata":{"labels":{"x":"y"}}}',
                             "application/merge-patch+json", MultiDict())
    assert patched["metadata"]["labels"] == {"x": "y"}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": "kproxy/podserver"}]}}}}
    dt = lambda **kw: target("deployments", group="apps", **kw)  # noqa: E731
    call(w, "create", dt(), dep)
    code, scale, _ = w.handle("patch", dt(name="web", sub="scale"), b'{"spec":{"replicas":3}}',
                           "application/merge-patch+json", MultiDict())
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    assert store.get("/registry/deployments/default/web")["spec"]["replicas"] == 3
    code, gone = call(w, "delete", dt(name="web"))
    assert gone["status"] == "Success" and gone["details"] == {"name": "web", "group": "apps", "kind": "deployments",
                                                              "uid": gone["details"]["uid"]}
    assert store.get("/registry/deployments/default/web") is None
    assert not (Path(cfg.manifests) / "deployment-default-web.yaml").exists()


# -- protobuf request bodies (kubectl create deployment/service/namespace) ---------------------
def _v(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _f(num: int, value) -> bytes:
    if isinstance(value, int):
        return _v(num << 3) + _v(value)
    data = value.encode() if isinstance(value, str) else value
    return _v(num << 3 | 2) + _v(len(data)) + data


def test_protobuf_bodies_decode_as_kubectl_create_sends_them():
    from kproxy.apiserver import protobuf
    labels = _f(11, _f(1, "app") + _f(2, "hello"))
    meta = _f(1, "hello") + _f(3, "") + labels + _f(8, b"")  # empty namespace, zero creationTimestamp
    port = _f(1, "") + _f(2, 0) + _f(3, 8080) + _f(4, "TCP")
    container = _f(1, "nginx") + _f(2, "nginx") + _f(6, port) + _f(8, b"")
    template = _f(1, _f(11, _f(1, "app") + _f(2, "hello"))) + _f(2, _f(2, container))
    spec = _f(1, 0) + _f(2, _f(1, _f(1, "app") + _f(2, "hello"))) + _f(3, template) + _f(4, b"") + _f(99, "x")
    raw = _f(1, meta) + _f(2, spec) + _f(3, b"")
    body = protobuf.MAGIC + _f(1, _f(1, "apps/v1") + _f(2, "Deployment")) + _f(2, raw)
    assert protobuf.decode(body) == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "labels": {"app": "hello"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "hello"}},
                 "template": {"metadata": {"labels": {"app": "hello"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx",
                                                       "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                                       "resources": {}}]}},
                 "strategy": {}},
        "status": {}}
    # a Service port's targetPort is an IntOrString: int (type 0) or string (type 1)
    sport = _f(1, "80-8080") + _f(2, "TCP") + _f(3, 80) + _f(4, _f(1, 0) + _f(2, 8080)) + _f(5, 0)
    named = _f(3, 81) + _f(4, _f(1, 1) + _f(3, "http"))
    raw = _f(1, _f(1, "mn")) + _f(2, _f(1, sport) + _f(1, named) + _f(4, "ClusterIP"))
    body = protobuf.MAGIC + _f(1, _f(1, "v1") + _f(2, "Service")) + _f(2, raw)
    svc = protobuf.decode(body)
    assert svc["spec"] == {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                                     {"port": 81, "targetPort": "http"}], "type": "ClusterIP"}
    with pytest.raises(protobuf.ProtobufError, match="ConfigMap"):
        protobuf.decode(protobuf.MAGIC + _f(1, _f(1, "v1") + _f(2, "ConfigMap")) + _f(2, b""))
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(protobuf.MAGIC + b"\x0a\xff")  # truncated


# -- the server over HTTPS, without a lab ------------------------------------------------------
@pytest.fixture
def served(lab):
    """The real ApiServer (TLS, auth, routes, watch cache feed) on a free loopback port, over the
    fake store and the real front; stopped after the test."""
    import requests
    from kproxy.apiserver.server import ApiServer
    w, store, cfg = lab
    cfg.sandbox = False  # no lab namespace: loopback only
    server = ApiServer(w.ctx, w)
    server.prepare()
    server.start()
    assert server.cache.loaded.wait(10)
    s = requests.Session()
    s.trust_env = False
    pki = Path(cfg.state_dir) / "pki"
    s.verify, s.cert = str(pki / "ca.crt"), (str(pki / "admin.crt"), str(pki / "admin.key"))
    base = f"https://127.0.0.1:{server.port}"
    deadline = __import__("time").monotonic() + 10
    while True:
        try:
            s.get(base + "/version", timeout=2)
            break
        except requests.ConnectionError:
            assert __import__("time").monotonic() < deadline
    yield base, s, store, server
    w.ctx.stopping.set()
    server.stop()


def test_server_authenticates_routes_and_negotiates(served):
    import requests
    base, s, store, server = served
    anon = requests.get(base + "/api/v1/services", verify=s.verify, timeout=5)
    assert anon.status_code == 401 and anon.json()["reason"] == "Unauthorized"
    token = (Path(server.pki.root) / "apiserver-token").read_text().strip()
    ok = requests.get(base + "/api/v1/services", verify=s.verify, timeout=5,
                      headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json()["kind"] == "ServiceList"
    assert stat_mode(server.state / "kubeconfig") == 0o600
    missing = s.get(base + "/api/v1/frobs", timeout=5)
    assert (missing.status_code, missing.json()["message"]) == (404, "the server could not find the requested resource")
    r = s.post(base + "/api/v1/namespaces/default/services", json=svc("web"), timeout=10)
    assert r.status_code == 201, r.text
    table = s.get(base + "/api/v1/namespaces/default/services", timeout=5,
                  headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}).json()
    assert table["kind"] == "Table" and [c["name"] for c in table["columnDefinitions"]][:2] == ["Name", "Type"]
    assert sorted(row["cells"][0] for row in table["rows"]) == ["kubernetes", "web"]
    assert int(table["metadata"]["resourceVersion"]) >= int(r.json()["metadata"]["resourceVersion"])
    one = s.get(base + "/api/v1/namespaces/default/services/web", timeout=5).json()
    assert one["metadata"]["resourceVersion"] == r.json()["metadata"]["resourceVersion"]
    sel = s.get(base + "/api/v1/services", params={"fieldSelector": "metadata.name=web"}, timeout=5).json()
    assert [i["metadata"]["name"] for i in sel["items"]] == ["web"]


def test_server_watch_streams_changes_in_order(served):
    base, s, store, server = served
    rv = s.get(base + "/api/v1/namespaces/default/services", timeout=5).json()["metadata"]["resourceVersion"]
    with s.get(base + "/api/v1/namespaces/default/services", params={"watch": "1", "resourceVersion": rv},
               stream=True, timeout=10) as w:
        lines = w.iter_lines()
        store.put("/registry/services/default/a", {**svc("a"), "kind": "Service"})
        store.put("/registry/services/default/a", {**svc("a", 81), "kind": "Service"})
        store.delete("/registry/services/default/a")
        server.cache.kick()
        got = [json.loads(next(lines)) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [("ADDED", "a"), ("MODIFIED", "a"),
                                                                         ("DELETED", "a")]
    revs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert revs == sorted(revs) and revs[0] > int(rv)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_server_watch_with_a_selector_sees_objects_move_in_and_out(served):
    base, s, store, server = served
    def labelled(value):
        obj = {**svc("a"), "kind": "Service"}
        obj["metadata"] = {**obj["metadata"], "labels": {"tier": value}}
        return obj
    store.put("/registry/services/default/a", labelled("back"))
    server.cache.poll_once()
    with s.get(base + "/api/v1/namespaces/default/services", params={"watch": "1", "labelSelector": "tier=front"},
               stream=True, timeout=10) as w:
        lines = w.iter_lines()
        store.put("/registry/services/default/a", labelled("front"))   # moves in
        store.put("/registry/services/default/a", labelled("front2"))  # moves out
        store.put("/registry/services/default/a", labelled("front"))   # in again
        store.delete("/registry/services/default/a")
        server.cache.kick()
        got = [json.loads(next(lines))["type"] for _ in range(4)]
    assert got == ["ADDED", "DELETED", "ADDED", "DELETED"]


def test_server_streaming_list_ends_its_initial_events_with_a_bookmark(served):
    base, s, store, server = served
    store.put("/registry/services/default/a", {**svc("a"), "kind": "Service"})
    server.cache.poll_once()  # the cache holds it before the watch begins
    params = {"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
              "resourceVersionMatch": "NotOlderThan"}
    with s.get(base + "/api/v1/namespaces/default/services", params=params, stream=True, timeout=10) as w:
        lines = w.iter_lines()
        got = []
        while not got or got[-1]["type"] != "BOOKMARK":
            got.append(json.loads(next(lines)))
    assert sorted(e["object"]["metadata"]["name"] for e in got[:-1]) == ["a", "kubernetes"]
    assert {e["type"] for e in got[:-1]} == {"ADDED"}
    assert got[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_deployment_conditions_are_derived_when_the_status_has_none():
    dep = {"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"replicas": 4, "template": {"metadata": {"labels": {"app": "web"}}}},
           "status": {"replicas": 4, "updatedReplicas": 4, "availableReplicas": 3}}
    conds = {c["type"]: c for c in rest.deployment_conditions(dep)}
    assert (conds["Available"]["status"], conds["Available"]["reason"]) == ("True", "MinimumReplicasAvailable")
    assert conds["Progressing"]["reason"] == "ReplicaSetUpdated"  # one pod not yet available
    dep["status"]["availableReplicas"] = 2  # 25% of 4 may be unavailable: 1, not 2
    conds = {c["type"]: c for c in rest.deployment_conditions(dep)}
    assert (conds["Available"]["status"], conds["Available"]["reason"]) == ("False", "MinimumReplicasUnavailable")
    dep["status"]["availableReplicas"] = 4
    conds = {c["type"]: c for c in rest.deployment_conditions(dep)}
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conds["Progressing"]["message"].startswith('ReplicaSet "web-') and "successfully progressed" in \
        conds["Progressing"]["message"]


def test_yaml_bodies_are_bounded_and_json_ones_decoded():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    st_ = refusal(lambda: writes.decode(bomb.encode(), "application/yaml"))
    assert st_["code"] == 400 and "could not be decoded" in st_["message"]
    assert writes.decode(b"kind: Service\nmetadata: {name: a}\n")["metadata"] == {"name": "a"}
    assert writes.decode(b'{"metadata": {"name": "a"}, "metadata": {"name": "b"}}')["metadata"] == {"name": "b"}
    assert refusal(lambda: writes.decode(b"[" * 100000))["code"] == 400
    assert refusal(lambda: writes.decode(b"- 1\n"))["message"] == "the body of the request must be an object"


def test_deletecollection_across_namespaces_takes_the_selected_declared_objects(lab):
    w, store, cfg = lab
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    call(w, "create", target("namespaces", ns=None), ns)
    for where, name, tier in (("default", "a", "x"), ("shop", "b", "x"), ("shop", "c", "y")):
        body = svc(name)
        body["metadata"] = {"name": name, "labels": {"tier": tier}}
        call(w, "create", target(ns=where), body)
    code, out = call(w, "deletecollection", target(ns=None), query={"labelSelector": "tier=x"})
    assert sorted(i["metadata"]["name"] for i in out["items"]) == ["a", "b"]
    assert store.get("/registry/services/default/a") is None and store.get("/registry/services/shop/b") is None
    assert store.get("/registry/services/shop/c") is not None
    assert sorted(p.name for p in Path(cfg.manifests).glob("service-*")) == ["service-shop-c.yaml"]
