"""Where the benchmark's packets and rules go: bare network namespaces named
``kpbench<4hex>-<label>`` and sandboxed kproxy labs (``kproxy up --sandbox``), all created here
and all removed in ``Cleanup.close()`` — on success, on error and on Ctrl-C — by name and pid.
Nothing touches the root namespace's rules or routes.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kproxy.api.meta import pod_ready
from kproxy.config import LabConfig
from kproxy.node.network import list_netns, netns_pids
from kproxy.teardown import kill_pids

PY = sys.executable


class BenchError(RuntimeError):
    pass


def _run(args: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise BenchError(f"{' '.join(args[:6])} failed ({res.returncode}): {res.stderr.strip()[:400]}")
    return res


class Cleanup:
    """Everything the run created; close() removes it (idempotent)."""

    def __init__(self):
        self.tag = "kpbench" + secrets.token_hex(2)
        self.netns: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.labs: list["Lab"] = []
        self.paths: list[Path] = []
        self.closed = False

    def new_netns(self, label: str) -> str:
        name = f"{self.tag}-{label}"
        _run(["ip", "netns", "add", name])
        self.netns.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def del_netns(self, name: str) -> None:
        kill_pids(netns_pids(name))
        _run(["ip", "netns", "del", name], check=False)
        if name in self.netns:
            self.netns.remove(name)

    def close(self) -> list[str]:
        """Remove everything; returns what could not be removed (should be nothing)."""
        if self.closed:
            return []
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        for lab in list(self.labs):
            lab.down()
        for name in list(self.netns):
            self.del_netns(name)
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)
        return [n for n in list_netns() if n.startswith(self.tag + "-")]


def run_worker(cleanup: Cleanup, netns: str, payload: dict, timeout: float,
               module: str = "kproxy.bench.worker") -> dict:
    """Run ``module``'s worker (kproxy.bench.worker, or nftables') inside ``netns`` with ``payload``;
    killed (whole process group) after ``timeout``. Its last line of output is the JSON result."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, PY, "-m", module, json.dumps(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    cleanup.procs.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"ok": False, "timed_out": True, "error": f"worker killed after {timeout:.0f} s"}
    finally:
        cleanup.procs.remove(proc)
    if proc.returncode != 0:
        return {"ok": False, "timed_out": False, "error": err.strip()[-800:]}
    return json.loads(out.strip().splitlines()[-1])


class Lab:
    """One sandboxed lab (``kproxy up --sandbox``) with its own KPROXY_STATE_DIR under /tmp."""

    def __init__(self, cleanup: Cleanup, label: str):
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"{cleanup.tag}-{label}-", dir="/tmp"))
        self.manifests = self.state_dir / "manifests"
        self.manifests.mkdir()
        self.env = {**os.environ, "KPROXY_STATE_DIR": str(self.state_dir)}
        self.cleanup = cleanup
        self.is_up = False
        cfg = LabConfig(state_dir=str(self.state_dir))
        self.prefix = cfg.naming.prefix
        self.node_netns = cfg.naming.node_netns
        cleanup.labs.append(self)

    def kproxy(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        res = subprocess.run([PY, "-m", "kproxy.cli", *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise BenchError(f"kproxy {' '.join(args)[:80]} failed ({res.returncode}): "
                             f"{(res.stderr or res.stdout).strip()[:400]}")
        return res

    def up(self) -> None:
        self.is_up = True  # from here on down() must run, even if up fails half-way
        self.kproxy("up", "--sandbox", "--no-cluster-dns", "--manifests", str(self.manifests), timeout=240)

    def down(self) -> None:
        if self in self.cleanup.labs:
            self.cleanup.labs.remove(self)
        try:
            if self.is_up:
                self.kproxy("down", "--purge", check=False, timeout=300)
        except subprocess.TimeoutExpired:
            pid_file = self.state_dir / "daemon.pid"
            if pid_file.exists():
                kill_pids([int(pid_file.read_text().split()[0])])
        finally:
            for name in list_netns():  # a crashed lab: its leftovers by its own prefix
                if name.startswith(self.prefix + "-"):
                    kill_pids(netns_pids(name))
                    _run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.is_up = False

    def apply_text(self, text: str, wait: bool = True, timeout: float = 180) -> None:
        path = self.state_dir / f"apply-{secrets.token_hex(3)}.yaml"
        path.write_text(text)
        try:
            self.kproxy("apply", "-f", str(path), *(["--wait", "--timeout", str(int(timeout))] if wait else []),
                        timeout=timeout + 30)
        finally:
            path.unlink(missing_ok=True)

    def write_manifest(self, name: str, text: str) -> None:
        """Write a file into the manifests folder atomically (a dot-file the daemon skips, renamed)."""
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.manifests / name)

    def pods(self) -> list[dict]:
        return json.loads(self.kproxy("get", "pods", "-o", "json", timeout=120).stdout)["items"]

    def app_pods(self, app: str) -> list[dict]:
        """The pods labelled ``app=<app>`` (what gen.deployment(app, ...) makes)."""
        return [p for p in self.pods() if p["metadata"].get("labels", {}).get("app") == app]

    def pod_with_ip(self, pod_ip: str) -> dict | None:
        return next((p for p in self.pods() if p.get("status", {}).get("podIP") == pod_ip), None)

    def daemon_pid(self) -> int | None:
        p = self.state_dir / "daemon.pid"
        try:
            return int(p.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pod_netns(self, pod: dict) -> str:
        from kproxy.node.naming import Naming
        m = pod["metadata"]
        return Naming(self.prefix).pod_netns(m.get("namespace", "default"), m["name"])

    def node_exec(self, *cmd: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Run a command in the node netns through the CLI, as a user would."""
        return self.kproxy("exec", "node/node-1", "--", *cmd, timeout=timeout, check=check)

    def nat_save(self) -> str:
        return _run(["ip", "netns", "exec", self.node_netns, "iptables-save", "-t", "nat"], timeout=120).stdout

    def wait_rule(self, ip: str, timeout: float) -> float | None:
        """Seconds until the node's nat table has a rule for ``ip`` (polled), None after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if f"-d {ip}/32 " in self.nat_save():
                return time.monotonic() - start
            time.sleep(0.2)
        return None


def ready(pod: dict) -> bool:
    """Ready and not being deleted (a Deployment's old pods keep Ready while they stop)."""
    return not pod["metadata"].get("deletionTimestamp") and pod_ready(pod)


def rss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB from /proc (0, 0 when it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss
