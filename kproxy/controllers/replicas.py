"""Deployment -> pods, the way the Deployment and ReplicaSet controllers name and count them.

Pods are named `<deployment>-<pod-template-hash>-<5 chars>`; the hash changes with the template,
so editing a Deployment's template replaces its pods, and scaling only adds or removes some.
"""
from __future__ import annotations

import copy
import json
import random

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


def is_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def reconcile_deployment(deploy: dict, pods: list[dict], rng: random.Random, now: str,
                         taken: set[str]) -> tuple[list[dict], list[dict]]:
    """Pods to create and pods to delete so `deploy` has `replicas` pods of its current template.

    `pods` are the pods this Deployment owns. Old-template pods go once enough new ones are
    Ready (a simplified RollingUpdate); surplus pods go not-ready first, then newest first, as
    the ReplicaSet controller ranks them.
    """
    want = deploy["spec"].get("replicas", 1)
    h = pod_template_hash(deploy["spec"]["template"])
    current = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
    old = [p for p in pods if p not in current]
    create: list[dict] = []
    delete: list[dict] = []
    for _ in range(want - len(current)):
        pod = new_pod(deploy, h, rng, taken, now)
        taken.add(pod["metadata"]["name"])
        create.append(pod)
    if len(current) > want:
        # the ReplicaSet controller's ranking: not-ready pods first, then the newest
        ranked = sorted(current, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
        ranked.sort(key=is_ready)
        delete.extend(ranked[: len(current) - want])
    ready_new = sum(1 for p in current if is_ready(p))
    if old and (ready_new >= want or want == 0):
        delete.extend(old)
    return create, delete
