"""The admission front: the manifests folder -> admitted objects in the store (the API server's
part of kproxy).

Each poll compares the folder's signature (names, sizes, mtimes: polling works on shared
folders too); when it changed, every document goes through the one admission gate
(`api/admission.Admission`: defaulting, validation, update rules), and what passes is written to
the store (Services with their allocated ClusterIP/NodePorts). It also keeps the system objects
(`default/kubernetes`, the cluster DNS), remembers which file declared what (the store key
MANIFEST_KEYS, so a restart removes what vanished meanwhile) and serves the control socket's
`delete-pod` (a deletion mark, as the API server's graceful delete).

It tells the other roles what changed only by writing the store (and `ctx.dirty`); bare Pods it
binds with the shared scheduler function (controllers/pods.py), as the API server + scheduler.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
import time
from pathlib import Path

from kproxy import supervise
from kproxy.api import admission, errors, manifest, meta
from kproxy.context import MANIFEST_KEYS, Context, key_of, obj_id
from kproxy.controllers import allocation, endpoints, loadbalancer
from kproxy.controllers import pods as podw
from kproxy.store.etcd import retry

log = logging.getLogger("kproxy")

SYSTEM_NAMESPACES = meta.SYSTEM_NAMESPACES
USER_KINDS = meta.ADMITTED_KINDS
MANIFEST_ERRORS = "/kproxy/manifest-errors"
REMOVAL_QUIET_SECONDS = 1.0                  # removals wait until the folder was this long unchanged
POLL_PERIOD = 0.25
RECORD_PERIOD = 1.0                          # MANIFEST_KEYS at most this often when only versions changed


class Frontend:
    """The admission front of one controller process (every controller admits, as API servers
    all do; only the leader's controllers reconcile)."""

    def __init__(self, ctx: Context):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.sources: dict[str, dict] = {}       # key -> defaulted manifest object last admitted
        self.file_keys: dict[str, set[str]] = {}  # manifest file -> keys it held
        self.signature: tuple | None = None
        self.file_cache: dict[str, tuple] = {}  # manifest file -> ((mtime, size), its documents)
        # the admission gate: a document of an unchanged file is defaulted and validated once
        self.gate = admission.Admission(tuple(ctx.cfg.node_port_range), ctx.cfg.service_cidr, remember=True,
                                        reserved=ctx.lab_addresses)  # Nodes come and go: asked each time
        self.load_problems: list[dict] = []  # the last manifests load's problems
        self.removals_waiting = False  # objects gone from a folder still changing: removed once quiet
        self.sig_changed_at = 0.0       # monotonic time the folder's signature last changed
        self.folder_settled = False     # `kproxy apply/delete` asked: the folder is complete now
        self.requests: list[dict] = []  # the control socket's delete-pod requests
        self.next_poll = 0.0
        self.sources_changed = True                # self.sources since MANIFEST_KEYS was written
        self.saved_file_keys: dict | None = None   # self.file_keys as MANIFEST_KEYS holds it
        self.saved_errors: list | None = None      # what this front last wrote to MANIFEST_ERRORS
        self.record_at = 0.0  # monotonic time MANIFEST_KEYS was last written by save_record(now)
        self.same: dict[str, dict] = {}  # key -> the document object last found equal to sources[key]
        self.verdicts: dict[int, tuple] = {}  # id(document) -> (document, its identity, old, verdict, ns, declared?)

    # -- start and each pass --------------------------------------------------------------
    @property
    def manifest_keys(self) -> str:
        """Where this controller remembers what its folder held (one key per controller)."""
        return MANIFEST_KEYS if not self.ctx.shared else f"{MANIFEST_KEYS}/{self.cfg.node_name}"

    def start(self) -> None:
        """After the cache is listed: what the folder held before a restart, the system objects."""
        saved = self.ctx.store.get(self.manifest_keys) or {}
        self.file_keys = {f: set(keys) for f, keys in saved.get("files", {}).items()}
        self.sources = saved.get("sources", {})
        self.same, self.sources_changed = {}, True

    def step(self, now: float, record: bool = True) -> None:
        """Poll the folder every POLL_PERIOD (at once after a poke: the loop zeroes next_poll).
        `record=False`: MANIFEST_KEYS is left for `save_record` (the daemon's loop)."""
        if now >= self.next_poll:
            self.next_poll = now + POLL_PERIOD
            self.poll(record)

    def handle_requests(self) -> None:
        while self.requests:
            req = self.requests.pop(0)
            if req.get("op") == "delete-pod":
                podw.terminate(self.ctx, key_of("Pod", req["namespace"], req["name"]))

    def source_of(self, kind: str, ns: str, name: str) -> str | None:
        """The manifest file that declares an object, if one does."""
        try:
            key = key_of(kind, ns, name)
        except Exception:  # noqa: BLE001 - a kind without a registry path
            return None
        return next((f for f, keys in sorted(self.file_keys.items()) if key in keys), None)

    def folder_quiet(self) -> bool:
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

    def poll(self, record: bool = True) -> None:
        sig = manifest.folder_signature(Path(self.cfg.manifests))  # the reader's own listing
        if sig == self.signature:
            if self.removals_waiting and (self.folder_settled or self.folder_quiet()):
                self.load_manifests(record)  # the folder is quiet now: what vanished from it goes
            return
        self.sig_changed_at = time.monotonic()
        if self.signature is not None:  # when the change was written (programming latency)
            self.ctx.changed(max((s[3] for s in sig), default=time.time_ns()) / 1e9)
        self.signature, self.ctx.dirty = sig, True
        try:
            self.load_manifests(record)
        except Exception:
            self.signature = None  # load it all again next time: nothing of it may be lost
            raise

    # -- system objects -------------------------------------------------------------------
    def ensure_system_objects(self) -> None:
        for ns in SYSTEM_NAMESPACES:
            key = key_of("Namespace", "", ns)
            if key not in self.ctx.objects["Namespace"]:
                obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                       "status": {"phase": "Active"}}
                self.ctx.new_meta(obj, None)
                self.ctx.save(obj)
        kubernetes = {"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "kubernetes", "namespace": "default",
                                   "labels": {"component": "apiserver", "provider": "kubernetes"}},
                      "spec": {"type": "ClusterIP", "clusterIP": self.ctx.ranges.nth_ip(1),
                               "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}
        self.admit_service(admission.default(kubernetes))
        # the API server's own endpoints: the node's address, port 6443 (kproxy/apiserver listens there
        # in a sandbox lab; a host-mode lab serves the API on loopback only)
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "kubernetes", "namespace": "default",
                               "labels": {endpoints.SERVICE_NAME: "kubernetes"}},
                  "addressType": "IPv4",
                  "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                  "endpoints": [{"addresses": [self.ctx.node_ip], "conditions": {"ready": True}}]}
        eps = {"apiVersion": "v1", "kind": "Endpoints",  # skip-mirror, as the API server labels its own
               "metadata": {"name": "kubernetes", "namespace": "default", "labels": {endpoints.SKIP_MIRROR: "true"}},
               "subsets": [{"addresses": [{"ip": self.ctx.node_ip}],
                            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]}
        for obj in (slice_, eps):
            self.ctx.new_meta(obj, self.ctx.objects[obj["kind"]].get(key_of(obj["kind"], "default", "kubernetes")))
            self.ctx.save(obj)
        if self.cfg.cluster_dns:
            self.ensure_cluster_dns()

    def ensure_cluster_dns(self) -> None:
        """kube-system/kube-dns in front of a `coredns` Deployment, as kubeadm sets them up; the
        pods run kproxy's DNS server, which reads the store the way CoreDNS watches the API."""
        labels = {"k8s-app": "kube-dns"}
        command = [sys.executable, "-m", "kproxy.dns.server", "--store", self.cfg.store_url or str(self.ctx.state / "store.db"),
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
                   "spec": {"selector": labels, "clusterIP": self.ctx.ranges.nth_ip(10),
                            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                      {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                                      {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}
        msg = self.admit_service(admission.default(service))
        if msg:
            log.error("cluster DNS disabled: %s", msg)
            return
        deploy = admission.default(deploy)
        self.ctx.new_meta(deploy, self.ctx.objects["Deployment"].get(key_of("Deployment", "kube-system", "coredns")))
        self.ctx.save(deploy)

    # -- manifests -> admitted objects ----------------------------------------------------
    def read_folder(self) -> list:
        """Every document of the manifests folder; a file is parsed again only when it changed.
        The listing and stamps are the poll's signature (stat before read: a file changed after
        it has a new stamp at the next poll), so a pass lists the folder once."""
        sig = self.signature if self.signature is not None else \
            manifest.folder_signature(Path(self.cfg.manifests))
        docs, cache = [], {}
        for d, name, size, mtime_ns in sig:
            path = f"{d}/{name}" if d != "/" else f"/{name}"
            stamp = (mtime_ns, size)
            hit = self.file_cache.get(path)
            if not (hit and hit[0] == stamp):
                try:
                    hit = (stamp, manifest.read_file(Path(path)))
                except Exception as e:  # noqa: BLE001 - one file that cannot be read stops no other
                    log.warning("cannot read %s", path, exc_info=True)
                    hit = (stamp, [manifest.Document(path, 0, error=f"error reading {path}: "
                                                                    f"{supervise.describe(e)}")])
            cache[path] = hit
            docs += hit[1]
        self.file_cache = cache
        return docs

    def load_manifests(self, record: bool = True) -> None:
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
        docs = self.read_folder()
        desired: dict[str, dict] = {}
        keep: set[str] = set()
        problems: list[dict] = []
        files: dict[str, set[str]] = {}
        broken_files = set()
        candidates: dict[str, list[tuple[str, dict]]] = {}  # key -> (file, valid object), in file order
        judged: dict[int, tuple] = {}  # this load's verdicts (see judge)
        declared: dict[str, list[str]] = {}  # key -> the files that declare it
        # Namespaces of this load count at once, so a file may hold a Namespace and its objects.
        namespaces = {d.obj["metadata"].get("name") for d in docs
                      if d.obj and d.obj.get("kind") == "Namespace" and isinstance(d.obj.get("metadata"), dict)}
        for doc in docs:
            if doc.error:
                problems.append({"source": doc.source, "message": doc.error})
                broken_files.add(doc.source)
                continue
            verdict, identity = self.judge(doc, namespaces, judged)
            if verdict.reason == admission.NO_MATCH:  # as `kproxy apply` refuses it
                problems.append({"source": doc.source, "kind": doc.obj.get("kind"),
                                 "name": meta.metadata_of(doc.obj).get("name") or "", "message": verdict.message})
                continue
            obj, msg = verdict.obj, verdict.message
            kind, ns, name = identity or meta.obj_key(obj)
            key = key_of(kind, ns, name)
            files.setdefault(doc.source, set()).add(key)
            if doc.source not in declared.setdefault(key, []):
                declared[key].append(doc.source)
            if msg:
                problems.append({"source": doc.source, "message": msg, "kind": kind, "namespace": ns, "name": name})
                self.ctx.event(kind, ns, name, "FailedUpdate" if verdict.update else "FailedCreate", msg)
                if verdict.reason != admission.NOT_FOUND:
                    keep.add(key)  # a refused update keeps the admitted version serving
                continue
            candidates.setdefault(key, []).append((doc.source, obj))
        self.gate.end_round()
        self.verdicts = judged
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
            self.ctx.event(kind, ns, name, "DuplicateManifest", msg)
        for source in broken_files:  # a file that does not parse keeps what it held before
            keep |= self.file_keys.get(source, set())
            files.setdefault(source, set()).update(self.file_keys.get(source, set()))
        self.file_keys = files
        # namespaces first, so the objects in them are admitted after them
        order = {k: i for i, k in enumerate(USER_KINDS)}
        for key, obj in sorted(desired.items(), key=lambda kv: order[kv[1]["kind"]]):
            if self.same.get(key) is obj and key in self.ctx.objects[obj["kind"]]:
                continue  # the very document admitted before (a kept verdict): no deep compare
            if self.sources.get(key) != obj or key not in self.ctx.objects[obj["kind"]]:
                kind, ns, name = obj_id(obj)
                msg, source = None, self.source_of(kind, ns, name)
                with self.ctx.confined("FailedCreate", kind, ns, name, problems, source):
                    msg = self.admit(key, copy.deepcopy(obj))  # admission changes it; the memo keeps it
                    if msg:
                        problems.append({"message": msg, "kind": kind, "namespace": ns, "name": name,
                                         **({"source": source} if source else {})})
                if msg or self.sources.get(key) != obj:
                    keep.add(key)  # an update refused (or failed) keeps the admitted version
            if key not in keep and self.sources.get(key) == obj:
                self.same[key] = obj
        gone = set(self.sources) - set(desired) - keep
        self.removals_waiting = bool(gone) and not (settled or self.folder_quiet())
        if self.removals_waiting:
            log.info("%d object(s) gone from the manifests folder: removed once it is unchanged for %.0f s",
                     len(gone), REMOVAL_QUIET_SECONDS)
        else:
            for key in sorted(gone):
                kind, ns, name = obj_id(self.sources[key])
                with self.ctx.confined("FailedDelete", kind, ns, name, problems, self.source_of(kind, ns, name)):
                    self.delete_user_object(key)
        if record:
            self.save_record()
        self.load_problems = problems
        errs = problems + [self.ctx.obj_problems[k] for k in sorted(self.ctx.obj_problems)]
        if errs != self.saved_errors:
            self.ctx.store.put(MANIFEST_ERRORS, errs)
            self.saved_errors = copy.deepcopy(errs)

    def save_record(self, now: float | None = None) -> None:
        """MANIFEST_KEYS, when it changed: at 1,000 Services a JSON document of ~1 MB, so the
        daemon writes it after telling API writes their object is stored (`step(record=False)`),
        and (`now` given) when only the admitted versions changed, not the files' keys, at most
        every RECORD_PERIOD: a stream of edits writes it once a second, not once a write. A
        restart before it is written admits the same objects again (nothing lost); which keys
        each file holds (what a restart removes when it vanished meanwhile) is written at once."""
        keys_changed = self.file_keys != self.saved_file_keys
        if not keys_changed and now is not None and now - self.record_at < RECORD_PERIOD:
            return
        if self.sources_changed or keys_changed:
            self.record_at = now if now is not None else 0.0
            self.ctx.store.put(self.manifest_keys, {"files": {f: sorted(k) for f, k in self.file_keys.items()},
                                                    "sources": self.sources})
            self.sources_changed, self.saved_file_keys = False, {f: set(k) for f, k in self.file_keys.items()}

    def judge(self, doc, namespaces: set, judged: dict) -> tuple[admission.Verdict, tuple | None]:
        """The gate's verdict on one document, judged again only when something it depends on
        changed: the document (a file re-read makes new ones), the admitted version it updates,
        whether its namespace is declared. A pass after one file changed then judges that
        file's documents alone, as an API server admits only the object written (at 1,000
        Services re-judging every document cost ~100 ms a pass). IPAddressPools are always
        judged: the lab's own addresses, which they must not hold, come and go."""
        obj = doc.obj
        hit = self.verdicts.get(id(obj))
        hit = hit if hit is not None and hit[0] is obj else None
        kind, ns, name = hit[1] if hit is not None else meta.obj_key(obj)
        # the gate judges an update against the admitted version, which then keeps serving
        admitted = self.ctx.objects.get(kind) if isinstance(kind, str) and isinstance(name, str) and name else None
        old = admitted.get(key_of(kind, ns, name)) if admitted is not None else None
        if hit is not None and (hit[2] is old or hit[2] == old) and hit[4] is not None \
                and (hit[4] in namespaces) == hit[5]:
            judged[id(obj)] = hit
            return hit[3], hit[6]
        verdict = self.gate.admit(obj, doc.source, old=old, namespaces=namespaces, hint=False)
        identity = meta.obj_key(verdict.obj) if verdict.reason != admission.NO_MATCH else None
        if isinstance(obj, dict) and kind != "IPAddressPool":
            ns_d = identity[1] if identity is not None and isinstance(identity[1], str) else None
            judged[id(obj)] = (obj, (kind, ns, name), old, verdict, ns_d,
                               ns_d in namespaces if ns_d is not None else False, identity)
        return verdict, identity

    def admit(self, key: str, obj: dict) -> str | None:
        """Store a valid object (allocating what it needs); returns the API error, if any."""
        kind = obj["kind"]
        old = self.ctx.objects[kind].get(key)
        source = copy.deepcopy(obj)
        if kind == "Service":
            msg = self.admit_service(obj)
            if msg:
                return msg
            self.ctx.metrics.service_changes.inc()
        elif kind == "Pod":
            if old is not None:
                podw.terminate(self.ctx, key)  # a changed bare Pod is replaced, on the same node
                self.ctx.objects["Pod"].pop(key, None)
                if old["spec"].get("nodeName"):
                    obj["spec"].setdefault("nodeName", old["spec"]["nodeName"])
            self.ctx.new_meta(obj, None)
            obj["status"] = {"phase": "Pending"}
            podw.schedule(self.ctx, obj)
        else:
            if kind == "Namespace":
                obj["status"] = {"phase": "Active"}
            self.ctx.new_meta(obj, old)
            self.ctx.save(obj)
        self.sources[key] = source
        self.same.pop(key, None)
        self.sources_changed = True
        self.ctx.dirty = True
        return None

    def admit_service(self, svc: dict) -> str | None:
        kind, ns, name = obj_id(svc)
        key = key_of(kind, ns, name)
        def admit(txn):  # may run again when another controller won a race (etcd)
            old = txn.get(key)
            new = allocation.allocate_service(txn, copy.deepcopy(svc), old, self.ctx.ranges, self.ctx.rng)
            self.ctx.new_meta(new, old)
            new.setdefault("status", (old or {}).get("status") or {"loadBalancer": {}})
            txn.put(key, new)
            return new
        try:
            svc = retry(self.ctx.store, admit)
        except allocation.AllocationError as e:
            err = errors.invalid(e.field, e.value, e.detail)
            msg = str(errors.InvalidError("Service", name, [err]))
            self.ctx.event("Service", ns, name, "FailedCreate", msg)
            return msg
        self.ctx.objects["Service"][key] = svc
        return None

    def delete_user_object(self, key: str) -> None:
        for kind, objs in self.ctx.objects.items():
            if key in objs:
                break
        else:
            self.sources.pop(key, None)
            self.same.pop(key, None)
            self.sources_changed = True
            return
        if kind == "Pod":
            podw.terminate(self.ctx, key)
        elif kind == "Service":  # the object and what it held go together, or not at all
            obj = objs[key]
            owner = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            retry(self.ctx.store, lambda txn: (txn.delete(key), allocation.release_owner(txn, owner),
                                               loadbalancer.release(txn, owner)), attempts=30)
            objs.pop(key, None)
        else:
            self.ctx.remove(kind, key)
        self.sources.pop(key, None)
        self.same.pop(key, None)
        self.sources_changed = True
        self.ctx.dirty = True

