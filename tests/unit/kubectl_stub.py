"""A throw-away API server for the streams' tests: HTTPS on loopback with a self-signed
certificate, just enough of the API for the real kubectl to find a pod or a Service (legacy
discovery, GET pod/service, list pods by label) plus streams.add_routes with a fake PodAccess:
commands run as local processes, logs come from a temporary file, a pod's ports are local
loopback servers. kubectl then runs its own `exec`, `logs`, `port-forward` and `proxy` code
against our stream handlers, exactly as it would against a lab.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kproxy.apiserver import status as st
from kproxy.apiserver import streams
from kproxy.apiserver.podaccess import PodAccess

TOKEN = "streams-test-token"
KUBECTL = "/usr/bin/kubectl"


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    crt, pem = folder / "stub.crt", folder / "stub.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class FakeAccess(PodAccess):
    """Pods are this machine: `ports` maps a pod port to a loopback port."""

    def __init__(self, logs: dict[str, Path], ports: dict[int, int]):
        self.logs, self.ports = logs, ports
        self.commands: list[list[str]] = []

    def elsewhere(self, pod):
        return "pod runs elsewhere" if pod["metadata"].get("labels", {}).get("state") == "elsewhere" else None

    def exec_argv(self, pod, container, command):
        if pod["metadata"].get("labels", {}).get("state") == "stopped":
            return None
        self.commands.append(list(command))
        return list(command)

    def log_path(self, pod, container):
        return self.logs.get(f"{pod['metadata']['name']}/{container}")

    async def open_connection(self, pod, port):
        return await asyncio.open_connection("127.0.0.1", self.ports.get(port, port))  # 9999: refused


def pod(name: str, labels: dict | None = None, containers=("app",), phase="Running") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels or {},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": c, "ports": [{"name": "http", "containerPort": 8080}]}
                                    for c in containers]},
            "status": {"phase": phase, "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": c, "ready": True, "state": {"running": {}}} for c in containers]}}


API_RESOURCES = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "shortNames": ["po"],
     "verbs": ["get", "list"]},
    {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]},
    {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    {"name": "pods/portforward", "singularName": "", "namespaced": True, "kind": "PodPortForwardOptions",
     "verbs": ["create", "get"]},
    {"name": "services", "singularName": "service", "namespaced": True, "kind": "Service", "shortNames": ["svc"],
     "verbs": ["get", "list"]},
    {"name": "endpoints", "singularName": "endpoints", "namespaced": True, "kind": "Endpoints", "shortNames": ["ep"],
     "verbs": ["get", "list"]}]}


class StubServer:
    """Runs in a thread of its own with its own event loop; `objects` is the store."""

    def __init__(self, folder: Path, access: FakeAccess, objects: dict[tuple[str, str], dict]):
        self.folder, self.access, self.objects = folder, access, objects
        self.crt, self.key = self_signed(folder)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.kubeconfig = folder / "kubeconfig"
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    def lookup(self, kind: str, ns, name: str):
        return self.objects.get((kind, name))

    def _app(self) -> web.Application:
        @web.middleware
        async def auth(request, handler):
            self.requests.append(f"{request.method} {request.path_qs}")
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response({"kind": "Status", "status": "Failure", "reason": "Unauthorized",
                                          "code": 401, "message": "Unauthorized"}, status=401)
            return await handler(request)
        app = web.Application(middlewares=[auth])

        async def api(_r):
            return web.json_response({"kind": "APIVersions", "versions": ["v1"],
                                      "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                      "serverAddress": "127.0.0.1"}]})

        async def apis(_r):
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

        async def v1(_r):
            return web.json_response(API_RESOURCES)

        async def get_obj(request):
            kind = {"pods": "Pod", "services": "Service"}[request.match_info["plural"]]
            obj = self.lookup(kind, "default", request.match_info["name"])
            if obj is None:
                return st.status_response(404, "NotFound", f'{request.match_info["plural"]} '
                                          f'"{request.match_info["name"]}" not found')
            return web.json_response(obj)

        async def list_pods(request):
            sel = dict(kv.split("=", 1) for kv in request.query.get("labelSelector", "").split(",") if "=" in kv)
            items = [o for (k, _), o in self.objects.items() if k == "Pod"
                     and all(o["metadata"]["labels"].get(a) == b for a, b in sel.items())]
            return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                      "items": items})

        app.router.add_get("/api", api)
        app.router.add_get("/apis", apis)
        app.router.add_get("/api/v1", v1)
        app.router.add_get("/api/v1/namespaces/default/pods", list_pods)
        app.router.add_get("/api/v1/namespaces/default/{plural:pods|services}/{name}", get_obj)
        streams.add_routes(app, self.access, self.lookup)
        return app

    def start(self) -> "StubServer":
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.crt, self.key)
            self._runner = web.AppRunner(self._app())
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: stub
  cluster:
    server: https://127.0.0.1:{self.port}
    insecure-skip-tls-verify: true
users:
- name: stub
  user:
    token: {TOKEN}
contexts:
- name: stub
  context: {{cluster: stub, user: stub, namespace: default}}
current-context: stub
""")
        return self

    def stop(self) -> None:
        async def down():
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def kubectl(self, *args: str, input: bytes | None = None, timeout: float = 30,
                binary: str = KUBECTL) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.folder)}
        return subprocess.run([binary, *args], input=input, capture_output=True, timeout=timeout, env=env)

    def kubectl_bg(self, *args: str, binary: str = KUBECTL, **kw) -> subprocess.Popen:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.folder)}
        return subprocess.Popen([binary, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
