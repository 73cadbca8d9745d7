"""table.py: the meta.k8s.io/v1 Table the API server answers `as=Table` with — and what the real
kubectl prints from it.

Columns and cells are upstream's printers' (pkg/printers/internalversion/printers.go: names,
types, priority 1 for `-o wide`, every cell present since the server prints wide); the last tests
serve these Tables to /usr/bin/kubectl (v1.32) from a stub on 127.0.0.1 and compare what it
prints with kproxy get's own rendering of the same objects (kproxy/tables.py): one
implementation, two consumers, same text.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kproxy import tables
from kproxy.apiserver.table import to_table

CREATED = "2024-05-01T12:00:00Z"
T0 = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0))


@pytest.fixture
def now(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: T0 + 600)


def svc(name, **spec):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": CREATED, "uid": f"u-{name}",
                         "resourceVersion": "11"},
            "spec": spec}


SERVICES = [svc("web", type="NodePort", clusterIP="10.96.12.34", clusterIPs=["10.96.12.34"],
                selector={"tier": "front", "app": "web"},
                ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]),
            svc("lb", type="LoadBalancer", clusterIP="10.96.0.7", ports=[{"port": 80, "nodePort": 31000, "protocol": "TCP"}])]
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": CREATED},
       "spec": {"containers": [{"name": "web"}], "nodeName": "node-1"},
       "status": {"phase": "Running", "podIP": "10.244.0.2", "podIPs": [{"ip": "10.244.0.2"}],
                  "conditions": [{"type": "Ready", "status": "True"}],
                  "containerStatuses": [{"name": "web", "ready": True, "restartCount": 1, "state": {"running": {}}}]}}
DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment",
          "metadata": {"name": "web", "namespace": "default", "creationTimestamp": CREATED},
          "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                   "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1"},
                                                        {"name": "log", "image": "busybox"}]}}},
          "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}


def names(t):
    return [(c["name"], c["type"], c["format"], c["priority"]) for c in t["columnDefinitions"]]


def test_service_table(now):
    t = to_table("Service", SERVICES)
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert names(t) == [("Name", "string", "name", 0), ("Type", "string", "", 0), ("Cluster-IP", "string", "", 0),
                        ("External-IP", "string", "", 0), ("Port(s)", "string", "", 0), ("Age", "string", "", 0),
                        ("Selector", "string", "", 1)]
    assert t["columnDefinitions"][2]["description"].startswith("clusterIP is the IP address of the service")
    assert [r["cells"] for r in t["rows"]] == [
        ["web", "NodePort", "10.96.12.34", "<none>", "80:30080/TCP,443/TCP", "10m", "app=web,tier=front"],
        ["lb", "LoadBalancer", "10.96.0.7", "<pending>", "80:31000/TCP", "10m", "<none>"]]
    assert t["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                      "metadata": SERVICES[0]["metadata"]}


def test_include_object(now):
    assert to_table("Service", SERVICES, "None")["rows"][0]["object"] is None
    assert to_table("Service", SERVICES, "Object")["rows"][0]["object"] == SERVICES[0]
    with pytest.raises(ValueError):
        to_table("Service", SERVICES, "Everything")
    assert to_table("Service", [], resource_version="42")["metadata"] == {"resourceVersion": "42"}


def test_pod_table(now):
    t = to_table("Pod", [POD, {**POD, "status": {**POD["status"], "phase": "Succeeded"}}])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node",
                                                          "Nominated Node", "Readiness Gates"]
    assert [c["priority"] for c in t["columnDefinitions"]] == [0] * 5 + [1] * 4
    assert t["rows"][0]["cells"] == ["web-1", "1/1", "Running", "1", "10m", "10.244.0.2", "node-1", "<none>", "<none>"]
    assert "conditions" not in t["rows"][0]
    assert t["rows"][1]["conditions"] == [{"type": "Completed", "status": "True", "reason": "Succeeded",
                                           "message": "The pod has completed successfully."}]


def test_restarts_say_when_the_last_one_ended(now):
    p = {**POD, "status": {**POD["status"], "containerStatuses": [
        {"name": "web", "ready": True, "restartCount": 2, "state": {"running": {}},
         "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T12:05:00Z"}}}]}}
    assert to_table("Pod", [p])["rows"][0]["cells"][3] == "2 (5m ago)"


def test_deployment_table_has_integer_cells(now):
    t = to_table("Deployment", [DEPLOY])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Ready", "Up-to-date", "Available", "Age",
                                                          "Containers", "Images", "Selector"]
    assert t["rows"][0]["cells"] == ["web", "2/3", 3, 2, "10m", "web,log", "nginx:1,busybox", "app=web"]


def test_events_wide_cells_follow_the_column_order(now):
    ev = {"metadata": {"name": "web.1", "namespace": "default"}, "type": "Normal", "reason": "Scaled",
          "message": " scaled up \n", "count": 2, "firstTimestamp": CREATED, "lastTimestamp": CREATED,
          "involvedObject": {"kind": "Deployment", "name": "web"}, "source": {"component": "deployment-controller"}}
    t = to_table("Event", [ev])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Last Seen", "Type", "Reason", "Object", "Subobject",
                                                          "Source", "Message", "First Seen", "Count", "Name"]
    assert t["rows"][0]["cells"] == ["10m", "Normal", "Scaled", "deployment/web", "", "deployment-controller",
                                     "scaled up", "10m", 2, "web.1"]
    assert tables.render("Event", [ev]).splitlines()[1].split() == ["10m", "Normal", "Scaled", "deployment/web",
                                                                    "scaled", "up"]


def test_events_k8s_io_events_print_like_core_ones(now):
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "web.2", "namespace": "default"},
          "eventTime": "2024-05-01T12:00:00.000000Z", "reportingController": "kproxy", "reportingInstance": "node-1",
          "action": "Scale", "reason": "Scaled", "note": "scaled down", "type": "Normal",
          "regarding": {"kind": "Deployment", "name": "web"}}
    assert to_table("Event", [ev])["rows"][0]["cells"] == ["10m", "Normal", "Scaled", "deployment/web", "",
                                                           "kproxy, node-1", "scaled down", "10m", 1, "web.2"]


def test_metallb_pool_uses_the_crd_printer_columns():
    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "lab", "namespace": "metallb-system", "creationTimestamp": CREATED},
            "spec": {"addresses": ["192.168.49.200-192.168.49.250"], "autoAssign": True}}
    t = to_table("IPAddressPool", [pool])
    assert names(t) == [("Name", "string", "name", 0), ("Auto Assign", "boolean", "", 0),
                        ("Avoid Buggy IPs", "boolean", "", 0), ("Addresses", "string", "", 0)]
    assert t["rows"][0]["cells"] == ["lab", True, None, '["192.168.49.200-192.168.49.250"]']
    l2 = to_table("L2Advertisement", [{"metadata": {"name": "l2"}, "spec": {"ipAddressPools": ["lab"]}}])
    assert l2["rows"][0]["cells"] == ["l2", '["lab"]', None, None, None]
    assert l2["columnDefinitions"][-1]["priority"] == 10


def test_unknown_kind_gets_name_and_age(now):
    t = to_table("Widget", [{"metadata": {"name": "w", "creationTimestamp": CREATED}}])
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Age"] and t["rows"][0]["cells"] == ["w", "10m"]


# ------------------------------------------------------------------ the real kubectl prints these Tables

KUBECTL = shutil.which("kubectl")


class _Stub(BaseHTTPRequestHandler):
    """Discovery for services/pods/deployments, and their lists answered as Tables."""
    lists: dict = {}
    accepts: list = []

    def log_message(self, *a):
        pass

    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        res = lambda n, k: {"name": n, "singularName": k.lower(), "namespaced": True, "kind": k,  # noqa: E731
                            "verbs": ["get", "list"]}
        if path == "/api":
            return self._send({"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            return self._send({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
                {"name": "metallb.io", "versions": [{"groupVersion": "metallb.io/v1beta1", "version": "v1beta1"}],
                 "preferredVersion": {"groupVersion": "metallb.io/v1beta1", "version": "v1beta1"}}]})
        if path == "/api/v1":
            return self._send({"kind": "APIResourceList", "groupVersion": "v1",
                               "resources": [res("services", "Service"), res("pods", "Pod"),
                                             {**res("nodes", "Node"), "namespaced": False},
                                             res("events", "Event")]})
        if path == "/apis/metallb.io/v1beta1":
            return self._send({"kind": "APIResourceList", "groupVersion": "metallb.io/v1beta1",
                               "resources": [res("ipaddresspools", "IPAddressPool")]})
        if path == "/apis/apps/v1":
            return self._send({"kind": "APIResourceList", "groupVersion": "apps/v1",
                               "resources": [res("deployments", "Deployment")]})
        kind = {"services": "Service", "pods": "Pod", "deployments": "Deployment", "nodes": "Node",
                "events": "Event", "ipaddresspools": "IPAddressPool"}.get(path.rsplit("/", 1)[1])
        if kind is None:  # /version and the like: a 404 kubectl shrugs off
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.accepts.append(self.headers.get("Accept", ""))
        self._send(to_table(kind, self.lists[kind]))


@pytest.fixture
def kubectl(tmp_path, now):
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: these tests check what the real kubectl prints")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                               "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                               "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                               "users": [{"name": "u", "user": {"token": "t"}}]}))
    env = {**os.environ, "KUBECONFIG": str(cfg), "HOME": str(tmp_path)}

    def run(*args):
        res = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.rstrip("\n")
    yield run
    server.shutdown()


@pytest.mark.parametrize("kind, word, items", [("Service", "services", SERVICES), ("Pod", "pods", [POD]),
                                               ("Deployment", "deployments", [DEPLOY])])
@pytest.mark.parametrize("wide", [False, True])
def test_kubectl_prints_what_kproxy_get_prints(kubectl, kind, word, items, wide):
    _Stub.lists = {kind: items}
    got = kubectl("get", word, *(["-o", "wide"] if wide else []))
    want = tables.render(kind, [{**o, "metadata": {**o["metadata"], "namespace": ""}} for o in items], wide=wide)
    order = [o["metadata"]["name"] for o in items]  # kubectl keeps the server's order, render sorts by name
    lines = want.splitlines()
    want_rows = sorted(lines[1:], key=lambda line: order.index(line.split()[0]))
    assert [r.split() for r in got.splitlines()] == [r.split() for r in [lines[0]] + want_rows]
    assert "as=Table;v=v1;g=meta.k8s.io" in _Stub.accepts[-1]


NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "creationTimestamp": CREATED,
                                                         "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]}}
EVENT = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "default"},
         "type": "Normal", "reason": "ScalingReplicaSet", "message": "Scaled up replica set web-1 to 2",
         "firstTimestamp": CREATED, "lastTimestamp": CREATED, "count": 1,
         "involvedObject": {"kind": "Deployment", "name": "web"}, "source": {"component": "deployment-controller"}}
POOL = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
        "metadata": {"name": "lab", "namespace": "metallb-system", "creationTimestamp": CREATED},
        "spec": {"addresses": ["192.168.49.200-192.168.49.250"], "autoAssign": True}}


@pytest.mark.parametrize("word, kind, obj, wide, want", [
    ("nodes", "Node", NODE, False, [["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
                                    ["node-1", "Ready", "control-plane", "10m", tables.NODE_VERSION]]),
    ("nodes", "Node", NODE, True, [["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                                    "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"],
                                   ["node-1", "Ready", "control-plane", "10m", tables.NODE_VERSION, "192.168.49.2",
                                    "<none>", "<unknown>", "<unknown>", "<unknown>"]]),
    ("events", "Event", EVENT, False, [["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
                                       ["10m", "Normal", "ScalingReplicaSet", "deployment/web", "Scaled", "up",
                                        "replica", "set", "web-1", "to", "2"]]),
    ("ipaddresspools", "IPAddressPool", POOL, False, [["NAME", "AUTO", "ASSIGN", "AVOID", "BUGGY", "IPS", "ADDRESSES"],
                                                      ["lab", "true", '["192.168.49.200-192.168.49.250"]']]),
])
def test_kubectl_prints_other_kinds(kubectl, word, kind, obj, wide, want):
    """Cluster-scoped nodes, events (wide cells in column order), a CRD's columns with a null cell."""
    _Stub.lists = {kind: [obj]}
    got = kubectl("get", word, *(["-o", "wide"] if wide else []))
    assert [line.split() for line in got.splitlines()] == want
    if kind != "Node":  # kproxy get adds POD-CIDR to nodes' wide table
        assert got.splitlines()[0].split() == tables.render(kind, [obj], wide=wide).splitlines()[0].split()
        assert got.splitlines()[1].split() == tables.render(kind, [obj], wide=wide).splitlines()[1].split()


@pytest.mark.parametrize("status, deleted, want", [
    # a sidecar that exited 0 next to a running container: Running (NotReady when the pod is not Ready)
    ({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
      "containerStatuses": [{"ready": True, "state": {"running": {}}},
                            {"ready": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]},
     False, "Running"),
    ({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
      "containerStatuses": [{"ready": True, "state": {"running": {}}},
                            {"ready": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]},
     False, "NotReady"),
    # the first container's state wins, as the printer walks them backwards
    ({"phase": "Running", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                                                {"state": {"waiting": {"reason": "ContainerCreating"}}}]},
     False, "CrashLoopBackOff"),
    ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
     False, "OOMKilled"),
    ({"phase": "Failed", "reason": "Evicted", "containerStatuses": []}, False, "Evicted"),
    ({"phase": "Running", "reason": "NodeLost", "containerStatuses": []}, True, "Unknown"),
])
def test_pod_status_follows_the_pod_printer(status, deleted, want):
    pod = {"metadata": {"name": "p", **({"deletionTimestamp": CREATED} if deleted else {})}, "status": status}
    assert tables.pod_status(pod) == want
