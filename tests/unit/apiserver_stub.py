"""A throw-away API server for tests of kproxy.apiserver's discovery/OpenAPI/strict pieces with the
real kubectl: aiohttp on 127.0.0.1:<free port> in a thread, discovery.add_routes, and a tiny
in-memory CRUD stub (no watch, no SMP: a merge patch is enough to see what kubectl sends) that
refuses what the lab's admission gate refuses and honours fieldValidation=Strict. Every request
is recorded so tests can assert what kubectl sent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading

import pytest
import yaml
from aiohttp import web

from kproxy.api.admission import INVALID, Admission
from kproxy.apiserver import discovery, resources, strict

KUBECTL = shutil.which("kubectl")


class Server:
    """aiohttp on 127.0.0.1:<free port> in a thread of its own (plain HTTP)."""

    def __init__(self, app: web.Application):
        self.app, self.port = app, 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        assert self._ready.wait(10), "the test server did not start"
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _merge(base, patch):
    """RFC 7386 merge (the stub's stand-in for every patch type)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class Stub:
    def __init__(self):
        self.objects: dict[tuple, dict] = {}
        self.requests: list[dict] = []
        self.admission = Admission()

    def route(self, path: str):
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
            ns, rest = rest[1], rest[2:]
        r = resources.find(group, version, rest[0]) if rest else None
        name = rest[1] if len(rest) > 1 else None
        return r, ns, name

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "content_type": request.headers.get("Content-Type", ""), "body": raw})
        r, ns, name = self.route(request.path)
        if r is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound",
                                      "message": "the server could not find the requested resource"}, status=404)
        key = (r.kind, ns or "", name)
        not_found = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": f'{r.plural}{"." + r.group if r.group else ""} "{name}" not found',
                     "reason": "NotFound", "details": {"name": name, "kind": r.plural}, "code": 404}
        if request.method == "GET":
            if name:
                return web.json_response(self.objects[key]) if key in self.objects else \
                    web.json_response(not_found, status=404)
            items = [o for (k, n, _), o in self.objects.items() if k == r.kind and (ns is None or n == ns)]
            return web.json_response({"kind": f"{r.kind}List", "apiVersion": r.group_version,
                                      "metadata": {"resourceVersion": "1"}, "items": items})
        ctype = request.headers.get("Content-Type", "")
        if "protobuf" in ctype or "cbor" in ctype:  # as the lab's server: JSON and YAML only
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f'the body of the request was in an unknown format - '
                                      f'accepted media types include: application/json, application/yaml, '
                                      f'application/json-patch+json, application/merge-patch+json, '
                                      f'application/apply-patch+yaml', "reason": "UnsupportedMediaType",
                                      "code": 415}, status=415)
        body = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw)
        create = request.method in ("POST", "PUT")
        if request.method == "PATCH":
            old = self.objects.get(key)
            if old is None and "apply-patch" not in ctype:
                return web.json_response(not_found, status=404)
            obj = _merge(old or {}, body)
        else:
            obj = body
            name = name or obj["metadata"]["name"]
            key = (r.kind, ns or "", name)
        if request.query.get("fieldValidation") == "Strict":
            found = strict.problems(r.kind, obj, raw if "json" in ctype and create else None)
            if found:
                return web.json_response(strict.strict_status(r.kind, r.version, found, create=create),
                                         status=400)
        obj.setdefault("metadata", {})
        if r.namespaced:
            obj["metadata"]["namespace"] = ns
        verdict = self.admission.admit(obj, old=self.objects.get(key))
        if not verdict.ok:
            if verdict.reason == INVALID:
                return web.json_response(strict.invalid_status(r.kind, name, verdict.field_errors), status=422)
            return web.json_response({"kind": "Status", "code": 400, "reason": "BadRequest",
                                      "message": verdict.message}, status=400)
        if request.query.get("dryRun") != "All":
            self.objects[key] = obj
        return web.json_response(obj, status=201 if request.method == "POST" else 200)


def make_app(stub: Stub | None = None) -> web.Application:
    app = web.Application()
    discovery.add_routes(app)
    if stub is not None:
        app.router.add_route("*", "/api/{tail:.*}", stub.handle)
        app.router.add_route("*", "/apis/{tail:.*}", stub.handle)
    return app


def kubectl_fixture(tmp_path_factory, stub: Stub | None = None):
    """Yield run(*args, check=True) -> CompletedProcess of the real kubectl against the server."""
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: the machine's kubectl (v1.32) is needed for this test")
    tmp = tmp_path_factory.mktemp("kubectl")
    with Server(make_app(stub)) as server:
        config = tmp / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: t, cluster: {{server: 'http://127.0.0.1:{server.port}'}}}}]\n"
            "users: [{name: u, user: {}}]\n"
            "contexts: [{name: c, context: {cluster: t, user: u, namespace: default}}]\ncurrent-context: c\n")
        env = dict(os.environ, KUBECONFIG=str(config), HOME=str(tmp))

        def run(*args, check=True, input=None):
            proc = subprocess.run([KUBECTL, "--cache-dir", str(tmp / "cache"), *args], env=env, input=input,
                                  capture_output=True, text=True, timeout=60)
            if check:
                assert proc.returncode == 0, proc.stderr
            return proc
        run.server, run.stub, run.tmp = server, stub, tmp
        yield run
