"""The daemon's roles one by one, without root (issue 13 item 2): the store cache, the admission
front, the controllers, the proxy role on a FakeKernel, the node agent on a fake kubelet, and the
pass ordering that keeps "endpoints first, processes after" now that no role calls another."""
from __future__ import annotations

import time
import types
from pathlib import Path

import pytest

from kproxy.config import LabConfig
from kproxy.context import Context
from kproxy.controllers import pods as podw
from kproxy.controllers.manager import Controllers
from kproxy.daemon import Daemon
from kproxy.frontend import MANIFEST_KEYS, Frontend
from kproxy.node.agent import Agent
from kproxy.proxy.fake import BUILTIN, FakeKernel
from kproxy.proxy.role import PROXY_STATUS, ProxyRole
from kproxy.store.cache import NODE_LEASES, Cache, key_of
from kproxy.store.sqlite import SqliteStore
from kproxy.proxy import changes

SVC = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def _cfg(tmp_path: Path, **kw) -> LabConfig:
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, **kw)
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    return cfg


def _pod(name: str, node: str | None = "node-1", ip: str | None = None, ready: bool = False) -> dict:
    status = {"phase": "Running" if ip else "Pending"}
    if ip:
        status.update(podIP=ip, conditions=[{"type": "Ready", "status": "True" if ready else "False"}])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}, "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}],
                     **({"nodeName": node} if node else {})},
            "status": status}


# -- the cache --------------------------------------------------------------------------------
def test_the_cache_writes_through_and_tracks_the_proxied_kinds(tmp_path):
    store, tracker = SqliteStore(tmp_path / "s.db"), changes.ChangeTracker()
    cache = Cache(store, ("Service", "Pod", "EndpointSlice", "Node"), tracker, ("Service", "EndpointSlice"))
    tracker.take()  # start recording
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {}}
    cache.put(svc)
    key = key_of("Service", "default", "web")
    assert store.get(key) == svc and cache.get("Service", key) == svc and cache.list("Service") == [svc]
    assert tracker.take() == {"default/web"}  # the proxy role compares only this Service
    cache.remove("Service", key)
    assert store.get(key) is None and key not in cache["Service"]
    assert tracker.take() == {"default/web"}


def test_the_cache_relists_what_another_process_wrote(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    cache = Cache(store, ("Pod", "Node"), shared=True)
    assert cache.due(100.0)  # never listed: due
    cache.refresh(100.0)
    assert not cache.due(100.0)
    store.put(key_of("Node", "", "node-2"), {"kind": "Node", "metadata": {"name": "node-2"}})
    store.put(NODE_LEASES + "node-2", {"kind": "Lease"})
    cache.stale.set()  # what the watch does on a change
    assert cache.due(100.0) and cache.refresh(100.0)
    assert cache.leases == {"node-2"} and key_of("Node", "", "node-2") in cache["Node"]
    assert not cache.refresh(100.0)  # nothing new


# -- the admission front ----------------------------------------------------------------------
def test_the_front_admits_the_folder_into_the_store_and_remembers_its_files(tmp_path):
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    front = Frontend(ctx)
    front.ensure_system_objects()
    (Path(ctx.cfg.manifests) / "web.yaml").write_text(SVC)
    ctx.dirty = False
    front.step(time.monotonic())
    svc = ctx.store.get(key_of("Service", "default", "web"))
    assert svc["spec"]["clusterIP"] and ctx.dirty  # allocated; the other roles recompute
    assert ctx.store.get(key_of("Service", "default", "kubernetes"))["spec"]["clusterIP"] == ctx.ranges.nth_ip(1)
    saved = ctx.store.get(MANIFEST_KEYS)
    assert list(saved["files"].values()) == [[key_of("Service", "default", "web")]]
    assert ctx.source_of("Service", "default", "web").endswith("web.yaml")
    again = Frontend(ctx)  # a restarted daemon knows what the folder held
    again.start()
    assert again.file_keys == {f: set(k) for f, k in saved["files"].items()}


def test_a_delete_pod_request_is_only_a_mark(tmp_path):
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    front = Frontend(ctx)
    ctx.save(_pod("p", ip="10.244.0.5", ready=True))
    ctx.dirty = False
    front.requests.append({"op": "delete-pod", "namespace": "default", "name": "p"})
    front.handle_requests()
    stored = ctx.store.get(key_of("Pod", "default", "p"))
    assert stored["metadata"]["deletionTimestamp"] and ctx.dirty
    assert stored["status"]["conditions"] == [{"type": "Ready", "status": "False"}]


# -- the controllers --------------------------------------------------------------------------
def test_the_controllers_make_endpoints_from_ready_pods(tmp_path):
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    Frontend(ctx).admit_service({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"name": "web", "namespace": "default"},
                                 "spec": {"selector": {"app": "web"}, "type": "ClusterIP",
                                          "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    ctx.save(_pod("p", ip="10.244.0.5", ready=True))
    Controllers(ctx).sync()
    (sl,) = ctx.cache.list("EndpointSlice")
    assert sl["endpoints"][0]["addresses"] == ["10.244.0.5"] and sl["endpoints"][0]["conditions"]["ready"]
    assert ctx.store.get(key_of("Endpoints", "default", "web"))["subsets"][0]["addresses"][0]["ip"] == "10.244.0.5"


def test_whose_endpoints_is_read_from_the_store_not_asked_of_the_front(tmp_path):
    """The controllers tell their Endpoints by the label upstream's controller puts on them
    (skip-mirror): a user's are mirrored into EndpointSlices and never removed; the API server's
    own (default/kubernetes, selector-less Service) stays; a managed one goes with its Service."""
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    front = Frontend(ctx)
    front.ensure_system_objects()  # default/kubernetes and its Endpoints, as the API server keeps them
    for name, selector in (("web", {"app": "web"}), ("ext", None)):
        front.admit_service({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                             "spec": {**({"selector": selector} if selector else {}), "type": "ClusterIP",
                                      "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    ctx.save({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext", "namespace": "default"},
              "subsets": [{"addresses": [{"ip": "192.0.2.7"}], "ports": [{"port": 8080, "protocol": "TCP"}]}]})
    ctx.save(_pod("p", ip="10.244.0.5", ready=True))
    Controllers(ctx).sync()
    web = ctx.store.get(key_of("Endpoints", "default", "web"))
    assert web["metadata"]["labels"] == {"endpointslice.kubernetes.io/skip-mirror": "true"}
    mirrored = [sl for sl in ctx.cache.list("EndpointSlice")
                if sl["metadata"]["labels"].get("kubernetes.io/service-name") == "ext"]
    assert [ep["addresses"] for sl in mirrored for ep in sl["endpoints"]] == [["192.0.2.7"]]
    ctx.remove("Service", key_of("Service", "default", "web"))
    ctx.remove("Service", key_of("Service", "default", "ext"))
    Controllers(ctx).sync()
    assert ctx.store.get(key_of("Endpoints", "default", "web")) is None      # managed: gone with its Service
    assert ctx.store.get(key_of("Endpoints", "default", "ext")) is not None  # the user's: the user removes it
    assert ctx.store.get(key_of("Endpoints", "default", "kubernetes"))["subsets"][0]["addresses"] == [
        {"ip": "192.168.49.2"}]
    assert not [sl for sl in ctx.cache.list("EndpointSlice")  # the API server's own is not mirrored
                if sl["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by", "").startswith("endpointslicemirroring")
                and sl["metadata"]["labels"].get("kubernetes.io/service-name") == "kubernetes"]


# -- the proxy role ---------------------------------------------------------------------------
def _proxy(tmp_path) -> tuple[Context, ProxyRole, FakeKernel]:
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    kernel = FakeKernel()
    role = ProxyRole(ctx, kernel)
    role.make_proxier()
    return ctx, role, kernel


def _rules(kernel: FakeKernel) -> str:
    return "\n".join(r for chains in kernel.tables.values() for rules in chains.values() for r in rules)


def test_the_proxy_role_programs_the_cache_and_reports_its_sync(tmp_path):
    ctx, role, kernel = _proxy(tmp_path)
    Frontend(ctx).admit_service({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"name": "web", "namespace": "default"},
                                 "spec": {"selector": {"app": "web"}, "type": "ClusterIP",
                                          "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    ctx.save(_pod("p", ip="10.244.0.5", ready=True))
    Controllers(ctx).sync_endpoints()
    ctx.changed(time.time() - 0.5)  # a change seen half a second ago: programming latency
    role.sync()
    ip = ctx.store.get(key_of("Service", "default", "web"))["spec"]["clusterIP"]
    assert f"-d {ip}" in _rules(kernel) and "10.244.0.5:8080" in _rules(kernel)
    status = ctx.store.get(PROXY_STATUS)
    assert status["services"] and not role.triggers and ctx.proxy_syncs == 1
    for table, chains in BUILTIN.items():  # `iptables -F; iptables -X` in every table: the canary is gone
        kernel.tables[table] = {c: [] for c in chains}
    role.last_full_sync = time.monotonic()  # not due for a periodic full sync
    role.resync(time.monotonic())
    assert "10.244.0.5:8080" in _rules(kernel)  # the full resync put them back


def test_a_refused_restore_is_an_event_and_the_next_sync_is_full(tmp_path):
    ctx, role, kernel = _proxy(tmp_path)
    role.sync()
    kernel.fail_next = True
    role.sync(force=True)
    assert [e for _, e in ctx.store.list("/registry/events/") if e["reason"] == "FailedSync"]
    assert ctx.proxy_changes.keys is None  # not known what changed: compare all


# -- the node agent ---------------------------------------------------------------------------
class FakeKubelet:
    """The Kubelet's interface, with no process: a started pod is Running and Ready at once."""

    def __init__(self, log: list):
        self.pods: dict[str, types.SimpleNamespace] = {}
        self.log = log

    def start_pod(self, key: str, pod: dict) -> None:
        self.pods[key] = types.SimpleNamespace(pod=pod, terminating_since=None)
        self.log.append(("start", key))

    def status(self, rt) -> dict:
        return {"phase": "Running", "podIP": rt.pod["status"]["podIP"], "hostIP": "192.168.49.2",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}

    def stop_pod(self, key: str, grace: float | None = None) -> None:
        if self.pods[key].terminating_since is None:
            self.pods[key].terminating_since = time.monotonic()
            self.log.append(("stop", key))

    def tick(self, guard=None) -> dict:
        return {}

    def finished_pods(self) -> list[str]:
        done = [k for k, rt in self.pods.items() if rt.terminating_since is not None]
        return done

    def shutdown(self) -> None:
        pass


def test_the_agent_starts_its_pods_and_reports_their_status(tmp_path):
    ctx = Context(_cfg(tmp_path), SqliteStore(tmp_path / "s.db"), node_ip="192.168.49.2")
    agent = Agent(ctx)
    log: list = []
    agent.kubelet = FakeKubelet(log)
    ctx.save(_pod("mine"))
    ctx.save(_pod("theirs", node="node-2"))
    agent.step()
    assert log == [("start", key_of("Pod", "default", "mine"))]
    status = ctx.store.get(key_of("Pod", "default", "mine"))["status"]
    assert status["podIP"].startswith("10.244.") and status["phase"] == "Running"


def test_endpoints_go_first_and_the_processes_after(tmp_path):
    """The one call across roles that was (`_terminate_pod` -> endpoints, proxy) is now pass
    ordering: the pod is marked, its endpoint goes NotReady and the proxy syncs that, and only
    in a later pass does the agent stop its processes."""
    d = Daemon(_cfg(tmp_path), store=SqliteStore(tmp_path / "s.db"), kernel=FakeKernel())
    d.ctx.node_ip = "192.168.49.2"
    log: list = []
    d.agent.kubelet = FakeKubelet(log)
    d.proxy.make_proxier()
    real_sync = d.proxy.sync

    def sync(force: bool = False):
        real_sync(force)
        eps = [ep for sl in d.ctx.cache.list("EndpointSlice") for ep in sl.get("endpoints", [])
               if ep.get("targetRef", {}).get("name") == "p"]
        log.append(("proxy-sync", [ep["conditions"]["ready"] for ep in eps]))
    d.proxy.sync = sync
    (Path(d.cfg.manifests) / "web.yaml").write_text(SVC)
    d.frontend.step(time.monotonic())
    d.ctx.save(_pod("p"))
    for _ in range(3):  # started, Ready, its endpoint programmed
        d._pass(time.monotonic())
    assert ("proxy-sync", [True]) in log
    key = key_of("Pod", "default", "p")
    log.clear()
    d.frontend.requests.append({"op": "delete-pod", "namespace": "default", "name": "p"})
    d._pass(time.monotonic())
    assert ("stop", key) not in log  # not in the pass that marked it
    assert log[-1] == ("proxy-sync", [False])  # its endpoint is NotReady in the rules
    d._pass(time.monotonic())
    assert log.index(("stop", key)) > log.index(("proxy-sync", [False]))
    d._pass(time.monotonic())  # finished: the agent forgets the pod
    assert d.ctx.store.get(key) is None


def test_a_controller_alone_runs_no_agent_step(tmp_path):
    d = Daemon(_cfg(tmp_path), controller=True, agent=False, store=SqliteStore(tmp_path / "s.db"))
    assert d.agent is None and d.proxy is None and d.frontend is not None
    d.ctx.save(_pod("p", node="node-1"))
    d._pass(time.monotonic())  # nothing runs pods here; endpoints are still computed
    assert d.role == "controller"


@pytest.mark.parametrize("role,expect", [("all", ("frontend", "controllers", "agent", "proxy")),
                                         ("controller", ("frontend", "controllers")),
                                         ("agent", ("agent", "proxy"))])
def test_the_daemon_composes_the_roles_asked_for(tmp_path, role, expect):
    d = Daemon(_cfg(tmp_path), controller=role in ("all", "controller"), agent=role in ("all", "agent"),
               store=SqliteStore(tmp_path / "s.db"))
    have = tuple(n for n in ("frontend", "controllers", "agent", "proxy") if getattr(d, n) is not None)
    assert have == expect and d.role == role
