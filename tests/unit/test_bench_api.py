"""The bench's api section without a lab: its client authenticates as a kubeconfig says (client
certificate from *-data fields, the CA verified) against a throw-away HTTPS aiohttp server that
answers a list, a PATCH and a watch the way the API server does, and times the event of a write;
its report rows hold the issue's targets."""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time

import pytest
import yaml
from aiohttp import web

from kproxy.bench import api
from kproxy.bench.run import parse_args
from kproxy.cluster.pki import Pki


@pytest.fixture
def server(tmp_path):
    """An HTTPS server on loopback requiring a client certificate of the test CA; returns the
    kubeconfig path a client of it uses."""
    pki = Pki(tmp_path / "pki")
    pki.ensure_ca()
    cert, key = pki.issue("server", "kube-apiserver", ips=("127.0.0.1",), server=True)
    ccert, ckey = pki.issue("admin", "kubernetes-admin", orgs=("system:masters",))
    services = {"a": {"metadata": {"name": "a", "labels": {}}}}
    watchers: list[asyncio.Queue] = []

    async def list_(request):
        if request.query.get("watch"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            q: asyncio.Queue = asyncio.Queue()
            watchers.append(q)
            while (ev := await q.get()) is not None:  # None: the server stops
                await resp.write(json.dumps(ev).encode() + b"\n")
            return resp
        return web.json_response({"kind": "ServiceList", "metadata": {"resourceVersion": "7"},
                                  "items": list(services.values())})

    async def patch(request):
        svc = services[request.match_info["name"]]
        svc["metadata"]["labels"].update((await request.json())["metadata"]["labels"])
        for q in watchers:
            q.put_nowait({"type": "MODIFIED", "object": svc})
        return web.json_response(svc)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/services", list_)
    app.router.add_patch("/api/v1/namespaces/default/services/{name}", patch)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=2)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    kubeconfig = tmp_path / "admin.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                 "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(ccert), "client-key-data": b64(ckey)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}]}))
    yield str(kubeconfig)
    for q in watchers:
        loop.call_soon_threadsafe(q.put_nowait, None)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_the_client_authenticates_lists_and_times_a_write_to_its_watch_event(server, tmp_path):
    client = api.ApiClient(server, tmp_path / "creds")
    assert client.json("/api/v1/namespaces/default/services")["metadata"]["resourceVersion"] == "7"
    status, body, took = client.request("GET", "/api/v1/namespaces/default/services")
    assert status == 200 and 0 < took < 5
    assert oct((tmp_path / "creds" / "client.key").stat().st_mode & 0o777) == "0o600"
    watch = api.Watch(client, "/api/v1/namespaces/default/services?watch=1&resourceVersion=7")
    try:
        t0 = time.perf_counter()
        status, _, _ = client.request("PATCH", "/api/v1/namespaces/default/services/a",
                                      json.dumps({"metadata": {"labels": {"bench-seq": "w0"}}}).encode(),
                                      {"Content-Type": "application/merge-patch+json"})
        assert status == 200
        at = watch.wait(lambda typ, name, labels: typ == "MODIFIED" and labels.get("bench-seq") == "w0", timeout=5)
        assert at is not None and 0 < at - t0 < 5
        assert watch.wait(lambda typ, name, labels: labels.get("bench-seq") == "never", timeout=0.2) is None
    finally:
        watch.close()
        client.close()


def test_a_client_without_the_cas_trust_is_refused(server, tmp_path):
    kc = yaml.safe_load(open(server))
    kc["clusters"][0]["cluster"]["certificate-authority-data"] = kc["users"][0]["user"]["client-certificate-data"]
    (tmp_path / "other.kubeconfig").write_text(yaml.safe_dump(kc))
    client = api.ApiClient(str(tmp_path / "other.kubeconfig"), tmp_path / "creds2")
    with pytest.raises(ssl.SSLError):
        client.request("GET", "/api/v1/namespaces/default/services")


def test_report_rows_hold_the_issue_targets():
    title, rows = api.table_section({"api": {
        "services": 1000, "list_json": {"n": 20, "p50": 0.150, "p99": 0.300, "bytes": 2048},
        "list_table": {"n": 20, "p50": 0.250, "p99": 0.300, "bytes": 2048},
        "watch": {"n": 100, "p50": 0.02, "p99": 0.12, "missed": 0}}})
    assert title.startswith("7. Kubernetes API server")
    verdicts = {what.split(",")[0].split(": ", 1)[1]: (target, v) for what, _, target, v in rows
                if what.startswith("1000 Services: ")}
    assert verdicts["list GET /api/v1/services"] == ("<= 200 ms", "PASS")  # the median is the target
    assert verdicts["list as kubectl asks (meta.k8s.io Table)"] == ("<= 200 ms", "FAIL")
    (watch,) = [r for r in rows if r[0].startswith("watch latency")]
    assert watch[2:] == ("<= 100 ms", "FAIL")  # p99 120 ms


def test_bench_arguments_of_the_api_section():
    a = parse_args([])
    assert (a.api_services, a.api_watch_events, a.api_applies) == (1000, 100, 100)
    assert parse_args(["--skip", "api"]).skip == {"api"}
    s = parse_args(["--smoke"])
    assert s.api_services == 100 and s.api_applies == 10
