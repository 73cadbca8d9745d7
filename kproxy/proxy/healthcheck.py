"""kube-proxy's HTTP endpoints: /healthz and /livez (port 10256), /metrics (127.0.0.1:10249), and
one health-check server per `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service.

A load balancer asks a Service's health-check node port whether this node has local endpoints:
200 with `localEndpoints > 0`, else 503, with kube-proxy's JSON body.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)


def _server(address: str, handler: Callable[[BaseHTTPRequestHandler], tuple[int, str, str]]) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            code, ctype, body = handler(self)
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: probes hit these every few seconds
            pass

    srv = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"http-{port}").start()
    return srv


class ProxyHealth:
    """Healthy while rules were synced within twice the sync period, as kube-proxy's healthz."""

    def __init__(self, sync_period: float):
        self.sync_period = sync_period
        self.last_updated = time.time()
        self.last_queued: float | None = None

    def queued(self) -> None:
        if self.last_queued is None:
            self.last_queued = time.time()

    def updated(self) -> None:
        self.last_updated, self.last_queued = time.time(), None

    def healthy(self) -> bool:
        now = time.time()
        pending = self.last_queued is not None and now - self.last_queued > 2 * self.sync_period
        return not pending and now - self.last_updated <= 2 * self.sync_period + 5

    def answer(self, req: BaseHTTPRequestHandler) -> tuple[int, str, str]:
        if req.path.split("?")[0] not in ("/healthz", "/livez"):
            return 404, "text/plain", "404 page not found\n"
        ok = self.healthy()
        ts = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " +0000 UTC"  # noqa: E731
        body = {"lastUpdated": ts(self.last_updated), "currentTime": ts(time.time()), "nodeEligible": True}
        return (200 if ok else 503), "application/json", json.dumps(body)


class HttpEndpoints:
    """Starts and stops kube-proxy's HTTP servers; a port already in use is logged, not fatal."""

    def __init__(self):
        self.servers: dict[str, ThreadingHTTPServer] = {}
        self.service_ports: dict[int, ThreadingHTTPServer] = {}
        self.local_endpoints: dict[int, tuple[str, str, int]] = {}

    def start(self, name: str, address: str, handler) -> None:
        try:
            self.servers[name] = _server(address, handler)
        except OSError as e:
            log.warning("cannot serve %s on %s: %s", name, address, e)

    def sync_service_health(self, wanted: dict[int, tuple[str, str, int]]) -> None:
        """wanted: healthCheckNodePort -> (namespace, name, local endpoint count)."""
        self.local_endpoints = dict(wanted)
        for port in set(self.service_ports) - set(wanted):
            self.service_ports.pop(port).shutdown()
        for port in set(wanted) - set(self.service_ports):
            try:
                self.service_ports[port] = _server(f"0.0.0.0:{port}", lambda req, p=port: self._service_answer(p))
            except OSError as e:
                log.warning("cannot serve health check node port %d: %s", port, e)

    def _service_answer(self, port: int) -> tuple[int, str, str]:
        ns, name, count = self.local_endpoints.get(port, ("", "", 0))
        body = {"service": {"namespace": ns, "name": name}, "localEndpoints": count,
                "serviceProxyHealthy": True}
        return (200 if count > 0 else 503), "application/json", json.dumps(body)

    def stop(self) -> None:
        for srv in [*self.servers.values(), *self.service_ports.values()]:
            srv.shutdown()
            srv.server_close()
        self.servers.clear()
        self.service_ports.clear()
