"""What the daemon's roles share, handed to each explicitly: the store and its cache, the event
recorder, confinement and component health, and the loop's two signals.

Why one object: the roles (kproxy/frontend.py, controllers/manager.py, node/agent.py,
proxy/role.py) never call each other; they tell each other things by writing the store (the
cache) and setting `dirty` ("something changed: recompute this pass") or poking the loop. What
each of them needs besides is here, once: `event` (a Kubernetes Event), `confined` (one
object's failure stays that object's: logged, a problem, an event), `supervise` (a background
thread that cannot fail unseen), and read helpers over the cache that several roles use
(`ready_nodes`, `pools`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Callable

from kproxy import supervise
from kproxy.config import LabConfig
from kproxy.controllers import allocation, loadbalancer
from kproxy.node.kubelet import now_iso
from kproxy.proxy import changes, metrics
from kproxy.store.base import Store
from kproxy.store.open import open_store  # noqa: F401 - the one opener (also the daemon's name)
from kproxy.store.cache import Cache, key_of, obj_id  # noqa: F401 - the roles' one spelling of both
from kproxy.api import meta

log = logging.getLogger("kproxy")

PROXIED_KINDS = ("Service", "EndpointSlice")  # what the proxy role reads, change-tracked
MANIFEST_KEYS = "/kproxy/manifest-keys"  # what each admission front's folder declared (+ /<node> per front)


def host_ip() -> str:
    """The host's primary address, for a node that is the real host (a route lookup, no packet)."""
    out = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True).stdout
    parts = out.split()
    return parts[parts.index("src") + 1] if "src" in parts else "127.0.0.1"


class Context:
    """One daemon process's shared state. `store` defaults to `open_store(cfg)`; `node_ip` to
    the sandbox node's address (or the host's)."""

    def __init__(self, cfg: LabConfig, store: Store | None = None, node_ip: str | None = None):
        from kproxy.node.network import NodeConfig
        self.cfg = cfg
        self.shared = cfg.multi_node  # other processes write the store too
        self.state = Path(cfg.state_dir)
        self.store = store if store is not None else open_store(cfg)  # kproxy/store/open.py: the one opener
        self.naming = cfg.naming
        self.node_cfg = NodeConfig(node_name=cfg.node_name, sandbox=cfg.sandbox, pod_cidr=cfg.node_pod_cidr,
                                   cluster_cidr=cfg.cluster_cidr, service_cidr=cfg.service_cidr,
                                   lab_cidr=cfg.lab_cidr, node_host=1 + cfg.node_index if cfg.node_index else 2,
                                   switch=cfg.node_index > 0)
        self.node_ip = node_ip or cfg.node_ip or (self.node_cfg.node_ip if cfg.sandbox else host_ip())
        self.ranges = allocation.ServiceRanges(cfg.service_cidr, tuple(cfg.node_port_range))
        self.rng = random.Random()
        self.proxy_changes = changes.ChangeTracker()  # Services changed since the last proxy sync
        self.cache = Cache(self.store, (*meta.ADMITTED_KINDS, "Node"), self.proxy_changes, PROXIED_KINDS,
                           shared=self.shared)
        self.metrics = metrics.ProxyMetrics()
        self.components = supervise.Health()  # background threads, passes, disk: `kproxy status`
        self.obj_problems: dict[tuple, dict] = {}  # (reason, kind, ns, name) -> a confined failure
        self.disk_error: str | None = None  # the last ENOSPC/EDQUOT of this pass
        self.stopping = threading.Event()
        self.poke = threading.Event()
        self.dirty = True   # something changed: the pass recomputes endpoints, rules, routes
        self.proxy_syncs = 0  # proxy syncs done: the agent stops a pod only after one that followed its end
        self.lease: int | None = None   # this process's lease: node heartbeat or leadership
        self.leader = not self.shared   # controllers: only the leader reconciles (admission: all)
        self.withheld_pools: set[tuple[str, str]] = set()  # (pool, lab address in it) already reported
        self.change_hooks: list[Callable[[float], None]] = []  # the proxy role's programming-latency clock

    def source_of(self, kind: str, ns: str, name: str) -> str | None:
        """The manifest file that declares an object, read from what every admission front wrote
        to the store (MANIFEST_KEYS, one record per front): any role can name the file of an
        object it failed on without asking the front."""
        key = key_of(kind, ns, name)
        for _, record in self.store.list(MANIFEST_KEYS):
            for source, keys in sorted((record or {}).get("files", {}).items()):
                if key in keys:
                    return source
        return None

    @property
    def objects(self) -> dict[str, dict[str, dict]]:
        return self.cache.objects

    def changed(self, when: float) -> None:
        """A change the rules will reflect was seen (a file written, a pod ready) at `when`."""
        for hook in self.change_hooks:
            hook(when)

    # -- events ---------------------------------------------------------------------------
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

    def node_event(self, reason: str, message: str) -> None:
        self.event("Node", "", self.cfg.node_name, reason, message)

    # -- confinement and health -----------------------------------------------------------
    @contextlib.contextmanager
    def confined(self, reason: str, kind: str, ns: str, name: str, problems: list | None = None,
                 source: str | None = None):
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
            self.note_disk(e)
            msg = f"Internal error occurred: {kind} {f'{ns}/' if ns else ''}{name}: {supervise.describe(e)}"
            problem = {"kind": kind, "namespace": ns or "", "name": name, "reason": reason, "message": msg}
            if source is None:  # the admission front knows it; any other role asks the store
                try:
                    source = self.source_of(kind, ns, name)
                except Exception:  # noqa: BLE001 - a kind without a registry path, a store away
                    source = None
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

    def note_disk(self, e: BaseException) -> None:
        """ENOSPC/EDQUOT anywhere: the `disk` component fails (status `disk full: ...`, an event
        NodeHasDiskPressure); the lab goes on where it can, and it clears once writing works."""
        if not supervise.disk_full(e):
            return
        msg = supervise.describe(e)
        self.disk_error = msg
        if not self.components.is_failed("disk"):
            self.components.failed("disk", msg)
            self.node_event("NodeHasDiskPressure", msg)

    def disk_writable(self) -> bool:
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

    def supervise(self, name: str, target) -> threading.Thread:
        """A background thread that cannot fail unseen (supervise.supervised): its failure is
        logged, an event `<Name>Failed` on this Node, a failed component in `kproxy status`."""
        return supervise.supervised(name, target, self.components, self.stopping, self._component_failed)

    def _component_failed(self, name: str, message: str) -> None:
        if message.startswith("disk full"):
            self.components.failed("disk", message)
        reason = "".join(w.title() for w in name.split("-")) + "Failed"  # AnnouncerFailed, WatchFailed
        self.node_event(reason, f"{name}: {message}")

    # -- writes and reads several roles share ---------------------------------------------
    def save(self, obj: dict) -> None:
        self.cache.put(obj)

    def remove(self, kind: str, key: str) -> dict | None:
        return self.cache.remove(kind, key)

    @staticmethod
    def new_meta(obj: dict, old: dict | None) -> None:
        m = obj["metadata"]
        om = (old or {}).get("metadata", {})
        m["uid"] = om.get("uid") or str(uuid.uuid4())
        m["creationTimestamp"] = om.get("creationTimestamp") or now_iso()

    def ready_nodes(self) -> list[str]:
        """Nodes that take pods and announce IPs: every Node whose heartbeat is alive."""
        if not self.shared:
            return [self.cfg.node_name]
        return sorted(n["metadata"]["name"] for n in self.objects["Node"].values()
                      if n["metadata"]["name"] in self.cache.leases)

    def lab_addresses(self) -> dict[str, str]:
        return loadbalancer.lab_addresses(self.cfg, list(self.objects["Node"].values()))

    def pools(self) -> list[loadbalancer.Pool]:
        """The LoadBalancer pools that may hand out addresses (the controllers allocate from
        them, the agent announces theirs); a pool holding a lab address is withheld, said once."""
        pools = []
        for obj in sorted(self.objects["IPAddressPool"].values(), key=lambda o: o["metadata"]["name"]):
            try:
                pools.append(loadbalancer.pool_from_object(obj))
            except ValueError:
                continue  # reported when the manifest was loaded
        if self.cfg.lb_pools:
            pools.append(loadbalancer.Pool("default", tuple(loadbalancer.parse_range(r) for r in self.cfg.lb_pools)))
        reserved = self.lab_addresses()  # a pool that holds a node's address hands out nothing
        usable = []
        from kproxy.api.validation.pools import special_address_errors  # a pool stored before that rule
        for pool in pools:
            held = sorted(ip for ip in reserved if ":" not in ip and pool.contains(ip))
            special = [e.detail for lo, hi in pool.ranges for e in special_address_errors("", "", lo, hi)]
            if special and (pool.name, special[0]) not in self.withheld_pools:
                self.withheld_pools.add((pool.name, special[0]))
                obj = next((o for o in self.objects["IPAddressPool"].values()
                            if o["metadata"]["name"] == pool.name), {})
                self.event("IPAddressPool", obj.get("metadata", {}).get("namespace", ""), pool.name, "PoolWithheld",
                           f"pool {pool.name} {special[0]}")
            if special:
                continue
            if not held:
                usable.append(pool)
            elif (pool.name, held[0]) not in self.withheld_pools:  # said once, not every pass
                self.withheld_pools.add((pool.name, held[0]))
                obj = next((o for o in self.objects["IPAddressPool"].values() if o["metadata"]["name"] == pool.name), None)
                self.event("IPAddressPool", (obj or {}).get("metadata", {}).get("namespace", ""), pool.name,
                           "PoolWithheld", f"pool {pool.name} holds {held[0]} ({reserved[held[0]]}): "
                           "it hands out no address while a node's or the lab's own address is in it")
        return usable
