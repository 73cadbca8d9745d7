"""The node agent's pod lifecycle: netns + processes + probes -> pod status.

Each container is a process started in the pod's netns with `ip netns exec`, in its own
process group, so stopping a pod ends exactly the processes this instance started. Exited
containers restart per restartPolicy with a doubling back-off (1 s to 30 s, shorter than the
kubelet's 10 s to 5 min so a lab recovers while you watch).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import dnsconfig
from .inpod import PODSERVER, in_pod
from .launcher import Launcher
from .naming import pod_hostname, pod_log_dir
from .network import NodeNetwork
from .probes import ProbeState, ports_accept, run_probe
from .security import CreateContainerConfigError, run_as

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
NO_PROBE_PERIOD = 1.0


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def container_argv(pod: dict, container: dict) -> list[str]:
    """The container's command and args, or the built-in server on its ports."""
    if container.get("command"):
        return [*container["command"], *container.get("args", [])]
    ports = [f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in container.get("ports", [])
             if p.get("protocol", "TCP") in ("TCP", "UDP")]
    meta = pod["metadata"]
    return [sys.executable, "-m", "kproxy.node.podserver", "--pod", meta["name"],
            "--namespace", meta["namespace"], "--ip", pod["status"]["podIP"], *ports]


def container_env(pod: dict, container: dict) -> dict[str, str]:
    """Environment as the kubelet builds it: the node's PATH, the pod's name, the container's env."""
    meta, status = pod["metadata"], pod["status"]
    fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "status.podIP": status.get("podIP", ""), "spec.nodeName": pod["spec"].get("nodeName", ""),
              "status.hostIP": status.get("hostIP", "")}
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOSTNAME": meta["name"],
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = fields.get(e["valueFrom"]["fieldRef"].get("fieldPath"), "")
    return env


def _user_of(pod: dict, container: dict) -> str | None:
    """Who an exec probe of `container` runs as: the container's own user, as the kubelet does."""
    try:
        who = run_as(pod, container)
    except CreateContainerConfigError:
        return None  # never started, so never probed
    return who.arg() if who else None


def _describe_probe(spec: dict) -> str:
    if "httpGet" in spec:
        h = spec["httpGet"]
        return f"HTTP probe failed: GET {h.get('path', '/')} on port {h.get('port')}"
    if "tcpSocket" in spec:
        return f"dial tcp on port {spec['tcpSocket'].get('port')} failed"
    if "exec" in spec:
        return f"command {spec['exec'].get('command')} failed"
    return "no handler"


@dataclass
class Container:
    spec: dict
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str = ""
    last_exit: int | None = None
    backoff: float = BACKOFF_START
    restart_at: float = 0.0
    finished: bool = False
    liveness: ProbeState | None = None
    config_error: str = ""  # why the kubelet would not create it (securityContext): never started


@dataclass
class PodRuntime:
    pod: dict
    netns: str
    containers: list[Container]
    readiness: ProbeState
    started: str = field(default_factory=now_iso)
    terminating_since: float | None = None
    kill_at: float | None = None


class Kubelet:
    """Keeps the pods of this node running and reports their status."""

    def __init__(self, network: NodeNetwork, node_ip: str, log_dir: Path,
                 event: Callable[[dict, str, str, str], None] = lambda pod, reason, msg, etype: None,
                 cluster_dns: str = "10.96.0.10", domain: str = "cluster.local"):
        self.network, self.node_ip, self.log_dir = network, node_ip, log_dir
        self.cluster_dns, self.domain = cluster_dns, domain
        try:
            self.node_resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            self.node_resolv = ""
        self.event = event  # (pod, reason, message, type): the kubelet's events
        self.pods: dict[str, PodRuntime] = {}
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="probe")
        # Built-in pod servers are forked from one preloaded interpreter (launcher.py); set
        # KPROXY_NO_ZYGOTE=1 to start each as its own process instead.
        self.launcher = None if os.environ.get("KPROXY_NO_ZYGOTE") else Launcher()

    # -- lifecycle ------------------------------------------------------------------------
    def start_pod(self, key: str, pod: dict) -> None:
        meta = pod["metadata"]
        netns = self.network.add_pod(meta["namespace"], meta["name"], pod["status"]["podIP"])
        dnsconfig.write_pod_files(netns, {
            "resolv.conf": dnsconfig.resolv_conf(pod, self.cluster_dns, self.domain, self.node_resolv),
            "hosts": dnsconfig.hosts_file(pod, self.domain)})
        spec = pod["spec"]
        containers = [Container(spec=c, liveness=ProbeState(c["livenessProbe"]) if c.get("livenessProbe") else None)
                      for c in spec.get("containers", [])]
        probe = next((c["readinessProbe"] for c in spec.get("containers", []) if c.get("readinessProbe")), None)
        rt = PodRuntime(pod=pod, netns=netns, containers=containers, readiness=ProbeState(probe))
        if probe:
            rt.readiness.next_at = time.monotonic() + probe.get("initialDelaySeconds", 0)
        self.pods[key] = rt
        for c in containers:
            self._spawn(rt, c)

    def _spawn(self, rt: PodRuntime, c: Container) -> None:
        meta = rt.pod["metadata"]
        logdir = self.log_dir / pod_log_dir(meta["namespace"], meta["name"])
        logdir.mkdir(parents=True, exist_ok=True)
        hostname = pod_hostname(rt.pod)
        argv = container_argv(rt.pod, c.spec)
        try:
            who = run_as(rt.pod, c.spec)
        except CreateContainerConfigError as e:  # the kubelet's refusal: the pod stays Pending
            c.config_error = str(e)
            self.event(rt.pod, "Failed", f"Error: {e}", "Warning")
            return
        user = who.arg() if who else None
        if self.launcher is not None and argv[:3] == PODSERVER:
            try:
                c.proc = self.launcher.spawn(rt.netns, hostname, [*(["--user", user] if user else []), *argv[3:]],
                                             container_env(rt.pod, c.spec),
                                             str(logdir / f"{c.spec['name']}.log"), c.spec.get("workingDir") or "/")
                c.started_at = now_iso()
                self.event(rt.pod, "Started", f"Started container {c.spec['name']}", "Normal")
                return
            except OSError as e:
                log.warning("forking the pod server failed (%s); starting it as its own process", e)
        out = open(logdir / f"{c.spec['name']}.log", "ab")
        argv = in_pod(rt.netns, hostname, argv, user)
        try:
            c.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      env=container_env(rt.pod, c.spec), start_new_session=True,
                                      cwd=c.spec.get("workingDir") or "/",
                                      umask=0o022)  # a container runtime's, not the daemon's private 077
            c.started_at = now_iso()
            self.event(rt.pod, "Started", f"Started container {c.spec['name']}", "Normal")
        except OSError as e:
            out.write(f"kproxy: cannot start container: {e}\n".encode())
            c.proc, c.last_exit = None, 128
        finally:
            out.close()

    def stop_pod(self, key: str, grace: float | None = None) -> None:
        """Begin termination: SIGTERM now, SIGKILL when the grace period is over."""
        rt = self.pods.get(key)
        if rt is None or rt.terminating_since is not None:
            return
        if grace is None:
            grace = float(rt.pod["spec"].get("terminationGracePeriodSeconds", 30))
        rt.terminating_since = time.monotonic()
        rt.kill_at = rt.terminating_since + grace
        for c in rt.containers:
            if c.proc and c.proc.poll() is None:
                self.event(rt.pod, "Killing", f"Stopping container {c.spec['name']}", "Normal")
        self._signal_all(rt, signal.SIGTERM)

    def _signal_all(self, rt: PodRuntime, sig: int) -> None:
        for c in rt.containers:
            if c.proc and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, sig)
                except ProcessLookupError:
                    pass

    def finished_pods(self) -> list[str]:
        """Terminating pods whose processes have all exited; their network is removed here."""
        done = []
        for key, rt in list(self.pods.items()):
            if rt.terminating_since is None:
                continue
            alive = [c for c in rt.containers if c.proc and c.proc.poll() is None]
            if alive and time.monotonic() >= (rt.kill_at or 0):
                self._signal_all(rt, signal.SIGKILL)
                for c in alive:
                    try:
                        c.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                alive = [c for c in rt.containers if c.proc and c.proc.poll() is None]
            if not alive:
                meta = rt.pod["metadata"]
                self.network.remove_pod(meta["namespace"], meta["name"])
                shutil.rmtree(self.log_dir / pod_log_dir(meta["namespace"], meta["name"]), ignore_errors=True)
                del self.pods[key]
                done.append(key)
        return done

    def shutdown(self, grace: float = 3.0) -> None:
        for key in list(self.pods):
            self.stop_pod(key, grace)
        deadline = time.monotonic() + grace + 3
        while self.pods and time.monotonic() < deadline:
            self.finished_pods()
            time.sleep(0.05)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.launcher is not None:
            self.launcher.stop()

    # -- the periodic pass ----------------------------------------------------------------
    def tick(self, guard=None) -> dict[str, dict]:
        """Restart exited containers, run due probes; returns the statuses that changed.
        `guard(pod)`: a context manager around each pod's turn (the daemon's confinement: one
        pod failing to restart must not stop the probes and restarts of the others)."""
        changed = {}
        now = time.monotonic()
        for key, rt in list(self.pods.items()):
            if rt.terminating_since is not None:
                continue
            with guard(rt.pod) if guard else contextlib.nullcontext():
                dirty = self._check_containers(rt, now)
                dirty |= self._check_readiness(rt, now)
                dirty |= self._check_liveness(rt, now)
                if dirty:
                    changed[key] = self.status(rt)
        return changed

    def _check_containers(self, rt: PodRuntime, now: float) -> bool:
        dirty = False
        policy = rt.pod["spec"].get("restartPolicy", "Always")
        for c in rt.containers:
            if c.finished or c.config_error:
                continue
            if c.proc is not None:
                code = c.proc.poll()
                if code is None:
                    continue
                c.proc, c.last_exit, dirty = None, code, True
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    c.finished = True
                    continue
                c.restart_at = now + c.backoff
                c.backoff = min(c.backoff * 2, BACKOFF_MAX)
                if c.restarts:
                    self.event(rt.pod, "BackOff", f"Back-off restarting failed container {c.spec['name']} in pod "
                               f"{rt.pod['metadata']['name']}", "Warning")
                log.info("container %s of %s exited with %s; restarting in %.0fs",
                         c.spec["name"], rt.netns, code, c.restart_at - now)
            elif now >= c.restart_at:
                c.restarts += 1
                self._spawn(rt, c)
                dirty = True
        return dirty

    def _due(self, state: ProbeState, now: float) -> bool:
        return state.running is None and now >= state.next_at

    def _check_readiness(self, rt: PodRuntime, now: float) -> bool:
        st = rt.readiness
        if st.running is not None and st.running.done():
            ok = bool(st.running.result())
            st.running = None
            period = (st.spec or {}).get("periodSeconds", 10) if st.spec else NO_PROBE_PERIOD
            st.next_at = now + (period if st.result or st.spec else 0.2)
            if st.spec:
                if not ok:
                    self.event(rt.pod, "Unhealthy", f"Readiness probe failed: {_describe_probe(st.spec)}", "Warning")
                return st.record(ok)
            changed = ok != st.result
            st.result = ok
            return changed
        if self._due(st, now) and any(c.proc for c in rt.containers):
            if st.spec:
                owner = next((c.spec for c in rt.containers if c.spec.get("readinessProbe") is st.spec), {})
                st.running = self.pool.submit(run_probe, st.spec, rt.pod, rt.netns, _user_of(rt.pod, owner))
            else:
                st.running = self.pool.submit(ports_accept, rt.pod)
        return False

    def _check_liveness(self, rt: PodRuntime, now: float) -> bool:
        dirty = False
        for c in rt.containers:
            st = c.liveness
            if st is None or c.proc is None:
                continue
            if st.running is not None and st.running.done():
                ok = bool(st.running.result())
                st.running = None
                st.next_at = now + st.spec.get("periodSeconds", 10)
                st.failures = 0 if ok else st.failures + 1
                if not ok:
                    self.event(rt.pod, "Unhealthy", f"Liveness probe failed: {_describe_probe(st.spec)}", "Warning")
                if st.failures >= st.spec.get("failureThreshold", 3):
                    log.info("liveness probe failed for %s in %s; killing it", c.spec["name"], rt.netns)
                    self.event(rt.pod, "Killing", f"Container {c.spec['name']} failed liveness probe, will be "
                               "restarted", "Normal")
                    st.failures = 0
                    try:
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    dirty = True
            elif st.running is None and now >= st.next_at:
                if not st.next_at:
                    st.next_at = now + st.spec.get("initialDelaySeconds", 0)
                    continue
                st.running = self.pool.submit(run_probe, st.spec, rt.pod, rt.netns, _user_of(rt.pod, c.spec))
        return dirty

    # -- status ---------------------------------------------------------------------------
    def status(self, rt: PodRuntime) -> dict:
        """The pod's status block as the kubelet reports it."""
        running = [c for c in rt.containers if c.proc is not None]
        all_finished = all(c.finished for c in rt.containers)
        if all_finished and rt.containers:
            phase = "Succeeded" if all(c.last_exit == 0 for c in rt.containers) else "Failed"
        elif running:
            phase = "Running"
        else:
            phase = "Pending" if not any(c.restarts or c.last_exit is not None for c in rt.containers) else "Running"
        ready = bool(running) and len(running) == len(rt.containers) and rt.readiness.result
        cond = lambda t, ok: {"type": t, "status": "True" if ok else "False"}  # noqa: E731
        statuses = []
        for c in rt.containers:
            if c.proc is not None:
                state = {"running": {"startedAt": c.started_at}}
            elif c.finished:
                state = {"terminated": {"exitCode": c.last_exit,
                                        "reason": "Completed" if c.last_exit == 0 else "Error"}}
            elif c.config_error:
                state = {"waiting": {"reason": "CreateContainerConfigError", "message": c.config_error}}
            else:
                state = {"waiting": {"reason": "CrashLoopBackOff" if c.restarts else "ContainerCreating"}}
            statuses.append({"name": c.spec["name"], "ready": ready and c.proc is not None,
                             "restartCount": c.restarts, "started": c.proc is not None, "state": state,
                             "image": c.spec.get("image", "")})
        return {
            "phase": phase,
            "podIP": rt.pod["status"]["podIP"],
            "podIPs": [{"ip": rt.pod["status"]["podIP"]}],
            "hostIP": self.node_ip,
            "startTime": rt.started,
            "conditions": [cond("PodScheduled", True), cond("Initialized", True),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": statuses,
        }

    def pids(self) -> list[int]:
        return [c.proc.pid for rt in self.pods.values() for c in rt.containers if c.proc]
