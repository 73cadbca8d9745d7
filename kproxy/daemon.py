"""The kproxy daemon: the roles a process runs, composed into one loop.

The roles, each a module of its own, share a Context (kproxy/context.py: the store, its cache,
events, confinement, health) and never call each other: one tells another something by writing
the store (the cache) and setting `ctx.dirty` or poking the loop.

- the admission front (frontend.py): the manifests folder -> the admission gate -> the store;
- the controllers (controllers/manager.py): Deployments -> pods, scheduling, node lifecycle,
  EndpointSlices, LoadBalancer IPs; only the leader runs them;
- the node agent (node/agent.py): its Node, the kubelet loop, routes, layer-2 announcements;
- the proxy (proxy/role.py): Services and EndpointSlices -> iptables, /healthz, /metrics;
- the API server (apiserver/server.py), with the front: HTTPS on the host's loopback (its socket
  made before the daemon enters a sandbox lab's namespace) and at the node's address:6443 in
  the lab; it reads a watch cache of the store and writes through the manifests folder, then
  waits for a pass of this loop (`sync`) so its answer carries what the front admitted.

`--role all` (`kproxy up`, one node on SQLite) runs all four; a multi-node lab (etcd) runs one
`controller` (front + controllers) and one `agent` (agent + proxy) per node, each process
keeping its cache of the store (refreshed when its watch reports a change, re-listed when the
watch breaks) and holding a lease (leases.py: the node's heartbeat, or the leader's claim).

One pass: poll the folder (front) -> refresh the cache (multi-node) -> the control socket's
requests (front) -> controllers.reconcile (leader) -> agent.step; then, when something changed
(`ctx.dirty`): controllers.sync (LoadBalancer IPs, endpoints) -> agent.sync (announcements,
routes) -> proxy.sync; else the proxy's periodic full resync and canary check.

Endpoints first, processes after (no request meets a dying pod): deleting a pod is only a mark
(controllers/pods.terminate: deletionTimestamp, NotReady) made by the front or the controllers.
The pass that makes (or, on another node, first sees) the mark recomputes the endpoints
(controllers.sync) and programs them (proxy.sync). The agent, on first seeing a pod go (marked,
replaced, or gone from the store) notes how many proxy syncs were done (`ctx.proxy_syncs`) and
stops its processes only in a later pass, once the proxy role has synced again since.

Every object's step runs confined (`ctx.confined`: its exception is logged, recorded as a problem
and an event on it, the other objects go on), each background thread supervised
(`ctx.supervise`: logged, an event, a failed component in `kproxy status`, restarted).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

from kproxy import supervise
from kproxy.config import LabConfig
from kproxy.context import Context, key_of
from kproxy.control import read_line
from kproxy.controllers.manager import Controllers
from kproxy.frontend import MANIFEST_ERRORS, Frontend
from kproxy.leases import Heartbeat
from kproxy.node.agent import Agent
from kproxy.node.network import enter_netns
from kproxy.proxy.role import ProxyRole

log = logging.getLogger("kproxy")

HEALTH = "/kproxy/health"                    # component health; multi-node adds /<role>/<node>


class Daemon:
    """The roles `controller` (front + controllers) and `agent` (agent + proxy) ask for, on one
    Context. `store` and `kernel` (the proxy's Kernel) are for tests; they default to the lab's."""

    def __init__(self, cfg: LabConfig, controller: bool = True, agent: bool = True, store=None, kernel=None):
        self.cfg = cfg
        self.ctx = ctx = Context(cfg, store)
        self.role = "all" if controller and agent else "controller" if controller else "agent"
        self.frontend = Frontend(ctx) if controller else None
        self.controllers = Controllers(ctx) if controller else None
        self.agent = Agent(ctx) if agent else None
        self.proxy = ProxyRole(ctx, kernel) if agent else None
        self.heartbeat = Heartbeat(ctx, node=agent) if ctx.shared else None
        self.apiserver = None
        if controller:
            from kproxy.apiserver.server import ApiServer
            from kproxy.apiserver.writes import Writer
            self.apiserver = ApiServer(ctx, Writer(ctx, self.frontend, self.sync, self.admission))
        self.cond = threading.Condition()
        self.generation = 0  # passes completed
        self.started = 0     # passes begun: a pass numbered `started + 1` begins after any moment now
        self.admitted = 0    # the last pass whose front step (folder -> store) is done
        self.ready = False
        self.published: tuple | None = None  # (problems, health) last written to the store

    @property
    def store(self):
        return self.ctx.store

    @property
    def stopping(self) -> threading.Event:
        return self.ctx.stopping

    # -- start and stop -------------------------------------------------------------------
    def run(self) -> None:
        from kproxy.config import PRIVATE_UMASK, private_dir
        ctx = self.ctx
        os.umask(PRIVATE_UMASK)  # the store, logs, pid files: root's only (its pods' files too; see README)
        private_dir(ctx.state)
        (ctx.state / "daemon.pid").write_text(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: ctx.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: ctx.stopping.set())
        try:
            if self.agent:
                self.agent.setup()
            if self.apiserver:
                self._prepare_apiserver()
            if self.cfg.sandbox:
                enter_netns(ctx.naming.node_netns)  # before any thread: all of them live there
            if self.agent:
                self.agent.start_kubelet()
                self.proxy.start()
            if self.heartbeat:
                ctx.cache.wait_for_store(ctx.stopping, self.cfg.store_url)
                ctx.supervise("watch", lambda: ctx.cache.watch(ctx.stopping, ctx.poke, ctx.components))
                ctx.supervise("heartbeat", self.heartbeat.run)
                if self.agent:  # a Node is written Ready only while its lease is held
                    deadline = time.monotonic() + 10
                    while not ctx.leader and time.monotonic() < deadline and not ctx.stopping.is_set():
                        time.sleep(0.05)
            self._start_up(self._load_store)
            if self.frontend:
                self._start_up(self.frontend.ensure_system_objects)
            if self.agent:
                self._start_up(self.agent.register_node)
            if self.apiserver:
                self.apiserver.start()
            ctx.supervise("control-socket", self._serve_control)
            self._loop()
        finally:
            self.shutdown()

    def _prepare_apiserver(self) -> None:
        """Certificates and the host loopback socket (before enter_netns); a failure here (the
        --api-port taken) leaves the lab running without an API, shown in `kproxy status`."""
        try:
            self.apiserver.prepare()
        except Exception as e:  # noqa: BLE001 - the lab itself can run without its API
            log.exception("the API server cannot start")
            self.ctx.components.failed("apiserver", supervise.describe(e))
            self.apiserver = None

    def sync(self, timeout: float = 60, settled: bool = True) -> bool:
        """Wait until a whole pass of the loop began after this call (the front re-read the
        folder, poked now); `settled`: the folder is complete (removals need not wait).
        False when the daemon stops or the pass did not come in `timeout` seconds."""
        if self.frontend and settled:
            self.frontend.folder_settled = True
        with self.cond:
            self.ctx.poke.set()  # first: the pass numbered `target` sees it when it begins
            target = self.started + 1  # the next pass to begin: it reads the folder as it is now
            return self.cond.wait_for(lambda: self.generation >= target or self.ctx.stopping.is_set(),
                                      timeout=timeout) and not self.ctx.stopping.is_set()

    def admission(self, timeout: float = 60, settled: bool = True) -> bool:
        """As `sync`, but only until the front of the next pass admitted the folder into the
        store (a write's answer and its watch event need no more: the store holds the object
        with its allocations, MANIFEST_ERRORS what was refused); the rest of the pass
        (controllers, proxy) goes on meanwhile, as an API server's answer does not wait for
        its controllers."""
        if self.frontend and settled:
            self.frontend.folder_settled = True
        with self.cond:
            self.ctx.poke.set()
            target = self.started + 1
            return self.cond.wait_for(lambda: self.admitted >= target or self.generation >= target
                                      or self.ctx.stopping.is_set(), timeout=timeout) and not self.ctx.stopping.is_set()

    def _load_store(self) -> None:
        self.ctx.cache.list_all()
        if self.agent:
            self.agent.start()
        if self.frontend:
            self.frontend.start()

    def _start_up(self, step) -> None:
        """A start-up step, again until it works: etcd may hiccup right after it answered."""
        while True:
            try:
                return step()
            except Exception as e:  # noqa: BLE001
                if not self.ctx.shared or self.ctx.stopping.is_set():
                    raise
                log.warning("%s failed (%s); again in 1 s", step.__name__, e)
                self.ctx.stopping.wait(1)

    def shutdown(self) -> None:
        log.info("shutting down")
        self.ctx.stopping.set()
        if self.heartbeat:
            self.heartbeat.revoke()
        if self.apiserver:
            self.apiserver.stop()
        if self.proxy:
            self.proxy.stop()
        if self.agent:
            self.agent.stop()
            try:  # a stopped node takes its links, rules and (sandbox) namespace with it
                self.proxy.cleanup()
            finally:
                self.agent.teardown()
        for f in ("daemon.pid", "kproxy.sock"):
            (self.ctx.state / f).unlink(missing_ok=True)

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        ctx = self.ctx
        while not ctx.stopping.is_set():
            now = time.monotonic()
            self.started += 1
            if ctx.poke.is_set():  # a poke (kproxy apply, an API write): this pass re-reads the folder
                ctx.poke.clear()
                if self.frontend:
                    self.frontend.next_poll = 0.0
            try:
                if self.frontend:
                    self.frontend.step(now, record=False)
                    with self.cond:
                        self.admitted = self.started
                        self.cond.notify_all()
                    self.frontend.save_record(now)
                self._pass(now)
                ctx.components.ok("reconcile")
            except Exception as e:  # noqa: BLE001 - the node keeps running; the next pass retries
                # not one object's failure (those are confined): the store, the kernel
                log.exception("reconcile pass failed")
                ctx.note_disk(e)
                ctx.components.failed("reconcile", supervise.describe(e))
                try:
                    ctx.node_event("ReconcileFailed", f"{type(e).__name__}: {e}")
                except Exception:  # noqa: BLE001 - the store itself is away (etcd restarting)
                    ctx.cache.stale.set()
                ctx.dirty = True
                time.sleep(1)
            if ctx.disk_error is None and ctx.components.is_failed("disk") and ctx.disk_writable():
                ctx.components.ok("disk")  # writing works again
            ctx.disk_error = None
            try:
                self._publish()
            except Exception as e:  # noqa: BLE001 - the store away or full: status asks the socket then
                ctx.note_disk(e)
                log.warning("cannot record the problems and health: %s", e)
            with self.cond:
                self.generation += 1
                self.ready = True
                self.cond.notify_all()
            ctx.poke.wait(0.1)  # a poke ends the wait; the next pass sees it (above)

    def _pass(self, now: float) -> None:
        ctx = self.ctx
        if ctx.cache.due(now):
            try:
                self._refresh(now)
            except Exception as e:  # noqa: BLE001 - etcd away: go on with the cache (pods, probes, rules)
                log.warning("cannot refresh from the store: %s", e)
                ctx.cache.stale.set()
        if self.frontend:
            self.frontend.handle_requests()
        try:
            if self.controllers and ctx.leader:
                self.controllers.reconcile()
        finally:  # probes and restarts go on when the store cannot be written (etcd away, disk full)
            if self.agent:
                self.agent.step()
        if ctx.dirty:
            ctx.dirty = False
            if self.controllers and ctx.leader:
                self.controllers.sync()
            if self.agent:
                self.agent.sync()
            if self.proxy:
                self.proxy.sync()
        elif self.proxy:
            self.proxy.resync(now)

    def _refresh(self, now: float) -> None:
        """Multi-node: bring the cache up to date with what the other processes wrote."""
        if self.ctx.cache.refresh(now):
            self.ctx.dirty = True
            self.ctx.changed(time.time())

    # -- health ---------------------------------------------------------------------------
    @property
    def health_key(self) -> str:
        return HEALTH if not self.ctx.shared else f"{HEALTH}/{self.role}/{self.cfg.node_name}"

    def health_report(self) -> dict:
        """This daemon's health record: what `kproxy status` prints (and exits 1 on a failed one)."""
        ctx = self.ctx
        report = {"role": self.role, "node": self.cfg.node_name, "pid": os.getpid(),
                  "components": ctx.components.snapshot()}
        if not self.frontend:  # an agent's confined failures (its pods): no MANIFEST_ERRORS of its own
            report["problems"] = [ctx.obj_problems[k] for k in sorted(ctx.obj_problems)]
        return report

    def _publish(self) -> None:
        """Write the problems (MANIFEST_ERRORS: the last load's and the confined failures of
        the objects still there) and the health record when they changed."""
        ctx = self.ctx
        for ident in list(ctx.obj_problems):
            _, kind, ns, name = ident
            if key_of(kind, ns, name) not in ctx.objects.get(kind, {}):
                del ctx.obj_problems[ident]  # the object is gone: so is its problem
        load_problems = self.frontend.load_problems if self.frontend else []
        problems = load_problems + [ctx.obj_problems[k] for k in sorted(ctx.obj_problems)]
        report = self.health_report()
        if self.published == (problems, report["components"]):
            return
        if self.frontend:
            ctx.store.put(MANIFEST_ERRORS, problems)
        if ctx.shared and ctx.lease is not None:  # goes with the process: a dead one reports nothing
            ctx.store.put(self.health_key, report, lease=ctx.lease)
        else:
            ctx.store.put(self.health_key, report)
        self.published = (problems, report["components"])

    # -- control socket -------------------------------------------------------------------
    def _serve_control(self) -> None:
        path = self.ctx.state / "kproxy.sock"
        path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        os.chmod(path, 0o600)
        srv.listen(16)
        self.ctx.components.ok("control-socket")
        while not self.ctx.stopping.is_set():
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
                if self.frontend and op == "delete-pod":
                    self.frontend.requests.append(req)
                # `kproxy apply/delete` wrote the folder whole: removals need not wait
                self.sync(60, settled=op == "sync")
            try:
                errs = self.ctx.store.get(MANIFEST_ERRORS) or []
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
