"""What `exec`, `logs` and `port-forward` need of a pod on this machine, shared by the CLI
(kproxy/cli/access.py) and the API server's streams (kproxy/apiserver/podaccess.py): which
network namespace it lives in, the user its commands run as, the command line that enters it,
where its container's output is kept, and the pod port a forwarded port means.

One place for these, so `kproxy exec` and `kubectl exec` run a command the same way (the pod's
netns, hostname, resolv.conf and securityContext user) and `kproxy logs` and `kubectl logs`
read the same file.
"""
from __future__ import annotations

import os
from pathlib import Path

from kproxy.config import LabConfig
from kproxy.node.inpod import in_pod
from kproxy.node.naming import pod_hostname, pod_log_dir, pod_slug


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}") or os.path.exists(f"/var/run/netns/{name}")


def pod_netns(cfg: LabConfig, namespace: str, name: str) -> str:
    """A pod's netns on this machine. On a real node of a multi-node lab the agent's state dir
    (so its prefix) is not the CLI's: then the one `kp*-NS-NAME` namespace here is the pod's."""
    netns = cfg.naming.pod_netns(namespace, name)
    if cfg.store_url and not cfg.sandbox and not netns_exists(netns):
        from kproxy.node.network import list_netns
        found = [n for n in list_netns() if n.startswith("kp") and n.endswith(f"-{pod_slug(namespace, name)}")
                 and n[:n.index("-")].isalnum()]
        if len(found) == 1:
            return found[0]
    return netns


def container_names(pod: dict) -> list[str]:
    return [c["name"] for c in pod.get("spec", {}).get("containers", [])]


def exec_user(pod: dict, cname: str) -> str | None:
    """As kubectl exec: the command runs as the container does (its securityContext)."""
    from kproxy.node.security import CreateContainerConfigError, run_as
    spec = next((c for c in pod["spec"].get("containers", []) if c.get("name") == cname), {})
    try:
        who = run_as(pod, spec)
    except CreateContainerConfigError:
        return None  # never started: the exec is refused as not running
    return who.arg() if who else None


def container_running(pod: dict, cname: str) -> bool:
    return any(cs.get("name") == cname and "running" in (cs.get("state") or {})
               for cs in pod.get("status", {}).get("containerStatuses") or [])


def exec_argv(cfg: LabConfig, pod: dict, cname: str, argv: list[str]) -> list[str] | None:
    """The command line that runs `argv` in container `cname` of `pod` as its containers run:
    the pod's network, its hostname, resolv.conf and hosts, its securityContext user. None when
    the container is not running here (kubectl's `container not found`)."""
    meta = pod["metadata"]
    netns = pod_netns(cfg, meta["namespace"], meta["name"])
    if not container_running(pod, cname) or not netns_exists(netns):
        return None
    return in_pod(netns, pod_hostname(pod), argv, exec_user(pod, cname))


def log_path(cfg: LabConfig, pod: dict, cname: str) -> Path | None:
    """The file holding the output of `cname` (all its restarts), None before it first started.
    On a real node of a multi-node lab the agent keeps them in its own state dir."""
    meta = pod["metadata"]
    folder = pod_log_dir(meta["namespace"], meta["name"])
    path = cfg.logs / folder / f"{cname}.log"
    if not path.exists() and cfg.store_url:
        path = next(Path(cfg.state_dir).glob(f"nodes/*/logs/{folder}/{cname}.log"), path)
    return path if path.exists() else None


def waiting_reason(pod: dict, cname: str) -> str:
    """Why a container has no output yet, as `kubectl logs` says it."""
    statuses = {cs.get("name"): cs for cs in pod.get("status", {}).get("containerStatuses") or []}
    return ((statuses.get(cname) or {}).get("state", {}).get("waiting") or {}).get("reason", "ContainerCreating")


def tail_offset(f, n: int, block: int = 1 << 16) -> int:
    """Where the last `n` lines of the open file `f` start (-1: all, 0), reading backwards in
    blocks: `--tail 10` of a large log costs a block, not the whole file."""
    end = f.seek(0, os.SEEK_END)
    if n < 0:
        return 0
    if n == 0:
        return end
    pos, newlines = end, 0
    f.seek(end - 1 if end else 0)
    skip_last = end > 0 and f.read(1) == b"\n"  # a final newline ends the last line, it does not start one
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        chunk = f.read(pos - start)
        if skip_last and pos == end:
            chunk = chunk[:-1]
        for i in range(len(chunk) - 1, -1, -1):
            if chunk[i] == 10:
                newlines += 1
                if newlines == n:
                    return start + i + 1
        pos = start
    return 0


def tail(data: bytes, n: int) -> bytes:
    """The last `n` lines (-1: all), as `--tail` / `tailLines` take them."""
    if n < 0:
        return data
    if n == 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-n:])
