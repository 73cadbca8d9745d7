"""kproxy dashboard: the counters document the page polls (shaped from captured iptables-save -c
text, as `kproxy explain` reads it), the trace form's checks, and the HTTP server's rules (the
Host header, the POST header, the CSP), served on loopback port 0 with fake lab readers."""
from __future__ import annotations

import html
import http.client
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest

from kproxy import dashboard as db
from kproxy.explain import parse_save

CORPUS = Path(__file__).parent / "trace_corpus"
PODS = {"10.244.0.4": {"name": "web-1", "namespace": "default", "node": "node-1"},
        "10.244.0.5": {"name": "web-2", "namespace": "default", "node": "node-1"},
        "10.244.0.6": {"name": "web-3", "namespace": "default", "node": "node-2"}}


def svc(name: str, cluster_ip: str | None = "10.96.0.9", type_: str = "ClusterIP", ns: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"type": type_, "clusterIP": cluster_ip, "ports": [{"port": 80, "protocol": "TCP"}]}}


def saved():
    return parse_save((CORPUS / "node.save").read_text())


def test_counters_per_endpoint_with_pods_shares_and_the_graph_edge():
    [web] = db.counters([svc("web")], {"node-1": saved()}, PODS)
    assert web["service"] == "default/web" and web["connections"] == 2 and web["by_node"] == {"node-1": 2}
    eps = {e["ip"]: e for e in web["endpoints"]}
    assert {ip: e["connections"] for ip, e in eps.items()} == {"10.244.0.4": 1, "10.244.0.5": 0, "10.244.0.6": 1}
    assert eps["10.244.0.4"]["pod"] == "web-1" and eps["10.244.0.6"]["node"] == "node-2"
    assert eps["10.244.0.4"]["share"] == 0.5 and eps["10.244.0.5"]["share"] == 0.0
    assert eps["10.244.0.4"]["edge"] == "svc_default_web->pod_default_web_1"


def test_counters_add_up_over_the_nodes():
    [web] = db.counters([svc("web")], {"node-1": saved(), "node-2": saved()}, PODS)
    assert web["connections"] == 4 and web["by_node"] == {"node-1": 2, "node-2": 2}
    assert sorted(e["connections"] for e in web["endpoints"]) == [0, 2, 2]


def test_a_service_without_endpoints_shows_its_rejected_packets():
    [nobody] = db.counters([svc("nobody")], {"node-1": saved()}, {})
    assert nobody["endpoints"] == [] and nobody["connections"] == 0 and nobody["stopped"] == 1


def test_no_counts_yet_gives_no_share():
    [web] = db.counters([svc("web")], {"node-1": parse_save("")}, PODS)
    assert web["endpoints"] == [] and web["connections"] == 0


def test_headless_and_externalname_services_are_not_shown_and_the_rest_is_sorted():
    services = [svc("web"), svc("head", "None"), svc("ext", None, "ExternalName"), svc("dns", ns="kube-system"),
                svc("api")]
    assert [s["service"] for s in db.counters(services, {}, {})] == ["default/api", "default/web",
                                                                     "kube-system/dns"]


def test_edge_title_is_the_title_graphviz_gives_the_lab_pictures_arrow():
    if not shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed (scripts/setup)")
    from kproxy import graph as gr
    node = {"metadata": {"name": "node-1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}
    pod = {"metadata": {"name": "web-1", "namespace": "default"}, "spec": {"nodeName": "node-1"},
           "status": {"podIP": "10.244.0.4"}}
    sl = {"metadata": {"name": "web-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.244.0.4"],
                                                   "targetRef": {"name": "web-1", "namespace": "default"}},
                                                  {"addresses": ["10.244.7.7"]}]}
    svg = gr.render(gr.lab_graph([node], [pod], [svc("web")], [sl]), "svg").decode()
    titles = {html.unescape(t) for t in re.findall(r"<title>(.*?)</title>", svg)}
    assert db.edge_title("default/web", PODS["10.244.0.4"], "10.244.0.4") in titles
    assert db.edge_title("default/web", None, "10.244.7.7") in titles
    api = {**sl, "endpoints": [{"addresses": ["10.0.0.2"]}]}
    svg = gr.render(gr.lab_graph([node], [pod], [svc("web")], [api]), "svg").decode()
    titles = {html.unescape(t) for t in re.findall(r"<title>(.*?)</title>", svg)}
    assert db.edge_title("default/web", None, "10.0.0.2", db.node_addresses([node])) in titles


@pytest.mark.parametrize("form, field", [
    ({"src": "-n", "dst": "svc/web"}, "src"),
    ({"src": "client", "dst": "svc/web;reboot"}, "dst"),
    ({"src": "client", "dst": ""}, "dst"),
    ({"src": "client", "dst": "svc/web", "proto": "icmp"}, "proto"),
    ({"src": "client", "dst": "svc/web", "namespace": "Kube_System"}, "namespace"),
])
def test_the_trace_form_is_checked_field_by_field(form, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        db.Tracer.argv(form)


def test_the_trace_command_puts_src_and_dst_after_double_dash():
    argv = db.Tracer.argv({"src": "client", "dst": "svc/web:80", "proto": "udp", "namespace": ""})
    assert argv[:5] == ["trace", "--proto", "udp", "-n", "default"]
    assert argv[5:] == ["--", *["client", "svc/web:80"]]


class FakeSampler:
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'></svg>"

    def sample(self):
        return {"time": "t", "nodes": ["node-1"], "picture": "k", "errors": [], "services": []}


class FakeTracer:
    def __init__(self):
        self.forms = []

    def run(self, form):
        self.forms.append(form)
        return 200, {"command": "kproxy trace", "rc": 0, "output": "walk"}


@pytest.fixture
def served():
    tracer = FakeTracer()
    srv = db.make_server("127.0.0.1", 0, FakeSampler(), tracer)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv.server_address[1], tracer
    srv.shutdown()
    srv.server_close()


def ask(port, method="GET", path="/", body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r, data


def test_the_page_script_and_counters_are_served_with_a_strict_policy(served):
    port, _ = served
    r, page = ask(port)
    assert r.status == 200 and b'<script src="/app.js"' in page and b'id="trace-form"' in page
    assert r.getheader("Content-Security-Policy").startswith("default-src 'self'")
    assert b"<script>" not in page and b"style=" not in page  # nothing inline: the policy would block it
    r, js = ask(port, path="/app.js")
    assert r.status == 200 and b"/api/counters" in js and r.getheader("Content-Type").startswith("text/javascript")
    r, doc = ask(port, path="/api/counters")
    assert r.status == 200 and json.loads(doc)["nodes"] == ["node-1"]
    r, svg = ask(port, path="/lab.svg?v=k")
    assert r.status == 200 and r.getheader("Content-Type") == "image/svg+xml" and svg.startswith(b"<svg")
    assert ask(port, path="/etc/passwd")[0].status == 404


def test_a_foreign_host_name_is_refused(served):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 gets nothing."""
    port, _ = served
    r, body = ask(port, path="/api/counters", headers={"Host": f"evil.example:{port}"})
    assert r.status == 421 and b"127.0.0.1" in body
    assert ask(port, path="/", headers={"Host": f"localhost:{port}"})[0].status == 200


def test_a_trace_needs_the_pages_json_post(served):
    """A cross-site form can post text/plain or a form, never a custom header without a preflight."""
    port, tracer = served
    form = json.dumps({"src": "client", "dst": "svc/web"})
    assert ask(port, "POST", "/api/trace", form, {"Content-Type": "application/json"})[0].status == 403
    assert ask(port, "POST", "/api/trace", form, {"Content-Type": "text/plain",
                                                  "X-Kproxy-Dashboard": "trace"})[0].status == 403
    assert tracer.forms == []
    hdrs = {"Content-Type": "application/json", "X-Kproxy-Dashboard": "trace"}
    assert ask(port, "POST", "/api/trace", "[1]", hdrs)[0].status == 400
    r, body = ask(port, "POST", "/api/trace", form, hdrs)
    assert r.status == 200 and json.loads(body)["output"] == "walk"
    assert tracer.forms == [{"src": "client", "dst": "svc/web"}]


def test_the_tracer_refuses_a_second_trace_while_one_runs():
    tracer = db.Tracer("/nonexistent")
    tracer.lock.acquire()
    try:
        assert tracer.run({"src": "client", "dst": "svc/web"})[0] == 409
    finally:
        tracer.lock.release()
    assert tracer.run({"src": "-x", "dst": "svc/web"})[0] == 422


def test_loopback_is_told_apart():
    assert db.is_loopback("127.0.0.1") and db.is_loopback("127.8.0.1") and db.is_loopback("localhost")
    assert not db.is_loopback("0.0.0.0") and not db.is_loopback("192.168.1.5")


def test_serve_stops_on_sigterm_and_closes_its_socket():
    srv = db.make_server("127.0.0.1", 0, FakeSampler(), FakeTracer())
    said, before = [], signal.getsignal(signal.SIGTERM)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    db.serve(srv, said.append)
    assert srv.socket.fileno() == -1 and said[0].startswith("kproxy dashboard on http://127.0.0.1:")
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


class FakeStore:
    def __init__(self, objs: dict[str, list[dict]]):
        from kproxy.store.base import kind_prefix
        self.by_prefix = {kind_prefix(k): v for k, v in objs.items()}

    def values(self, prefix):
        return self.by_prefix.get(prefix, [])


def test_the_sampler_reads_once_per_second_draws_once_and_says_what_failed(tmp_path):
    if not shutil.which("dot"):
        pytest.skip("Graphviz's dot is not installed (scripts/setup)")
    node = {"metadata": {"name": "node-1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}
    calls = []

    def nodes():
        calls.append(1)
        return [("node-x", "kp-no-such-netns-for-this-test")]  # `ip netns exec` fails: nothing is touched

    sampler = db.Sampler(FakeStore({"Node": [node], "Service": [svc("web")]}), nodes, "10.0.0.100")
    doc = sampler.sample()
    assert sampler.sample() is doc and len(calls) == 1  # a second poller within the second gets the same
    assert [s["service"] for s in doc["services"]] == ["default/web"] and doc["nodes"] == []
    assert doc["errors"] and doc["errors"][0].startswith("node node-x: iptables-save failed")
    assert sampler.svg.lstrip().startswith(b"<?xml") and b"svc web" in sampler.svg and doc["picture"]
    svg, sampler.at = sampler.svg, 0.0
    assert sampler.sample()["picture"] == doc["picture"] and sampler.svg is svg  # same lab: not drawn again


def test_a_failed_request_is_one_log_line_not_a_traceback(caplog):
    srv = db.make_server("127.0.0.1", 0, FakeSampler(), FakeTracer())
    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            srv.handle_error(None, ("127.0.0.1", 5555))
    finally:
        srv.server_close()
    assert [r.getMessage() for r in caplog.records] == ["dashboard: a request from 127.0.0.1 failed: [Errno 32] "
                                                        "Broken pipe"]
