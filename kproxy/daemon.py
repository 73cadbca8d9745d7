"""The kproxy daemon: API server, controllers, kubelet and kube-proxy, in one loop.

Every pass: load the manifests folder if it changed (the desired state), admit each object
(defaults, validation, allocation), let Deployments make pods and schedule them to nodes, let
the kubelet run them, derive EndpointSlices from Ready pods, and render + apply the iptables
rules when they changed. A bad manifest is reported as an event and skipped; everything else
keeps working: each object's step runs confined (`_confined`: its exception is logged, recorded
as a problem and an event on it, the other objects go on), each background thread supervised
(`supervise.supervised`: logged, an event, a failed component in `kproxy status`, restarted).

The daemon has two roles, split the way Kubernetes splits them: the *controller* (API server
admission, allocation, Deployments, scheduling, endpoints, LoadBalancer IPs, node lifecycle)
and the *agent* of one node (kubelet, kube-proxy, layer-2 announcements, host-gw routes).
`kproxy up` runs both in one process on the embedded SQLite store; a multi-node lab runs one
controller and one agent per node, all on etcd: each process keeps a cache of the store,
refreshed when its watch reports a change (re-listing when the watch breaks), and writes
what others also write (pods) in read-modify-write transactions.
"""
from __future__ import annotations

import contextlib
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

from kproxy import supervise
from kproxy.control import read_line
from kproxy.api import admission, errors, manifest, meta
from kproxy.config import LabConfig
from kproxy.controllers import allocation, endpoints, loadbalancer, replicas
from kproxy.node.kubelet import Kubelet, now_iso
from kproxy.node.l2announce import Announcer
from kproxy.node.network import NodeConfig, NodeNetwork, enter_netns
from kproxy.proxy import applier, changes, healthcheck, metrics, proxier, render
from kproxy.store.base import Store, kind_prefix, object_key
from kproxy.store.etcd import retry
from kproxy.store.sqlite import SqliteStore

log = logging.getLogger("kproxy")

SYSTEM_NAMESPACES = meta.SYSTEM_NAMESPACES
USER_KINDS = meta.ADMITTED_KINDS
PROXIED_KINDS = ("Service", "EndpointSlice")  # what the Proxier reads
MANIFEST_KEYS = "/kproxy/manifest-keys"      # objects that came from the manifests folder
MANIFEST_ERRORS = "/kproxy/manifest-errors"
HEALTH = "/kproxy/health"                    # component health; multi-node adds /<role>/<node>
REMOVAL_QUIET_SECONDS = 1.0                  # removals wait until the folder was this long unchanged
PROXY_STATUS = "/kproxy/proxy-status"        # single node; a multi-node agent adds /<node>
NODE_LEASES = "/registry/leases/kube-node-lease/"  # a node's heartbeat, where Kubernetes keeps it
NODE_LEASE_SECONDS = 6                        # lease TTL: a node silent this long is NotReady
HEARTBEAT_SECONDS = 1.5
RESYNC_COST_FACTOR = 10  # full resyncs at most every 10x their own duration: under 10% of the time
LEASE_RENEW_SECONDS = 10.0                     # the Lease object's renewTime (the kubelet's interval)
LEADER_LEASE = "/registry/leases/kube-system/kproxy-controller"  # who runs the controllers now
LEASE_ID = "kproxy.io/etcd-lease"
POLL_PERIOD = 0.25
REFRESH_PERIOD = 5.0                         # re-list this often even when the watch is quiet


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
                try:  # lstat: a symlink is reported by the reader, never followed (nor broken)
                    st = os.lstat(os.path.join(root, f))
                except OSError:  # removed since the walk listed it: the next poll sees it gone
                    continue
                sig.append((root, f, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def host_ip() -> str:
    """The host's primary address, for a node that is the real host (a route lookup, no packet)."""
    out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout
    parts = out.split()
    return parts[parts.index("src") + 1] if "src" in parts else "127.0.0.1"


def open_store(cfg: LabConfig) -> Store:
    """etcd when the lab has one (multi-node), else the embedded SQLite file."""
    if cfg.store_url:
        from kproxy.store.etcd import EtcdStore
        return EtcdStore(cfg.store_url, **cfg.store_tls)
    return SqliteStore(Path(cfg.state_dir) / "store.db")


class Daemon:
    def __init__(self, cfg: LabConfig, controller: bool = True, agent: bool = True):
        self.cfg = cfg
        self.is_controller, self.is_agent = controller, agent
        self.shared = cfg.multi_node  # other processes write the store too
        self.state = Path(cfg.state_dir)
        self.store = open_store(cfg)
        self.naming = cfg.naming
        self.node_cfg = NodeConfig(node_name=cfg.node_name, sandbox=cfg.sandbox, pod_cidr=cfg.node_pod_cidr,
                                   cluster_cidr=cfg.cluster_cidr, service_cidr=cfg.service_cidr,
                                   lab_cidr=cfg.lab_cidr, node_host=1 + cfg.node_index if cfg.node_index else 2,
                                   switch=cfg.node_index > 0)
        self.node_ip = cfg.node_ip or (self.node_cfg.node_ip if cfg.sandbox else host_ip())
        self.network = NodeNetwork(self.naming, self.node_cfg, self.state / "host-sysctls.json")
        self.ranges = allocation.ServiceRanges(cfg.service_cidr, tuple(cfg.node_port_range))
        self.rng = random.Random()
        self.objects: dict[str, dict[str, dict]] = {k: {} for k in (*USER_KINDS, "Node")}
        self.proxy_changes = changes.ChangeTracker()  # Services changed since the last proxy sync
        for kind in PROXIED_KINDS:
            self.objects[kind] = self.proxy_changes.tracked()
        self.sources: dict[str, dict] = {}       # key -> defaulted manifest object last admitted
        self.file_keys: dict[str, set[str]] = {}  # manifest file -> keys it held
        self.signature: tuple | None = None
        self.file_cache: dict[str, tuple] = {}  # manifest file -> ((mtime, size), its documents)
        # the admission gate: a document of an unchanged file is defaulted and validated once
        self.gate = admission.Admission(tuple(cfg.node_port_range), cfg.service_cidr, remember=True,
                                        reserved=self._lab_addresses)  # Nodes come and go: asked each time
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
        self.withheld_pools: set[tuple[str, str]] = set()  # (pool, lab address in it) already reported
        self.components = supervise.Health()  # background threads, passes, disk: `kproxy status`
        self.load_problems: list[dict] = []  # the last manifests load's problems
        self.obj_problems: dict[tuple, dict] = {}  # (reason, kind, ns, name) -> a confined failure
        self.published: tuple | None = None  # (problems, health) last written to the store
        self.removals_waiting = False  # objects gone from a folder still changing: removed once quiet
        self.sig_changed_at = 0.0       # monotonic time the folder's signature last changed
        self.folder_settled = False     # `kproxy apply/delete` asked: the folder is complete now
        self.disk_error: str | None = None  # the last ENOSPC/EDQUOT of this pass
        self.proxy_quarantine: dict[str, dict] = {}  # Service key -> the version its rules failed to render
        self.system_keys: set[str] = set()
        self.announcer: Announcer | None = None
        self.rs_size: dict[tuple[str, str], int] = {}  # (namespace, ReplicaSet) -> pods it last had  # objects kproxy itself keeps (default/kubernetes)  # pod key -> when to try starting it again
        self.dirty = True
        self.last_full_sync = 0.0
        self.last_full_duration = 0.0
        self.last_partial: dict | None = None  # the last partial sync's report
        self.last_canary = 0.0
        self.stale = threading.Event()  # the store changed under us (multi-node): re-list
        self.last_refresh = 0.0
        self.leases: set[str] = set()    # nodes whose heartbeat lease is alive (multi-node)
        self.routes: dict[str, str] = {}  # host-gw routes last set
        self.lease: int | None = None     # this process's lease: node heartbeat or leadership
        self.leader = not self.shared     # controllers: only the leader reconciles (admission: all)

    # -- start and stop -------------------------------------------------------------------
    def run(self) -> None:
        from kproxy.config import PRIVATE_UMASK, private_dir
        os.umask(PRIVATE_UMASK)  # the store, logs, pid files: root's only (its pods' files too; see README)
        private_dir(self.state)
        (self.state / "daemon.pid").write_text(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        try:
            if self.is_agent:
                self.network.setup()
            if self.cfg.sandbox:
                enter_netns(self.naming.node_netns)  # before any thread: all of them live there
            if self.is_agent:
                self.kubelet = Kubelet(self.network, self.node_ip, self.cfg.logs, self._pod_event,
                                       cluster_dns=self.ranges.nth_ip(10), domain=self.cfg.cluster_domain)
                self.proxier = proxier.Proxier(render.ProxyConfig(
                    cluster_cidr=self.cfg.cluster_cidr, node_name=self.cfg.node_name, node_ips=[self.node_ip],
                    masquerade_all=self.cfg.masquerade_all), applier=self.applier)
                self._supervise("healthz-server", lambda: self._serve_http(
                    "healthz", self.cfg.healthz_bind_address, self.health.answer))
                self._supervise("metrics-server", lambda: self._serve_http(
                    "metrics", self.cfg.metrics_bind_address, self._metrics_answer))
            if self.shared:
                self._wait_for_store()
                self._supervise("watch", self._watch_store)
                self._supervise("heartbeat", self._heartbeat)
                if self.is_agent:  # a Node is written Ready only while its lease is held
                    deadline = time.monotonic() + 10
                    while not self.leader and time.monotonic() < deadline and not self.stopping.is_set():
                        time.sleep(0.05)
            self._start_up(self._load_store)
            if self.is_controller:
                self._start_up(self._ensure_system_objects)
            if self.is_agent:
                self._start_up(self._register_node)
            self._supervise("control-socket", self._serve_control)
            self._loop()
        finally:
            self.shutdown()

    def _start_up(self, step) -> None:
        """A start-up step, again until it works: etcd may hiccup right after it answered."""
        while True:
            try:
                return step()
            except Exception as e:  # noqa: BLE001
                if not self.shared or self.stopping.is_set():
                    raise
                log.warning("%s failed (%s); again in 1 s", step.__name__, e)
                self.stopping.wait(1)

    def shutdown(self) -> None:
        log.info("shutting down")
        self.stopping.set()
        if self.shared and self.lease is not None:  # NotReady now (endpoints go), not in a TTL
            try:
                self.store.revoke(self.lease)
            except Exception as e:  # noqa: BLE001 - etcd may be gone already
                log.warning("cannot revoke the lease: %s", e)
        self.http.stop()
        if self.announcer:
            self.announcer.stop()
        if self.kubelet:
            self.kubelet.shutdown()
        if not self.shared:
            for pod in self.objects["Pod"].values():  # pods are gone: so are their addresses
                pod["status"] = {"phase": "Pending"}
        if self.is_agent:  # a stopped node takes its links, rules and (sandbox) namespace with it
            try:
                if not self.cfg.sandbox and applier.have_iptables():
                    self.applier.cleanup()
            finally:
                self.network.teardown()
        for f in ("daemon.pid", "kproxy.sock"):
            (self.state / f).unlink(missing_ok=True)

    # -- confinement and health -----------------------------------------------------------
    def _supervise(self, name: str, target) -> threading.Thread:
        """A background thread that cannot fail unseen (supervise.supervised): its failure is
        logged, an event `<Name>Failed` on this Node, a failed component in `kproxy status`."""
        return supervise.supervised(name, target, self.components, self.stopping, self._component_failed)

    def _component_failed(self, name: str, message: str) -> None:
        if message.startswith("disk full"):
            self.components.failed("disk", message)
        reason = "".join(w.title() for w in name.split("-")) + "Failed"  # AnnouncerFailed, WatchFailed
        self.event("Node", "", self.cfg.node_name, reason, f"{name}: {message}")

    def _serve_http(self, name: str, address: str, handler) -> None:
        """Supervised: serve kube-proxy's /healthz or /metrics; a port in use is retried."""
        self.http.start(name, address, handler)
        if name not in self.http.servers:
            raise OSError(f"cannot serve {name} on {address} (the address is in use or invalid)")
        self.components.ok(f"{name}-server")
        self.stopping.wait()

    @contextlib.contextmanager
    def _confined(self, reason: str, kind: str, ns: str, name: str, problems: list | None = None):
        """One object's step: an exception in it stops that object only. It is logged with its
        traceback, recorded as a problem {source, kind, namespace, name, message} (in
        `problems` when given, else until that step works again) and as a `reason` event on the
        object; the caller goes on with the other objects. Failures outside any object (the
        store, the kernel) are not caught here: the pass fails, is retried, and shows in status."""
        ident = (reason, kind, ns or "", name)
        try:
            yield
        except Exception as e:  # noqa: BLE001 - confined: the other objects keep being served
            if supervise.store_failure(e):
                raise  # the store, not this object: the pass fails (retried, shown in status)
            log.exception("%s %s/%s failed (%s); the other objects go on", kind, ns, name, reason)
            self._note_disk(e)
            msg = f"Internal error occurred: {kind} {f'{ns}/' if ns else ''}{name}: {supervise.describe(e)}"
            problem = {"kind": kind, "namespace": ns or "", "name": name, "reason": reason, "message": msg}
            source = self._source_of(kind, ns, name)
            if source:
                problem["source"] = source
            if problems is not None:
                problems.append(problem)
            else:
                self.obj_problems[ident] = problem
            self.event(kind, ns, name, reason, msg)
        else:
            if problems is None:
                self.obj_problems.pop(ident, None)

    def _source_of(self, kind: str, ns: str, name: str) -> str | None:
        """The manifest file that declares an object, if one does."""
        try:
            key = key_of(kind, ns, name)
        except Exception:  # noqa: BLE001 - a kind without a registry path
            return None
        return next((f for f, keys in sorted(self.file_keys.items()) if key in keys), None)

    def _note_disk(self, e: BaseException) -> None:
        """ENOSPC/EDQUOT anywhere: the `disk` component fails (status `disk full: ...`, an event
        NodeHasDiskPressure); the lab goes on where it can, and it clears once writing works."""
        if not supervise.disk_full(e):
            return
        msg = supervise.describe(e)
        self.disk_error = msg
        if not self.components.is_failed("disk"):
            self.components.failed("disk", msg)
            self.event("Node", "", self.cfg.node_name, "NodeHasDiskPressure", msg)

    def _disk_writable(self) -> bool:
        probe = self.state / ".disk-probe"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    @property
    def health_key(self) -> str:
        role = "all" if self.is_controller and self.is_agent else "controller" if self.is_controller else "agent"
        return HEALTH if not self.shared else f"{HEALTH}/{role}/{self.cfg.node_name}"

    def health_report(self) -> dict:
        """This daemon's health record: what `kproxy status` prints (and exits 1 on a failed one)."""
        role = "all" if self.is_controller and self.is_agent else "controller" if self.is_controller else "agent"
        report = {"role": role, "node": self.cfg.node_name, "pid": os.getpid(),
                  "components": self.components.snapshot()}
        if not self.is_controller:  # an agent's confined failures (its pods): no MANIFEST_ERRORS of its own
            report["problems"] = [self.obj_problems[k] for k in sorted(self.obj_problems)]
        return report

    def _publish(self) -> None:
        """Write the problems (MANIFEST_ERRORS: the last load's and the confined failures of
        the objects still there) and the health record when they changed."""
        for ident in list(self.obj_problems):
            _, kind, ns, name = ident
            if key_of(kind, ns, name) not in self.objects.get(kind, {}):
                del self.obj_problems[ident]  # the object is gone: so is its problem
        problems = self.load_problems + [self.obj_problems[k] for k in sorted(self.obj_problems)]
        report = self.health_report()
        if self.published == (problems, report["components"]):
            return
        if self.is_controller:
            self.store.put(MANIFEST_ERRORS, problems)
        if self.shared and self.lease is not None:  # goes with the process: a dead one reports nothing
            self.store.put(self.health_key, report, lease=self.lease)
        else:
            self.store.put(self.health_key, report)
        self.published = (problems, report["components"])

    def _folder_quiet(self) -> bool:
        """No manifest file (nor the folder) changed in the last REMOVAL_QUIET_SECONDS, by its
        mtime and by when this daemon saw the change (a clock ahead on a shared folder)."""
        now = time.time()
        sig = self.signature or ()
        stamps = [s[3] / 1e9 for s in sig]
        for d in {s[0] for s in sig} | {self.cfg.manifests}:
            try:
                stamps.append(os.stat(d).st_mtime)
            except OSError:
                pass
        newest = max((t for t in stamps if t <= now + REMOVAL_QUIET_SECONDS), default=0.0)
        return now - newest >= REMOVAL_QUIET_SECONDS and \
            time.monotonic() - self.sig_changed_at >= REMOVAL_QUIET_SECONDS

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        next_poll = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                if now >= next_poll and self.is_controller:
                    next_poll = now + POLL_PERIOD
                    self._poll_manifests()
                self._pass(now)
                self.components.ok("reconcile")
            except Exception as e:  # noqa: BLE001 - the node keeps running; the next pass retries
                # not one object's failure (those are confined): the store, the kernel
                log.exception("reconcile pass failed")
                self._note_disk(e)
                self.components.failed("reconcile", supervise.describe(e))
                try:
                    self.event("Node", "", self.cfg.node_name, "ReconcileFailed", f"{type(e).__name__}: {e}")
                except Exception:  # noqa: BLE001 - the store itself is away (etcd restarting)
                    self.stale.set()
                self.dirty = True
                time.sleep(1)
            if self.disk_error is None and self.components.is_failed("disk") and self._disk_writable():
                self.components.ok("disk")  # writing works again
            self.disk_error = None
            try:
                self._publish()
            except Exception as e:  # noqa: BLE001 - the store away or full: status asks the socket then
                self._note_disk(e)
                log.warning("cannot record the problems and health: %s", e)
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
            if self.removals_waiting and (self.folder_settled or self._folder_quiet()):
                self._load_manifests()  # the folder is quiet now: what vanished from it goes
            return
        self.sig_changed_at = time.monotonic()
        if self.signature is not None and self.is_agent:  # when the change was written (programming latency)
            self.triggers.append(max((s[3] for s in sig), default=time.time_ns()) / 1e9)
        self.signature, self.dirty = sig, True
        try:
            self._load_manifests()
        except Exception:
            self.signature = None  # load it all again next time: nothing of it may be lost
            raise

    def _pass(self, now: float) -> None:
        if self.shared and (self.stale.is_set() or now - self.last_refresh > REFRESH_PERIOD):
            try:
                self._refresh(now)
            except Exception as e:  # noqa: BLE001 - etcd away: go on with the cache (pods, probes, rules)
                log.warning("cannot refresh from the store: %s", e)
                self.stale.set()
        self._handle_requests()
        try:
            if self.is_controller and self.leader:
                self._reconcile_pods()
        finally:  # probes and restarts go on when the store cannot be written (etcd away, disk full)
            if self.is_agent:
                self._run_local_pods()
        if self.dirty:
            self.dirty = False
            if self.is_controller and self.leader:
                self._sync_load_balancers()
                self._sync_endpoints()
            if self.is_agent:
                self._announce_load_balancers()
                try:
                    self._sync_routes()
                except Exception as e:  # noqa: BLE001 - no routes to other nodes must not stop the rules
                    log.exception("routes to the other nodes failed")
                    self.event("Node", "", self.cfg.node_name, "FailedRoutes", f"{type(e).__name__}: {e}")
                self._sync_proxy()
        elif not self.is_agent:
            pass
        elif now - self.last_full_sync > max(self.cfg.iptables_sync_period,
                                             RESYNC_COST_FACTOR * self.last_full_duration):
            self._sync_proxy(force=True)  # restores rules flushed or deleted by hand
        elif now - self.last_canary > 5.0:
            self.last_canary = now
            if not self.applier.canary_present():  # someone flushed the tables: resync now
                log.warning("KUBE-PROXY-CANARY is gone: the tables were flushed; full resync")
                self._sync_proxy(force=True)

    # -- store ----------------------------------------------------------------------------
    @property
    def manifest_keys(self) -> str:
        """Where this controller remembers what its folder held (one key per controller)."""
        return MANIFEST_KEYS if not self.shared else f"{MANIFEST_KEYS}/{self.cfg.node_name}"

    def _load_store(self) -> None:
        self._list_all()
        if self.is_agent:
            for key, pod in list(self.objects["Pod"].items()):  # restarted: this node's pods start afresh
                if pod["spec"].get("nodeName") not in (None, self.cfg.node_name):
                    continue
                if pod["metadata"].get("deletionTimestamp"):  # it was going away: it is gone
                    self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
                    self._forget_pod(key, pod)
                    continue
                if not self.shared:
                    pod["status"] = {"phase": "Pending", "podIP": pod.get("status", {}).get("podIP")}
        if self.is_controller:
            saved = self.store.get(self.manifest_keys) or {}
            self.file_keys = {f: set(keys) for f, keys in saved.get("files", {}).items()}
            self.sources = saved.get("sources", {})

    def _list_all(self) -> bool:
        """Read every kind the daemon caches from the store; True when something changed."""
        changed = False
        for kind in self.objects:
            fresh = {}
            for _, obj in self.store.list(kind_prefix(kind)):
                m = obj["metadata"]
                fresh[key_of(kind, m.get("namespace", ""), m["name"])] = obj
            if fresh != self.objects[kind]:
                old = self.objects[kind]
                self.objects[kind] = old.replace_with(fresh) if isinstance(old, changes.Tracked) else fresh
                changed = True
        if self.shared:
            leases = {k[len(NODE_LEASES):] for k, _ in self.store.list(NODE_LEASES)}
            changed |= leases != self.leases
            self.leases = leases
        return changed

    def _refresh(self, now: float) -> None:
        """Multi-node: bring the cache up to date with what the other processes wrote."""
        self.stale.clear()
        self.last_refresh = now
        if self._list_all():
            self.dirty = True
            if self.is_agent:
                self.triggers.append(time.time())

    def _wait_for_store(self) -> None:
        """Multi-node: etcd may start after us (or restart): wait for it, saying so."""
        while not self.stopping.is_set():
            try:
                self.store.revision()
                return
            except Exception as e:  # noqa: BLE001 - any failure to reach it means: not yet
                log.warning("waiting for the store at %s: %s", self.cfg.store_url, e)
                self.stopping.wait(1)

    def _watch_store(self) -> None:
        """Watch everything (resuming from the last revision seen); any change marks the cache
        stale. A broken watch resumes; a compacted one starts afresh; both force a re-list."""
        from kproxy.store.etcd import RevisionCompacted, WatchBroken
        rev = None
        while not self.stopping.is_set():
            try:
                if rev is None:
                    rev = self.store.revision() + 1
                    self.stale.set()
                with self.store.watch("/", rev, idle_timeout=10) as w:
                    self.components.ok("watch")
                    for ev in w:
                        # a Lease renewed by its holder changes nothing the cache holds
                        renewal = ev.kind == "put" and (ev.key == LEADER_LEASE or ev.key.startswith(NODE_LEASES)
                                                        and ev.key[len(NODE_LEASES):] in self.leases)
                        if not renewal and not ev.key.startswith(("/registry/events/", PROXY_STATUS, HEALTH)):
                            self.stale.set()
                            self.poke.set()
                    rev = w.resume_revision
            except RevisionCompacted:
                rev = None
            except WatchBroken as e:
                log.warning("%s; re-listing", e)
                rev = e.resume_revision
                self.stale.set()
                self.stopping.wait(1)
            except Exception as e:  # noqa: BLE001 - etcd away: try again
                log.warning("watch failed: %s", e)
                self.components.failed("watch", supervise.describe(e))
                rev = None
                self.stopping.wait(1)

    def _heartbeat(self) -> None:
        """Hold a lease: an agent's is its node's heartbeat (kube-node-lease/<node>); a
        controller's is its claim to lead (one runs the controllers, as kube-controller-manager's
        leader election; every controller admits manifests, as API servers all do)."""
        from kproxy.store.etcd import LeaseExpired
        me = self.cfg.node_name
        key = NODE_LEASES + me if self.is_agent else LEADER_LEASE
        ns = "kube-node-lease" if self.is_agent else "kube-system"
        renewed, created = 0.0, now_iso()
        while not self.stopping.is_set():
            try:
                if self.lease is None:
                    self.lease = self.store.grant_lease(NODE_LEASE_SECONDS)
                    self.leader = False
                else:
                    self.store.keepalive(self.lease)
                lease = self.lease
                value = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": key.rsplit("/", 1)[1], "namespace": ns, "creationTimestamp": created},
                         "spec": {"holderIdentity": me, "leaseDurationSeconds": NODE_LEASE_SECONDS,
                                  "renewTime": now_iso()}}

                value["metadata"]["annotations"] = {LEASE_ID: str(lease)}  # the etcd lease behind it

                renew = time.monotonic() - renewed >= LEASE_RENEW_SECONDS

                def claim(txn):
                    cur = txn.get(key)
                    held_by = (cur or {}).get("metadata", {}).get("annotations", {}).get(LEASE_ID)
                    if cur is None or (self.is_agent and cur["spec"]["holderIdentity"] == me and held_by != str(lease)):
                        txn.put(key, value, lease=lease)
                        return True
                    mine = cur["spec"]["holderIdentity"] == me and held_by == str(lease)
                    if mine and renew:  # spec.renewTime, as the kubelet renews its Lease
                        txn.put(key, value, lease=lease)
                    return mine
                held = retry(self.store, claim)
                self.components.ok("heartbeat")
                if held and renew:
                    renewed = time.monotonic()
                if held != self.leader:
                    log.info("%s the %s lease", "holding" if held else "not holding", key)
                    self.leader = held
                    self.dirty = True  # a new leader recomputes everything
                    self.stale.set()
                    self.poke.set()
            except LeaseExpired:
                log.warning("the lease expired; taking a new one")
                self.lease = None
                continue
            except Exception as e:  # noqa: BLE001 - etcd away: keep trying, the lease may survive
                log.warning("heartbeat failed: %s", e)
                self.components.failed("heartbeat", supervise.describe(e))
            self.stopping.wait(HEARTBEAT_SECONDS)

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
        try:
            old = self.store.get(key)
            ev = {"apiVersion": "v1", "kind": "Event", "type": etype, "reason": reason, "message": message,
                  "metadata": {"name": ident, "namespace": ev_ns},
                  "involvedObject": {"kind": kind, "namespace": ns, "name": name},
                  "count": (old or {}).get("count", 0) + 1,
                  "firstTimestamp": (old or {}).get("firstTimestamp", now_iso()), "lastTimestamp": now_iso()}
            self.store.put(key, ev)
        except Exception as e:  # noqa: BLE001 - an event is not worth stopping the node for
            log.warning("cannot record the event: %s", e)

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
        kubernetes = {"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "kubernetes", "namespace": "default",
                                   "labels": {"component": "apiserver", "provider": "kubernetes"}},
                      "spec": {"type": "ClusterIP", "clusterIP": self.ranges.nth_ip(1),
                               "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}
        self._admit_service(admission.default(kubernetes))
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

    def _register_node(self) -> None:
        """Agent: the Node object of this node (its address and pod CIDR), Ready. It takes as many
        pods as its pod CIDR has addresses for them (253 for a /24; the kubelet's default maxPods
        is 110, but a pod here needs nothing but an address): capacity = allocatable pods."""
        pods = replicas.pod_cidr_capacity(self.cfg.node_pod_cidr)
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.cfg.node_name, "labels": {"kubernetes.io/hostname": self.cfg.node_name,
                                                                    "kubernetes.io/os": "linux"}},
                "spec": {"podCIDR": self.cfg.node_pod_cidr, "podCIDRs": [self.cfg.node_pod_cidr]},
                "status": {"capacity": {"pods": str(pods)}, "allocatable": {"pods": str(pods)},
                           "addresses": [{"type": "InternalIP", "address": self.node_ip},
                                         {"type": "Hostname", "address": self.cfg.node_name}],
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                           "nodeInfo": {"kubeProxyVersion": "kproxy", "kubeletVersion": "kproxy"}}}
        if self.shared:  # the node etcd (the control plane) runs on, as kubeadm labels it
            from urllib.parse import urlsplit
            role = "control-plane" if urlsplit(self.cfg.store_url).hostname == self.node_ip else "worker"
            node["metadata"]["labels"][f"node-role.kubernetes.io/{role}"] = ""
        annotations = node["metadata"].setdefault("annotations", {})
        if self.cfg.sandbox:  # where `kproxy exec node/NAME` and `kproxy rules --node` go
            annotations["kproxy.io/netns"] = self.naming.node_netns
        if self.shared and self.cfg.overlay == "vxlan":  # what flannel publishes for its peers
            mac = self.network.setup_vxlan(self.node_ip)
            annotations.update({"flannel.alpha.coreos.com/backend-type": "vxlan",
                                "flannel.alpha.coreos.com/backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}),
                                "flannel.alpha.coreos.com/public-ip": self.node_ip})
        self._new_meta(node, self.objects["Node"].get(key_of("Node", "", self.cfg.node_name)))
        self._save(node)

    def _ensure_cluster_dns(self) -> None:
        """kube-system/kube-dns in front of a `coredns` Deployment, as kubeadm sets them up; the
        pods run kproxy's DNS server, which reads the store the way CoreDNS watches the API."""
        labels = {"k8s-app": "kube-dns"}
        command = [sys.executable, "-m", "kproxy.dns.server", "--store", self.cfg.store_url or str(self.state / "store.db"),
                   "--listen", "0.0.0.0:53", "--domain", self.cfg.cluster_domain, "--ttl", "30"]
        if self.cfg.store_ca:  # etcd asks every client for a certificate: the DNS pods' own
            from kproxy.cluster.commands import tls_args
            from kproxy.cluster.pki import coredns_files
            command += tls_args(coredns_files(self.cfg.store_ca))
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
        msg = self._admit_service(admission.default(service))
        if msg:
            log.error("cluster DNS disabled: %s", msg)
            return
        deploy = admission.default(deploy)
        self._new_meta(deploy, self.objects["Deployment"].get(key_of("Deployment", "kube-system", "coredns")))
        self._save(deploy)

    # -- manifests -> admitted objects ----------------------------------------------------
    def _read_folder(self) -> list:
        """Every document of the manifests folder; a file is parsed again only when it changed."""
        folder = Path(self.cfg.manifests)
        docs, cache = [], {}
        for path in (manifest.manifest_files(folder) if folder.is_dir() else []):
            try:
                st = path.lstat()  # a symlink's own stamp: the reader refuses it, by name
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            hit = self.file_cache.get(str(path))
            if not (hit and hit[0] == stamp):
                try:
                    hit = (stamp, manifest.read_file(path))
                except Exception as e:  # noqa: BLE001 - one file that cannot be read stops no other
                    log.warning("cannot read %s", path, exc_info=True)
                    hit = (stamp, [manifest.Document(str(path), 0, error=f"error reading {path}: "
                                                                         f"{supervise.describe(e)}")])
            cache[str(path)] = hit
            docs += cache[str(path)][1]
        self.file_cache = cache
        return docs

    def _load_manifests(self) -> None:
        """Admit what the folder declares, each object on its own (one that fails to admit is
        reported and keeps its admitted version; the others go on).

        Rules that keep a folder being edited from losing objects:
        - additions and updates apply at once; removals (an object gone from the folder) wait
          until no file of it changed for REMOVAL_QUIET_SECONDS (an editor saving a file in two
          steps shows a half file for a moment), or until `kproxy apply/delete` says the folder
          is complete; an object that comes back meanwhile keeps its ClusterIP and NodePorts;
        - a file that does not parse keeps what it held before;
        - one identity (kind, namespace, name) declared in two files is a problem for both
          files; the version admitted before stays (the first file's when the object is new):
          which one is served never depends on the order the files are read in."""
        settled, self.folder_settled = self.folder_settled, False
        docs = self._read_folder()
        desired: dict[str, dict] = {}
        keep: set[str] = set()
        problems: list[dict] = []
        files: dict[str, set[str]] = {}
        broken_files = set()
        candidates: dict[str, list[tuple[str, dict]]] = {}  # key -> (file, valid object), in file order
        declared: dict[str, list[str]] = {}  # key -> the files that declare it
        # Namespaces of this load count at once, so a file may hold a Namespace and its objects.
        namespaces = {d.obj["metadata"].get("name") for d in docs
                      if d.obj and d.obj.get("kind") == "Namespace" and isinstance(d.obj.get("metadata"), dict)}
        for doc in docs:
            if doc.error:
                problems.append({"source": doc.source, "message": doc.error})
                broken_files.add(doc.source)
                continue
            # the gate judges an update against the admitted version, which then keeps serving
            kind, ns, name = meta.obj_key(doc.obj)
            admitted = self.objects.get(kind) if isinstance(kind, str) and isinstance(name, str) and name else None
            old = admitted.get(key_of(kind, ns, name)) if admitted is not None else None
            verdict = self.gate.admit(doc.obj, doc.source, old=old, namespaces=namespaces, hint=False)
            if verdict.reason == admission.NO_MATCH:  # as `kproxy apply` refuses it
                problems.append({"source": doc.source, "kind": doc.obj.get("kind"),
                                 "name": meta.metadata_of(doc.obj).get("name") or "", "message": verdict.message})
                continue
            obj, msg = verdict.obj, verdict.message
            kind, ns, name = meta.obj_key(obj)
            key = key_of(kind, ns, name)
            files.setdefault(doc.source, set()).add(key)
            if doc.source not in declared.setdefault(key, []):
                declared[key].append(doc.source)
            if msg:
                problems.append({"source": doc.source, "message": msg, "kind": kind, "namespace": ns, "name": name})
                self.event(kind, ns, name, "FailedUpdate" if verdict.update else "FailedCreate", msg)
                if verdict.reason != admission.NOT_FOUND:
                    keep.add(key)  # a refused update keeps the admitted version serving
                continue
            candidates.setdefault(key, []).append((doc.source, obj))
        self.gate.end_round()
        for key, objs in candidates.items():
            if len(declared[key]) == 1:
                desired[key] = objs[-1][1]  # twice in one file: the last, as applying it would
                continue
            # one identity in two files: serve what was admitted before, else the first file's
            before = self.sources.get(key)
            chosen = next(((f, o) for f, o in objs if o == before), None) if before is not None else objs[0]
            if chosen is None:
                keep.add(key)  # both changed: the admitted version stays until one file is fixed
                served = "the version admitted before"
            else:
                desired[key] = chosen[1]
                served = f"the one in {chosen[0]}"
            kind, ns, name = obj_id(objs[0][1])
            where = f" in namespace {ns}" if ns else ""
            msg = (f'{kind} "{name}"{where} is declared in both {" and ".join(declared[key])}: '
                   f"kproxy serves {served}; keep one object per identity")
            for source in declared[key]:
                problems.append({"source": source, "message": msg, "kind": kind, "namespace": ns, "name": name})
            self.event(kind, ns, name, "DuplicateManifest", msg)
        for source in broken_files:  # a file that does not parse keeps what it held before
            keep |= self.file_keys.get(source, set())
            files.setdefault(source, set()).update(self.file_keys.get(source, set()))
        self.file_keys = files
        # namespaces first, so the objects in them are admitted after them
        order = {k: i for i, k in enumerate(USER_KINDS)}
        for key, obj in sorted(desired.items(), key=lambda kv: order[kv[1]["kind"]]):
            if self.sources.get(key) != obj or key not in self.objects[obj["kind"]]:
                kind, ns, name = obj_id(obj)
                msg = None
                with self._confined("FailedCreate", kind, ns, name, problems):
                    msg = self._admit(key, copy.deepcopy(obj))  # admission changes it; the memo keeps it
                    if msg:
                        problems.append({"message": msg, "kind": kind, "namespace": ns, "name": name,
                                         **({"source": self._source_of(kind, ns, name)}
                                            if self._source_of(kind, ns, name) else {})})
                if msg or self.sources.get(key) != obj:
                    keep.add(key)  # an update refused (or failed) keeps the admitted version
        gone = set(self.sources) - set(desired) - keep
        self.removals_waiting = bool(gone) and not (settled or self._folder_quiet())
        if self.removals_waiting:
            log.info("%d object(s) gone from the manifests folder: removed once it is unchanged for %.0f s",
                     len(gone), REMOVAL_QUIET_SECONDS)
        else:
            for key in sorted(gone):
                kind, ns, name = obj_id(self.sources[key])
                with self._confined("FailedDelete", kind, ns, name, problems):
                    self._delete_user_object(key)
        self.store.put(self.manifest_keys, {"files": {f: sorted(k) for f, k in self.file_keys.items()},
                                       "sources": self.sources})
        self.load_problems = problems
        self.store.put(MANIFEST_ERRORS, problems + [self.obj_problems[k] for k in sorted(self.obj_problems)])

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
                self._terminate_pod(key)  # a changed bare Pod is replaced, on the same node
                self.objects["Pod"].pop(key, None)
                if old["spec"].get("nodeName"):
                    obj["spec"].setdefault("nodeName", old["spec"]["nodeName"])
            self._new_meta(obj, None)
            obj["status"] = {"phase": "Pending"}
            self._schedule(obj)
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
        def admit(txn):  # may run again when another controller won a race (etcd)
            old = txn.get(key)
            new = allocation.allocate_service(txn, copy.deepcopy(svc), old, self.ranges, self.rng)
            self._new_meta(new, old)
            new.setdefault("status", (old or {}).get("status") or {"loadBalancer": {}})
            txn.put(key, new)
            return new
        try:
            svc = retry(self.store, admit)
        except allocation.AllocationError as e:
            err = errors.invalid(e.field, e.value, e.detail)
            msg = str(errors.InvalidError("Service", name, [err]))
            self.event("Service", ns, name, "FailedCreate", msg)
            return msg
        self.objects["Service"][key] = svc
        return None

    def _delete_user_object(self, key: str) -> None:
        for kind, objs in self.objects.items():
            if key in objs:
                break
        else:
            self.sources.pop(key, None)
            return
        if kind == "Pod":
            self._terminate_pod(key)
        elif kind == "Service":  # the object and what it held go together, or not at all
            obj = objs[key]
            owner = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            retry(self.store, lambda txn: (txn.delete(key), allocation.release_owner(txn, owner),
                                           loadbalancer.release(txn, owner)), attempts=30)
            objs.pop(key, None)
        else:
            self._remove(kind, key)
        self.sources.pop(key, None)
        self.dirty = True

    # -- pods -----------------------------------------------------------------------------
    def _reconcile_pods(self) -> None:
        """Controller: Deployments -> pods, scheduled to nodes; pods of a gone owner terminate.

        Pods waiting for a node are placed first; then each Deployment gets new pods, at most
        BURST_REPLICAS a pass in slow-start batches, and only while fewer than MAX_UNSCHEDULED
        pods wait for room: `replicas: 1000000000` makes the nodes' capacity + 500 pods."""
        pods = self.objects["Pod"]
        live_deploys = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in self.objects["Deployment"].values()}
        bound = replicas.pods_per_node(pods.values())
        waiting = 0
        for key, pod in list(pods.items()):
            owner = replicas.owner_deployment(pod)
            if owner and (pod["metadata"]["namespace"], owner) not in live_deploys:
                self._terminate_pod(key)
            elif not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self._schedule(pod, bound)  # no node was Ready (or had room) when it was made
                waiting += not pod["spec"].get("nodeName")
        free = sum(max(0, cap - bound.get(n, 0)) for n, cap in self._capacities().items())
        taken = {p["metadata"]["name"] for p in pods.values()}
        for dkey, deploy in list(self.objects["Deployment"].items()):
            ns, dname = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            with self._confined("FailedReconcile", "Deployment", ns, dname):  # one Deployment only
                owned = [p for p in pods.values() if p["metadata"]["namespace"] == ns
                         and replicas.owner_deployment(p) == dname and not p["metadata"].get("deletionTimestamp")]
                limit = max(0, free + replicas.MAX_UNSCHEDULED - waiting)
                create, delete = replicas.reconcile_deployment(deploy, owned, self.rng, now_iso(), taken, limit)
                made: list[dict] = []

                def make(i: int, create=create, made=made) -> None:
                    self._new_meta(create[i], None)
                    self._schedule(create[i], bound)
                    made.append(create[i])
                try:
                    replicas.slow_start_batch(len(create), make)
                except Exception as e:  # noqa: BLE001 - the rest of this Deployment's pods wait for the next pass
                    log.exception("creating pods of deployment %s/%s failed", ns, dname)
                    self.event("Deployment", ns, dname, "FailedCreate", f"Error creating: {e}")
                for pod in create[len(made):]:
                    taken.discard(pod["metadata"]["name"])
                placed = sum(1 for p in made if p["spec"].get("nodeName"))
                free, waiting = max(0, free - placed), waiting + len(made) - placed
                self._scaling_events(deploy, owned, made, delete)
                for pod in delete:
                    self._terminate_pod(key_of("Pod", ns, pod["metadata"]["name"]))
        self._deployment_status()
        if self.shared:
            self._node_lifecycle()

    def _capacities(self) -> dict[str, int]:
        """Ready node -> how many pods it takes (its allocatable pods; our own pod CIDR's size
        while our Node is not registered yet)."""
        nodes = {n["metadata"]["name"]: n for n in self.objects["Node"].values()}
        return {name: replicas.node_capacity(nodes[name]) if name in nodes
                else replicas.pod_cidr_capacity(self.cfg.node_pod_cidr) for name in self._ready_nodes()}

    def _ready_nodes(self) -> list[str]:
        """Nodes that take pods and announce IPs: every Node whose heartbeat is alive."""
        if not self.shared:
            return [self.cfg.node_name]
        return sorted(n["metadata"]["name"] for n in self.objects["Node"].values()
                      if n["metadata"]["name"] in self.leases)

    def _schedule(self, pod: dict, bound: dict[str, int] | None = None) -> None:
        """The scheduler, in brief: among Ready nodes with room for one more pod (its allocatable
        pods; `bound` counts the pods each node has, kept up to date here), the one with the
        fewest (ties by name). No room: the pod stays Pending with PodScheduled=False and one
        FailedScheduling event (written again only when the reason changes, not every pass)."""
        if not pod["spec"].get("nodeName"):
            if bound is None:
                bound = replicas.pods_per_node(self.objects["Pod"].values())
            caps = self._capacities()
            fits = [n for n, cap in caps.items() if bound.get(n, 0) < cap]
            if not fits:
                not_ready = len({n["metadata"]["name"] for n in self.objects["Node"].values()} - set(caps))
                self._unschedulable(pod, replicas.too_many_pods(len(caps), len(caps), not_ready) if caps else "")
                return
            # spread a Deployment's pods first (the default topology spread), then all pods
            load = {n: [0, 0] for n in fits}
            owner = (pod["metadata"]["namespace"], replicas.owner_deployment(pod))
            for p in self.objects["Pod"].values():
                if p["spec"].get("nodeName") in load and not p["metadata"].get("deletionTimestamp"):
                    load[p["spec"]["nodeName"]][0] += (p["metadata"]["namespace"], replicas.owner_deployment(p)) == owner
                    load[p["spec"]["nodeName"]][1] += 1
            pod["spec"]["nodeName"] = min(load, key=lambda n: (*load[n], n))
            bound[pod["spec"]["nodeName"]] = bound.get(pod["spec"]["nodeName"], 0) + 1
            if any(c.get("type") == "PodScheduled" for c in (pod.get("status") or {}).get("conditions", [])):
                pod["status"] = {"phase": "Pending"}  # it was unschedulable: the kubelet reports from here
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self._save(pod)
        self.event("Pod", ns, name, "Scheduled",
                   f"Successfully assigned {ns}/{name} to {pod['spec']['nodeName']}", "Normal")

    def _unschedulable(self, pod: dict, message: str) -> None:
        """A pod no node takes now: Pending, PodScheduled=False with the scheduler's reason, one
        FailedScheduling event; nothing is written while the reason stays the same. No Ready
        node at all (message ""): only saved, as before a node registers."""
        status = pod.setdefault("status", {"phase": "Pending"})
        conds = status.get("conditions") or []
        if message and any(c.get("type") == "PodScheduled" and c.get("message") == message for c in conds):
            return
        if not message and "uid" in pod["metadata"] and key_of("Pod", pod["metadata"]["namespace"],
                                                                pod["metadata"]["name"]) in self.objects["Pod"]:
            return
        if message:
            status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": message, "lastTransitionTime": now_iso()}]
        self._save(pod)
        if message:
            self.event("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], "FailedScheduling", message)

    def _node_lifecycle(self) -> None:
        """Controller (multi-node): a Node whose lease lapsed turns Ready=Unknown and its pods
        NotReady (so their endpoints go), as Kubernetes' node lifecycle controller does."""
        for key, node in list(self.objects["Node"].items()):
            name = node["metadata"]["name"]
            alive = name in self.leases
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
                node = retry(self.store, mark) or node
                self.objects["Node"][key] = node
                word = "NodeReady" if alive else "NodeNotReady"
                self.event("Node", "", name, word, f"Node {name} status is now: {word}", "Normal")
                self.dirty = True
            if alive:
                continue
            for pkey, pod in list(self.objects["Pod"].items()):
                if pod["spec"].get("nodeName") == name and meta.pod_ready(pod):
                    self._write_pod_status(pkey, None, not_ready=True)
                    self.dirty = True

    def _run_local_pods(self) -> None:
        """Agent: run this node's pods, report their status, finish the terminating ones."""
        pods, me = self.objects["Pod"], self.cfg.node_name
        for key, rt in list(self.kubelet.pods.items()):  # what runs here and should not any more
            cur = pods.get(key)
            if cur is None or cur["metadata"].get("uid") != rt.pod["metadata"].get("uid") \
                    or cur["spec"].get("nodeName") != me:
                self.kubelet.stop_pod(key, grace=2)  # deleted, or replaced by a new pod of that name
        try:
            for key, pod in list(pods.items()):
                if pod["spec"].get("nodeName") != me:
                    continue
                with self._confined("FailedSync", "Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]):
                    self._sync_local_pod(key, pod)
        finally:  # probes and restarts of every pod, whatever happened above; one pod's failure is its own
            self.kubelet.tick(guard=lambda p: self._confined("FailedSync", "Pod", p["metadata"]["namespace"],
                                                             p["metadata"]["name"]))
        ran = {k: rt.pod for k, rt in self.kubelet.pods.items()}
        for key in self.kubelet.finished_pods():
            old, cur = ran[key], pods.get(key)
            if cur is not None and cur["metadata"].get("uid") == old["metadata"].get("uid"):
                if cur["metadata"].get("deletionTimestamp"):
                    self._forget_pod(key, cur)
            elif old.get("status", {}).get("podIP") != (cur or {}).get("status", {}).get("podIP"):
                retry(self.store, lambda txn, ip=old.get("status", {}).get("podIP"): allocation.release_pod_ip(txn, ip))
            self.dirty = True

    def _sync_local_pod(self, key: str, pod: dict) -> None:
        """Agent: one pod of this node: stop it, start it, or report its status."""
        rt = self.kubelet.pods.get(key)
        if pod["metadata"].get("deletionTimestamp"):
            if rt is not None:
                self.kubelet.stop_pod(key)
            else:  # never started here (or the agent restarted): nothing to wait for
                self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
                self._forget_pod(key, pod)
        elif rt is None and self.start_failures.get(key, 0) <= time.monotonic():
            self._start_pod(key, pod)
        elif rt is not None and rt.pod["metadata"].get("uid") == pod["metadata"].get("uid") \
                and rt.terminating_since is None:
            want = self.kubelet.status(rt)  # what the store says may have been lost or
            if pod.get("status") != want:   # overwritten (etcd away, node marked NotReady)
                self._write_pod_status(key, want)
                self.dirty = True
                self.triggers.append(time.time())

    def _write_pod_status(self, key: str, status: dict | None, not_ready: bool = False) -> None:
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
        pod = retry(self.store, write)
        if pod is not None:
            self.objects["Pod"][key] = pod

    def _forget_pod(self, key: str, pod: dict) -> None:
        """A pod that is gone: free its IP and delete it (this very pod, not a successor of the
        same name), in one transaction."""
        def forget(txn):
            allocation.release_pod_ip(txn, pod.get("status", {}).get("podIP"))
            cur = txn.get(key)
            if cur is not None and cur["metadata"].get("uid") == pod["metadata"].get("uid"):
                txn.delete(key)
        retry(self.store, forget)
        if (self.objects["Pod"].get(key) or {}).get("metadata", {}).get("uid") == pod["metadata"].get("uid"):
            self.objects["Pod"].pop(key, None)

    def _write_status(self, obj: dict, status: dict) -> None:
        """Controller: write an object's status over what another writer changed since (its
        spec may have been re-admitted by another controller meanwhile)."""
        kind, ns, name = obj_id(obj)
        key, uid = key_of(kind, ns, name), obj["metadata"].get("uid")

        def write(txn):
            cur = txn.get(key)
            if cur is None or cur["metadata"].get("uid") != uid:
                return None
            cur["status"] = status
            txn.put(key, cur)
            return cur
        cur = retry(self.store, write)
        if cur is not None:
            self.objects[kind][key] = cur

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
        for deploy in list(self.objects["Deployment"].values()):
            ns, name = deploy["metadata"]["namespace"], deploy["metadata"]["name"]
            with self._confined("FailedUpdateStatus", "Deployment", ns, name):
                h = replicas.pod_template_hash(deploy["spec"]["template"])
                owned = [p for p in self.objects["Pod"].values() if p["metadata"]["namespace"] == ns
                         and replicas.owner_deployment(p) == name and not p["metadata"].get("deletionTimestamp")]
                ready = sum(1 for p in owned if meta.pod_ready(p))
                status = {"observedGeneration": 1, "replicas": len(owned), "readyReplicas": ready,
                          "availableReplicas": ready,
                          "updatedReplicas": sum(1 for p in owned
                                                 if p["metadata"]["labels"].get("pod-template-hash") == h)}
                if deploy.get("status") != status:
                    self._write_status(deploy, status)

    def _start_pod(self, key: str, pod: dict) -> None:
        ip = pod.get("status", {}).get("podIP")
        def take(txn):
            if ip and txn.get(f"{allocation.POD_IPS}{ip}") in (None, key) \
                    and allocation.in_cidr(ip, self.cfg.node_pod_cidr):
                txn.put(f"{allocation.POD_IPS}{ip}", key)
                return ip
            return allocation.allocate_pod_ip(txn, self.cfg.node_pod_cidr, key)
        ip = retry(self.store, take)
        status = {"phase": "Pending", "podIP": ip, "hostIP": self.node_ip}
        try:
            self.kubelet.start_pod(key, {**pod, "status": status})
            status = self.kubelet.status(self.kubelet.pods[key])
        except Exception as e:  # noqa: BLE001 - one pod failing to start must not stop the node
            log.exception("cannot start pod %s", key)
            self.start_failures[key] = time.monotonic() + 5  # retry later, not every pass
            self.event("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"], "FailedCreatePodSandBox", str(e))
        self._write_pod_status(key, status)
        self.dirty = True

    def _terminate_pod(self, key: str) -> None:
        """Controller: mark the pod terminating (NotReady); its node's agent stops it. One
        process doing both takes the endpoints away first, then stops the processes."""
        pod = self.objects["Pod"].get(key)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        if not pod["spec"].get("nodeName"):  # never bound to a node: gone at once, as the API server does
            self._forget_pod(key, pod)
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
        pod = retry(self.store, mark)
        if pod is None:
            self.objects["Pod"].pop(key, None)
            return
        self.objects["Pod"][key] = pod
        self.dirty = True
        if not self.is_agent:
            return
        # endpoints go first (this pass), the processes after: no request meets a dying pod
        self._sync_endpoints()
        self._sync_proxy()
        if key in self.kubelet.pods:
            self.kubelet.stop_pod(key)
        elif pod["spec"].get("nodeName") in (None, self.cfg.node_name):
            self.network.remove_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
            self._forget_pod(key, pod)

    # -- endpoints and rules --------------------------------------------------------------
    def _sync_endpoints(self) -> None:
        pods_by_ns: dict[str, list[dict]] = {}
        for pod in self.objects["Pod"].values():
            pods_by_ns.setdefault(pod["metadata"]["namespace"], []).append(pod)
        want_slices: dict[str, dict] = {}
        want_eps: dict[str, dict] = {}
        user_eps = {k for k in self.sources if k.startswith("/registry/endpoints/")}
        for svc in list(self.objects["Service"].values()):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            got = None
            with self._confined("FailedToUpdateEndpointSlices", "Service", ns, name):
                got = self._endpoints_of(svc, pods_by_ns, user_eps)
            if got is None:  # this Service failed: it keeps the endpoints it had
                ep_key = key_of("Endpoints", ns, name)
                got = ({k: sl for k, sl in self.objects["EndpointSlice"].items()
                        if sl["metadata"].get("namespace") == ns
                        and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name},
                       {ep_key: self.objects["Endpoints"][ep_key]} if ep_key in self.objects["Endpoints"] else {})
            want_slices.update(got[0])
            want_eps.update(got[1])
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

    def _endpoints_of(self, svc: dict, pods_by_ns: dict, user_eps: set[str]) -> tuple[dict, dict]:
        """One Service's wanted EndpointSlices and Endpoints, by key."""
        spec, meta = svc["spec"], svc["metadata"]
        want_slices, want_eps = {}, {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            ep_key = key_of("Endpoints", meta["namespace"], meta["name"])
            if ep_key in user_eps and ep_key in self.objects["Endpoints"]:
                for sl in endpoints.mirror_endpoints(self.objects["Endpoints"][ep_key]):
                    want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
            return want_slices, want_eps
        slices = endpoints.slices_for_service(svc, pods_by_ns.get(meta["namespace"], []), self.cfg.node_name)
        for sl in slices:
            want_slices[key_of("EndpointSlice", meta["namespace"], sl["metadata"]["name"])] = sl
        want_eps[key_of("Endpoints", meta["namespace"], meta["name"])] = endpoints.endpoints_from_slices(svc, slices)
        return want_slices, want_eps

    def _pools(self) -> list[loadbalancer.Pool]:
        pools = []
        for obj in sorted(self.objects["IPAddressPool"].values(), key=lambda o: o["metadata"]["name"]):
            try:
                pools.append(loadbalancer.pool_from_object(obj))
            except ValueError:
                continue  # reported when the manifest was loaded
        if self.cfg.lb_pools:
            pools.append(loadbalancer.Pool("default", tuple(loadbalancer.parse_range(r) for r in self.cfg.lb_pools)))
        reserved = self._lab_addresses()  # a pool that holds a node's address hands out nothing
        usable = []
        for pool in pools:
            held = sorted(ip for ip in reserved if ":" not in ip and pool.contains(ip))
            if not held:
                usable.append(pool)
            elif (pool.name, held[0]) not in self.withheld_pools:  # said once, not every pass
                self.withheld_pools.add((pool.name, held[0]))
                obj = next((o for o in self.objects["IPAddressPool"].values() if o["metadata"]["name"] == pool.name), None)
                self.event("IPAddressPool", (obj or {}).get("metadata", {}).get("namespace", ""), pool.name,
                           "PoolWithheld", f"pool {pool.name} holds {held[0]} ({reserved[held[0]]}): "
                           "it hands out no address while a node's or the lab's own address is in it")
        return usable

    def _lab_addresses(self) -> dict[str, str]:
        return loadbalancer.lab_addresses(self.cfg, list(self.objects["Node"].values()))

    def _sync_load_balancers(self) -> None:
        """Controller: give each LoadBalancer Service an IP from the pools (or leave it <pending>
        with an event saying why) and free the IPs of the others."""
        pools = self._pools()
        held: dict[str, list[str]] = {}  # owner -> LB IPs it holds, read once for the pass
        for k, owner in self.store.list(loadbalancer.LB_IPS):
            held.setdefault(owner, []).append(k.rsplit("/", 1)[1])
        for key, svc in list(self.objects["Service"].items()):
            with self._confined("AllocationFailed", "Service", svc["metadata"]["namespace"], svc["metadata"]["name"]):
                self._sync_load_balancer(svc, pools, held)

    def _sync_load_balancer(self, svc: dict, pools: list, held: dict[str, list[str]]) -> None:
        """One LoadBalancer Service: its IP from the pools, or none (and an event why)."""
        owner = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
        ingress_now = svc.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        if not loadbalancer.wants_ip(svc):  # not (or no longer) a LoadBalancer of ours
            if owner in held:
                retry(self.store, lambda txn: loadbalancer.release(txn, owner))
            if ingress_now and svc["spec"].get("type") != "LoadBalancer":
                self._write_status(svc, {**svc["status"], "loadBalancer": {}})
            return
        if not pools:  # no pools: a status written in the manifest stands, like a cloud's
            return
        current = sorted(held.get(owner, []))
        try:
            ips = retry(self.store, lambda txn: loadbalancer.allocate(txn, svc, pools, current))
        except loadbalancer.PoolError as e:
            ips = []
            self.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "AllocationFailed",
                       str(e))
        ingress = [{"ip": ip, "ipMode": "VIP"} for ip in ips]
        if svc.get("status", {}).get("loadBalancer", {}).get("ingress") != ingress:
            self._write_status(svc, {**svc.get("status", {}), "loadBalancer": {"ingress": ingress} if ingress else {}})
            if ips:
                self.event("Service", svc["metadata"]["namespace"], svc["metadata"]["name"], "IPAllocated",
                           f"Assigned IP {json.dumps(ips)}", "Normal")

    def _announce_load_balancers(self) -> None:
        """Agent: answer ARP for the LoadBalancer IPs this node is elected to announce (MetalLB's
        layer-2 mode: one node per IP, the same choice on every node; another when it goes)."""
        pools = self._pools()
        l2ads = list(self.objects["L2Advertisement"].values())
        ready = self._ready_nodes()
        announce: set[str] = set()
        for svc in list(self.objects["Service"].values()):
            if not loadbalancer.wants_ip(svc):
                continue
            with self._confined("AnnounceFailed", "Service", svc["metadata"]["namespace"], svc["metadata"]["name"]):
                nodes = ready
                if svc["spec"].get("externalTrafficPolicy") == "Local":  # MetalLB: only where endpoints live
                    nodes = sorted(set(ready) & self._endpoint_nodes(svc))
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
                self.announcer = Announcer(self.naming.lab_link if self.cfg.sandbox else self._host_iface())
                self._supervise("announcer", lambda: self.announcer.run(ready=lambda: self.components.ok("announcer")))
            self.announcer.set_ips(announce)

    def _endpoint_nodes(self, svc: dict) -> set[str]:
        """Nodes with a ready endpoint of `svc`."""
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        return {ep.get("nodeName") for sl in self.objects["EndpointSlice"].values()
                if sl["metadata"].get("namespace") == ns
                and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name
                for ep in sl.get("endpoints", []) if ep.get("conditions", {}).get("ready", True)}

    def _host_iface(self) -> str:
        """The interface holding the node's address (a VM's private network, not its NAT)."""
        for line in subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[3].split("/")[0] == self.node_ip:
                return parts[1]
        out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout.split()
        return out[out.index("dev") + 1] if "dev" in out else "lo"

    def _sync_routes(self) -> None:
        """Agent (multi-node): routes to the other nodes' pod CIDRs, host-gw or over VXLAN."""
        if not self.shared:
            return
        routes = {}
        for node in self.objects["Node"].values():
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

    def _sync_proxy(self, force: bool = False) -> None:
        """Render and apply (a partial sync unless `force`); feeds metrics and /healthz."""
        self.health.queued()
        self.metrics.last_queued.set(time.time())
        for key, bad in list(self.proxy_quarantine.items()):  # changed since: try its rules again
            if self.objects["Service"].get(key) != bad:
                del self.proxy_quarantine[key]
                self.obj_problems.pop(("FailedProxyRules", "Service", *obj_id(bad)[1:]), None)
        services = [svc for key, svc in self.objects["Service"].items() if key not in self.proxy_quarantine]
        slices = list(self.objects["EndpointSlice"].values())
        changed = self.proxy_changes.take()  # informer-style: only these Services are compared
        try:
            res = self.proxier.sync(services, slices, full=force, changed=changed)
        except applier.IptablesError as e:
            self.proxy_changes.forget_all()  # the next sync is full anyway
            log.error("%s", e)
            self.metrics.restore_failures.inc()
            self.event("Node", "", self.cfg.node_name, "FailedSync", str(e))
            return
        except BaseException:
            self.proxy_changes.forget_all()
            if self._quarantine_services(services, slices):
                self.dirty = True  # the next pass programs the others without them
                return
            raise
        if res.full:
            self.last_full_sync = time.monotonic()
            self.last_full_duration = res.duration
        self.health.updated()
        self.metrics.last_sync.set(time.time())
        self.http.sync_service_health(self.proxier.health_check_ports())  # counted as the rules see them
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
        status_key = PROXY_STATUS + (f"/{self.cfg.node_name}" if self.shared else "")
        status = {"lastSync": now_iso(), "full": res.full, "durationSeconds": round(res.duration, 4),
                  "servicesWritten": res.services_written, "services": sorted(res.result.service_chains)}
        if not res.full:
            self.last_partial = {k: status[k] for k in ("lastSync", "durationSeconds", "servicesWritten")}
        if self.last_partial:  # a periodic full sync does not hide what the last change did
            status["lastPartial"] = self.last_partial
        try:
            if self.shared:  # the key goes with the node's lease: a dead node holds no `apply --wait`
                self.store.put(status_key, status, lease=self.lease)
            else:
                self.store.put(status_key, status)
        except Exception as e:  # noqa: BLE001 - the rules are live; only the report is lost
            log.warning("cannot record the sync: %s", e)

    def _quarantine_services(self, services: list[dict], slices: list[dict]) -> bool:
        """The rules failed to render: find the Services whose own rules fail (each rendered
        alone), report them (FailedProxyRules) and leave them out until they change, so every
        other Service keeps being programmed. False when none is to blame (then the pass fails)."""
        found = False
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            own = [sl for sl in slices if sl["metadata"].get("namespace") == ns
                   and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name]
            rendered = False
            with self._confined("FailedProxyRules", "Service", ns, name):
                render.render([svc], own, self.proxier.cfg)
                rendered = True
            if not rendered:
                self.proxy_quarantine[key_of("Service", ns, name)] = svc
                found = True
        return found

    def _metrics_answer(self, req) -> tuple[int, str, str]:
        if req.path.split("?")[0] != "/metrics":
            return 404, "text/plain", "404 page not found\n"
        return 200, "text/plain; version=0.0.4", self.metrics.registry.exposition()

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
        self.components.ok("control-socket")
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
                else:  # `kproxy apply/delete` wrote the folder whole: removals need not wait
                    self.folder_settled = True
                with self.cond:
                    target = self.generation + 2  # a whole pass that began after this request
                    self.poke.set()
                    self.cond.wait_for(lambda: self.generation >= target or self.stopping.is_set(), timeout=60)
            try:
                errs = self.store.get(MANIFEST_ERRORS) or []
            except Exception as e:  # noqa: BLE001 - the store is away: say so
                errs = [{"message": f"the store is unreachable: {e}"}]
            reply = {"ready": self.ready, "generation": self.generation, "pid": os.getpid(), "errors": errs,
                     "health": {self.health_key: self.health_report()}}  # also when the store cannot be written
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError as e:  # the client went away (a ^C on `kproxy apply`)
                log.info("control socket: cannot answer: %s", e)


def main(argv: list[str] | None = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(description="run the kproxy daemon in the foreground")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--role", choices=("all", "controller", "agent"), default="all")
    args = ap.parse_args(argv)
    cfg = LabConfig.load(args.state_dir)
    if cfg is None:
        raise SystemExit(f"no lab configured in {args.state_dir}: run `kproxy up` first")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{args.role}] %(message)s")
    Daemon(cfg, controller=args.role in ("all", "controller"), agent=args.role in ("all", "agent")).run()


if __name__ == "__main__":
    main()
