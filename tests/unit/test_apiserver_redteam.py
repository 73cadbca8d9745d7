"""Red-team checks of the API server (kproxy/apiserver): hostile bodies and names, clients that
misbehave (never read, disconnect, trickle), and the API server's wording for each refusal.

Each test drives the real server over HTTPS (test_apiserver_core's `served` fixture: the real
ApiServer, front and admission gate over an in-memory store) and asserts what the client gets
and what is left behind (folder files, watch listeners, open file descriptors)."""
from __future__ import annotations

import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from kproxy.apiserver import rest
from tests.unit.test_apiserver_core import lab, served, svc  # noqa: F401 - fixtures

MERGE = {"Content-Type": "application/merge-patch+json"}


def folder_files(cfg) -> list[str]:
    root = Path(cfg.manifests)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def listing() -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{os.getpid()}/fd"):
        try:
            out.append(os.readlink(f"/proc/{os.getpid()}/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


def wait_for(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def raw_watch(server, path: str, rcvbuf: int = 0) -> ssl.SSLSocket:
    """A TLS connection that sends one watch request with the bearer token and then reads nothing."""
    token = (server.pki.root / "apiserver-token").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(server.pki.ca_cert))
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", server.port))
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return s


# -- bodies -------------------------------------------------------------------------------------
def test_a_body_over_3_mib_is_413_in_the_api_servers_words(served):
    base, s, store, server = served
    big = {**svc("big"), "metadata": {"name": "big", "annotations": {"a": "x" * (3 * 1024 * 1024)}}}
    r = s.post(base + "/api/v1/namespaces/default/services", data=json.dumps(big),
               headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text[:300]
    assert (r.json()["reason"], r.json()["message"]) == ("RequestEntityTooLarge",
                                                         "Request entity too large: limit is 3145728")
    assert "big.yaml" not in " ".join(folder_files(server.cfg))


def test_a_body_in_an_unknown_media_type_is_415(served):
    base, s, store, server = served
    r = s.post(base + "/api/v1/namespaces/default/services", data=json.dumps(svc("web")),
               headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415, r.text
    assert r.json()["reason"] == "UnsupportedMediaType"
    assert r.json()["message"] == ("the body of the request was in an unknown format - accepted media types include: "
                                   "application/json, application/yaml, application/vnd.kubernetes.protobuf")


@pytest.mark.parametrize("body", [b"[" * 100000 + b"]" * 100000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                  b"k8s\x00\x0a\xff\xff\xff\xff\x0f", b"k8s\x00" + bytes(range(256))])
def test_deep_or_malformed_bodies_are_400_without_a_file(served, body):
    base, s, store, server = served
    before = folder_files(server.cfg)
    ctype = "application/vnd.kubernetes.protobuf" if body.startswith(b"k8s") else "application/json"
    r = s.post(base + "/api/v1/namespaces/default/services", data=body, headers={"Content-Type": ctype}, timeout=20)
    assert (r.status_code, r.json()["reason"]) == (400, "BadRequest"), r.text[:300]
    assert "Traceback" not in r.text and folder_files(server.cfg) == before


# -- names ----------------------------------------------------------------------------------------
DNS1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
           "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
           "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "x" * 300, "ünï", "web\x00"])
def test_odd_names_are_refused_by_the_gate_before_any_file_is_written(served, name):
    base, s, store, server = served
    before = folder_files(server.cfg)
    r = s.post(base + "/api/v1/namespaces/default/services", json=svc(name), timeout=10)
    assert (r.status_code, r.json()["reason"]) == (422, "Invalid"), r.text[:300]
    assert r.json()["message"].startswith('Service "') and \
        " is invalid: metadata.name: Invalid value: " in r.json()["message"]
    assert folder_files(server.cfg) == before
    assert not any(".." in f or "\x00" in f for f in folder_files(server.cfg))


def test_odd_namespaces_in_the_url_are_refused_before_any_file_is_written(served):
    base, s, store, server = served
    before = folder_files(server.cfg)
    for ns in ("..%2F..%2Fetc", "UPPER", "x" * 70):
        body = svc("web")
        del body["metadata"]["namespace"]
        r = s.post(base + f"/api/v1/namespaces/{ns}/services", json=body, timeout=10)
        assert r.status_code in (404, 422), (ns, r.text[:300])
    assert folder_files(server.cfg) == before


# -- updates that would change what an object is ----------------------------------------------------
def test_patches_and_updates_do_not_rename_move_retype_or_re_uid_an_object(served):
    base, s, store, server = served
    url = base + "/api/v1/namespaces/default/services/web"
    created = s.post(base + "/api/v1/namespaces/default/services", json=svc("web"), timeout=10).json()
    uid = created["metadata"]["uid"]

    def patch(body):
        return s.patch(url, data=json.dumps(body), headers=MERGE, timeout=10)
    r = patch({"metadata": {"name": "other"}})
    assert (r.status_code, r.json()["message"]) == (
        400, "the name of the object (other) does not match the name on the URL (web)")
    r = patch({"metadata": {"namespace": "kube-system"}})
    assert (r.status_code, r.json()["message"]) == (
        400, "the namespace of the provided object does not match the namespace sent on the request")
    assert patch({"kind": "Pod"}).status_code == 400
    r = patch({"metadata": {"uid": "1234"}})
    assert (r.status_code, r.json()["reason"]) == (422, "Invalid"), r.text[:300]
    assert r.json()["message"] == 'Service "web" is invalid: metadata.uid: Invalid value: "1234": field is immutable'
    stale = {**created, "metadata": {**created["metadata"], "uid": "1234", "resourceVersion": ""}}
    r = s.put(url, json=stale, timeout=10)
    assert (r.status_code, r.json()["message"]) == (
        409, f'Operation cannot be fulfilled on services "web": Precondition failed: UID in precondition: 1234, '
             f"UID in object meta: {uid}")
    now = s.get(url, timeout=10).json()
    assert now["metadata"]["uid"] == uid and now["metadata"]["namespace"] == "default"


def test_dry_run_writes_nothing(served):
    base, s, store, server = served
    before = folder_files(server.cfg)
    r = s.post(base + "/api/v1/namespaces/default/services", params={"dryRun": "All"}, json=svc("dry"), timeout=10)
    assert r.status_code == 201 and folder_files(server.cfg) == before
    assert s.get(base + "/api/v1/namespaces/default/services/dry", timeout=10).status_code == 404
    s.post(base + "/api/v1/namespaces/default/services", json=svc("kept"), timeout=10)
    after_create = folder_files(server.cfg)
    r = s.delete(base + "/api/v1/namespaces/default/services/kept", params={"dryRun": "All"}, timeout=10)
    assert r.status_code == 200 and folder_files(server.cfg) == after_create
    assert s.get(base + "/api/v1/namespaces/default/services/kept", timeout=10).status_code == 200


def test_objects_the_lab_makes_are_not_writable_and_survive_deletecollection(served):
    base, s, store, server = served
    r = s.delete(base + "/api/v1/namespaces/default/services/kubernetes", timeout=10)
    assert (r.status_code, r.json()["reason"]) == (405, "MethodNotAllowed")
    r = s.delete(base + "/api/v1/services", timeout=10)
    assert r.status_code == 200
    assert s.get(base + "/api/v1/namespaces/default/services/kubernetes", timeout=10).status_code == 200
    r = s.delete(base + "/api/v1/namespaces/kube-system", timeout=10)
    assert (r.status_code, r.json()["reason"]) == (403, "Forbidden")


# -- the server's own shape ---------------------------------------------------------------------------
def test_a_failing_handler_is_a_500_status_without_a_traceback(served, monkeypatch, caplog):
    base, s, store, server = served

    def boom(*a, **k):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(rest.Reads, "items", boom)
    r = s.get(base + "/api/v1/services", timeout=10)
    assert (r.status_code, r.json()["reason"]) == (500, "InternalError")
    assert "Traceback" not in r.text and "File \"" not in r.text
    assert any("Traceback" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


# -- clients that misbehave -------------------------------------------------------------------------
def test_200_watches_that_never_read_leave_the_server_responsive_and_leak_nothing(served, monkeypatch):
    base, s, store, server = served
    monkeypatch.setattr(rest, "BOOKMARK_SECONDS", 0.2)
    s.get(base + "/api/v1/services", timeout=10)
    listeners, before = len(server.cache.listeners), fds()
    socks = [raw_watch(server, "/api/v1/services?watch=1") for _ in range(200)]
    assert wait_for(lambda: len(server.cache.listeners) == listeners + 200, 30), len(server.cache.listeners)
    t0 = time.monotonic()
    assert s.get(base + "/api/v1/namespaces/default/services/kubernetes", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 5
    for sock in socks:  # abruptly: no TLS close_notify, a RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert wait_for(lambda: len(server.cache.listeners) == listeners, 15), len(server.cache.listeners)
    assert wait_for(lambda: fds() <= before + 2, 15), (fds(), before)


def test_a_watch_that_falls_behind_is_closed_and_unsubscribed(served, monkeypatch):
    base, s, store, server = served
    monkeypatch.setattr(rest, "WATCH_WRITE_SECONDS", 1.0)
    monkeypatch.setattr(rest, "WATCH_QUEUE", 5)
    listeners = len(server.cache.listeners)
    sock = raw_watch(server, "/api/v1/services?watch=1", rcvbuf=4096)
    assert wait_for(lambda: len(server.cache.listeners) == listeners + 1)
    fat = {"a": "x" * 200_000}
    for i in range(60):  # ~12 MB of events the client never reads
        obj = {**svc(f"s{i % 3}"), "kind": "Service"}
        obj["metadata"] = {**obj["metadata"], "annotations": fat, "labels": {"i": str(i)}}
        store.put(f"/registry/services/default/s{i % 3}", obj)
        server.cache.kick()
        time.sleep(0.01)
    assert wait_for(lambda: len(server.cache.listeners) == listeners, 20), len(server.cache.listeners)
    assert s.get(base + "/api/v1/services", timeout=10).status_code == 200
    sock.close()


@pytest.fixture
def short_idle(monkeypatch):
    """IDLE_SECONDS (32 s, the API server's ReadHeaderTimeout) made 2 s before `served` starts."""
    from kproxy.apiserver import server as srv
    assert srv.IDLE_SECONDS <= 60
    monkeypatch.setattr(srv, "IDLE_SECONDS", 2)
    return srv


def test_a_client_that_trickles_its_headers_is_dropped(short_idle, served):
    base, s, store, server = served
    srv = short_idle
    ctx = ssl.create_default_context(cafile=str(server.pki.ca_cert))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1")
    sock.sendall(b"GET /version HTTP/1.1\r\n")
    sock.settimeout(srv.IDLE_SECONDS + 15)
    started = time.monotonic()
    try:
        while True:
            sock.sendall(b"X-a: b\r\n")  # one header line now and then, never the end
            sock.settimeout(2)
            try:
                if sock.recv(1) == b"":
                    break
            except socket.timeout:
                pass
            except (ConnectionResetError, ssl.SSLError):
                break
            assert time.monotonic() - started < srv.IDLE_SECONDS + 15, "still open"
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    assert time.monotonic() - started >= srv.IDLE_SECONDS - 1
    sock.close()


# -- authentication ---------------------------------------------------------------------------------
ANONYMOUS_PATHS = ["/healthz", "/livez", "/readyz", "/version", "/api", "/apis", "/openapi/v2", "/openapi/v3",
                   "/api/v1/services?watch=1", "/api/v1/namespaces/default/pods/x/exec?command=sh",
                   "/api/v1/namespaces/default/pods/x/portforward", "/api/v1/namespaces/default/pods/x/log",
                   "/api/v1/namespaces/default/services/web:80/proxy/", "/nonexistent"]


def test_every_path_needs_credentials_and_only_the_admin_group_is_served(served, monkeypatch):
    import requests
    from kproxy.apiserver import server as srv
    base, s, store, server = served
    for path in ANONYMOUS_PATHS:
        for method in ("GET", "POST"):
            r = requests.request(method, base + path, verify=s.verify, timeout=10)
            assert (r.status_code, r.json()["reason"]) == (401, "Unauthorized"), (method, path, r.text[:200])
    for header in ("Bearer", "Bearer ", "Bearer wrong", "Basic YWRtaW46YWRtaW4=", "bearer " + server.token):
        r = requests.get(base + "/version", verify=s.verify, headers={"Authorization": header}, timeout=10)
        assert r.status_code == 401, header
    # the lab CA's other certificates (CoreDNS's, a node's) authenticate but are not the admin
    for cert in (server.pki.issue_coredns(), server.pki.issue_node("node-1")):
        r = requests.get(base + "/api/v1/services", verify=s.verify, cert=(str(cert.cert), str(cert.key)), timeout=10)
        assert (r.status_code, r.json()["reason"]) == (403, "Forbidden"), r.text[:200]
        assert r.json()["message"].startswith('forbidden: User "system:')
    compared = []
    real = srv.hmac.compare_digest
    monkeypatch.setattr(srv.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    r = requests.get(base + "/version", verify=s.verify, headers={"Authorization": f"Bearer {server.token}"},
                     timeout=10)
    assert r.status_code == 200 and compared  # the token is compared in constant time
    assert s.get(base + "/version", timeout=10).status_code == 200  # the admin kubeconfig's certificate


def test_key_material_is_private_to_root(served):
    base, s, store, server = served
    pki = server.pki.root
    assert (pki.stat().st_mode & 0o777) == 0o700 and pki.stat().st_uid == 0
    for f in [*pki.iterdir(), server.state / "kubeconfig"]:
        if f.suffix in (".key", "") or f.name in ("kubeconfig", "apiserver-token"):
            assert (f.stat().st_mode & 0o077) == 0 and f.stat().st_uid == 0, f


# -- the role's own failures ------------------------------------------------------------------------
def test_a_crash_of_the_server_thread_is_a_failed_component_an_event_and_a_restart(lab, monkeypatch):
    import requests
    from kproxy.apiserver.server import ApiServer
    w, store, cfg = lab
    cfg.sandbox = False
    server = ApiServer(w.ctx, w)
    server.prepare()
    real, crashes = ApiServer.app, []

    def app_once(self):
        if not crashes:
            crashes.append(1)
            raise RuntimeError("the routes could not be built")
        return real(self)
    monkeypatch.setattr(ApiServer, "app", app_once)
    before, was = fds(), listing()  # (after prepare: the host loopback socket is counted)
    server.start()
    try:
        assert wait_for(lambda: w.ctx.components.is_failed("apiserver"), 5)
        snap = w.ctx.components.snapshot()["apiserver"]
        assert "RuntimeError: the routes could not be built" in snap["message"]
        events = [json.loads(v) for k, (v, _) in store.kv.items() if k.startswith("/registry/events/")]
        assert any(e.get("reason") == "ApiserverFailed" and "routes could not be built" in e.get("message", "")
                   for e in events), events
        assert wait_for(lambda: w.ctx.components.snapshot()["apiserver"]["state"] == "ok", 10)
        assert w.ctx.components.snapshot()["apiserver"]["restarts"] >= 1
        pki = server.pki.root
        r = requests.get(f"https://127.0.0.1:{server.port}/version", verify=str(pki / "ca.crt"),
                         cert=(str(pki / "admin.crt"), str(pki / "admin.key")), timeout=10,
                         headers={"Connection": "close"})
        assert r.status_code == 200
    finally:
        w.ctx.stopping.set()
        server.stop()
    # once stopped, nothing of either start is left open (the failed one's event loop included)
    assert wait_for(lambda: fds() <= before, 10), (sorted(set(listing()) - set(was)), fds(), before)


# -- query parameters ---------------------------------------------------------------------------------
def test_a_dry_run_value_other_than_all_is_refused_not_written(served):
    base, s, store, server = served
    before = folder_files(server.cfg)
    r = s.post(base + "/api/v1/namespaces/default/services", params={"dryRun": "Al"}, json=svc("typo"), timeout=10)
    assert (r.status_code, r.json()["message"]) == (
        422, 'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Al"}: supported values: '
             '"All"'), r.text[:300]
    assert folder_files(server.cfg) == before
    assert s.get(base + "/api/v1/namespaces/default/services/typo", timeout=10).status_code == 404
    r = s.delete(base + "/api/v1/namespaces/default/services/kubernetes", params={"dryRun": "true"}, timeout=10)
    assert r.status_code == 422 and r.json()["message"].startswith('DeleteOptions.meta.k8s.io "" is invalid: dryRun')


def test_bad_query_values_and_verbs_without_a_name_are_the_api_servers_4xx(served):
    base, s, store, server = served
    u = base + "/api/v1/namespaces/default/services"
    r = s.get(u, params={"watch": "1", "timeoutSeconds": "abc"}, timeout=10)
    assert (r.status_code, r.json()["message"]) == (400, 'strconv.ParseInt: parsing "abc": invalid syntax')
    for method in ("PUT", "PATCH"):
        r = s.request(method, u, json=svc("x"), headers={"Content-Type": "application/merge-patch+json"}
                      if method == "PATCH" else {}, timeout=10)
        assert (r.status_code, r.json()["reason"]) == (405, "MethodNotAllowed"), (method, r.text[:200])


# -- nesting the folder would refuse --------------------------------------------------------------------
def nested(depth: int):
    return json.loads('{"a":' * depth + "1" + "}" * depth)


@pytest.mark.parametrize("depth", [150, 600, 950])
def test_json_nested_deeper_than_the_folder_accepts_is_400_before_any_file(served, depth):
    base, s, store, server = served
    before = folder_files(server.cfg)
    body = svc(f"deep{depth}")
    body["spec"]["extra"] = nested(depth)  # an unknown field: kept for the folder, so it must load there
    r = s.post(base + "/api/v1/namespaces/default/services", data=json.dumps(body),
               headers={"Content-Type": "application/json"}, timeout=30)
    assert (r.status_code, r.json()["reason"]) == (400, "BadRequest"), r.text[:300]
    assert r.json()["message"].endswith("nesting deeper than 100 levels is not accepted")
    assert folder_files(server.cfg) == before


def test_patches_nested_too_deep_or_alias_bombs_are_400(served):
    base, s, store, server = served
    url = base + "/api/v1/namespaces/default/services/web"
    assert s.post(base + "/api/v1/namespaces/default/services", json=svc("web"), timeout=10).status_code == 201
    files = folder_files(server.cfg)
    for depth in (150, 2000):
        data = '{"spec":{"extra":' + '{"a":' * depth + "1" + "}" * depth + "}}"
        r = s.patch(url, data=data, headers=MERGE, timeout=30)
        assert (r.status_code, r.json()["reason"]) == (400, "BadRequest"), r.text[:300]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    apply = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n"
             "spec:\n  ports:\n  - port: 80\n" + "".join("  " + line + "\n" for line in ["extra:"]) +
             "".join("    " + line for line in bomb.splitlines(True)))
    t0 = time.monotonic()
    r = s.patch(url, params={"fieldManager": "t"}, data=apply,
                headers={"Content-Type": "application/apply-patch+yaml"}, timeout=30)
    assert (r.status_code, r.json()["reason"]) == (400, "BadRequest"), r.text[:300]
    assert "alias" in r.json()["message"] and time.monotonic() - t0 < 5
    assert folder_files(server.cfg) == files


@pytest.mark.parametrize("raw", ["1" + "0" * 30, "1e400", "NaN", '"\\ud800"'])
def test_json_the_folder_could_not_load_back_is_400_not_a_file_that_never_lands(served, raw):
    base, s, store, server = served
    before = folder_files(server.cfg)
    body = json.dumps(svc("odd")).replace('"ports"', '"extra": ' + raw + ', "ports"')
    t0 = time.monotonic()
    r = s.post(base + "/api/v1/namespaces/default/services", data=body, headers={"Content-Type": "application/json"},
               timeout=30)
    assert (r.status_code, r.json()["reason"]) == (400, "BadRequest"), r.text[:300]
    assert r.json()["message"].startswith("the body of the request could not be decoded: ")
    assert time.monotonic() - t0 < 5 and folder_files(server.cfg) == before


@pytest.fixture
def few_connections(monkeypatch):
    from kproxy.apiserver import server as srv
    monkeypatch.setattr(srv, "MAX_CONNECTIONS", 20)
    return srv


def test_a_connection_flood_is_capped_and_the_server_answers_once_it_ends(few_connections, served):
    import requests
    base, s, store, server = served
    ctx = ssl.create_default_context(cafile=str(server.pki.ca_cert))
    flood, closed = [], 0
    for _ in range(60):
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                            server_hostname="127.0.0.1")
        flood.append(c)
    time.sleep(0.5)
    for c in flood:  # the server closed what came past the cap
        c.settimeout(0.05)
        try:
            closed += c.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            closed += 1
        except socket.timeout:
            pass
    assert closed >= 35, closed
    for c in flood:
        c.close()
    pki = server.pki.root
    assert wait_for(lambda: requests.get(base + "/version", verify=str(pki / "ca.crt"), timeout=5,
                                         cert=(str(pki / "admin.crt"), str(pki / "admin.key"))).status_code == 200)
