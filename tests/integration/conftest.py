"""Integration fixtures: a sandboxed lab per module, torn down even when a test fails.

Every lab lives in network namespaces it creates (no uplink), so the tests send packets only
inside those namespaces, and never program the machine's root namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from kproxy.config import LabConfig

REPO = Path(__file__).resolve().parents[2]


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root"
    for tool in ("ip", "iptables-restore", "iptables-save"):
        if not shutil.which(tool):
            return f"{tool} is not installed (run scripts/setup)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _can_run()
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


class Lab:
    """Drives one sandboxed lab through the `kproxy` command, as a user would."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.manifests = state_dir / "manifests"
        self.env = {**os.environ, "KPROXY_STATE_DIR": str(state_dir)}

    @property
    def cfg(self) -> LabConfig:
        return LabConfig.load(str(self.state_dir))

    def kproxy(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "kproxy.cli", *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"kproxy {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def up(self, *extra: str) -> None:
        self.kproxy("up", "--sandbox", "--manifests", str(self.manifests), *extra)

    def down(self, *extra: str) -> None:
        self.kproxy("down", *extra)

    def apply(self, text: str, wait: bool = True) -> subprocess.CompletedProcess:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            return self.kproxy("apply", "-f", f.name, *(["--wait"] if wait else []))
        finally:
            os.unlink(f.name)

    def get(self, kind: str, name: str | None = None, namespace: str = "default") -> dict:
        args = ["get", kind] + ([name] if name else []) + ["-n", namespace, "-o", "json"]
        return json.loads(self.kproxy(*args).stdout)

    def exec(self, target: str, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.kproxy("exec", target, "--", *cmd, check=check, timeout=timeout)

    def node_save(self) -> str:
        return subprocess.run(["ip", "netns", "exec", self.cfg.naming.node_netns, "iptables-save"],
                              capture_output=True, text=True, check=True).stdout

    def ready_pods(self, app: str) -> list[dict]:
        pods = self.get("pods")["items"]
        return [p for p in pods if p["metadata"].get("labels", {}).get("app") == app
                and not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]

    def wait_for(self, what, timeout: float = 30, interval: float = 0.2):
        return wait_for(what, timeout, interval)


def wait_for(what, timeout: float, interval: float = 0.1):
    """`what()` once it is true (returned), polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what.__doc__ or what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_dashboard(lab: Lab):
    """`kproxy dashboard` of the lab on a free loopback port, once it answers: (its URL, the
    process). Afterwards Ctrl-C (SIGINT, by its pid) if it still runs, then kill if it hangs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kproxy.cli", "dashboard", "--port", str(port)], env=lab.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        lab.wait_for(lambda: proc.poll() is not None or answers(url + "api/counters"), timeout=20)
        assert proc.poll() is None, proc.communicate()
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# A client program run inside a pod or node: N fresh connections, the answering pod of each.
HITS = r"""
import json, socket, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(n):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            out.append(r.read().decode().split()[1])
    except Exception as e:
        out.append("ERR:" + type(e).__name__)
print(json.dumps(out))
"""


def hits(lab: Lab, target: str, url: str, n: int, namespace: str = "default") -> list[str]:
    res = lab.kproxy("exec", target, "-n", namespace, "--", sys.executable, "-c", HITS, url, str(n), timeout=120)
    return json.loads(res.stdout)


def prefixed_netns(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


# Run a module's tests once per proxy mode, one lab each: `pytestmark = BY_PROXY_MODE` (the
# module's LAB_UP_ARGS still apply; this adds `--proxy-mode`). Tests read lab.cfg.proxy_mode.
BY_PROXY_MODE = pytest.mark.parametrize("lab", ["iptables", "nftables"], indirect=True, scope="module")


@contextlib.contextmanager
def sandbox_lab():
    """A new Lab in its own state directory, for the caller to `up`; afterwards brought down,
    purged and its state removed, failing if any of its netns is left behind."""
    state = Path(tempfile.mkdtemp(prefix="kp-", dir="/tmp"))
    the_lab = Lab(state)
    the_lab.manifests.mkdir()
    try:
        yield the_lab
    finally:
        prefix = LabConfig(state_dir=str(state)).naming.prefix
        the_lab.kproxy("down", "--purge", check=False)
        leftover = prefixed_netns(prefix)
        # a purged lab keeps no key material: no CA, keys, token, nor the kubeconfig embedding one
        secrets = [str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and "manifests" not in p.parts
                   and (p.name == "kubeconfig" or p.suffix in (".key", ".crt") or "token" in p.name)]
        shutil.rmtree(state, ignore_errors=True)
        assert not leftover, f"netns left behind: {leftover}"
        assert not secrets, f"key material left in a purged lab: {secrets}"


@pytest.fixture(scope="module")
def lab(request):
    """A sandboxed lab for the module; a module may set LAB_UP_ARGS for `kproxy up`, and
    parametrize `lab` indirectly with a proxy mode (BY_PROXY_MODE)."""
    mode = getattr(request, "param", None)
    with sandbox_lab() as the_lab:
        the_lab.up(*getattr(request.module, "LAB_UP_ARGS", ()), *(("--proxy-mode", mode) if mode else ()))
        yield the_lab


def chains_of(saved: str) -> set[str]:
    return set(re.findall(r"^:(KUBE-[A-Z0-9-]+)", saved, re.M))
