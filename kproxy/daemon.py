"""The kproxy daemon: API server, controllers, kubelet and kube-proxy of one node, in one loop.

Every pass: load the manifests folder if it changed (the desired state), admit each object
(defaults, validation, allocation), let Deployments make pods, let the kubelet run them,
derive EndpointSlices from Ready pods, and render + apply the iptables rules when they
changed. A bad manifest is reported as an event and skipped; everything else keeps working.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from kproxy.control import read_line
from kproxy.api import defaults, errors, manifest, meta, validation
from kproxy.config import LabConfig
from kproxy.controllers import allocation, endpoints, loadbalancer, replicas
from kproxy.node.kubelet import Kubelet, now_iso
from kproxy.node.l2announce import Announcer
from kproxy.node.network import NodeConfig, NodeNetwork, enter_netns
from kproxy.proxy import applier, healthcheck, metrics, proxier, render
from kproxy.store.base import object_key
from kproxy.store.sqlite import SqliteStore

log = logging.getLogger("kproxy")

SYSTEM_NAMESPACES = meta.SYSTEM_NAMESPACES
USER_KINDS = meta.ADMITTED_KINDS
MANIFEST_KEYS = "/kproxy/manifest-keys"      # objects that came from the manifests folder
MANIFEST_ERRORS = "/kproxy/manifest-errors"
PROXY_STATUS = "/kproxy/proxy-status"
POLL_PERIOD = 0.25


def obj_id(obj: dict) -> tuple[str, str, str]:
    m = obj["metadata"]
    return obj["kind"], m.get("namespace", ""), m["name"]


def key_of(kind: str, ns: str, name: str) -> str:
    return object_key(kind, ns or None, name)


def manifest_signature(folder: Path) -> tuple:
    """Names, sizes and mtimes of the manifest files: polling this works on shared folders too."""
    if not folder.is_dir():
        return ()
    sig = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.endswith((".yaml", ".yml", ".json")) and not f.startswith("."):
                st = os.stat(os.path.join(root, f))
                sig.append((root, f, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def host_ip() -> str:
    """The host's primary address, for a node that is the real host (a route lookup, no packet)."""
    out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout
    parts = out.split()
    return parts[parts.index("src") + 1] if "src" in parts else "127.0.0.1"


class Daemon:
    def __init__(self, cfg: LabConfig):
        self.cfg = cfg
        self.state = Path(cfg.state_dir)
        self.store = SqliteStore(self.state / "store.db")
        self.naming = cfg.naming
        self.node_cfg = NodeConfig(node_name=cfg.node_name, sandbox=cfg.sandbox, pod_cidr=cfg.node_pod_cidr,
                                   cluster_cidr=cfg.cluster_cidr, service_cidr=cfg.service_cidr,
                                   lab_cidr=cfg.lab_cidr)
        self.node_ip = self.node_cfg.node_ip if cfg.sandbox else host_ip()
        self.network = NodeNetwork(self.naming, self.node_cfg, self.state / "host-sysctls.json")
        self.ranges = allocation.ServiceRanges(cfg.service_cidr, tuple(cfg.node_port_range))
        self.rng = random.Random()
        self.objects: dict[str, dict[str, dict]] = {k: {} for k in (*USER_KINDS, "Node")}
        self.sources: dict[str, dict] = {}       # key -> defaulted manifest object last admitted
        self.file_keys: dict[str, set[str]] = {}  # manifest file -> keys it held
        self.signature: tuple | None = None
        self.file_cache: dict[str, tuple] = {}  # manifest file -> ((mtime, size), its documents)
        self.doc_memo: dict[int, tuple] = {}  # id(document) -> (document, namespaces, defaulted, check)
        self.applier = applier.Applier()
        self.proxier: proxier.Proxier | None = None
        self.metrics = metrics.ProxyMetrics()
        self.health = healthcheck.ProxyHealth(cfg.iptables_sync_period)
        self.http = healthcheck.HttpEndpoints()
        self.triggers: list[float] = []  # wall-clock times of changes not yet programmed
        self.kubelet: Kubelet | None = None
        self.stopping = threading.Event()
        self.poke = threading.Event()
        self.cond = threading.Condition()
        self.generation = 0
        self.ready = False
        self.requests: list[dict] = []
        self.start_failures: dict[str, float] = {}
        self.system_keys: set[str] = set()
        self.announcer: Announcer | None = None
        self.rs_size: dict[tuple[str, str], int] = {}  # (namespace, ReplicaSet) -> pods it last had  # objects kproxy itself keeps (default/kubernetes)  # pod key -> when to try starting it again
        self.dirty = True
        self.last_full_sync = 0.0
        self.last_canary = 0.0

    # -- start and stop -------------------------------------------------------------------
    def run(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "daemon.pid").write_text(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        try:
            self.network.setup()
            if self.cfg.sandbox:
                enter_netns(self.naming.node_netns)  # before any thread: all of them live there
            self.kubelet = Kubelet(self.network, self.node_ip, self.state / "logs", self._pod_event,
                                   cluster_dns=self.ranges.nth_ip(10), domain=self.cfg.cluster_domain)
            self.proxier = proxier.Proxier(render.ProxyConfig(
                cluster_cidr=self.cfg.cluster_cidr, node_name=self.cfg.node_name, node_ips=[self.node_ip],
                masquerade_all=self.cfg.masquerade_all), applier=self.applier)
            self.http.start("healthz", self.cfg.healthz_bind_address, self.health.answer)
            self.http.start("metrics", self.cfg.metrics_bind_address, self._metrics_answer)
            self._load_store()
            self._ensure_system_objects()
            threading.Thread(target=self._serve_control, daemon=True, name="control").start()
            self._loop()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down")
        self.http.stop()
        if self.announcer:
            self.announcer.stop()
        if self.kubelet:
            self.kubelet.shutdown()
        for pod in self.objects["Pod"].values():  # pods are gone: so are their addresses
            pod["status"] = {"phase": "Pending"}
        try:
            if not self.cfg.sandbox and applier.have_iptables():
                self.applier.cleanup()
        finally:
            self.network.teardown()
        for f in ("daemon.pid", "kproxy.sock"):
            (self.state / f).unlink(missing_ok=True)

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        next_poll = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                if now >= next_poll:
                    next_poll = now + POLL_PERIOD
                    self._poll_manifests()
                self._pass(now)
            except Exception as e:  # noqa: BLE001 - the node keeps running; the next pass retries
                log.exception("reconcile pass failed")
                self.event("Node", "", self.cfg.node_name, "ReconcileFailed", f"{type(e).__name__}: {e}")
                self.dirty = True
                time.sleep(1)
            with self.cond:
                self.generation += 1
                self.ready = True
                self.cond.notify_all()
            self.poke.wait(0.1)
            if self.poke.is_set():
                self.poke.clear()
                next_poll = 0.0  # a poke (kproxy apply) re-reads the folder now

    def _poll_manifests(self) -> None:
        sig = manifest_signature(Path(self.cfg.manifests))
        if sig == self.signature:
            return
        if self.signature is not None:  # when the change was written, for programming latency
            self.triggers.append(max((s[3] for s in sig), default=time.time_ns()) / 1e9)
        self.signature, self.dirty = sig, True
        self._load_manifests()

    def _pass(self, now: float) -> None:
        self._handle_requests()
        self._run_pods()
        if self.dirty:
            self.dirty = False
            self._sync_load_balancers()
            self._sync_endpoints()
            self._sync_proxy()
        elif now - self.last_full_sync > self.cfg.iptables_sync_period:
            self._sync_proxy(force=True)  # restores rules flushed or deleted by hand
        elif now - self.last_canary > 5.0:
            self.last_canary = now
            if not self.applier.canary_present():  # someone flushed the tables: resync now
                log.warning("KUBE-PROXY-CANARY is gone: the tables were flushed; full resync")
                self._sync_proxy(force=True)

    # -- store ----------------------------------------------------------------------------
    def _load_store(self) -> None:
        for kind in self.objects:
            prefix = object_key(kind, None, "")
            for _, obj in self.store.list(prefix):
                m = obj["metadata"]
                self.objects[kind][key_of(kind, m.get("namespace", ""), m["name"])] = obj
        for key, pod in list(self.objects["Pod"].items()):  # the daemon restarted: pods start afresh
            if pod["metadata"].get("deletionTimestamp"):  # it was going away: it is gone
                with self.store.transaction() as txn:
                    allocation.release_pod_ip(txn, pod.get("status", {}).get("podIP"))
                self._remove("Pod", key)
                continue
            pod["status"] = {"phase": "Pending", "podIP": pod.get("status", {}).get("podIP")}
        saved = self.store.get(MANIFEST_KEYS) or {}
        self.file_keys = {f: set(keys) for f, keys in saved.get("files", {}).items()}
        self.sources = saved.get("sources", {})

    def _save(self, obj: dict) -> None:
        kind, ns, name = obj_id(obj)
        key = key_of(kind, ns, name)
        self.objects[kind][key] = obj
        self.store.put(key, obj)

    def _remove(self, kind: str, key: str) -> dict | None:
        obj = self.objects[kind].pop(key, None)
        self.store.delete(key)
        return obj

    def event(self, kind: str, ns: str, name: str, reason: str, message: str, etype: str = "Warning") -> None:
        log.warning("%s %s/%s: %s", reason, ns, name, message) if etype == "Warning" else \
            log.info("%s %s/%s: %s", reason, ns, name, message)
        ev_ns = ns or "default"
        ident = f"{name}.{abs(hash((kind, reason, message))) & 0xffffffff:08x}"
        key = f"/registry/events/{ev_ns}/{ident}"
        old = self.store.get(key)
        ev = {"apiVersion": "v1", "kind": "Event", "type": etype, "reason": reason, "message": message,
              "metadata": {"name": ident, "namespace": ev_ns},
              "involvedObject": {"kind": kind, "namespace": ns, "name": name},
              "count": (old or {}).get("count", 0) + 1,
              "firstTimestamp": (old or {}).get("firstTimestamp", now_iso()), "lastTimestamp": now_iso()}
        self.store.put(key, ev)

    def _pod_event(self, pod: dict, reason: str, message: str, etype: str) -> None:
        m = pod["metadata"]
        self.event("Pod", m["namespace"], m["name"], reason, message, etype)

    def _new_meta(self, obj: dict, old: dict | None) -> None:
        m = obj["metadata"]
        om = (old or {}).get("metadata", {})
        m["uid"] = om.get("uid") or str(uuid.uuid4())
        m["creationTimestamp"] = om.get("creationTimestamp") or now_iso()

    def _ensure_system_objects(self) -> None:
        for ns in SYSTEM_NAMESPACES:
            key = key_of("Namespace", "", ns)
            if key not in self.objects["Namespace"]:
                obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                       "status": {"phase": "Active"}}
                self._new_meta(obj, None)
                self._save(obj)
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.cfg.node_name, "labels": {"kubernetes.io/hostname": self.cfg.node_name,
                                                                    "kubernetes.io/os": "linux"}},
                "spec": {"podCIDR": self.cfg.node_pod_cidr, "podCIDRs": [self.cfg.node_pod_cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": self.node_ip},
                                         {"type": "Hostname", "address": self.cfg.node_name}],
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                           "nodeInfo": {"kubeProxyVersion": "kproxy", "kubeletVersion": "kproxy"}}}
        self._new_meta(node, self.objects["Node"].get(key_of("Node", "", self.cfg.node_name)))
        self._save(node)
        kubernetes = {"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "kubernetes", "namespace": "default",
                                   "labels": {"component": "apiserver", "provider": "kubernetes"}},
                      "spec": {"type": "ClusterIP", "clusterIP": self.ranges.nth_ip(1),
                               "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}
        self._admit_service(defaults.apply_defaults(kubernetes))
        # the API server's own endpoints: the node's address, port 6443 (nothing listens there)
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "kubernetes", "namespace": "default",
                               "labels": {endpoints.SERVICE_NAME: "kubernetes"}},
                  "addressType": "IPv4",
                  "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                  "endpoints": [{"addresses": [self.node_ip], "conditions": {"ready": True}}]}
        eps = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
               "subsets": [{"addresses": [{"ip": self.node_ip}],
                            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]}
        for obj in (slice_, eps):
            self._new_meta(obj, self.objects[obj["kind"]].get(key_of(obj["kind"], "default", "kubernetes")))
            self._save(obj)
        self.system_keys = {key_of("Endpoints", "default", "kubernetes")}
        if self.cfg.cluster_dns:
            self._ensure_cluster_dns()

    def _ensure_cluster_dns(self) -> None:
        """kube-system/kube-dns in front of a `coredns` Deployment, as kubeadm sets them up; the
        pods run kproxy's DNS server, which reads the store the way CoreDNS watches the API."""
        labels = {"k8s-app": "kube-dns"}
        command = [sys.executable, "-m", "kproxy.dns.server", "--store", str(self.state / "store.db"),
                   "--listen", "0.0.0.0:53", "--domain", self.cfg.cluster_domain, "--ttl", "30"]
        for upstream in self.cfg.dns_upstreams:
            command += ["--upstream", upstream]
        deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                      "metadata": {"labels": labels},
                      "spec": {"dnsPolicy": "Default", "containers": [{
                          "name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3", "command": command,
                          "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
                          "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                            "initialDelaySeconds": 60, "timeoutSeconds": 5,
                                            "failureThreshold": 5}}]}}}}
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                "labels": {**labels, "kubernetes.io/name": "CoreDNS"}},
                   "spec": {"selector": labels, "clusterIP": self.ranges.nth_ip(10),
                            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                      {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                                      {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}
        msg = self._admit_service(defaults.apply_defaults(service))
        if msg:
            log.error("cluster DNS disabled: %s", msg)
            return
        deploy = defaults.apply_defaults(deploy)
        self._new_meta(deploy, self.objects["Deployment"].get(key_of("Deployment", "kube-system", "coredns")))
        self._save(deploy)

    # -- manifests -> admitted objects ----------------------------------------------------
    def _read_folder(self) -> list:
        """Every document of the manifests folder; a file is parsed again only when it changed."""
        folder = Path(self.cfg.manifests)
        docs, cache = [], {}
        for path in (manifest.manifest_files(folder) if folder.is_dir() else []):
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            hit = self.file_cache.get(str(path))
            cache[str(path)] = hit if hit and hit[0] == stamp else (stamp, manifest.read_file(path))
            docs += cache[str(path)][1]
        self.file_cache = cache
        return docs

    def _load_manifests(self) -> None:
        docs = self._read_folder()
        desired: dict[str, dict] = {}
        keep: set[str] = set()
        problems: list[dict] = []
        files: dict[str, set[str]] = {}
        broken_files = set()
        # Namespaces of this load count at once, so a file may hold a Namespace and its objects.
        namespaces = {d.obj["metadata"].get("name") for d in docs
                      if d.obj and d.obj.get("kind") == "Namespace" and isinstance(d.obj.get("metadata"), dict)}
        memo: dict[int, tuple] = {}
        for doc in docs:
            if doc.error:
                problems.append({"source": doc.source, "message": doc.error})
                broken_files.add(doc.source)
                continue
            obj = doc.obj
            if obj.get("kind") not in USER_KINDS:
                name = (obj.get("metadata") or {}).get("name", "")
                problems.append({"source": doc.source, "kind": obj.get("kind"), "name": name,
                                 "message": f'resource mapping not found for name: "{name}" from "{doc.source}": '
                                            f'no matches for kind "{obj.get("kind")}" in version '
                                            f'"{obj.get("apiVersion")}"'})
                continue
            # A document of an unchanged file (the same parsed object) is defaulted and validated
            # once, not on every reload: at 1,000 Services that was 0.5-1 s of each change.
            seen = self.doc_memo.get(id(doc))
            if seen is not None and seen[0] is doc and seen[1] == namespaces:
                obj, msg = seen[2], seen[3]
                kind, ns, name = obj_id(obj)
            else:
                try:
                    obj = defaults.apply_defaults(obj)
                    kind, ns, name = obj_id(obj)
                except Exception as e:  # noqa: BLE001 - a malformed object must not stop the others
                    problems.append({"source": doc.source, "message": f"{doc.source}: {e}"})
                    broken_files.add(doc.source)
                    continue
                msg = self._check(obj, namespaces)
            memo[id(doc)] = (doc, namespaces, obj, msg)
            key = key_of(kind, ns, name)
            files.setdefault(doc.source, set()).add(key)
            if msg:
                problems.append({"source": doc.source, "message": msg, "kind": kind, "namespace": ns, "name": name})
                self.event(kind, ns, name, "FailedCreate", msg)
                if "not found" not in msg:
                    keep.add(key)
                continue
            desired[key] = obj
        self.doc_memo = memo
        for source in broken_files:  # a file that does not parse keeps what it held before
            keep |= self.file_keys.get(source, set())
            files.setdefault(source, set()).update(self.file_keys.get(source, set()))
        self.file_keys = files
        # namespaces first, so the objects in them are admitted after them
        order = {k: i for i, k in enumerate(USER_KINDS)}
        for key, obj in sorted(desired.items(), key=lambda kv: order[kv[1]["kind"]]):
            if self.sources.get(key) != obj or key not in self.objects[obj["kind"]]:
                msg = self._admit(key, copy.deepcopy(obj))  # admission changes it; the memo keeps it
                if msg:
                    _, ns, name = obj_id(obj)
                    problems.append({"message": msg, "kind": obj["kind"], "namespace": ns, "name": name})
                    keep.add(key)  # an update the allocator refused keeps the admitted version
        previous = set(self.sources)
        for key in previous - set(desired) - keep:
            self._delete_user_object(key)
        self.store.put(MANIFEST_KEYS, {"files": {f: sorted(k) for f, k in self.file_keys.items()},
                                       "sources": self.sources})
        self.store.put(MANIFEST_ERRORS, problems)

    def _check(self, obj: dict, namespaces: set[str]) -> str | None:
        """Validation as the API server does it on create, as one message (None when valid)."""
        kind, ns, name = obj_id(obj)
        errs = validation.validate(obj, node_port_range=tuple(self.cfg.node_port_range),
                                   service_cidr=self.cfg.service_cidr)
        if kind == "IPAddressPool":
            try:
                loadbalancer.pool_from_object(obj)
            except ValueError as e:
                errs = [errors.invalid("spec.addresses", (obj.get("spec") or {}).get("addresses"), str(e))]
        if errs:
            return str(errors.InvalidError(kind, name, errs))
        if ns and kind != "Namespace" and ns not in namespaces and ns not in SYSTEM_NAMESPACES:
            return f'namespaces "{ns}" not found'
        return None

    def _admit(self, key: str, obj: dict) -> str | None:
        """Store a valid object (allocating what it needs); returns the API error, if any."""
        kind = obj["kind"]
        old = self.objects[kind].get(key)
        source = copy.deepcopy(obj)
        if kind == "Service":
            msg = self._admit_service(obj)
            if msg:
                return msg
            self.metrics.service_changes.inc()
        elif kind == "Pod":
            if old is not None:
                self._terminate_pod(key)  # a changed bare Pod is replaced
                self._remove("Pod", key)
            self._new_meta(obj, None)
            obj["status"] = {"phase": "Pending"}
            obj["spec"].setdefault("nodeName", self.cfg.node_name)
            self._save(obj)
        else:
            if kind == "Namespace":
                obj["status"] = {"phase": "Active"}
            self._new_meta(obj, old)
            self._save(obj)
        self.sources[key] = source
        self.dirty = True
        return None

    def _admit_service(self, svc: dict) -> str | None:
        kind, ns, name = obj_id(svc)
        key = key_of(kind, ns, name)
        old = self.objects["Service"].get(key)
        try:
            with self.store.transaction() as txn:
                svc = allocation.allocate_service(txn, svc, old, self.ranges, self.rng)
                self._new_meta(svc, old)
                svc.setdefault("status", {"loadBalancer": {}})
                txn.put(key, svc)
        except allocation.AllocationError as e:
            err = errors.invalid(e.field, e.value, e.detail)
            msg = str(errors.InvalidError("Service", name, [err]))
            self.event("Service", ns, name, "FailedCreate", msg)
            return msg
        self.objects["Service"][key] = svc
        return None

    def _delete_user_object(self, key: str) -> None:
        self.sources.pop(key, None)
        for kind, objs in self.objects.items():
            if key in objs:
                break
        else:
            return
        if kind == "Pod":
            self._terminate_pod(key)
            return
        obj = self._remove(kind, key)
        if kind == "Service" and obj:
            owner = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            with self.store.transaction() as txn:
                allocation.release_owner(txn, owner)
                loadbalancer.release(txn, owner)
        self.dirty = True

    # -- pods -----------------------------------------------------------------------------
    def _run_pods(self) -> None:
        """Deployments -> pods, pods -> running processes, process state -> pod status."""
        pods = self.objects["Pod"]
        taken = {p["metadata"]["name"] for p in pods.values()}
        for dkey, deploy in list(self.objects["Deployment"].items()):
            ns, dname = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            owned = [p for p in pods.values() if p["metadata"]["namespace"] == ns
                     and replicas.owner_deployment(p) == dname and not p["metadata"].get("deletionTimestamp")]
            create, delete = replicas.reconcile_deployment(deploy, owned, self.rng, now_iso(), taken)
            self._scaling_events(deploy, owned, create, delete)
            for pod in create:
                pod["spec"]["nodeName"] = self.cfg.node_name
                self._new_meta(pod, None)
                self._save(pod)
                self.event("Pod", ns, pod["metadata"]["name"], "Scheduled",
                           f"Successfully assigned {ns}/{pod['metadata']['name']} to {self.cfg.node_name}", "Normal")
            for pod in delete:
                self._terminate_pod(key_of("Pod", ns, pod["metadata"]["name"]))
        live_deploys = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in self.objects["Deployment"].values()}
        for key, pod in list(pods.items()):
            owner = replicas.owner_deployment(pod)
            if owner and (pod["metadata"]["namespace"], owner) not in live_deploys:
                self._terminate_pod(key)
            elif not pod["metadata"].get("deletionTimestamp") and key not in self.kubelet.pods \
                    and self.start_failures.get(key, 0) <= time.monotonic():
                self._start_pod(key, pod)
        self._deployment_status()
        for key, status in self.kubelet.tick().items():
            if key in pods:
                pods[key]["status"] = status
                self._save(pods[key])
                self.dirty = True
                self.triggers.append(time.time())
        for key in self.kubelet.finished_pods():
            pod = pods.get(key)
            if pod is not None and pod["metadata"].get("deletionTimestamp"):
                with self.store.transaction() as txn:
                    allocation.release_pod_ip(txn, pod.get("status", {}).get("podIP"))
                self._remove("Pod", key)
                self.dirty = True

    def _scaling_events(self, deploy: dict, owned: list[dict], create: list[dict], delete: list[dict]) -> None:
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
                self.event("Deployment", ns, name, "ScalingReplicaSet",
                           f"Scaled {word} replica set {rs} from {last} to {after}", "Normal")

    def _deployment_status(self) -> None:
        for deploy in self.objects["Deployment"].values():
            ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            h = replicas.pod_template_hash(deploy["spec"]["template"])
            owned = [p for p in self.objects["Pod"].values() if p["metadata"]["namespace"] == ns
                     and replicas.owner_deployment(p) == name and not p["metadata"].get("deletionTimestamp")]
            ready = sum(1 for p in owned if replicas.is_ready(p))
            status = {"observedGeneration": 1, "replicas": len(owned), "readyReplicas": ready,
                      "availableReplicas": ready,
                      "updatedReplicas": sum(1 for p in owned if p["metadata"]["labels"].get("pod-template-hash") == h)}
            if deploy.get("status") != status:
                deploy["status"] = status
                self._save(deploy)

    def _start_pod(self, key: str, pod: dict) -> None:
        ip = pod.get("status", {}).get("podIP")
        with self.store.transaction() as txn:
            if not ip or txn.get(f"{allocation.POD_IPS}{ip}") not in (None, key):
                ip = allocation.allocate_pod_ip(txn, self.cfg.node_pod_cidr, key)
            else:
                txn.put(f"{allocation.POD_IPS}{ip}", key)
        pod["status"] = {"phase": "Pending", "podIP": ip, "hostIP": self.node_ip}
        try:
            self.kubelet.start_pod(key, pod)
            pod["status"] = self.kubelet.status(self.kubelet.pods[key])
        except Exception as e:  # noqa: BLE001 - one pod failing to start must not stop the node
            log.exception("cannot start pod %s", key)
            self.start_failures[key] = time.monotonic() + 5  # retry later, not every pass
            self.event("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], "FailedCreatePodSandBox", str(e))
        self._save(pod)
        self.dirty = True

    def _terminate_pod(self, key: str) -> None:
        pod = self.objects["Pod"].get(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        pod["metadata"]["deletionTimestamp"] = now_iso()
        for cond in pod.get("status", {}).get("conditions", []):
            if cond["type"] in ("Ready", "ContainersReady"):
                cond["status"] = "False"
        self._save(pod)
        self.dirty = True
        # endpoints go first (this pass), the processes after: no request meets a dying pod
        self._sync_endpoints()
        self._sync_proxy()
        if key in self.kubelet.pods:
            self.kubelet.stop_pod(key)
        else:
            self.kubelet.pods.pop(key, None)
            self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
            self._remove("Pod", key)

    # -- endpoints and rules --------------------------------------------------------------
    def _sync_endpoints(self) -> None:
        pods_by_ns: dict[str, list[dict]] = {}
        for pod in self.objects["Pod"].values():
            pods_by_ns.setdefault(pod["metadata"]["namespace"], []).append(pod)
        want_slices: dict[str, dict] = {}
        want_eps: dict[str, dict] = {}
        user_eps = {k for k in self.sources if k.startswith("/registry/endpoints/")}
        for svc in self.objects["Service"].values():
            spec, meta = svc["spec"], svc["metadata"]
            if not spec.get("selector") or spec.get("type") == "ExternalName":
                ep_key = key_of("Endpoints", meta["namespace"], meta["name"])
                if ep_key in user_eps and ep_key in self.objects["Endpoints"]:
                    for sl in endpoints.mirror_endpoints(self.objects["Endpoints"][ep_key]):
                        want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
                continue
            slices = endpoints.slices_for_service(svc, pods_by_ns.get(meta["namespace"], []), self.cfg.node_name)
            for sl in slices:
                want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
            want_eps[key_of("Endpoints", meta["namespace"], meta["name"])] = endpoints.endpoints_from_slices(svc, slices)
        managed = {k for k, sl in self.objects["EndpointSlice"].items()
                   if sl["metadata"].get("labels", {}).get(endpoints.MANAGED_BY)}
        for key in managed - set(want_slices):
            self._remove("EndpointSlice", key)
        for key in set(self.objects["Endpoints"]) - set(want_eps) - user_eps - self.system_keys:
            self._remove("Endpoints", key)
        for kind, want in (("EndpointSlice", want_slices), ("Endpoints", want_eps)):
            for key, obj in want.items():
                old = self.objects[kind].get(key)
                if old is not None:
                    comparable = {k: v for k, v in old.items() if k != "metadata"}
                    if comparable == {k: v for k, v in obj.items() if k != "metadata"}:
                        continue
                self._new_meta(obj, old)
                self._save(obj)
                if kind == "EndpointSlice":
                    self.metrics.endpoint_changes.inc()

    def _pools(self) -> list[loadbalancer.Pool]:
        pools = []
        for obj in sorted(self.objects["IPAddressPool"].values(), key=lambda o: o["metadata"]["name"]):
            try:
                pools.append(loadbalancer.pool_from_object(obj))
            except ValueError:
                continue  # reported when the manifest was loaded
        if self.cfg.lb_pools:
            pools.append(loadbalancer.Pool("default", tuple(loadbalancer.parse_range(r) for r in self.cfg.lb_pools)))
        return pools

    def _sync_load_balancers(self) -> None:
        """Give each LoadBalancer Service an IP from the pools (or leave it <pending> with an
        event saying why), free the IPs of the others, and announce them on the node network."""
        pools = self._pools()
        announce: set[str] = set()
        l2ads = list(self.objects["L2Advertisement"].values())
        held: dict[str, list[str]] = {}  # owner -> LB IPs it holds, read once for the pass
        for k, owner in self.store.list(loadbalancer.LB_IPS):
            held.setdefault(owner, []).append(k.rsplit("/", 1)[1])
        for key, svc in self.objects["Service"].items():
            owner = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
            ingress_now = svc.get("status", {}).get("loadBalancer", {}).get("ingress", [])
            if not loadbalancer.wants_ip(svc):  # not (or no longer) a LoadBalancer of ours
                if owner in held:
                    with self.store.transaction() as txn:
                        loadbalancer.release(txn, owner)
                if ingress_now and svc["spec"].get("type") != "LoadBalancer":
                    svc["status"]["loadBalancer"] = {}
                    self._save(svc)
                continue
            if not pools:  # no pools: a status written in the manifest stands, like a cloud's
                announce |= {i["ip"] for i in ingress_now if i.get("ip")}
                continue
            current = sorted(held.get(owner, []))
            try:
                with self.store.transaction() as txn:
                    ips = loadbalancer.allocate(txn, svc, pools, current)
            except loadbalancer.PoolError as e:
                ips = []
                self.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "AllocationFailed",
                           str(e))
            ingress = [{"ip": ip, "ipMode": "VIP"} for ip in ips]
            if svc.get("status", {}).get("loadBalancer", {}).get("ingress") != ingress:
                svc.setdefault("status", {})["loadBalancer"] = {"ingress": ingress} if ingress else {}
                self._save(svc)
                if ips:
                    self.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "IPAllocated",
                               f"Assigned IP {json.dumps(ips)}", "Normal")
            for ip in ips:
                pool = next((p for p in pools if p.contains(ip)), None)
                if pool and (pool.name == "default" and self.cfg.lb_pools or loadbalancer.advertised(pool.name, l2ads)):
                    announce.add(ip)
        if announce or self.announcer is not None:
            if self.announcer is None:
                self.announcer = Announcer(self.naming.lab_link if self.cfg.sandbox else self._host_iface())
            self.announcer.set_ips(announce)

    def _host_iface(self) -> str:
        out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout.split()
        return out[out.index("dev") + 1] if "dev" in out else "lo"

    def _sync_proxy(self, force: bool = False) -> None:
        """Render and apply (a partial sync unless `force`); feeds metrics and /healthz."""
        self.health.queued()
        self.metrics.last_queued.set(time.time())
        services = list(self.objects["Service"].values())
        slices = list(self.objects["EndpointSlice"].values())
        try:
            res = self.proxier.sync(services, slices, full=force)
        except applier.IptablesError as e:
            log.error("%s", e)
            self.metrics.restore_failures.inc()
            self.event("Node", "", self.cfg.node_name, "FailedSync", str(e))
            return
        if res.full:
            self.last_full_sync = time.monotonic()
        self.health.updated()
        self.metrics.last_sync.set(time.time())
        self._sync_health_check_ports(services, slices)
        if not res.applied:
            self.triggers.clear()
            return
        self.metrics.sync_duration.observe(res.duration)
        (self.metrics.sync_full_duration if res.full else self.metrics.sync_partial_duration).observe(res.duration)
        if res.full:
            for table, n in metrics.count_rules(res.result.text).items():
                self.metrics.rules.set(n, table)
        now = time.time()
        for t in self.triggers:  # change seen (file written, pod ready) -> rules live
            self.metrics.programming.observe(max(0.0, now - t))
        self.triggers.clear()
        self.store.put(PROXY_STATUS, {"lastSync": now_iso(), "full": res.full,
                                      "durationSeconds": round(res.duration, 4),
                                      "servicesWritten": res.services_written,
                                      "services": sorted(res.result.service_chains)})

    def _metrics_answer(self, req) -> tuple[int, str, str]:
        if req.path.split("?")[0] != "/metrics":
            return 404, "text/plain", "404 page not found\n"
        return 200, "text/plain; version=0.0.4", self.metrics.registry.exposition()

    def _sync_health_check_ports(self, services: list[dict], slices: list[dict]) -> None:
        """Serve each ETP-Local Service's healthCheckNodePort with its local endpoint count."""
        wanted = {}
        for svc in services:
            port = svc["spec"].get("healthCheckNodePort")
            if not port:
                continue
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            local = {ep["addresses"][0] for sl in slices
                     if sl["metadata"].get("namespace") == ns
                     and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name
                     for ep in sl.get("endpoints", [])
                     if ep.get("nodeName") == self.cfg.node_name and ep.get("conditions", {}).get("ready", True)}
            wanted[port] = (ns, name, len(local))
        self.http.sync_service_health(wanted)

    # -- control socket -------------------------------------------------------------------
    def _handle_requests(self) -> None:
        while self.requests:
            req = self.requests.pop(0)
            if req.get("op") == "delete-pod":
                self._terminate_pod(key_of("Pod", req["namespace"], req["name"]))

    def _serve_control(self) -> None:
        path = self.state / "kproxy.sock"
        path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        os.chmod(path, 0o600)
        srv.listen(16)
        while not self.stopping.is_set():
            conn, _ = srv.accept()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = read_line(conn)
            try:
                req = json.loads(data or b"{}")
            except ValueError:
                req = {}
            op = req.get("op")
            if op in ("sync", "delete-pod"):
                if op == "delete-pod":
                    self.requests.append(req)
                with self.cond:
                    target = self.generation + 2  # a whole pass that began after this request
                    self.poke.set()
                    self.cond.wait_for(lambda: self.generation >= target or self.stopping.is_set(), timeout=60)
            reply = {"ready": self.ready, "generation": self.generation, "pid": os.getpid(),
                     "errors": self.store.get(MANIFEST_ERRORS) or []}
            conn.sendall(json.dumps(reply).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description="run the kproxy daemon in the foreground")
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args(argv)
    cfg = LabConfig.load(args.state_dir)
    if cfg is None:
        raise SystemExit(f"no lab configured in {args.state_dir}: run `kproxy up` first")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    Daemon(cfg).run()


if __name__ == "__main__":
    main()
