"""Deployment -> pods, the way the Deployment and ReplicaSet controllers name and count them.

Pods are named `<deployment>-<pod-template-hash>-<5 chars>`; the hash changes with the template,
so editing a Deployment's template replaces its pods, and scaling only adds or removes some.

Like the ReplicaSet controller, a pass creates at most BURST_REPLICAS pods, in slow-start batches
(1, 2, 4, ...; the first failure stops the rest), so `replicas: 1000000000` never builds a
billion objects; the daemon also stops creating while MAX_UNSCHEDULED pods wait for a node.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import random
from typing import Callable

from kproxy.api.meta import pod_ready

BURST_REPLICAS = 500     # the ReplicaSet controller's burstReplicas: pods created per pass at most
MAX_UNSCHEDULED = 500    # no new pods while this many wait for room on a node (Pending, no nodeName)
DEFAULT_MAX_PODS = 110   # the kubelet's maxPods, for a Node that reports no capacity

# Kubernetes' rand.String/SafeEncodeString alphabet: no vowels, no look-alike characters.
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(s: str) -> str:
    return "".join(ALPHANUMS[ord(c) % len(ALPHANUMS)] for c in s)


def pod_template_hash(template: dict) -> str:
    """A short stable hash of the pod template, as the pod-template-hash label."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return safe_encode(str(_fnv32a(text)))


def random_suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(ALPHANUMS) for _ in range(n))


def new_pod(deploy: dict, template_hash: str, rng: random.Random, taken: set[str], now: str) -> dict:
    """A Pod for `deploy`, named and labelled as its ReplicaSet would create it."""
    meta = deploy["metadata"]
    template = copy.deepcopy(deploy["spec"]["template"])
    rs_name = f"{meta['name']}-{template_hash}"
    while True:
        name = f"{rs_name}-{random_suffix(rng)}"
        if name not in taken:
            break
    labels = dict(template.get("metadata", {}).get("labels", {}))
    labels["pod-template-hash"] = template_hash
    pod_meta = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels,
        "creationTimestamp": now,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if template.get("metadata", {}).get("annotations"):
        pod_meta["annotations"] = dict(template["metadata"]["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec", {}),
            "status": {"phase": "Pending"}}


def owner_deployment(pod: dict) -> str | None:
    """The name of the Deployment whose ReplicaSet owns `pod`, if any."""
    for ref in pod["metadata"].get("ownerReferences", []):
        if ref.get("kind") == "ReplicaSet" and ref.get("controller"):
            return ref["name"].rsplit("-", 1)[0]
    return None


def slow_start_batch(count: int, create: Callable[[int], None], initial: int = 1) -> int:
    """The ReplicaSet controller's slowStartBatch: call create(i) for i in 0..count-1 in batches
    of 1, 2, 4, ...; a batch that raises ends it (the rest waits for the next pass). Returns how
    many were created; re-raises the first error after its batch."""
    done, batch = 0, min(count, initial)
    while batch > 0:
        error = None
        for i in range(done, done + batch):
            try:
                create(i)
            except Exception as e:  # noqa: BLE001 - the caller reports it; the batch still ends
                error = error or e
                break
            done += 1
        if error is not None:
            raise error
        batch = min(2 * batch, count - done)
    return done


def node_capacity(node: dict) -> int:
    """How many pods `node` takes: status.allocatable.pods, else its pod CIDR's usable addresses
    (the pods' IPs come from it), else the kubelet's default maxPods."""
    status = node.get("status") or {}
    for block in ("allocatable", "capacity"):
        value = (status.get(block) or {}).get("pods")
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                break
    cidr = (node.get("spec") or {}).get("podCIDR")
    return pod_cidr_capacity(cidr) if cidr else DEFAULT_MAX_PODS


def pod_cidr_capacity(cidr: str) -> int:
    """Pod addresses a node's CIDR holds: all but network, broadcast and the bridge's .1 (253 for
    a /24), as allocation.allocate_pod_ip hands them out."""
    return max(0, ipaddress.ip_network(cidr, strict=False).num_addresses - 3)


def pods_per_node(pods) -> dict[str, int]:
    """Node name -> pods bound to it, terminating ones too (they hold their address until gone)."""
    counts: dict[str, int] = {}
    for p in pods:
        node = p["spec"].get("nodeName")
        if node:
            counts[node] = counts.get(node, 0) + 1
    return counts


def too_many_pods(ready: int, full: int, not_ready: int = 0, unmatched: int = 0) -> str:
    """The scheduler's FailedScheduling message when no Ready node has room (or matches the
    pod's nodeSelector: `unmatched`); reasons sorted as FitError.Error sorts them."""
    reasons = [f"{not_ready} node(s) had untolerated taint {{node.kubernetes.io/unreachable: }}"] if not_ready else []
    if full:
        reasons.append(f"{full} Too many pods")
    if unmatched:
        reasons.append(f"{unmatched} node(s) didn't match Pod's node affinity/selector")
        reasons.sort()
    total = ready + not_ready
    if not total:
        return "no nodes available to schedule pods"
    return f"0/{total} nodes are available: {', '.join(reasons)}."


def reconcile_deployment(deploy: dict, pods: list[dict], rng: random.Random, now: str,
                         taken: set[str], limit: int = BURST_REPLICAS) -> tuple[list[dict], list[dict]]:
    """Pods to create and pods to delete so `deploy` has `replicas` pods of its current template.

    `pods` are the pods this Deployment owns. At most `limit` (and BURST_REPLICAS) pods are
    created per call: the rest come in later passes. Old-template pods go once enough new ones
    are Ready (a simplified RollingUpdate); surplus pods go not-ready first, then newest first,
    as the ReplicaSet controller ranks them.
    """
    want = deploy["spec"].get("replicas", 1)
    h = pod_template_hash(deploy["spec"]["template"])
    current = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
    old = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") != h]
    create: list[dict] = []
    delete: list[dict] = []
    for _ in range(max(0, min(want - len(current), limit, BURST_REPLICAS))):
        pod = new_pod(deploy, h, rng, taken, now)
        taken.add(pod["metadata"]["name"])
        create.append(pod)
    if len(current) > want:
        # the ReplicaSet controller's ranking: not-ready pods first, then the newest
        ranked = sorted(current, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        ranked.sort(key=pod_ready)
        delete.extend(ranked[: len(current) - want])
    ready_new = sum(1 for p in current if pod_ready(p))
    if old and (ready_new >= want or want == 0):
        delete.extend(old)
    return create, delete
