"""The node agent (the kubelet's part of kproxy, and the node's network): registers its Node,
runs the pods bound to it (kubelet.py: processes in their own network namespaces, probes,
restarts), writes their status, sets the routes to the other nodes' pod CIDRs and answers ARP
for the LoadBalancer IPs this node is elected to announce (layer 2, MetalLB-style). The node's
heartbeat lease is held by kproxy/leases.py.

Each pass `step` runs the pods; `sync` (when something changed) the announcements and routes.
A pod marked for deletion (deletionTimestamp) is stopped in the pass AFTER the agent first sees
the mark: that pass's controllers and proxy role have taken its endpoints away by then, so no
request meets a dying pod (see kproxy/daemon.py).
"""
from __future__ import annotations

import json
import logging
import subprocess
import time

from kproxy.context import Context, key_of
from kproxy.controllers import allocation, endpoints, loadbalancer, replicas
from kproxy.controllers import pods as podw
from kproxy.node.kubelet import Kubelet
from kproxy.node.l2announce import Announcer
from kproxy.node.network import NodeNetwork
from kproxy.store.etcd import retry

log = logging.getLogger("kproxy")


class Agent:
    def __init__(self, ctx: Context):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.network = NodeNetwork(ctx.naming, ctx.node_cfg, ctx.state / "host-sysctls.json")
        self.kubelet: Kubelet | None = None
        self.announcer: Announcer | None = None
        self.start_failures: dict[str, float] = {}  # pod key -> when to try starting it again
        self.routes: dict = {}  # host-gw routes (or VXLAN peers) last set
        self.marked: dict[tuple[str, str], int] = {}  # (pod key, uid) going away -> ctx.proxy_syncs then

    # -- start and stop -------------------------------------------------------------------
    def setup(self) -> None:
        """Before entering the node's namespace: its links and namespace (network.py)."""
        self.network.setup()

    def start_kubelet(self) -> None:
        """Inside the node's namespace (every thread lives there)."""
        self.kubelet = Kubelet(self.network, self.ctx.node_ip, self.cfg.logs, self.pod_event,
                               cluster_dns=self.ctx.ranges.nth_ip(10), domain=self.cfg.cluster_domain)

    def start(self) -> None:
        """After the cache is listed: this node's pods start afresh (the agent restarted)."""
        for key, pod in list(self.ctx.objects["Pod"].items()):
            if pod["spec"].get("nodeName") not in (None, self.cfg.node_name):
                continue
            if pod["metadata"].get("deletionTimestamp"):  # it was going away: it is gone
                self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
                podw.forget(self.ctx, key, pod)
                continue
            if not self.ctx.shared:
                pod["status"] = {"phase": "Pending", "podIP": pod.get("status", {}).get("podIP")}

    def stop(self) -> None:
        if self.announcer:
            self.announcer.stop()
        if self.kubelet:
            self.kubelet.shutdown()
        if not self.ctx.shared:
            for pod in self.ctx.objects["Pod"].values():  # pods are gone: so are their addresses
                pod["status"] = {"phase": "Pending"}

    def teardown(self) -> None:
        """A stopped node takes its links and (sandbox) namespace with it."""
        self.network.teardown()

    def pod_event(self, pod: dict, reason: str, message: str, etype: str) -> None:
        m = pod["metadata"]
        self.ctx.event("Pod", m["namespace"], m["name"], reason, message, etype)

    # -- each pass ------------------------------------------------------------------------
    def step(self) -> None:
        """Every pass: this node's pods (probes, restarts, status, terminations)."""
        self.run_local_pods()

    def sync(self) -> None:
        """A pass where something changed: layer-2 announcements, routes to the other nodes."""
        self.announce_load_balancers()
        try:
            self.sync_routes()
        except Exception as e:  # noqa: BLE001 - no routes to other nodes must not stop the rules
            log.exception("routes to the other nodes failed")
            self.ctx.node_event("FailedRoutes", f"{type(e).__name__}: {e}")

    def run_local_pods(self) -> None:
        """run this node's pods, report their status, finish the terminating ones."""
        pods, me = self.ctx.objects["Pod"], self.cfg.node_name
        live = {(k, p["metadata"].get("uid")) for k, p in pods.items() if p["metadata"].get("deletionTimestamp")}
        live |= {(k, rt.pod["metadata"].get("uid")) for k, rt in self.kubelet.pods.items()}
        self.marked = {m: gen for m, gen in self.marked.items() if m in live}
        for key, rt in list(self.kubelet.pods.items()):  # what runs here and should not any more
            cur = pods.get(key)
            if cur is None or cur["metadata"].get("uid") != rt.pod["metadata"].get("uid") \
                    or cur["spec"].get("nodeName") != me:
                if self.endpoints_gone(key, rt.pod):
                    self.kubelet.stop_pod(key, grace=2)  # deleted, or replaced by a new pod of that name
        try:
            for key, pod in list(pods.items()):
                if pod["spec"].get("nodeName") != me:
                    continue
                with self.ctx.confined("FailedSync", "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]):
                    self.sync_local_pod(key, pod)
        finally:  # probes and restarts of every pod, whatever happened above; one pod's failure is its own
            self.kubelet.tick(guard=lambda p: self.ctx.confined("FailedSync", "Pod", p["metadata"]["namespace"],
                                                                p["metadata"]["name"]))
        ran = {k: rt.pod for k, rt in self.kubelet.pods.items()}
        for key in self.kubelet.finished_pods():
            old, cur = ran[key], pods.get(key)
            if cur is not None and cur["metadata"].get("uid") == old["metadata"].get("uid"):
                if cur["metadata"].get("deletionTimestamp"):
                    podw.forget(self.ctx, key, cur)
            elif old.get("status", {}).get("podIP") != (cur or {}).get("status", {}).get("podIP"):
                retry(self.ctx.store, lambda txn, ip=old.get("status", {}).get("podIP"): allocation.release_pod_ip(txn, ip))
            self.ctx.dirty = True

    def sync_local_pod(self, key: str, pod: dict) -> None:
        """one pod of this node: stop it, start it, or report its status."""
        rt = self.kubelet.pods.get(key)
        if pod["metadata"].get("deletionTimestamp"):
            if not self.endpoints_gone(key, pod):
                return
            if rt is not None:
                self.kubelet.stop_pod(key)
            else:  # never started here (or the agent restarted): nothing to wait for
                self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
                podw.forget(self.ctx, key, pod)
        elif rt is None and self.start_failures.get(key, 0) <= time.monotonic():
            self.start_pod(key, pod)
        elif rt is not None and rt.pod["metadata"].get("uid") == pod["metadata"].get("uid") \
                and rt.terminating_since is None:
            want = self.kubelet.status(rt)  # what the store says may have been lost or
            if pod.get("status") != want:   # overwritten (etcd away, node marked NotReady)
                podw.write_pod_status(self.ctx, key, want)
                self.ctx.dirty = True
                self.ctx.changed(time.time())

    def endpoints_gone(self, key: str, pod: dict) -> bool:
        """Endpoints first, processes after: a pod going away is stopped only once the proxy role
        has synced after this agent first saw it go (that sync no longer sends it requests)."""
        mark = (key, pod["metadata"].get("uid"))
        if mark not in self.marked:
            self.marked[mark] = self.ctx.proxy_syncs
            self.ctx.dirty = True  # this pass syncs the proxy (whoever marked it said so too)
            return False
        return self.ctx.proxy_syncs > self.marked[mark]

    def start_pod(self, key: str, pod: dict) -> None:
        ip = pod.get("status", {}).get("podIP")
        def take(txn):
            if ip and txn.get(f"{allocation.POD_IPS}{ip}") in (None, key) \
                    and allocation.in_cidr(ip, self.cfg.node_pod_cidr):
                txn.put(f"{allocation.POD_IPS}{ip}", key)
                return ip
            return allocation.allocate_pod_ip(txn, self.cfg.node_pod_cidr, key)
        ip = retry(self.ctx.store, take)
        status = {"phase": "Pending", "podIP": ip, "hostIP": self.ctx.node_ip}
        try:
            self.kubelet.start_pod(key, {**pod, "status": status})
            status = self.kubelet.status(self.kubelet.pods[key])
        except Exception as e:  # noqa: BLE001 - one pod failing to start must not stop the node
            log.exception("cannot start pod %s", key)
            self.start_failures[key] = time.monotonic() + 5  # retry later, not every pass
            self.ctx.event("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], "FailedCreatePodSandBox", str(e))
        podw.write_pod_status(self.ctx, key, status)
        self.ctx.dirty = True

    def announce_load_balancers(self) -> None:
        """answer ARP for the LoadBalancer IPs this node is elected to announce (MetalLB's
        layer-2 mode: one node per IP, the same choice on every node; another when it goes)."""
        pools = self.ctx.pools()
        l2ads = list(self.ctx.objects["L2Advertisement"].values())
        ready = self.ctx.ready_nodes()
        announce: set[str] = set()
        for svc in list(self.ctx.objects["Service"].values()):
            if not loadbalancer.wants_ip(svc):
                continue
            with self.ctx.confined("AnnounceFailed", "Service", svc["metadata"]["namespace"], svc["metadata"]["name"]):
                nodes = ready
                if svc["spec"].get("externalTrafficPolicy") == "Local":  # MetalLB: only where endpoints live
                    nodes = sorted(set(ready) & self.endpoint_nodes(svc))
                for ing in svc.get("status", {}).get("loadBalancer", {}).get("ingress", []):
                    ip = ing.get("ip")
                    if not ip or loadbalancer.announcing_node(ip, nodes) != self.cfg.node_name:
                        continue
                    pool = next((p for p in pools if p.contains(ip)), None)
                    if not pools or pool and (pool.name == "default" and self.cfg.lb_pools
                                              or loadbalancer.advertised(pool.name, l2ads)):
                        announce.add(ip)
        if announce or self.announcer is not None:
            if self.announcer is None:  # its own supervised thread: a failure is seen and retried
                self.announcer = Announcer(self.ctx.naming.lab_link if self.cfg.sandbox else self.host_iface())
                self.ctx.supervise("announcer", lambda: self.announcer.run(ready=lambda: self.ctx.components.ok("announcer")))
            self.announcer.set_ips(announce)

    def endpoint_nodes(self, svc: dict) -> set[str]:
        """Nodes with a ready endpoint of `svc`."""
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        return {ep.get("nodeName") for sl in self.ctx.objects["EndpointSlice"].values()
                if sl["metadata"].get("namespace") == ns
                and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name
                for ep in sl.get("endpoints", []) if ep.get("conditions", {}).get("ready", True)}

    def host_iface(self) -> str:
        """The interface holding the node's address (a VM's private network, not its NAT)."""
        for line in subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[3].split("/")[0] == self.ctx.node_ip:
                return parts[1]
        out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout.split()
        return out[out.index("dev") + 1] if "dev" in out else "lo"

    def sync_routes(self) -> None:
        """Agent (multi-node): routes to the other nodes' pod CIDRs, host-gw or over VXLAN."""
        if not self.ctx.shared:
            return
        routes = {}
        for node in self.ctx.objects["Node"].values():
            addr = next((a["address"] for a in node.get("status", {}).get("addresses", [])
                         if a["type"] == "InternalIP"), None)
            cidr = node.get("spec", {}).get("podCIDR")
            if node["metadata"]["name"] == self.cfg.node_name or not addr or not cidr:
                continue
            if self.cfg.overlay == "vxlan":
                data = (node["metadata"].get("annotations") or {}).get("flannel.alpha.coreos.com/backend-data")
                if data:
                    routes[cidr] = (addr, json.loads(data)["VtepMAC"])
            else:
                routes[cidr] = addr
        if routes != self.routes:
            if self.cfg.overlay == "vxlan":
                self.network.set_vxlan_peers(routes)
            else:
                self.network.set_peer_routes(routes)
            self.routes = routes

    def register_node(self) -> None:
        """the Node object of this node (its address and pod CIDR), Ready. It takes as many
        pods as its pod CIDR has addresses for them (253 for a /24; the kubelet's default maxPods
        is 110, but a pod here needs nothing but an address): capacity = allocatable pods."""
        pods = replicas.pod_cidr_capacity(self.cfg.node_pod_cidr)
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.cfg.node_name, "labels": {"kubernetes.io/hostname": self.cfg.node_name,
                                                                    "kubernetes.io/os": "linux"}},
                "spec": {"podCIDR": self.cfg.node_pod_cidr, "podCIDRs": [self.cfg.node_pod_cidr]},
                "status": {"capacity": {"pods": str(pods)}, "allocatable": {"pods": str(pods)},
                           "addresses": [{"type": "InternalIP", "address": self.ctx.node_ip},
                                         {"type": "Hostname", "address": self.cfg.node_name}],
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                           "nodeInfo": {"kubeProxyVersion": "kproxy", "kubeletVersion": "kproxy"}}}
        if self.ctx.shared:  # the node etcd (the control plane) runs on, as kubeadm labels it
            from urllib.parse import urlsplit
            role = "control-plane" if urlsplit(self.cfg.store_url).hostname == self.ctx.node_ip else "worker"
            node["metadata"]["labels"][f"node-role.kubernetes.io/{role}"] = ""
        annotations = node["metadata"].setdefault("annotations", {})
        if self.cfg.sandbox:  # where `kproxy exec node/NAME` and `kproxy rules --node` go
            annotations["kproxy.io/netns"] = self.ctx.naming.node_netns
        if self.ctx.shared and self.cfg.overlay == "vxlan":  # what flannel publishes for its peers
            mac = self.network.setup_vxlan(self.ctx.node_ip)
            annotations.update({"flannel.alpha.coreos.com/backend-type": "vxlan",
                                "flannel.alpha.coreos.com/backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}),
                                "flannel.alpha.coreos.com/public-ip": self.ctx.node_ip})
        self.ctx.new_meta(node, self.ctx.objects["Node"].get(key_of("Node", "", self.cfg.node_name)))
        self.ctx.save(node)

