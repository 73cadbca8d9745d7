"""The lease a multi-node process holds: an agent's is its node's heartbeat
(kube-node-lease/<node>: a node silent NODE_LEASE_SECONDS is NotReady); a controller's is its
claim to lead (one runs the controllers, as kube-controller-manager's leader election; every
controller admits manifests, as API servers all do).

The etcd lease id is `ctx.lease` (the keys that must vanish with the process are written with
it: its health record, its proxy status); `ctx.leader` says whether this process holds the key.
"""
from __future__ import annotations

import logging
import time

from kproxy import supervise
from kproxy.context import Context
from kproxy.node.kubelet import now_iso
from kproxy.store.cache import LEADER_LEASE, NODE_LEASES
from kproxy.store.etcd import retry

log = logging.getLogger("kproxy")

NODE_LEASE_SECONDS = 6                        # lease TTL: a node silent this long is NotReady
HEARTBEAT_SECONDS = 1.5
LEASE_RENEW_SECONDS = 10.0                     # the Lease object's renewTime (the kubelet's interval)
LEASE_ID = "kproxy.io/etcd-lease"


class Heartbeat:
    """`node`: hold this node's heartbeat lease (an agent), else the leader lease (a controller)."""

    def __init__(self, ctx: Context, node: bool):
        self.ctx, self.node = ctx, node
        self.key = NODE_LEASES + ctx.cfg.node_name if node else LEADER_LEASE
        self.namespace = "kube-node-lease" if node else "kube-system"

    def run(self) -> None:
        """Supervised thread: keep the lease alive and the Lease object claimed."""
        from kproxy.store.etcd import LeaseExpired
        ctx, me, key, ns = self.ctx, self.ctx.cfg.node_name, self.key, self.namespace
        renewed, created = 0.0, now_iso()
        while not ctx.stopping.is_set():
            try:
                if ctx.lease is None:
                    ctx.lease = ctx.store.grant_lease(NODE_LEASE_SECONDS)
                    ctx.leader = False
                else:
                    ctx.store.keepalive(ctx.lease)
                lease = ctx.lease
                value = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": key.rsplit("/", 1)[1], "namespace": ns, "creationTimestamp": created},
                         "spec": {"holderIdentity": me, "leaseDurationSeconds": NODE_LEASE_SECONDS,
                                  "renewTime": now_iso()}}
                value["metadata"]["annotations"] = {LEASE_ID: str(lease)}  # the etcd lease behind it
                renew = time.monotonic() - renewed >= LEASE_RENEW_SECONDS

                def claim(txn):
                    cur = txn.get(key)
                    held_by = (cur or {}).get("metadata", {}).get("annotations", {}).get(LEASE_ID)
                    if cur is None or (self.node and cur["spec"]["holderIdentity"] == me and held_by != str(lease)):
                        txn.put(key, value, lease=lease)
                        return True
                    mine = cur["spec"]["holderIdentity"] == me and held_by == str(lease)
                    if mine and renew:  # spec.renewTime, as the kubelet renews its Lease
                        txn.put(key, value, lease=lease)
                    return mine
                held = retry(ctx.store, claim)
                ctx.components.ok("heartbeat")
                if held and renew:
                    renewed = time.monotonic()
                if held != ctx.leader:
                    log.info("%s the %s lease", "holding" if held else "not holding", key)
                    ctx.leader = held
                    ctx.dirty = True  # a new leader recomputes everything
                    ctx.cache.stale.set()
                    ctx.poke.set()
            except LeaseExpired:
                log.warning("the lease expired; taking a new one")
                ctx.lease = None
                continue
            except Exception as e:  # noqa: BLE001 - etcd away: keep trying, the lease may survive
                log.warning("heartbeat failed: %s", e)
                ctx.components.failed("heartbeat", supervise.describe(e))
            ctx.stopping.wait(HEARTBEAT_SECONDS)

    def revoke(self) -> None:
        """On stop: NotReady now (endpoints go), not in a TTL."""
        if self.ctx.lease is not None:
            try:
                self.ctx.store.revoke(self.ctx.lease)
            except Exception as e:  # noqa: BLE001 - etcd may be gone already
                log.warning("cannot revoke the lease: %s", e)
