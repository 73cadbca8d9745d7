"""Readiness and liveness probes, run from the node as the kubelet runs them."""
from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass, field


@dataclass
class ProbeState:
    """Counts toward success/failure thresholds, as the kubelet's prober keeps them."""
    spec: dict | None
    result: bool = False
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    running: object = None   # the Future of a probe in flight
    history: list = field(default_factory=list)

    def record(self, ok: bool) -> bool:
        """Fold one result in; returns True when the overall result changed."""
        spec = self.spec or {}
        before = self.result
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= spec.get("successThreshold", 1):
                self.result = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= spec.get("failureThreshold", 3):
                self.result = False
        return self.result != before


def named_port(pod: dict, port) -> int:
    """A probe's port, which may name a container port."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for c in pod["spec"].get("containers", []):
        for p in c.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
    raise ValueError(f"port {port!r} not found in pod")


def tcp_ok(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(ip: str, port: int, path: str, timeout: float, headers: list[dict] | None = None) -> bool:
    try:
        conn = http.client.HTTPConnection(ip, port, timeout=timeout)
        conn.request("GET", path or "/", headers={h["name"]: h["value"] for h in headers or []})
        status = conn.getresponse().status
        conn.close()
        return 200 <= status < 400
    except (OSError, http.client.HTTPException):
        return False


def exec_ok(argv: list[str], timeout: float) -> bool:
    try:
        return subprocess.run(argv, timeout=timeout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


def run_probe(spec: dict, pod: dict, netns: str, user: str | None = None) -> bool:
    """`user`: who an exec probe runs as, its container's user (security.RunAs.arg)."""
    ip = pod["status"]["podIP"]
    timeout = float(spec.get("timeoutSeconds", 1))
    if "tcpSocket" in spec:
        return tcp_ok(ip, named_port(pod, spec["tcpSocket"]["port"]), timeout)
    if "httpGet" in spec:
        h = spec["httpGet"]
        return http_ok(h.get("host") or ip, named_port(pod, h["port"]), h.get("path", "/"), timeout,
                       h.get("httpHeaders"))
    if "exec" in spec:  # inside the pod: its network, its hostname, its resolv.conf
        from .inpod import in_pod
        from .naming import pod_hostname
        hostname = pod_hostname(pod)
        return exec_ok(in_pod(netns, hostname, spec["exec"].get("command", []), user), timeout)
    return True


def ports_accept(pod: dict) -> bool:
    """The readiness of a pod without a probe: each TCP containerPort accepts a connection."""
    ip = pod["status"]["podIP"]
    for c in pod["spec"].get("containers", []):
        for p in c.get("ports", []):
            if p.get("protocol", "TCP") == "TCP" and not tcp_ok(ip, p["containerPort"], 0.5):
                return False
    return True
