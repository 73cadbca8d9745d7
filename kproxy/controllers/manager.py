"""The controllers (kube-controller-manager's part of kproxy): Deployments -> pods, scheduled
to nodes; node lifecycle; Deployment status and scaling events; EndpointSlices and Endpoints
from Ready pods; LoadBalancer IPs from the pools. Service allocation happens at admission (the
admission front, as the API server allocates ClusterIPs and NodePorts).

Only the leader runs them (multi-node: the controller holding the leader lease; single node:
always). Each pass `reconcile` runs every time (pods wait for no change); `sync` when something
changed (`ctx.dirty`). They read the cache and write the store; a pod to delete is only marked
(controllers/pods.py `terminate`): its endpoints go in this pass's `sync`, before its node's
agent stops it (see kproxy/daemon.py).
"""
from __future__ import annotations

import json
import logging

from kproxy.api import meta
from kproxy.context import Context, key_of
from kproxy.controllers import endpoints, loadbalancer, replicas
from kproxy.controllers import pods as podw
from kproxy.node.kubelet import now_iso
from kproxy.store.etcd import retry

log = logging.getLogger("kproxy")


class Controllers:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.rs_size: dict[tuple[str, str], int] = {}  # (namespace, ReplicaSet) -> pods it last had

    def reconcile(self) -> None:
        """Every pass (leader only): pods of Deployments, scheduling, node lifecycle."""
        self.reconcile_pods()

    def sync(self) -> None:
        """A pass where something changed (leader only): LoadBalancer IPs, then endpoints."""
        self.sync_load_balancers()
        self.sync_endpoints()

    def reconcile_pods(self) -> None:
        """Controller: Deployments -> pods, scheduled to nodes; pods of a gone owner terminate.

        Pods waiting for a node are placed first; then each Deployment gets new pods, at most
        BURST_REPLICAS a pass in slow-start batches, and only while fewer than MAX_UNSCHEDULED
        pods wait for room: `replicas: 1000000000` makes the nodes' capacity + 500 pods."""
        pods = self.ctx.objects["Pod"]
        live_deploys = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in self.ctx.objects["Deployment"].values()}
        bound = replicas.pods_per_node(pods.values())
        waiting = 0
        for key, pod in list(pods.items()):
            owner = replicas.owner_deployment(pod)
            if owner and (pod["metadata"]["namespace"], owner) not in live_deploys:
                podw.terminate(self.ctx, key)
            elif not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                podw.schedule(self.ctx, pod, bound)  # no node was Ready (or had room) when it was made
                waiting += not pod["spec"].get("nodeName")
        free = sum(max(0, cap - bound.get(n, 0)) for n, cap in podw.capacities(self.ctx).items())
        taken = {p["metadata"]["name"] for p in pods.values()}
        for dkey, deploy in list(self.ctx.objects["Deployment"].items()):
            ns, dname = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            with self.ctx.confined("FailedReconcile", "Deployment", ns, dname):  # one Deployment only
                owned = [p for p in pods.values() if p["metadata"]["namespace"] == ns
                         and replicas.owner_deployment(p) == dname and not p["metadata"].get("deletionTimestamp")]
                limit = max(0, free + replicas.MAX_UNSCHEDULED - waiting)
                create, delete = replicas.reconcile_deployment(deploy, owned, self.ctx.rng, now_iso(), taken, limit)
                made: list[dict] = []

                def make(i: int, create=create, made=made) -> None:
                    self.ctx.new_meta(create[i], None)
                    podw.schedule(self.ctx, create[i], bound)
                    made.append(create[i])
                try:
                    replicas.slow_start_batch(len(create), make)
                except Exception as e:  # noqa: BLE001 - the rest of this Deployment's pods wait for the next pass
                    log.exception("creating pods of deployment %s/%s failed", ns, dname)
                    self.ctx.event("Deployment", ns, dname, "FailedCreate", f"Error creating: {e}")
                for pod in create[len(made):]:
                    taken.discard(pod["metadata"]["name"])
                placed = sum(1 for p in made if p["spec"].get("nodeName"))
                free, waiting = max(0, free - placed), waiting + len(made) - placed
                self.scaling_events(deploy, owned, made, delete)
                for pod in delete:
                    podw.terminate(self.ctx, key_of("Pod", ns, pod["metadata"]["name"]))
        self.deployment_status()
        if self.ctx.shared:
            self.node_lifecycle()

    def node_lifecycle(self) -> None:
        """Controller (multi-node): a Node whose lease lapsed turns Ready=Unknown and its pods
        NotReady (so their endpoints go), as Kubernetes' node lifecycle controller does."""
        for key, node in list(self.ctx.objects["Node"].items()):
            name = node["metadata"]["name"]
            alive = name in self.ctx.cache.leases
            cond = next((c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
            if cond is not None and (cond["status"] == "True") != alive:
                new = {"status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"} \
                    if alive else {"status": "Unknown", "reason": "NodeStatusUnknown",
                                   "message": "Kubelet stopped posting node status."}

                def mark(txn, key=key, new=new):
                    cur = txn.get(key)
                    if cur is not None:
                        for c in cur.get("status", {}).get("conditions", []):
                            if c["type"] == "Ready":
                                c.update(new)
                        txn.put(key, cur)
                    return cur
                node = retry(self.ctx.store, mark) or node
                self.ctx.objects["Node"][key] = node
                word = "NodeReady" if alive else "NodeNotReady"
                self.ctx.event("Node", "", name, word, f"Node {name} status is now: {word}", "Normal")
                self.ctx.dirty = True
            if alive:
                continue
            for pkey, pod in list(self.ctx.objects["Pod"].items()):
                if pod["spec"].get("nodeName") == name and meta.pod_ready(pod):
                    podw.write_pod_status(self.ctx, pkey, None, not_ready=True)
                    self.ctx.dirty = True

    def scaling_events(self, deploy: dict, owned: list[dict], create: list[dict], delete: list[dict]) -> None:
        """The Deployment controller's ScalingReplicaSet events, one per ReplicaSet that changes."""
        by_rs: dict[str, list[int]] = {}
        for pod in owned:
            rs = pod["metadata"]["ownerReferences"][0]["name"]
            by_rs.setdefault(rs, [0, 0])[0] += 1
        for pod in create:
            by_rs.setdefault(pod["metadata"]["ownerReferences"][0]["name"], [0, 0])[1] += 1
        for pod in delete:
            by_rs.setdefault(pod["metadata"]["ownerReferences"][0]["name"], [0, 0])[1] -= 1
        ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
        for rs, (before, delta) in sorted(by_rs.items()):
            after = before + delta
            last = self.rs_size.get((ns, rs), before)
            self.rs_size[(ns, rs)] = after
            if delta and after != last:  # a replaced pod (self-healing) is not a scaling
                word = "up" if after > last else "down"
                self.ctx.event("Deployment", ns, name, "ScalingReplicaSet",
                           f"Scaled {word} replica set {rs} from {last} to {after}", "Normal")

    def deployment_status(self) -> None:
        for deploy in list(self.ctx.objects["Deployment"].values()):
            ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            with self.ctx.confined("FailedUpdateStatus", "Deployment", ns, name):
                h = replicas.pod_template_hash(deploy["spec"]["template"])
                owned = [p for p in self.ctx.objects["Pod"].values() if p["metadata"]["namespace"] == ns
                         and replicas.owner_deployment(p) == name and not p["metadata"].get("deletionTimestamp")]
                ready = sum(1 for p in owned if meta.pod_ready(p))
                status = {"observedGeneration": 1, "replicas": len(owned), "readyReplicas": ready,
                          "availableReplicas": ready,
                          "updatedReplicas": sum(1 for p in owned
                                                 if p["metadata"]["labels"].get("pod-template-hash") == h)}
                if deploy.get("status") != status:
                    podw.write_status(self.ctx, deploy, status)

    # -- endpoints and LoadBalancer IPs --------------------------------------------------
    def sync_endpoints(self) -> None:
        pods_by_ns: dict[str, list[dict]] = {}
        for pod in self.ctx.objects["Pod"].values():
            pods_by_ns.setdefault(pod["metadata"]["namespace"], []).append(pod)
        want_slices: dict[str, dict] = {}
        want_eps: dict[str, dict] = {}
        # the store says whose Endpoints are whose: a user's are mirrored, never removed here
        user_eps = {k for k, ep in self.ctx.objects["Endpoints"].items() if not endpoints.managed(ep)}
        for svc in list(self.ctx.objects["Service"].values()):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            got = None
            with self.ctx.confined("FailedToUpdateEndpointSlices", "Service", ns, name):
                got = self.endpoints_of(svc, pods_by_ns, user_eps)
            if got is None:  # this Service failed: it keeps the endpoints it had
                ep_key = key_of("Endpoints", ns, name)
                got = ({k: sl for k, sl in self.ctx.objects["EndpointSlice"].items()
                        if sl["metadata"].get("namespace") == ns
                        and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name},
                       {ep_key: self.ctx.objects["Endpoints"][ep_key]} if ep_key in self.ctx.objects["Endpoints"] else {})
            want_slices.update(got[0])
            want_eps.update(got[1])
        managed = {k for k, sl in self.ctx.objects["EndpointSlice"].items()
                   if sl["metadata"].get("labels", {}).get(endpoints.MANAGED_BY)}
        for key in managed - set(want_slices):
            self.ctx.remove("EndpointSlice", key)
        services = self.ctx.objects["Service"]
        for key, ep in list(self.ctx.objects["Endpoints"].items()):
            svc = services.get(key_of("Service", ep["metadata"]["namespace"], ep["metadata"]["name"]))
            # a managed Endpoints goes with its Service (or its selector); a selector-less Service's
            # (default/kubernetes: the API server's own) is left alone, as upstream's controller does
            if endpoints.managed(ep) and key not in want_eps and (svc is None or svc["spec"].get("selector")):
                self.ctx.remove("Endpoints", key)
        for kind, want in (("EndpointSlice", want_slices), ("Endpoints", want_eps)):
            for key, obj in want.items():
                old = self.ctx.objects[kind].get(key)
                if old is not None:
                    comparable = {k: v for k, v in old.items() if k != "metadata"}
                    if comparable == {k: v for k, v in obj.items() if k != "metadata"} \
                            and old["metadata"].get("labels") == obj["metadata"].get("labels"):
                        continue
                self.ctx.new_meta(obj, old)
                self.ctx.save(obj)
                if kind == "EndpointSlice":
                    self.ctx.metrics.endpoint_changes.inc()

    def endpoints_of(self, svc: dict, pods_by_ns: dict, user_eps: set[str]) -> tuple[dict, dict]:
        """One Service's wanted EndpointSlices and Endpoints, by key."""
        spec, meta = svc["spec"], svc["metadata"]
        want_slices, want_eps = {}, {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            ep_key = key_of("Endpoints", meta["namespace"], meta["name"])
            if ep_key in user_eps and ep_key in self.ctx.objects["Endpoints"]:
                for sl in endpoints.mirror_endpoints(self.ctx.objects["Endpoints"][ep_key]):
                    want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
            return want_slices, want_eps
        slices = endpoints.slices_for_service(svc, pods_by_ns.get(meta["namespace"], []), self.ctx.cfg.node_name)
        for sl in slices:
            want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
        want_eps[key_of("Endpoints", meta["namespace"], meta["name"])] = endpoints.endpoints_from_slices(svc, slices)
        return want_slices, want_eps

    def sync_load_balancers(self) -> None:
        """Controller: give each LoadBalancer Service an IP from the pools (or leave it <pending>
        with an event saying why) and free the IPs of the others."""
        pools = self.ctx.pools()
        held: dict[str, list[str]] = {}  # owner -> LB IPs it holds, read once for the pass
        for k, owner in self.ctx.store.list(loadbalancer.LB_IPS):
            held.setdefault(owner, []).append(k.rsplit("/", 1)[1])
        for key, svc in list(self.ctx.objects["Service"].items()):
            if not loadbalancer.wants_ip(svc) and not (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") \
                    and f"{svc['metadata']['namespace']}/{svc['metadata']['name']}" not in held:
                continue  # nothing to give or take back (most Services): no confined step
            with self.ctx.confined("AllocationFailed", "Service", svc["metadata"]["namespace"], svc["metadata"]["name"]):
                self.sync_load_balancer(svc, pools, held)

    def sync_load_balancer(self, svc: dict, pools: list, held: dict[str, list[str]]) -> None:
        """One LoadBalancer Service: its IP from the pools, or none (and an event why)."""
        owner = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
        ingress_now = svc.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        if not loadbalancer.wants_ip(svc):  # not (or no longer) a LoadBalancer of ours
            if owner in held:
                retry(self.ctx.store, lambda txn: loadbalancer.release(txn, owner))
            if ingress_now and svc["spec"].get("type") != "LoadBalancer":
                podw.write_status(self.ctx, svc, {**svc["status"], "loadBalancer": {}})
            return
        if not pools:  # no pools: a status written in the manifest stands, like a cloud's
            return
        current = sorted(held.get(owner, []))
        try:
            ips = retry(self.ctx.store, lambda txn: loadbalancer.allocate(txn, svc, pools, current))
        except loadbalancer.PoolError as e:
            ips = []
            self.ctx.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "AllocationFailed",
                       str(e))
        ingress = [{"ip": ip, "ipMode": "VIP"} for ip in ips]
        if svc.get("status", {}).get("loadBalancer", {}).get("ingress") != ingress:
            podw.write_status(self.ctx, svc, {**svc.get("status", {}), "loadBalancer": {"ingress": ingress} if ingress else {}})
            if ips:
                self.ctx.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "IPAllocated",
                           f"Assigned IP {json.dumps(ips)}", "Normal")

