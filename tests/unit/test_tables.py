"""kubectl-style tables (tables.py): headers, cells, `-A`, and kubectl's HumanDuration ages.

Time is frozen by patching `time.time` so every AGE is exact.
"""

from __future__ import annotations

import calendar
import re
import time

import pytest

from kproxy import tables

CREATED = "2024-05-01T12:00:00Z"
T0 = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0))


@pytest.fixture
def now(monkeypatch):
    """Set the clock to CREATED + `seconds`."""
    def set_age(seconds: int):
        monkeypatch.setattr(time, "time", lambda: T0 + seconds)
    set_age(600)
    return set_age


def lines(text):
    return text.split("\n")


def cells(line):
    return line.split()


def service(name, ns="default", **spec):
    spec.setdefault("type", "ClusterIP")
    status = spec.pop("status", None)
    o = {"metadata": {"name": name, "namespace": ns, "creationTimestamp": CREATED}, "spec": spec}
    if status is not None:
        o["status"] = status
    return o


def pod(name, ns="default", ready=(True,), terminating=False, restarts=0, phase="Running", **status):
    o = {"metadata": {"name": name, "namespace": ns, "creationTimestamp": CREATED},
         "spec": {"containers": [{"name": f"c{i}"} for i in range(len(ready))], "nodeName": "node-1"},
         "status": {"phase": phase, "podIP": "10.244.0.2",
                    "containerStatuses": [{"ready": r, "restartCount": restarts} for r in ready], **status}}
    if terminating:
        o["metadata"]["deletionTimestamp"] = CREATED
    return o


# ------------------------------------------------------------------ age


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (310, "5m10s"), (599, "9m59s"), (600, "10m"),
    (900, "15m"), (179 * 60 + 59, "179m"), (3 * 3600, "3h"), (3 * 3600 + 20 * 60, "3h20m"),
    (7 * 3600 + 59 * 60, "7h59m"), (8 * 3600 + 30 * 60, "8h"), (30 * 3600, "30h"), (47 * 3600, "47h"),
    (48 * 3600, "2d"), (3 * 86400 + 4 * 3600, "3d4h"), (7 * 86400 + 23 * 3600, "7d23h"), (8 * 86400 + 5 * 3600, "8d"),
    (10 * 86400, "10d"), (400 * 86400, "400d"),
])
def test_age_like_kubectl(now, seconds, text):
    now(seconds)
    assert tables.age(CREATED) == text


def test_age_in_the_future_is_zero(now):
    now(-30)
    assert tables.age(CREATED) == "0s"


def test_age_unknown():
    assert tables.age(None) == "<unknown>"
    assert tables.age("") == "<unknown>"


@pytest.mark.parametrize("days, text", [(800, "2y70d"), (365 * 9, "9y")])
def test_age_in_years_like_kubectl(now, days, text):
    now(days * 86400)
    assert tables.age(CREATED) == text


# ------------------------------------------------------------------ services


def test_service_table(now):
    items = [
        service("web", type="NodePort", clusterIP="10.96.12.34",
                ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]),
        service("lb", type="LoadBalancer", clusterIP="10.96.0.7", ports=[{"port": 80, "nodePort": 31000}],
                status={"loadBalancer": {}}),
        service("hl", clusterIP="None", ports=[{"port": 53, "protocol": "UDP"}]),
    ]
    assert tables.render("Service", items) == "\n".join([
        "NAME   TYPE           CLUSTER-IP    EXTERNAL-IP   PORT(S)                AGE",
        "hl     ClusterIP      None          <none>        53/UDP                 10m",
        "lb     LoadBalancer   10.96.0.7     <pending>     80:31000/TCP           10m",
        "web    NodePort       10.96.12.34   <none>        80:30080/TCP,443/TCP   10m",
    ])


def test_service_external_ip_column(now):
    def external(**spec):
        return cells(lines(tables.render("Service", [service("s", clusterIP="10.96.0.5", ports=[{"port": 80}],
                                                             **spec)]))[1])[3]
    assert external() == "<none>"
    assert external(type="NodePort") == "<none>"
    assert external(type="LoadBalancer") == "<pending>"
    assert external(type="LoadBalancer", status={"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}) \
        == "192.168.1.240"
    assert external(type="LoadBalancer", status={"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}) \
        == "lb.example"
    assert external(externalIPs=["203.0.113.5", "203.0.113.6"]) == "203.0.113.5,203.0.113.6"


def test_external_name_service_row(now):
    (_, row) = lines(tables.render("Service", [service("ext", type="ExternalName", externalName="example.com")]))
    assert cells(row) == ["ext", "ExternalName", "<none>", "example.com", "<none>", "10m"]


def test_service_wide_adds_selector(now):
    s = service("web", clusterIP="10.96.0.5", ports=[{"port": 80}], selector={"app": "web", "tier": "front"})
    header, row = lines(tables.render("Service", [s], wide=True))
    assert cells(header)[-1] == "SELECTOR"
    assert cells(row) == ["web", "ClusterIP", "10.96.0.5", "<none>", "80/TCP", "10m", "app=web,tier=front"]


def test_all_namespaces_adds_namespace_first_and_sorts_by_it(now):
    items = [service("b", "shop", clusterIP="10.96.0.6", ports=[{"port": 80}]),
             service("z", "default", clusterIP="10.96.0.7", ports=[{"port": 80}]),
             service("a", "shop", clusterIP="10.96.0.8", ports=[{"port": 80}])]
    out = lines(tables.render("Service", items, with_namespace=True))
    assert cells(out[0]) == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert [cells(r)[:2] for r in out[1:]] == [["default", "z"], ["shop", "a"], ["shop", "b"]]


# ------------------------------------------------------------------ pods


def test_pod_table(now):
    items = [pod("web-1"), pod("web-2", ready=(True, False), restarts=2), pod("web-0", terminating=True)]
    assert tables.render("Pod", items) == "\n".join([
        "NAME    READY   STATUS        RESTARTS   AGE",
        "web-0   1/1     Terminating   0          10m",
        "web-1   1/1     Running       0          10m",
        "web-2   1/2     Running       4          10m",
    ])


def test_pod_wide_columns(now):
    header, row = lines(tables.render("Pod", [pod("web-1")], wide=True))
    assert re.split(r"\s{2,}", header) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE",
                                           "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert cells(row) == ["web-1", "1/1", "Running", "0", "10m", "10.244.0.2", "node-1", "<none>", "<none>"]


@pytest.mark.parametrize("status, text", [
    ({"phase": "Pending", "containerStatuses": []}, "Pending"),
    ({"phase": "Succeeded", "containerStatuses": []}, "Completed"),
    ({"phase": "Failed", "containerStatuses": []}, "Error"),
    ({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
     "ContainerCreating"),
    ({"phase": "Running", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
     "CrashLoopBackOff"),
    ({"phase": "Running", "containerStatuses": [{"state": {"terminated": {"reason": "OOMKilled"}}}]},
     "OOMKilled"),
    ({"phase": "Running", "containerStatuses": [{"state": {"terminated": {"exitCode": 1}}}]}, "Error"),
])
def test_pod_status(status, text):
    assert tables.pod_status({"metadata": {}, "status": status}) == text


def test_terminating_wins_over_other_states():
    p = {"metadata": {"deletionTimestamp": CREATED},
         "status": {"phase": "Running", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    assert tables.pod_status(p) == "Terminating"


# ------------------------------------------------------------------ other kinds


def test_endpoints_table(now):
    ep = {"metadata": {"name": "web", "namespace": "default", "creationTimestamp": CREATED},
          "subsets": [{"addresses": [{"ip": f"10.244.0.{i}"} for i in range(2, 6)],
                       "notReadyAddresses": [{"ip": "10.244.0.9"}], "ports": [{"port": 8080}]}]}
    empty = {"metadata": {"name": "db", "namespace": "default", "creationTimestamp": CREATED}}
    assert tables.render("Endpoints", [ep, empty]) == "\n".join([
        "NAME   ENDPOINTS                                                     AGE",
        "db     <none>                                                        10m",
        "web    10.244.0.2:8080,10.244.0.3:8080,10.244.0.4:8080 + 1 more...   10m",
    ])


def test_deployment_table(now):
    d = {"metadata": {"name": "web", "namespace": "default", "creationTimestamp": CREATED},
         "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    assert lines(tables.render("Deployment", [d])) == [
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE",
        "web    2/3     3            2           10m",
    ]


def test_leases_show_their_holder():
    lease = {"kind": "Lease", "metadata": {"name": "node-2", "namespace": "kube-node-lease"},
             "spec": {"holderIdentity": "node-2", "leaseDurationSeconds": 6}}
    lines = tables.render("Lease", [lease]).splitlines()
    assert lines[0].split() == ["NAME", "HOLDER", "AGE"] and lines[1].split()[:2] == ["node-2", "node-2"]


def test_pod_ready_column_follows_the_ready_condition(now):
    """#13: a pod turned NotReady over its kubelet's report (terminating, node NotReady) said
    1/1 while its Ready condition was False; kubectl counts ready containers, and none is."""
    not_ready = [{"type": "Ready", "status": "False"}, {"type": "ContainersReady", "status": "False"}]
    gone = pod("web-0", terminating=True, conditions=not_ready)
    lost = pod("web-1", conditions=not_ready)
    half = pod("web-2", ready=(True, False), conditions=not_ready)  # kubectl's 1/2 stays 1/2
    fine = pod("web-3", conditions=[{"type": "Ready", "status": "True"}])
    rows = [cells(r)[:2] for r in lines(tables.render("Pod", [gone, lost, half, fine]))[1:]]
    assert rows == [["web-0", "0/1"], ["web-1", "0/1"], ["web-2", "1/2"], ["web-3", "1/1"]]
