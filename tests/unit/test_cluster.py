"""Multi-node logic without root: the emulated lab's addressing, the scheduler, node lifecycle
and the controller/agent split of the daemon over one store (SQLite standing in for etcd)."""
from __future__ import annotations

import collections

import pytest

from kproxy.cluster import commands, lab
from kproxy.config import LabConfig
from kproxy.controllers import pods as podw
from kproxy.context import key_of
from kproxy.daemon import Daemon
from kproxy.store.cache import NODE_LEASES


def test_emulated_nodes_get_their_own_address_pod_cidr_and_state(tmp_path):
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, nodes=3)
    ctl = lab.controller_config(cfg)
    assert (ctl.node_name, ctl.node_ip, ctl.store_url) == ("node-1", "192.168.49.2", "https://192.168.49.2:2379")
    assert (ctl.store_ca, ctl.store_cert) == (f"{tmp_path}/pki/ca.crt", f"{tmp_path}/pki/controller.crt")
    nodes = [lab.node_config(ctl, i) for i in (1, 2, 3)]
    assert [n.node_ip for n in nodes] == ["192.168.49.2", "192.168.49.3", "192.168.49.4"]
    assert [n.node_pod_cidr for n in nodes] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert {n.naming.prefix for n in nodes} == {cfg.naming.prefix}  # one lab, one prefix
    assert [n.naming.node_netns for n in nodes] == [f"{cfg.naming.prefix}-node{i}" for i in (1, 2, 3)]
    assert len({n.state_dir for n in nodes} | {ctl.state_dir}) == 4
    assert [n.store_cert for n in nodes] == [f"{tmp_path}/pki/node-node-{i}.crt" for i in (1, 2, 3)]
    assert nodes[1].naming.switch_port == f"{cfg.naming.prefix}-n2" and len(nodes[1].naming.switch_port) <= 15


def test_command_lines_are_the_units_command_lines(tmp_path):
    argv = commands.agent_argv("/opt/kproxy/.venv/bin/kproxy", "/var/lib/kproxy", "https://10.0.0.1:2379",
                               "node-2", "10.0.0.2", "10.244.2.0/24")
    assert argv[1:4] == ["agent", "--state-dir", "/var/lib/kproxy"] and "--sandbox" not in argv
    assert _flags(argv, "--store-ca", "--store-cert", "--store-key") == [
        "/var/lib/kproxy/pki/ca.crt", "/var/lib/kproxy/pki/node-node-2.crt", "/var/lib/kproxy/pki/node-node-2.key"]
    etcd = commands.etcd_argv("node-1", "/d", "10.0.0.1", "/p")
    assert "https://10.0.0.1:2379,https://127.0.0.1:2379" in etcd


def _flags(argv: list[str], *names: str) -> list[str]:
    return [argv[argv.index(n) + 1] for n in names]


def test_etcd_serves_tls_only_and_asks_every_client_and_peer_for_a_certificate():
    """Finding 8: etcd listened in plain text with no authentication on the node address."""
    etcd = commands.etcd_argv("node-1", "/d", "10.0.0.1", "/s/pki")
    assert "--client-cert-auth" in etcd and "--peer-client-cert-auth" in etcd
    assert _flags(etcd, "--trusted-ca-file", "--cert-file", "--key-file") == [
        "/s/pki/ca.crt", "/s/pki/etcd-server-node-1.crt", "/s/pki/etcd-server-node-1.key"]
    assert _flags(etcd, "--peer-trusted-ca-file", "--peer-cert-file", "--peer-key-file") == [
        "/s/pki/ca.crt", "/s/pki/etcd-peer-node-1.crt", "/s/pki/etcd-peer-node-1.key"]
    urls = _flags(etcd, "--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                  "--initial-advertise-peer-urls")
    assert all(u.startswith("https://") for url in urls for u in url.split(",")), urls
    assert not any("http://" in a for a in etcd)
    ctl = commands.controller_argv("kproxy", "/s", commands.store_url("10.0.0.1"), "/m")
    assert _flags(ctl, "--store", "--store-ca", "--store-cert", "--store-key") == [
        "https://10.0.0.1:2379", "/s/pki/ca.crt", "/s/pki/controller.crt", "/s/pki/controller.key"]


def _daemon(tmp_path, role: str, node: str = "node-1") -> Daemon:
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, node_name=node)
    d = Daemon(cfg, controller=role == "controller", agent=role == "agent")
    d.ctx.shared = d.ctx.cache.shared = d.ctx.leader = True  # as on etcd: other processes write the store too
    return d


def _node(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}


def _pod(name: str, owner: str | None = None, node: str | None = None) -> dict:
    meta = {"name": name, "namespace": "default", "labels": {"app": owner or name}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": f"{owner}-abc", "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c"}], **({"nodeName": node} if node else {})}, "status": {}}


@pytest.fixture
def controller(tmp_path):
    d = _daemon(tmp_path, "controller")
    for n in ("node-1", "node-2", "node-3"):
        d.ctx.save(_node(n))
    d.ctx.cache.leases = {"node-1", "node-2", "node-3"}
    return d


def test_the_scheduler_spreads_a_deployment_first(controller):
    controller.ctx.save(_pod("other-1", node="node-1"))  # another app's pod already on node-1
    controller.ctx.save(_pod("other-2", node="node-1"))
    for i in range(6):
        podw.schedule(controller.ctx, _pod(f"web-{i}", owner="web"))
    web = [p for p in controller.ctx.objects["Pod"].values() if p["metadata"]["name"].startswith("web-")]
    assert collections.Counter(p["spec"]["nodeName"] for p in web) == {"node-1": 2, "node-2": 2, "node-3": 2}
    events = [e for _, e in controller.store.list("/registry/events/") if e["reason"] == "Scheduled"]
    assert len(events) == 6


def test_a_pod_waits_for_a_ready_node(controller):
    controller.ctx.cache.leases = set()
    podw.schedule(controller.ctx, _pod("lonely"))
    stored = controller.store.get(key_of("Pod", "default", "lonely"))
    assert "nodeName" not in stored["spec"]
    controller.ctx.cache.leases = {"node-2"}
    controller.controllers.reconcile_pods()  # a later pass places it
    assert controller.store.get(key_of("Pod", "default", "lonely"))["spec"]["nodeName"] == "node-2"


def test_a_node_whose_lease_lapsed_goes_not_ready_with_its_pods(controller):
    pod = _pod("p", node="node-2")
    pod["status"] = {"phase": "Running", "podIP": "10.244.2.2",
                     "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}
    controller.ctx.save(pod)
    controller.ctx.cache.leases = {"node-1", "node-3"}
    controller.controllers.node_lifecycle()
    node = controller.store.get(key_of("Node", "", "node-2"))
    assert node["status"]["conditions"][0]["status"] == "Unknown"
    assert node["status"]["conditions"][0]["reason"] == "NodeStatusUnknown"
    stored = controller.store.get(key_of("Pod", "default", "p"))
    assert {c["type"]: c["status"] for c in stored["status"]["conditions"]} == {"Ready": "False",
                                                                                "ContainersReady": "False"}
    assert controller.ctx.ready_nodes() == ["node-1", "node-3"]
    controller.ctx.cache.leases = {"node-1", "node-2", "node-3"}  # the agent is back
    controller.controllers.node_lifecycle()
    assert controller.store.get(key_of("Node", "", "node-2"))["status"]["conditions"][0]["status"] == "True"


def test_an_agent_writes_status_over_the_controllers_deletion_mark(tmp_path):
    """Both roles write a pod: the agent's status write keeps the controller's deletionTimestamp."""
    ctl, agent = _daemon(tmp_path, "controller"), _daemon(tmp_path, "agent", "node-2")
    ctl.ctx.save(_pod("p", node="node-2"))
    agent.ctx.cache.list_all()
    podw.terminate(ctl.ctx, key_of("Pod", "default", "p"))
    podw.write_pod_status(agent.ctx, key_of("Pod", "default", "p"), {"phase": "Running", "podIP": "10.244.2.9"})
    stored = ctl.store.get(key_of("Pod", "default", "p"))
    assert stored["metadata"].get("deletionTimestamp") and stored["status"]["podIP"] == "10.244.2.9"


def test_the_cache_follows_other_writers_and_leases(tmp_path):
    a, b = _daemon(tmp_path, "controller"), _daemon(tmp_path, "agent", "node-2")
    a.ctx.cache.list_all()
    b.ctx.save(_node("node-2"))
    b.store.put(NODE_LEASES + "node-2", {"kind": "Lease"})
    a.ctx.dirty = False
    a._refresh(0.0)
    assert a.ctx.dirty and "node-2" in a.ctx.cache.leases and key_of("Node", "", "node-2") in a.ctx.objects["Node"]


def test_a_pod_that_names_its_node_gets_no_scheduled_event(controller):
    """The scheduler never saw it (spec.nodeName set by its author), so it says nothing."""
    podw.schedule(controller.ctx, _pod("pinned", node="node-2"))
    assert controller.store.get(key_of("Pod", "default", "pinned"))["spec"]["nodeName"] == "node-2"
    assert not [e for _, e in controller.store.list("/registry/events/") if e["reason"] == "Scheduled"]
