"""Deployment -> pods (controllers/replicas.py): pod names, template hash, owner references and
the create/delete decisions of `reconcile_deployment`."""

from __future__ import annotations

import copy
import random
import re

import pytest

from kproxy.api.meta import pod_ready as is_ready  # the one Ready test (replicas, endpoints, printers)
from kproxy.controllers.replicas import (
    ALPHANUMS,
    BURST_REPLICAS,
    _fnv32a,
    new_pod,
    node_capacity,
    owner_deployment,
    pod_cidr_capacity,
    pod_template_hash,
    reconcile_deployment,
    safe_encode,
    slow_start_batch,
    too_many_pods,
)

NOW = "2024-05-01T12:00:00Z"


def deployment(name="web", replicas=3, image="nginx:1.25", ns="default"):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"note": "x"}},
                "spec": {"containers": [{"name": "c", "image": image, "ports": [{"containerPort": 80}]}]},
            },
        },
    }


def pod_of(deploy, suffix, ready=True, created=NOW, template_hash=None):
    """A pod as the controller would have created it, with a chosen name suffix/readiness/age."""
    h = template_hash or pod_template_hash(deploy["spec"]["template"])
    pod = new_pod(deploy, h, random.Random(0), set(), created)
    pod["metadata"]["name"] = f"{deploy['metadata']['name']}-{h}-{suffix}"
    pod["status"] = {"phase": "Running",
                     "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return pod


def names(pods):
    return [p["metadata"]["name"] for p in pods]


# ------------------------------------------------------------------ hashing and naming


def test_alphabet_is_kubernetes_safe_alphabet():
    assert ALPHANUMS == "bcdfghjklmnpqrstvwxz2456789"


@pytest.mark.parametrize("data, value", [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)])
def test_fnv32a_known_vectors(data, value):
    assert _fnv32a(data) == value


def test_safe_encode_maps_digits_like_upstream():
    # upstream rand.SafeEncodeString: alphanums[b % len(alphanums)]
    assert safe_encode("0123456789") == "456789bcdf"


def test_template_hash_is_stable_and_follows_the_template():
    d = deployment()
    h = pod_template_hash(d["spec"]["template"])
    assert re.fullmatch(f"[{ALPHANUMS}]+", h)
    assert pod_template_hash(copy.deepcopy(d["spec"]["template"])) == h
    # key order does not matter
    reordered = dict(reversed(list(d["spec"]["template"].items())))
    assert pod_template_hash(reordered) == h
    assert pod_template_hash(deployment(image="nginx:1.26")["spec"]["template"]) != h
    # replicas are not part of the template
    assert pod_template_hash(deployment(replicas=7)["spec"]["template"]) == h
    # the value is safe_encode of the decimal FNV-1a hash of the canonical JSON
    assert h == safe_encode(str(_fnv32a(
        b'{"metadata":{"annotations":{"note":"x"},"labels":{"app":"web"}},'
        b'"spec":{"containers":[{"image":"nginx:1.25","name":"c","ports":[{"containerPort":80}]}]}}')))


def test_new_pod_name_labels_and_owner():
    d = deployment()
    h = pod_template_hash(d["spec"]["template"])
    pod = new_pod(d, h, random.Random(7), set(), NOW)
    meta = pod["metadata"]
    assert re.fullmatch(rf"web-{h}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", meta["name"])
    assert meta["namespace"] == "default"
    assert meta["labels"] == {"app": "web", "pod-template-hash": h}
    assert meta["annotations"] == {"note": "x"}
    assert meta["creationTimestamp"] == NOW
    assert meta["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"web-{h}",
                                        "controller": True, "blockOwnerDeletion": True}]
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert pod["spec"] == d["spec"]["template"]["spec"]
    assert pod["status"] == {"phase": "Pending"}
    # the pod does not share the deployment's label dict
    meta["labels"]["x"] = "y"
    assert "x" not in d["spec"]["template"]["metadata"]["labels"]


def test_new_pod_avoids_taken_names():
    d = deployment()
    h = pod_template_hash(d["spec"]["template"])
    first = new_pod(d, h, random.Random(3), set(), NOW)["metadata"]["name"]
    again = new_pod(d, h, random.Random(3), {first}, NOW)["metadata"]["name"]
    assert again != first
    assert again.startswith(f"web-{h}-")


@pytest.mark.parametrize("deploy_name", ["web", "my-web-app", "a-b-c-d"])
def test_owner_deployment_recovers_the_name(deploy_name):
    d = deployment(deploy_name)
    pod = new_pod(d, pod_template_hash(d["spec"]["template"]), random.Random(1), set(), NOW)
    assert owner_deployment(pod) == deploy_name


def test_owner_deployment_none_without_controller_replicaset():
    assert owner_deployment({"metadata": {}}) is None
    assert owner_deployment({"metadata": {"ownerReferences": [
        {"kind": "ReplicaSet", "name": "web-abc", "controller": False},
        {"kind": "StatefulSet", "name": "db", "controller": True}]}}) is None


def test_is_ready():
    assert is_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not is_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert not is_ready({"status": {"conditions": [{"type": "ContainersReady", "status": "True"}]}})
    assert not is_ready({})


# ------------------------------------------------------------------ reconcile


def test_creates_the_missing_pods():
    d = deployment(replicas=3)
    existing = pod_of(d, "bbbbb")
    taken = {"unrelated", existing["metadata"]["name"]}
    create, delete = reconcile_deployment(d, [existing], random.Random(5), NOW, taken)
    assert delete == []
    assert len(create) == 2
    assert len(set(names(create)) | {existing["metadata"]["name"]}) == 3
    # new names are recorded as taken so the next Deployment does not reuse them
    assert taken == {"unrelated", existing["metadata"]["name"], *names(create)}
    h = pod_template_hash(d["spec"]["template"])
    assert all(p["metadata"]["labels"]["pod-template-hash"] == h for p in create)
    assert all(p["metadata"]["creationTimestamp"] == NOW for p in create)


def test_default_replicas_is_one():
    d = deployment()
    del d["spec"]["replicas"]
    create, delete = reconcile_deployment(d, [], random.Random(5), NOW, set())
    assert len(create) == 1 and delete == []


def test_nothing_to_do_when_in_sync():
    d = deployment(replicas=2)
    pods = [pod_of(d, "bbbbb"), pod_of(d, "ccccc")]
    assert reconcile_deployment(d, pods, random.Random(5), NOW, set()) == ([], [])


def test_scale_down_deletes_not_ready_first_then_newest():
    d = deployment(replicas=2)
    old_ready = pod_of(d, "ggggg", ready=True, created="2024-05-01T10:00:00Z")
    mid_ready = pod_of(d, "bbbbb", ready=True, created="2024-05-01T11:00:00Z")
    new_ready = pod_of(d, "ccccc", ready=True, created="2024-05-01T11:30:00Z")
    oldest_unready = pod_of(d, "ddddd", ready=False, created="2024-05-01T09:00:00Z")
    newer_unready = pod_of(d, "fffff", ready=False, created="2024-05-01T09:30:00Z")
    pods = [old_ready, mid_ready, new_ready, oldest_unready, newer_unready]

    create, delete = reconcile_deployment(d, pods, random.Random(5), NOW, set())
    assert create == []
    assert names(delete) == names([newer_unready, oldest_unready, new_ready])

    d["spec"]["replicas"] = 4
    _, delete = reconcile_deployment(d, pods, random.Random(5), NOW, set())
    assert names(delete) == names([newer_unready])


def test_scale_to_zero_deletes_everything():
    d = deployment(replicas=0)
    pods = [pod_of(d, "bbbbb"), pod_of(d, "ccccc", ready=False)]
    create, delete = reconcile_deployment(d, pods, random.Random(5), NOW, set())
    assert create == []
    assert sorted(names(delete)) == sorted(names(pods))


def test_old_template_pods_stay_until_all_wanted_new_pods_are_ready():
    """The rule: old pods go once ready new pods >= min(replicas, new pods), or replicas == 0."""
    old_d = deployment(replicas=2, image="nginx:1.25")
    d = deployment(replicas=2, image="nginx:1.26")
    old_pods = [pod_of(old_d, "bbbbb"), pod_of(old_d, "ccccc")]

    half = [pod_of(d, "ddddd", ready=True), pod_of(d, "fffff", ready=False)]
    create, delete = reconcile_deployment(d, old_pods + half, random.Random(5), NOW, set())
    assert create == [] and delete == []

    both = [pod_of(d, "ddddd", ready=True), pod_of(d, "fffff", ready=True)]
    create, delete = reconcile_deployment(d, old_pods + both, random.Random(5), NOW, set())
    assert create == []
    assert names(delete) == names(old_pods)


def test_old_template_pods_go_with_surplus_new_pods():
    old_d = deployment(replicas=1, image="nginx:1.25")
    d = deployment(replicas=1, image="nginx:1.26")
    old_pod = pod_of(old_d, "bbbbb")
    new_ready = pod_of(d, "ccccc", ready=True, created="2024-05-01T11:00:00Z")
    new_unready = pod_of(d, "ddddd", ready=False, created="2024-05-01T10:00:00Z")
    create, delete = reconcile_deployment(d, [old_pod, new_ready, new_unready], random.Random(5), NOW, set())
    assert create == []
    assert names(delete) == names([new_unready, old_pod])


def test_old_template_pods_go_at_once_when_scaled_to_zero():
    old_d = deployment(replicas=2, image="nginx:1.25")
    d = deployment(replicas=0, image="nginx:1.26")
    old_pods = [pod_of(old_d, "bbbbb"), pod_of(old_d, "ccccc")]
    create, delete = reconcile_deployment(d, old_pods, random.Random(5), NOW, set())
    assert create == []
    assert names(delete) == names(old_pods)


def test_template_change_keeps_old_pods_while_new_ones_start():
    old_d = deployment(replicas=2, image="nginx:1.25")
    d = deployment(replicas=2, image="nginx:1.26")
    old_pods = [pod_of(old_d, "bbbbb"), pod_of(old_d, "ccccc")]
    create, delete = reconcile_deployment(d, old_pods, random.Random(5), NOW, set())
    assert len(create) == 2
    assert delete == []


def test_old_pods_stay_while_fewer_new_pods_than_replicas_are_ready():
    old_d = deployment(replicas=3, image="nginx:1.25")
    d = deployment(replicas=3, image="nginx:1.26")
    old_pods = [pod_of(old_d, s) for s in ("bbbbb", "ccccc", "ddddd")]
    create, delete = reconcile_deployment(d, old_pods + [pod_of(d, "fffff")], random.Random(5), NOW, set())
    assert len(create) == 2
    assert delete == []


# ------------------------------------------------------------------ a billion replicas (issue 12 #3)


def test_a_billion_replicas_make_one_burst_of_pods_not_a_billion():
    d = deployment(replicas=1_000_000_000)
    create, delete = reconcile_deployment(d, [], random.Random(1), NOW, set())
    assert len(create) == BURST_REPLICAS and not delete
    create, _ = reconcile_deployment(d, [], random.Random(1), NOW, set(), limit=7)
    assert len(create) == 7
    create, _ = reconcile_deployment(d, [], random.Random(1), NOW, set(), limit=0)
    assert create == []


def test_slow_start_batches_double_and_stop_at_the_first_failure():
    calls = []
    assert slow_start_batch(10, calls.append) == 10 and calls == list(range(10))

    sizes = []

    def fail_at_5(i):
        if i == 5:
            raise OSError("store away")
        sizes.append(i)
    with pytest.raises(OSError):
        slow_start_batch(100, fail_at_5)
    assert sizes == [0, 1, 2, 3, 4]  # batches 1, 2, then the batch of 4 stopped: nothing after it
    assert slow_start_batch(0, calls.append) == 0


def test_node_capacity_and_the_schedulers_words():
    assert pod_cidr_capacity("10.244.0.0/24") == 253
    assert node_capacity({"status": {"allocatable": {"pods": "110"}}}) == 110
    assert node_capacity({"spec": {"podCIDR": "10.244.1.0/24"}, "status": {}}) == 253
    assert node_capacity({}) == 110
    assert too_many_pods(1, 1) == "0/1 nodes are available: 1 Too many pods."
    assert too_many_pods(3, 3) == "0/3 nodes are available: 3 Too many pods."
    assert too_many_pods(2, 2, 1) == ("0/3 nodes are available: 1 node(s) had untolerated taint "
                                      "{node.kubernetes.io/unreachable: }, 2 Too many pods.")
