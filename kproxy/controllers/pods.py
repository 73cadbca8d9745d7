"""Pod writes more than one role makes: binding (the scheduler), the deletion mark, forgetting a
gone pod, status writes. Functions over the shared Context, not a role's methods.

Why here: the admission front deletes and replaces bare Pods and binds new ones as the API
server + scheduler do, the controllers do the same for Deployments, the agent forgets the pods
it finished and writes their status. Each write is a read-modify-write transaction on the
store (another process may write the same pod: the controller its deletionTimestamp, the agent
its status), then the cache.

Deleting a pod is only a mark (deletionTimestamp, NotReady): the controllers take its
endpoints away in the same pass, the proxy role programs that, and the node agent stops the
processes in a later pass (see kproxy/daemon.py: "endpoints first, processes after").
"""
from __future__ import annotations

from kproxy.context import Context, key_of, obj_id
from kproxy.controllers import allocation, replicas
from kproxy.node.kubelet import now_iso
from kproxy.store.etcd import retry


def capacities(ctx: Context) -> dict[str, int]:
    """Ready node -> how many pods it takes (its allocatable pods; our own pod CIDR's size
    while our Node is not registered yet)."""
    nodes = {n["metadata"]["name"]: n for n in ctx.objects["Node"].values()}
    return {name: replicas.node_capacity(nodes[name]) if name in nodes
            else replicas.pod_cidr_capacity(ctx.cfg.node_pod_cidr) for name in ctx.ready_nodes()}


def schedule(ctx: Context, pod: dict, bound: dict[str, int] | None = None) -> None:
    """The scheduler, in brief: among Ready nodes with room for one more pod (its allocatable
    pods; `bound` counts the pods each node has, kept up to date here), the one with the
    fewest (ties by name). No room: the pod stays Pending with PodScheduled=False and one
    FailedScheduling event (written again only when the reason changes, not every pass)."""
    if not pod["spec"].get("nodeName"):
        if bound is None:
            bound = replicas.pods_per_node(ctx.objects["Pod"].values())
        caps = capacities(ctx)
        ready = len(caps)
        selector = pod["spec"].get("nodeSelector") or {}
        if selector:  # NodeAffinity's filter: a pod for `disk: ssd` ran on any node
            caps = {n: c for n, c in caps.items() if selector.items() <= node_labels(ctx, n).items()}
        fits = [n for n, cap in caps.items() if bound.get(n, 0) < cap]
        if not fits:
            not_ready = len({n["metadata"]["name"] for n in ctx.objects["Node"].values()} - set(capacities(ctx)))
            message = replicas.too_many_pods(ready, len(caps), not_ready, ready - len(caps)) if ready else ""
            unschedulable(ctx, pod, message)
            return
        # spread a Deployment's pods first (the default topology spread), then all pods
        load = {n: [0, 0] for n in fits}
        owner = (pod["metadata"]["namespace"], replicas.owner_deployment(pod))
        for p in ctx.objects["Pod"].values():
            if p["spec"].get("nodeName") in load and not p["metadata"].get("deletionTimestamp"):
                load[p["spec"]["nodeName"]][0] += (p["metadata"]["namespace"], replicas.owner_deployment(p)) == owner
                load[p["spec"]["nodeName"]][1] += 1
        pod["spec"]["nodeName"] = min(load, key=lambda n: (*load[n], n))
        bound[pod["spec"]["nodeName"]] = bound.get(pod["spec"]["nodeName"], 0) + 1
        if any(c.get("type") == "PodScheduled" for c in (pod.get("status") or {}).get("conditions", [])):
            pod["status"] = {"phase": "Pending"}  # it was unschedulable: the kubelet reports from here
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        ctx.save(pod)
        ctx.event("Pod", ns, name, "Scheduled", f"Successfully assigned {ns}/{name} to {pod['spec']['nodeName']}",
                  "Normal")
        return
    ctx.save(pod)  # it named its node itself: the scheduler never saw it, so no Scheduled event


def node_labels(ctx: Context, name: str) -> dict:
    """A node's labels; the kubelet's own ones while its Node is not registered yet."""
    for node in ctx.objects["Node"].values():
        if node["metadata"]["name"] == name:
            return node["metadata"].get("labels") or {}
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}


def unschedulable(ctx: Context, pod: dict, message: str) -> None:
    """A pod no node takes now: Pending, PodScheduled=False with the scheduler's reason, one
    FailedScheduling event; nothing is written while the reason stays the same. No Ready
    node at all (message ""): only saved, as before a node registers."""
    status = pod.setdefault("status", {"phase": "Pending"})
    conds = status.get("conditions") or []
    if message and any(c.get("type") == "PodScheduled" and c.get("message") == message for c in conds):
        return
    if not message and "uid" in pod["metadata"] and key_of("Pod", pod["metadata"]["namespace"],
                                                            pod["metadata"]["name"]) in ctx.objects["Pod"]:
        return
    if message:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": message, "lastTransitionTime": now_iso()}]
    ctx.save(pod)
    if message:
        ctx.event("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], "FailedScheduling", message)


def terminate(ctx: Context, key: str) -> None:
    """Mark the pod terminating (deletionTimestamp, NotReady): the controllers drop its endpoints
    this pass, the proxy role programs that, its node's agent stops it in a later pass. A pod
    never bound to a node is gone at once, as the API server does."""
    pod = ctx.objects["Pod"].get(key)
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        return
    if not pod["spec"].get("nodeName"):
        forget(ctx, key, pod)
        return
    uid, stamp = pod["metadata"].get("uid"), now_iso()

    def mark(txn):
        cur = txn.get(key)
        if cur is None or cur["metadata"].get("uid") != uid:
            return None
        cur["metadata"]["deletionTimestamp"] = stamp
        for cond in cur.get("status", {}).get("conditions", []):
            if cond["type"] in ("Ready", "ContainersReady"):
                cond["status"] = "False"
        for cs in cur.get("status", {}).get("containerStatuses", []):  # READY 0/1, as kubectl counts
            cs["ready"] = False
        txn.put(key, cur)
        return cur
    pod = retry(ctx.store, mark)
    if pod is None:
        ctx.objects["Pod"].pop(key, None)
        return
    ctx.objects["Pod"][key] = pod
    ctx.dirty = True


def forget(ctx: Context, key: str, pod: dict) -> None:
    """A pod that is gone: free its IP and delete it (this very pod, not a successor of the
    same name), in one transaction."""
    def txn_forget(txn):
        allocation.release_pod_ip(txn, pod.get("status", {}).get("podIP"))
        cur = txn.get(key)
        if cur is not None and cur["metadata"].get("uid") == pod["metadata"].get("uid"):
            txn.delete(key)
    retry(ctx.store, txn_forget)
    if (ctx.objects["Pod"].get(key) or {}).get("metadata", {}).get("uid") == pod["metadata"].get("uid"):
        ctx.objects["Pod"].pop(key, None)


def write_pod_status(ctx: Context, key: str, status: dict | None, not_ready: bool = False) -> None:
    """Write a pod's status (or only turn it NotReady) over whatever else changed it since:
    the controller writes the same object (deletionTimestamp), so read-modify-write."""
    def write(txn):
        cur = txn.get(key)
        if cur is None:
            return None
        if not_ready:
            for c in cur.get("status", {}).get("conditions", []):
                if c["type"] in ("Ready", "ContainersReady"):
                    c["status"] = "False"
            for cs in cur.get("status", {}).get("containerStatuses", []):  # READY 0/1, as kubectl counts
                cs["ready"] = False
        else:
            cur["status"] = status
        txn.put(key, cur)
        return cur
    pod = retry(ctx.store, write)
    if pod is not None:
        ctx.objects["Pod"][key] = pod


def write_status(ctx: Context, obj: dict, status: dict) -> None:
    """Write an object's status over what another writer changed since (its spec may have been
    re-admitted by another controller meanwhile)."""
    kind, ns, name = obj_id(obj)
    key, uid = key_of(kind, ns, name), obj["metadata"].get("uid")

    def write(txn):
        cur = txn.get(key)
        if cur is None or cur["metadata"].get("uid") != uid:
            return None
        cur["status"] = status
        txn.put(key, cur)
        return cur
    cur = retry(ctx.store, write)
    if cur is not None:
        ctx.objects[kind][key] = cur
