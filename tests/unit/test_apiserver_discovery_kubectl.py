"""The real kubectl (the machine's, v1.32) against a throw-away aiohttp server on loopback that
serves only kproxy.apiserver.discovery.add_routes: what kubectl prints is the assertion."""

import asyncio
import os
import shutil
import subprocess
import threading

import pytest
from aiohttp import web

from kproxy.apiserver import discovery

KUBECTL = shutil.which("kubectl")


class _Server:
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


def make_app() -> web.Application:
    app = web.Application()
    discovery.add_routes(app)
    return app


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: the machine's kubectl (v1.32) is needed for this test")
    tmp = tmp_path_factory.mktemp("kubectl")
    with _Server(make_app()) as server:
        config = tmp / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: t, cluster: {{server: 'http://127.0.0.1:{server.port}'}}}}]\n"
            "users: [{name: u, user: {}}]\n"
            "contexts: [{name: c, context: {cluster: t, user: u, namespace: default}}]\ncurrent-context: c\n")
        env = dict(os.environ, KUBECONFIG=str(config), HOME=str(tmp))

        def run(*args, check=True):
            proc = subprocess.run([KUBECTL, "--cache-dir", str(tmp / "cache"), *args], env=env,
                                  capture_output=True, text=True, timeout=60)
            if check:
                assert proc.returncode == 0, proc.stderr
            return proc
        run.server = server
        yield run


def test_api_resources_lists_the_served_resources(kubectl):
    out = kubectl("api-resources").stdout.splitlines()
    assert out[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    rows = {tuple(line.split()) for line in out[1:]}
    assert ("services", "svc", "v1", "true", "Service") in rows
    assert ("pods", "po", "v1", "true", "Pod") in rows
    assert ("namespaces", "ns", "v1", "false", "Namespace") in rows
    assert ("deployments", "deploy", "apps/v1", "true", "Deployment") in rows
    assert ("events", "ev", "events.k8s.io/v1", "true", "Event") in rows
    assert ("endpointslices", "discovery.k8s.io/v1", "true", "EndpointSlice") in rows
    assert ("ipaddresspools", "metallb.io/v1beta1", "true", "IPAddressPool") in rows
    assert len(rows) == 13
    wide = kubectl("api-resources", "-o", "wide", "--api-group=apps").stdout
    assert "create,delete,deletecollection,get,list,patch,update,watch   all" in wide
    assert kubectl("api-resources", "--categories=all", "-o", "name").stdout.split() == [
        "pods", "services", "deployments.apps", "replicasets.apps"]


def test_version_and_raw_paths(kubectl):
    assert "Server Version: v1.32.0-kproxy" in kubectl("version").stdout
    assert kubectl("get", "--raw", "/readyz?verbose").stdout.endswith("readyz check passed\n")
    groups = kubectl("api-versions").stdout.split()
    assert groups == ["apps/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1", "events.k8s.io/v1",
                      "metallb.io/v1beta1", "v1"]
