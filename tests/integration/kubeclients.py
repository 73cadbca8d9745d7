"""The real Kubernetes clients the API-server tests drive (issue 14): the machine's kubectl, Debian's
kubectl 1.20 and the official Python client, each pointed at a lab through the kubeconfig that
`kproxy kubeconfig --path` names, exactly as a user's `export KUBECONFIG=...` does.

Why two kubectl binaries: the machine's (v1.30+; 1.32 on these machines) speaks today's protocol
(aggregated discovery, WebSocket streams, fieldValidation=Strict); Debian 12's kubernetes-client
(1.20) speaks the older one (legacy discovery, OpenAPI v2, SPDY). scripts/setup --test unpacks the
latter into OLD_KUBECTL_DIR instead of installing it, because that package would overwrite
/usr/bin/kubectl (tests/unit/test_setup.py checks both places agree).

A missing client is a failure naming scripts/setup, never a skip: a test that did not run
proved nothing.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

OLD_KUBECTL_DIR = Path("/opt/kproxy/kubectl-1.20")
OLD_KUBECTL = OLD_KUBECTL_DIR / "usr" / "bin" / "kubectl"


def machine_kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not on PATH (scripts/setup --test says how to get kubectl 1.30+)")
    return path


def old_kubectl() -> str:
    if not os.access(OLD_KUBECTL, os.X_OK):
        pytest.fail(f"{OLD_KUBECTL} is missing: run scripts/setup --test (it unpacks Debian's kubernetes-client)")
    return str(OLD_KUBECTL)


def kubeconfig_path(lab) -> str:
    """What `kproxy kubeconfig --path` prints: the admin kubeconfig of the lab."""
    path = lab.kproxy("kubeconfig", "--path").stdout.strip()
    assert path and Path(path).is_file(), f"kproxy kubeconfig --path printed {path!r}"
    return path


class Kubectl:
    """One kubectl binary with KUBECONFIG set to one lab; run() returns the CompletedProcess,
    failing the test with kubectl's own stderr when check is set and it exits non-zero."""

    def __init__(self, binary: str, kubeconfig: str, cwd: str | None = None):
        self.binary = binary
        self.cwd = cwd
        # a private cache dir: discovery cached by one lab (or one binary) never answers for another
        cache = Path(kubeconfig).parent / f".kubectl-cache-{Path(binary).parent.name}"
        self.env = {**os.environ, "KUBECONFIG": kubeconfig}
        self.cache = str(cache)

    def run(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        res = subprocess.run([self.binary, "--cache-dir", self.cache, *args], env=self.env, cwd=self.cwd,
                             capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def json(self, *args: str, timeout: float = 60) -> dict:
        return json.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def popen(self, *args: str) -> "Lines":
        proc = subprocess.Popen([self.binary, "--cache-dir", self.cache, *args], env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        return Lines(proc)


class Lines:
    """A running kubectl (e.g. `get -w`): its stdout lines as they come, read by a thread so a
    test can wait for one with a timeout; stop() ends that process (by its pid) and returns stderr."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pred, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line within {timeout}s; lines so far: {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"kubectl ended ({self.proc.wait()}); lines: {self.seen}; "
                                     f"stderr: {self.proc.stderr.read()}")
            self.seen.append(line)
            if pred(line):
                return line

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


def python_client(kubeconfig: str):
    """The official client's CoreV1Api for the lab, configured only from the kubeconfig file."""
    from kubernetes import client, config
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))
