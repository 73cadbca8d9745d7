"""The controller and scheduler under `replicas: 1000000000` (issue 12 #3): pods beyond the
nodes' capacity stay Pending with one FailedScheduling event each, and at most MAX_UNSCHEDULED
of them exist; the Node reports its capacity."""
from __future__ import annotations

import tracemalloc

import pytest

from kproxy.config import LabConfig
from kproxy.controllers import pods as podw
from kproxy.controllers import replicas
from kproxy.context import key_of
from kproxy.daemon import Daemon

TOO_MANY = "0/1 nodes are available: 1 Too many pods."


def _deployment(n: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bomb", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": n, "selector": {"matchLabels": {"app": "bomb"}},
                     "template": {"metadata": {"labels": {"app": "bomb"}},
                                  "spec": {"containers": [{"name": "c"}]}}}}


@pytest.fixture
def ctl(tmp_path, monkeypatch):
    """A single-node controller whose node takes 3 pods, with at most 5 pods waiting for room."""
    monkeypatch.setattr(replicas, "MAX_UNSCHEDULED", 5)
    d = Daemon(LabConfig(state_dir=str(tmp_path), sandbox=True), controller=True, agent=True)
    d.agent.register_node()
    node = d.ctx.objects["Node"][key_of("Node", "", "node-1")]
    assert node["status"]["capacity"] == {"pods": "253"} == node["status"]["allocatable"]  # a /24
    node["status"]["allocatable"]["pods"] = "3"
    return d


def _events(d: Daemon, reason: str) -> list[dict]:
    return [e for _, e in d.store.list("/registry/events/") if e["reason"] == reason]


def test_pods_beyond_capacity_stay_pending_with_one_event_each(ctl):
    ctl.ctx.save(_deployment(1_000_000_000))
    for _ in range(3):
        ctl.controllers.reconcile_pods()
    pods = list(ctl.ctx.objects["Pod"].values())
    assert len(pods) == 3 + 5  # capacity + MAX_UNSCHEDULED, not a billion
    bound = [p for p in pods if p["spec"].get("nodeName") == "node-1"]
    waiting = [p for p in pods if not p["spec"].get("nodeName")]
    assert len(bound) == 3 and len(waiting) == 5
    for p in waiting:
        assert p["status"]["phase"] == "Pending"
        assert p["status"]["conditions"][0] | {"lastTransitionTime": ""} == {
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": TOO_MANY,
            "lastTransitionTime": ""}
    failed = _events(ctl, "FailedScheduling")
    assert len(failed) == 5 and {e["message"] for e in failed} == {TOO_MANY}
    assert all(e["count"] == 1 for e in failed)  # once per pod, not once per pass
    deploy = ctl.ctx.objects["Deployment"][key_of("Deployment", "default", "bomb")]
    assert deploy["status"]["replicas"] == 8


def test_a_freed_slot_goes_to_a_waiting_pod(ctl):
    ctl.ctx.save(_deployment(1_000_000_000))
    ctl.controllers.reconcile_pods()
    gone = next(p for p in ctl.ctx.objects["Pod"].values() if p["spec"].get("nodeName"))
    podw.forget(ctl.ctx, key_of("Pod", "default", gone["metadata"]["name"]), gone)
    ctl.controllers.reconcile_pods()
    pods = list(ctl.ctx.objects["Pod"].values())
    bound = [p for p in pods if p["spec"].get("nodeName")]
    assert len(bound) == 3 and len(pods) == 8
    for p in bound:  # the one placed now no longer says it is unschedulable
        assert not p.get("status", {}).get("conditions")


def test_deleting_the_deployment_removes_the_waiting_pods_at_once(ctl):
    ctl.ctx.save(_deployment(1_000_000_000))
    ctl.controllers.reconcile_pods()
    ctl.ctx.remove("Deployment", key_of("Deployment", "default", "bomb"))
    ctl.controllers.reconcile_pods()
    pods = list(ctl.ctx.objects["Pod"].values())
    assert len(pods) == 3 and all(p["metadata"].get("deletionTimestamp") for p in pods)


def test_a_billion_replicas_stay_small_in_memory(tmp_path):
    d = Daemon(LabConfig(state_dir=str(tmp_path), sandbox=True), controller=True, agent=True)
    d.agent.register_node()
    d.ctx.objects["Node"][key_of("Node", "", "node-1")]["status"]["allocatable"]["pods"] = "0"
    d.ctx.save(_deployment(1_000_000_000))
    tracemalloc.start()
    try:
        d.controllers.reconcile_pods()
        d.controllers.reconcile_pods()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(d.ctx.objects["Pod"]) == replicas.MAX_UNSCHEDULED
    assert peak < 100 * 2**20
