"""The streams with the real kubectl against a sandbox lab's API server: `logs -f`, `exec -i`
with stdin (in the pod's netns, with its hostname and securityContext user), `port-forward
svc/web` then curl on the host's loopback answered by a pod, `kubectl proxy` then curl of the
service proxy path answered by a pod. Needs /usr/bin/kubectl and curl (scripts/setup).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.integration.conftest import REPO
from tests.integration.kubeclients import OLD_KUBECTL

KUBECTL = "/usr/bin/kubectl"

TICKER = """apiVersion: v1
kind: Pod
metadata:
  name: ticker
  labels: {app: ticker}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: tick
    image: busybox
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]
"""


@pytest.fixture(scope="module")
def kube(lab):
    for tool in (KUBECTL, "curl"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (run scripts/setup)")
    lab.kproxy("apply", "-f", str(REPO / "examples" / "demo"), "--wait")
    lab.apply(TICKER)
    path = lab.kproxy("kubeconfig", "--path").stdout.strip()
    env = {**os.environ, "KUBECONFIG": path}
    lab.wait_for(lambda: b"tick" in subprocess.run([KUBECTL, "logs", "ticker"], env=env,
                                                    capture_output=True).stdout, timeout=30)
    return env


def kubectl(env, *args, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, *args], env=env, input=input, capture_output=True, timeout=timeout)


def _started(proc: subprocess.Popen, pattern: bytes, timeout: float = 20) -> re.Match:
    deadline, seen = time.time() + timeout, b""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if m := re.search(pattern, seen):
            return m
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"kubectl did not start: {seen!r} {proc.stderr.read()!r}")


def _curl(url: str) -> str:
    return subprocess.run(["curl", "-s", "-m", "10", url], capture_output=True, text=True, timeout=20).stdout


def test_logs_follow(kube):
    proc = subprocess.Popen([KUBECTL, "logs", "-f", "ticker", "--tail", "1"], env=kube,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.kill()
        proc.wait(10)
    numbers = [int(m.group(1)) for line in lines if (m := re.fullmatch(rb"tick (\d+)\n", line))]
    assert len(numbers) == 4, lines
    assert numbers == list(range(numbers[0], numbers[0] + 4))  # new lines as the pod writes them


def test_exec_with_stdin_runs_in_the_pod(kube):
    res = kubectl(kube, "exec", "-i", "ticker", "--", "sh", "-c", "tr a-z A-Z; hostname; id -u",
                  input=b"hello from the host\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"HELLO FROM THE HOST\nticker\n1000\n"
    res = kubectl(kube, "exec", "deploy/web", "--", "sh", "-c", "exit 5")
    assert res.returncode == 5
    assert res.stderr.endswith(b"command terminated with exit code 5\n")


def test_port_forward_service_answered_by_a_pod(kube):
    proc = subprocess.Popen([KUBECTL, "port-forward", "svc/web", ":80"], env=kube,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080").group(1))
        answers = [_curl(f"http://127.0.0.1:{port}/") for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert all(re.match(r"pod web-[a-z0-9]+-[a-z0-9]+ namespace default ip 10\.244\.", a) for a in answers), answers


def test_kubectl_proxy_reaches_the_service(kube):
    proc = subprocess.Popen([KUBECTL, "proxy", "--port", "0"], env=kube, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(_started(proc, rb"Starting to serve on 127\.0\.0\.1:(\d+)").group(1))
        base = f"http://127.0.0.1:{port}/api/v1/namespaces/default"
        answers = [_curl(f"{base}/services/web:80/proxy/") for _ in range(3)]
        pod = answers[0].split()[1]
        by_pod = _curl(f"{base}/pods/{pod}:8080/proxy/")
    finally:
        proc.terminate()
        proc.wait(10)
    assert all(re.match(r"pod web-[a-z0-9]+-[a-z0-9]+ namespace default ip 10\.244\.", a) for a in answers), answers
    assert by_pod.startswith(f"pod {pod} namespace default")
    logs = kubectl(kube, "logs", pod).stdout.decode()
    assert '"GET / HTTP/1.1" 200' in logs  # the request the proxy carried, in the pod's access log


def test_exec_tty_in_the_pod(kube):
    """-it (through `script`: kubectl needs a terminal): a terminal of the client's size."""
    if not shutil.which("script"):
        pytest.fail("script (bsdutils) is not installed")
    res = subprocess.run(["script", "-qec", f"stty cols 101 rows 31; {KUBECTL} exec -it ticker -- "
                          "sh -c 'stty size; hostname; exit 2'", "/dev/null"],
                         capture_output=True, timeout=60, env=kube, stdin=subprocess.DEVNULL)
    assert re.search(rb"31 101\r\nticker\r\ncommand terminated with exit code 2", res.stdout), res.stdout
    assert res.returncode == 2




def test_old_kubectl_exec_and_port_forward(kube):
    """Debian's kubectl 1.20 speaks SPDY/3.1 for both."""
    if not os.path.exists(OLD_KUBECTL):
        pytest.fail(f"{OLD_KUBECTL} is missing (run scripts/setup --test)")
    res = subprocess.run([str(OLD_KUBECTL), "exec", "-i", "ticker", "--", "sh", "-c", "cat; id -u"], env=kube,
                         input=b"via spdy\n", capture_output=True, timeout=60)
    assert (res.returncode, res.stdout) == (0, b"via spdy\n1000\n"), res.stderr
    proc = subprocess.Popen([str(OLD_KUBECTL), "port-forward", "svc/web", ":80"], env=kube,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080").group(1))
        answer = _curl(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(10)
    assert re.match(r"pod web-[a-z0-9]+-[a-z0-9]+ namespace default", answer), answer


def test_kubectl_cp_from_a_pod(kube, tmp_path):
    """kubectl cp is tar over exec: the file comes from the pod's view (its resolv.conf, mounted
    over the host's as the kubelet does; the rest of the filesystem is the host's)."""
    res = kubectl(kube, "cp", "ticker:/etc/resolv.conf", str(tmp_path / "resolv.conf"))
    assert res.returncode == 0, res.stderr
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in (tmp_path / "resolv.conf").read_text()
