"""What the chaos tests check after every restart, through the CLI and the kernel only (so they
hold whatever store the lab uses): allocations, chains, netns, processes."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from kproxy.proxy import render
from kproxy.proxy.chains import is_service_chain

from .conftest import prefixed_netns


# The workload both chaos tests apply: a Deployment and NodePort Services over it.
DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: chaos}
spec:
  replicas: %(replicas)d
  selector: {matchLabels: {app: chaos}}
  template:
    metadata: {labels: {app: chaos}}
    spec:
      containers: [{name: c, image: x, ports: [{containerPort: 80}]}]
"""

SVC = """
apiVersion: v1
kind: Service
metadata: {name: %(name)s}
spec:
  type: NodePort
  selector: {app: chaos}
  ports: [{port: 80}]
"""

def items(lab, kind: str) -> list[dict]:
    return json.loads(lab.kproxy("get", kind, "-A", "-o", "json").stdout)["items"]


def services_snapshot(services: list[dict]) -> dict[str, tuple]:
    """"ns/name" -> (clusterIP, nodePorts) of every Service that has a ClusterIP."""
    out = {}
    for s in services:
        spec = s.get("spec") or {}
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            out[f"{s['metadata']['namespace']}/{s['metadata']['name']}"] = (
                spec["clusterIP"], tuple(p.get("nodePort") for p in spec.get("ports") or []))
    return out


def save(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"],
                          capture_output=True, text=True, check=True).stdout


def programmed_chains(netns: str) -> set[str]:
    return {c for c in re.findall(r"^:(KUBE-[A-Z0-9-]+)", save(netns), re.M) if is_service_chain(c)}


def expected_chains(services: list[dict], slices: list[dict], cluster_cidr: str, node_name: str,
                    node_ip: str) -> set[str]:
    """The per-Service chains a fresh render of the store's objects gives for this node."""
    cfg = render.ProxyConfig(cluster_cidr=cluster_cidr, node_name=node_name, node_ips=[node_ip])
    result = render.render(services, slices, cfg)
    return set().union(set(), *result.service_chains.values())


def _netns_inodes() -> dict[int, str]:
    out = {}
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        try:
            out[os.stat(f"/run/netns/{name}").st_ino] = name
        except OSError:
            continue
    return out


def lab_processes(state_dir: Path) -> dict[int, tuple[int, int]]:
    """pid -> (ppid, netns inode) of every process started for this lab: they all carry its
    KPROXY_STATE_DIR (the test sets it; daemons, zygotes, etcd and pods inherit it)."""
    mark = f"KPROXY_STATE_DIR={state_dir}".encode()
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            if mark not in env.split(b"\0"):
                continue
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                continue
            out[int(pid)] = (int(stat[1]), os.stat(f"/proc/{pid}/ns/net").st_ino)
        except (OSError, IndexError, ValueError):
            continue
    return out


def leaked_processes(state_dir: Path, roots: set[int], pod_netns: set[str], running: set[str]) -> list[str]:
    """Processes of the lab that are neither a root (daemon, controller, agent, etcd) nor one of
    their descendants, nor inside a live pod's netns; and the netns in `running` (pods with a
    command; the cluster DNS pod is served by the daemon's own thread) with no process at all."""
    procs = lab_processes(state_dir)
    names = _netns_inodes()
    me = os.getpid()
    leaks = []

    def under_root(pid: int) -> bool:
        seen = set()
        while pid in procs and pid not in seen:
            if pid in roots:
                return True
            seen.add(pid)
            pid = procs[pid][0]
        return pid in roots

    for pid, (_, ino) in procs.items():
        if pid == me or under_root(pid) or names.get(ino) in pod_netns:
            continue
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        leaks.append(f"pid {pid} in netns {names.get(ino, ino)}: {cmd}")
    busy = {names.get(ino) for _, ino in procs.values()}
    leaks += [f"pod netns {ns} runs no process" for ns in sorted(running - busy)]
    return leaks


def converged(lab, nodes: list[tuple[str, str, str]], fixed_netns: set[str], roots,
              replicas: dict[str, int]) -> list[str]:
    """What is still wrong (empty when converged). `nodes`: (node name, node IP, its netns);
    `replicas`: app label -> how many pods of it must run; `roots`: the lab's own pids (or a
    function giving them, read again each time: a restarted process writes its pid file late)."""
    problems = []
    pods = items(lab, "pods")
    for p in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions", []))
        if p["metadata"].get("deletionTimestamp") or not ready:
            problems.append(f"pod {p['metadata']['name']}: not Ready or terminating")
    for app, n in replicas.items():
        have = sum(1 for p in pods if (p["metadata"].get("labels") or {}).get("app") == app)
        if have != n:
            problems.append(f"{have} pods of app={app}, want {n}")
    services, slices = items(lab, "svc"), items(lab, "endpointslices")
    for s in services:
        if s["spec"].get("type") != "ExternalName" and not s["spec"].get("clusterIP"):
            problems.append(f"svc {s['metadata']['name']}: no clusterIP")
    cfg = lab.cfg
    for name, ip, netns in nodes:
        want = expected_chains(services, slices, cfg.cluster_cidr, name, ip)
        have = programmed_chains(netns)
        if want != have:
            problems.append(f"{name}: stale chains {sorted(have - want)}, missing chains {sorted(want - have)}")
    naming = cfg.naming
    pod_ns = {naming.pod_netns(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
    have_ns = set(prefixed_netns(naming.prefix))
    if have_ns != fixed_netns | pod_ns:
        problems.append(f"netns leaked {sorted(have_ns - fixed_netns - pod_ns)}, "
                        f"missing {sorted((fixed_netns | pod_ns) - have_ns)}")
    running = {naming.pod_netns(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods
               if (p["metadata"].get("labels") or {}).get("app") in replicas}
    problems += leaked_processes(lab.state_dir, roots() if callable(roots) else roots, pod_ns, running)
    return problems


def wait_converged(lab, timeout: float = 30, **kw) -> None:
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            problems = converged(lab, **kw)
        except AssertionError as e:  # a restarted process not answering yet (`kproxy get` fails)
            problems = [str(e).strip().splitlines()[-1]]
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError("not converged after %ss:\n  %s" % (timeout, "\n  ".join(problems)))
        time.sleep(0.5)


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> None:
    """Make this test process the reaper of the lab's orphaned daemons (`kproxy up` exits and its
    daemon is re-parented): a container's PID 1 may never reap, and a killed daemon left as a
    zombie still looks alive to `kproxy up` (issue 12 #13)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap(pid: int, timeout: float = 10) -> None:
    """Wait until a killed pid is gone: reaped here when it is our child, else gone or a zombie."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # not ours: someone else reaps it (or nobody: a zombie)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return
            except FileNotFoundError:
                return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} survived SIGKILL for {timeout}s")


def reap_all() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


class OrphanReaper:
    """Reaps the given pids (the pods a killed daemon left, now children of this subreaper) while
    `kproxy up` kills them, as a host's init would: unreaped, each stays a zombie that `up`
    waits 2 × 3 s for (see the report on teardown.kill_pids). Only these pids: never the
    `kproxy` commands this test waits for itself."""

    def __init__(self, pids: set[int]):
        import threading
        self.pids, self.stop = set(pids), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.pids and not self.stop.is_set():
            for pid in list(self.pids):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        self.pids.discard(pid)
                except ChildProcessError:
                    self.pids.discard(pid)
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def my_children() -> set[int]:
    me, out = os.getpid(), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return out
