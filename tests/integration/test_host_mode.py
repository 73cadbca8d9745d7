"""Without --sandbox the node is "the host": run that mode inside a namespace the test creates,
so the host-mode paths (bridge, routes, sysctls, KUBE-* chains and their cleanup) are exercised
without touching the machine's root namespace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from kproxy.config import LabConfig

from .conftest import prefixed_netns

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "demo")


@pytest.fixture
def fake_host():
    name = f"kpt{uuid.uuid4().hex[:4]}-host"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    state = tempfile.mkdtemp(prefix="kph-", dir="/tmp")
    try:
        yield name, state
    finally:
        env = {**os.environ, "KPROXY_STATE_DIR": state}
        subprocess.run(["ip", "netns", "exec", name, sys.executable, "-m", "kproxy.cli", "down", "--purge"],
                       env=env, capture_output=True)
        subprocess.run(["ip", "netns", "delete", name])
        shutil.rmtree(state, ignore_errors=True)


def test_host_mode_serves_and_cleans_up(fake_host):
    host, state = fake_host
    env = {**os.environ, "KPROXY_STATE_DIR": state}

    def run(*args, check=True):
        return subprocess.run(["ip", "netns", "exec", host, *args], env=env, capture_output=True, text=True,
                              check=check, timeout=120)

    kproxy = [sys.executable, "-m", "kproxy.cli"]
    run(*kproxy, "up")
    run(*kproxy, "apply", "-f", DEMO, "--wait")
    out = run("curl", "-s", "--max-time", "3", "http://127.0.0.1:30080/").stdout
    assert out.startswith("pod web-"), out  # a localhost NodePort, as kube-proxy serves it
    assert "KUBE-SVC-" in run("iptables-save").stdout
    assert run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"

    run(*kproxy, "down")
    assert "KUBE-" not in run("iptables-save").stdout
    links = run("ip", "-o", "link").stdout
    assert [line for line in links.splitlines() if "lo:" not in line] == [], links
    assert run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"  # the host's value is back
    prefix = LabConfig(state_dir=state).naming.prefix
    assert prefixed_netns(prefix) == []  # the pods' namespaces are gone too
