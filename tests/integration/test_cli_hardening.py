"""Issue 12 #13 with real namespaces and processes: `kproxy cleanup` removes a dead lab's
leftovers and leaves a live lab alone; `up` right after a kill -9 of the daemon starts the lab.

The leftover is made up here under an unused prefix (kpfffX), inside its own namespaces; the
test removes whatever cleanup did not, and kills only the process it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kproxy import cleanup, control
from tests.integration.conftest import prefixed_netns

SERVICE = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def _unused_prefix() -> str:
    live = cleanup.live_state_dirs()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for n in range(15, -1, -1):
        prefix = f"kpfff{n:x}"
        if prefix not in live and f"{prefix}-" not in names and not list(Path("/etc/netns").glob(f"{prefix}-*")):
            return prefix
    pytest.skip("no unused kpfffX prefix on this machine")


@pytest.fixture
def leftover():
    """A dead lab's leftovers: two namespaces, a pod's /etc/netns folder, a process inside a
    pod namespace, and a (down, addressless) bridge in the root namespace, as a host-mode lab has."""
    prefix = _unused_prefix()
    pod_ns, node_ns, link = f"{prefix}-default-web", f"{prefix}-node", f"{prefix}-br0"
    etc = Path("/etc/netns") / pod_ns
    proc = None
    try:
        for ns in (pod_ns, node_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 10.96.0.10\n")
        subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", pod_ns, "sleep", "300"])
        deadline = time.monotonic() + 5
        while not subprocess.run(["ip", "netns", "pids", pod_ns], capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield {"prefix": prefix, "netns": [pod_ns, node_ns], "etc": etc, "link": link, "proc": proc}
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns in (pod_ns, node_ns):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        subprocess.run(["ip", "link", "delete", link], capture_output=True)
        if etc.exists():
            for f in etc.iterdir():
                f.unlink()
            etc.rmdir()


def test_cleanup_removes_a_dead_labs_leftovers_and_leaves_a_live_lab_alone(lab, leftover):
    lab.apply(SERVICE)
    mine = lab.cfg.naming.prefix
    live_netns = prefixed_netns(mine)
    assert live_netns
    prefix = leftover["prefix"]

    res = lab.kproxy("cleanup", "--dry-run")  # every lab's: lists, removes nothing
    lines = res.stdout.splitlines()
    for ns in leftover["netns"]:
        assert f"netns/{ns} removed (dry run)" in lines
    assert f"etc-netns/{leftover['etc'].name} removed (dry run)" in lines
    assert f"link/{leftover['link']} removed (dry run)" in lines
    assert f"process/{leftover['proc'].pid} killed (in netns {leftover['netns'][0]}) (dry run)" in lines \
        or any(line.startswith("process/") and leftover["netns"][0] in line for line in lines)
    assert mine not in res.stdout
    assert sorted(prefixed_netns(prefix)) == sorted(leftover["netns"])

    res = lab.kproxy("cleanup", "--prefix", prefix, "--prefix", mine)
    assert "Traceback" not in res.stdout + res.stderr
    assert f"netns/{leftover['netns'][0]} removed" in res.stdout.splitlines()
    assert prefixed_netns(prefix) == []
    assert not leftover["etc"].exists()
    assert leftover["link"] not in cleanup._root_links()
    leftover["proc"].wait(timeout=10)  # killed: it lived in a namespace being removed
    assert mine not in res.stdout
    assert prefixed_netns(mine) == live_netns
    assert lab.kproxy("status").returncode == 0
    assert lab.get("svc", "web")["spec"]["clusterIP"]

    res = lab.kproxy("cleanup", "--prefix", prefix)
    assert res.stdout.startswith("nothing to clean up")


def test_up_right_after_a_kill_9_starts_the_lab(lab):
    lab.apply(SERVICE)
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    pid = int((lab.state_dir / "daemon.pid").read_text())
    assert control.process_alive(pid, str(lab.state_dir))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while control.process_alive(pid, str(lab.state_dir)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    res = lab.kproxy("up", "--sandbox", "--manifests", str(lab.manifests), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already runs" not in res.stderr
    assert lab.kproxy("status").returncode == 0
    assert lab.get("svc", "web")["spec"]["clusterIP"] == ip
