"""The proxy role (kube-proxy's part of kproxy): the Services and EndpointSlices of the cache
-> the node's iptables rules, with /healthz, /metrics and the healthCheckNodePorts.

The cache's change tracker (`ctx.proxy_changes`) says which Services changed since the last
sync, so a sync rewrites only their chains (a partial sync, proxier.py); a full sync runs every
`iptables_sync_period` (at most every RESYNC_COST_FACTOR x its own duration) and at once when
the canary chain is gone (someone flushed the tables). A Service whose rules fail to render is
quarantined (FailedProxyRules) so the others keep being programmed. Each sync's report is the
store key PROXY_STATUS (`kproxy apply --wait` and `kproxy status` read it).

The kernel is behind `applier` (a Kernel: the real iptables-restore, or proxy/fake.FakeKernel
in unit tests). With `proxy_mode: nftables` the Proxier is replaced by proxy/nft/syncer's
NftSyncer (the same surface; its canary is the `ip kube-proxy` table), and starting in one mode
removes the other mode's rules, as kube-proxy's cleanup does.
"""
from __future__ import annotations

import logging
import time

from kproxy.context import Context, key_of, obj_id
from kproxy.controllers import endpoints
from kproxy.node.kubelet import now_iso
from kproxy.proxy import applier as kernel_io
from kproxy.proxy import healthcheck, metrics, proxier, render

log = logging.getLogger("kproxy")

PROXY_STATUS = "/kproxy/proxy-status"        # single node; a multi-node agent adds /<node>
RESYNC_COST_FACTOR = 10  # full resyncs at most every 10x their own duration: under 10% of the time
CANARY_PERIOD = 5.0      # how often the canary chain is looked for between full syncs


class ProxyRole:
    """`kernel`: the Kernel the rules go to (default: the real one, iptables-restore)."""

    def __init__(self, ctx: Context, kernel=None):
        self.ctx, self.cfg = ctx, ctx.cfg
        self.applier = kernel if kernel is not None else kernel_io.Applier()
        self.fake_kernel = kernel is not None
        self.proxier: proxier.Proxier | None = None
        self.health = healthcheck.ProxyHealth(ctx.cfg.iptables_sync_period)
        self.http = healthcheck.HttpEndpoints()
        self.quarantine: dict[str, dict] = {}  # Service key -> the version its rules failed to render
        self.triggers: list[float] = []  # wall-clock times of changes not yet programmed
        self.last_full_sync = 0.0
        self.last_full_duration = 0.0
        self.last_partial: dict | None = None  # the last partial sync's report
        self.last_canary = 0.0
        ctx.change_hooks.append(self.triggers.append)

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Inside the node's namespace: the Proxier, and the /healthz and /metrics servers."""
        self.make_proxier()
        self.ctx.supervise("healthz-server", lambda: self.serve_http(
            "healthz", self.cfg.healthz_bind_address, self.health.answer))
        self.ctx.supervise("metrics-server", lambda: self.serve_http(
            "metrics", self.cfg.metrics_bind_address, self.metrics_answer))

    @property
    def nftables(self) -> bool:
        return getattr(self.cfg, "proxy_mode", "iptables") == "nftables"

    def make_proxier(self) -> None:
        pcfg = render.ProxyConfig(cluster_cidr=self.cfg.cluster_cidr, node_name=self.cfg.node_name,
                                  node_ips=[self.ctx.node_ip], masquerade_all=self.cfg.masquerade_all)
        from kproxy.proxy.nft import syncer as nft
        self.ctx.metrics.set_mode("nftables" if self.nftables else "iptables")
        if self.nftables:
            self.proxier = nft.NftSyncer(pcfg, self.cfg.service_cidr.split(","))  # type: ignore[assignment]
        else:
            self.proxier = proxier.Proxier(pcfg, applier=self.applier)
        if self.fake_kernel:  # unit tests: nothing of the machine's is touched
            return
        try:  # the other mode's rules go (kube-proxy's cleanup); a fresh netns has none
            if self.nftables:
                if kernel_io.have_iptables() and any(kernel_io.kube_chains(self.applier.save()).values()):
                    log.info("nftables mode: removing the iptables mode's KUBE-* chains")
                    self.applier.cleanup()
            elif nft.have_nft():
                other = nft.NftSyncer(pcfg)
                if other.table_exists():
                    log.info("iptables mode: removing the nftables mode's table ip kube-proxy")
                    other.cleanup()
        except kernel_io.IptablesError as e:
            log.warning("cannot remove the other proxy mode's rules: %s", e)
            self.ctx.node_event("FailedCleanup", f"cannot remove the other proxy mode's rules: {e}")

    def stop(self) -> None:
        self.http.stop()

    def cleanup(self) -> None:
        """A stopped node takes its rules with it (a sandbox's go with its namespace)."""
        if self.cfg.sandbox:
            return
        if self.nftables:
            from kproxy.proxy.nft import syncer as nft
            nft.remove_table()
        elif kernel_io.have_iptables():
            self.applier.cleanup()

    def serve_http(self, name: str, address: str, handler) -> None:
        """Supervised: serve kube-proxy's /healthz or /metrics; a port in use is retried."""
        self.http.start(name, address, handler)
        if name not in self.http.servers:
            raise OSError(f"cannot serve {name} on {address} (the address is in use or invalid)")
        self.ctx.components.ok(f"{name}-server")
        self.ctx.stopping.wait()

    # -- each pass ------------------------------------------------------------------------
    def resync(self, now: float) -> None:
        """A pass where nothing changed: the periodic full sync, or the canary check (and in
        nftables mode the deletion of stale chains whose grace is over)."""
        if self.nftables and getattr(self.proxier, "stale_chains", None):
            self.proxier.delete_stale_chains()
            self.count_nft_failures()
        if now - self.last_full_sync > max(self.cfg.iptables_sync_period,
                                           RESYNC_COST_FACTOR * self.last_full_duration):
            self.sync(force=True)  # restores rules flushed or deleted by hand
        elif now - self.last_canary > CANARY_PERIOD:
            self.last_canary = now
            kernel = self.proxier if self.nftables else self.applier
            if not kernel.canary_present():  # someone flushed the tables: resync now
                log.warning("%s is gone: the rules were flushed; full resync",
                            "table ip kube-proxy" if self.nftables else "KUBE-PROXY-CANARY")
                self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        """Render and apply (a partial sync unless `force`); feeds metrics and /healthz."""
        self.ctx.proxy_syncs += 1  # tried (a refused restore must not keep pods from stopping forever)
        self.health.queued()
        self.ctx.metrics.last_queued.set(time.time())
        for key, bad in list(self.quarantine.items()):  # changed since: try its rules again
            if self.ctx.objects["Service"].get(key) != bad:
                del self.quarantine[key]
                self.ctx.obj_problems.pop(("FailedProxyRules", "Service", *obj_id(bad)[1:]), None)
        services = [svc for key, svc in self.ctx.objects["Service"].items() if key not in self.quarantine]
        slices = list(self.ctx.objects["EndpointSlice"].values())
        changed = self.ctx.proxy_changes.take()  # informer-style: only these Services are compared
        try:
            res = self.proxier.sync(services, slices, full=force, changed=changed)
        except kernel_io.IptablesError as e:
            self.ctx.proxy_changes.forget_all()  # the next sync is full anyway
            log.error("%s", e)
            if not self.nftables:
                self.ctx.metrics.restore_failures.inc()
            self.ctx.node_event("FailedSync", str(e))
            return
        except BaseException:
            self.ctx.proxy_changes.forget_all()
            if self.quarantine_services(services, slices):
                self.ctx.dirty = True  # the next pass programs the others without them
                return
            raise
        finally:
            if self.nftables:
                self.count_nft_failures()
        if res.full:
            self.last_full_sync = time.monotonic()
            self.last_full_duration = res.duration
        self.health.updated()
        self.ctx.metrics.last_sync.set(time.time())
        self.http.sync_service_health(self.proxier.health_check_ports())  # counted as the rules see them
        if not res.applied:
            self.triggers.clear()
            return
        self.ctx.metrics.sync_duration.observe(res.duration)
        (self.ctx.metrics.sync_full_duration if res.full else self.ctx.metrics.sync_partial_duration).observe(res.duration)
        if res.full and not self.nftables:
            for table, n in metrics.count_rules(res.result.text).items():
                self.ctx.metrics.rules.set(n, table)
        now = time.time()
        for t in self.triggers:  # change seen (file written, pod ready) -> rules live
            self.ctx.metrics.programming.observe(max(0.0, now - t))
        self.triggers.clear()
        status_key = PROXY_STATUS + (f"/{self.cfg.node_name}" if self.ctx.shared else "")
        status = {"lastSync": now_iso(), "full": res.full, "durationSeconds": round(res.duration, 4),
                  "servicesWritten": res.services_written, "services": sorted(res.result.service_chains)}
        if self.nftables:
            status["staleChains"] = res.stale_chains  # flushed, deleted once their grace is over
        if not res.full:
            self.last_partial = {k: status[k] for k in ("lastSync", "durationSeconds", "servicesWritten")}
        if self.last_partial:  # a periodic full sync does not hide what the last change did
            status["lastPartial"] = self.last_partial
        try:
            if self.ctx.shared:  # the key goes with the node's lease: a dead node holds no `apply --wait`
                self.ctx.store.put(status_key, status, lease=self.ctx.lease)
            else:
                self.ctx.store.put(status_key, status)
        except Exception as e:  # noqa: BLE001 - the rules are live; only the report is lost
            log.warning("cannot record the sync: %s", e)

    def count_nft_failures(self) -> None:
        """nftables mode: the transactions refused since the last look (recovered or not)."""
        sync, cleanup = self.proxier.take_failures()
        if sync:
            self.ctx.metrics.nft_sync_failures.inc(sync)
        if cleanup:
            self.ctx.metrics.nft_cleanup_failures.inc(cleanup)

    def quarantine_services(self, services: list[dict], slices: list[dict]) -> bool:
        """The rules failed to render: find the Services whose own rules fail (each rendered
        alone), report them (FailedProxyRules) and leave them out until they change, so every
        other Service keeps being programmed. False when none is to blame (then the pass fails)."""
        found = False
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            own = [sl for sl in slices if sl["metadata"].get("namespace") == ns
                   and sl["metadata"].get("labels", {}).get(endpoints.SERVICE_NAME) == name]
            rendered = False
            with self.ctx.confined("FailedProxyRules", "Service", ns, name):
                if self.nftables:
                    from kproxy.proxy.nft import render as nft_render
                    nft_render.render([svc], own, self.proxier.cfg)
                else:
                    render.render([svc], own, self.proxier.cfg)
                rendered = True
            if not rendered:
                self.quarantine[key_of("Service", ns, name)] = svc
                found = True
        return found

    def metrics_answer(self, req) -> tuple[int, str, str]:
        if req.path.split("?")[0] != "/metrics":
            return 404, "text/plain", "404 page not found\n"
        return 200, "text/plain; version=0.0.4", self.ctx.metrics.registry.exposition()

