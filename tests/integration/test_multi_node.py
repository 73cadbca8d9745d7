"""Three emulated nodes (`kproxy up --sandbox --nodes 3`): etcd, a controller, an agent per node.

Real packets between node namespaces on the lab switch: pods reach pods on other nodes through
a ClusterIP (host-gw routes), `outside` reaches NodePorts on every node, ETP Local answers only
where an endpoint lives; an agent killed with SIGKILL loses its endpoints within 15 s and gets
them back when it restarts; etcd restarts lose nothing; two controllers never hand out one IP.
"""
from __future__ import annotations

import calendar
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kproxy.cluster import lab as cluster
from kproxy.teardown import kill_pids

from .conftest import hits

LAB_UP_ARGS = ("--nodes", "3")
NODES = {"node-1": "192.168.49.2", "node-2": "192.168.49.3", "node-3": "192.168.49.4"}
OUTSIDE_IP = "192.168.49.100"

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: kproxy/podserver, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-node}
spec:
  internalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 1
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      containers: [{name: solo, image: kproxy/podserver, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: solo}
  ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
"""

# From `outside`: N fresh connections to URL; each answer's pod name and the client it saw.
OUTSIDE_HITS = r"""
import json, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(n):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            words = r.read().decode().split()
            out.append([words[1], words[-1].rsplit(":", 1)[0]])
    except Exception as e:
        out.append(["ERR:" + type(e).__name__, ""])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def app(lab):
    lab.apply(APP)
    return lab


def from_outside(lab, url: str, n: int) -> list[list[str]]:
    res = subprocess.run(["ip", "netns", "exec", lab.cfg.naming.outside_netns, sys.executable, "-c",
                          OUTSIDE_HITS, url, str(n)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(res.stdout)


def pod_nodes(lab, app_label: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in lab.ready_pods(app_label)}


def endpoint_nodes(lab, service: str) -> collections.Counter:
    """Ready endpoints of a Service's slices, counted by node."""
    slices = lab.get("endpointslices")["items"]
    return collections.Counter(e.get("nodeName") for s in slices
                               if s["metadata"]["labels"].get("kubernetes.io/service-name") == service
                               for e in s.get("endpoints", []) if e.get("conditions", {}).get("ready"))


def test_nodes_have_their_addresses_and_pod_cidrs(lab):
    nodes = {n["metadata"]["name"]: n for n in lab.get("nodes")["items"]}
    assert sorted(nodes) == sorted(NODES)
    for i, (name, ip) in enumerate(sorted(NODES.items()), start=1):
        node = nodes[name]
        assert {"type": "InternalIP", "address": ip} in node["status"]["addresses"]
        assert node["spec"]["podCIDR"] == f"10.244.{i}.0/24"
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    wide = lab.kproxy("get", "nodes", "-o", "wide").stdout
    assert "192.168.49.3" in wide and "10.244.3.0/24" in wide
    # each node's own iptables: the same Service chains in every node's namespace
    saves = [subprocess.run(["ip", "netns", "exec", lab.cfg.naming.for_node(i).node_netns, "iptables-save"],
                            capture_output=True, text=True, check=True).stdout for i in (1, 2, 3)]
    assert all(":KUBE-SERVICES" in s and "kube-system/kube-dns:dns cluster IP" in s for s in saves)


def test_a_deployment_spreads_over_the_nodes(app):
    nodes = pod_nodes(app, "web")
    assert len(nodes) == 6
    assert collections.Counter(nodes.values()) == {"node-1": 2, "node-2": 2, "node-3": 2}
    for p in app.ready_pods("web"):  # each pod's IP comes from its node's pod CIDR
        index = p["spec"]["nodeName"].split("-")[1]
        assert p["status"]["podIP"].startswith(f"10.244.{index}.")
    assert "NODE" in app.kproxy("get", "pods", "-o", "wide").stdout.splitlines()[0]


def test_a_pod_reaches_pods_on_every_node_through_a_cluster_ip(app):
    nodes = pod_nodes(app, "web")
    client = next(name for name, node in sorted(nodes.items()) if node == "node-1")
    ip = app.get("svc", "web")["spec"]["clusterIP"]
    answers = hits(app, client, f"http://{ip}/", 60)
    assert not [a for a in answers if a.startswith("ERR")], answers
    assert {nodes[a] for a in answers} == {"node-1", "node-2", "node-3"}


def test_internal_traffic_policy_local_keeps_traffic_on_the_node(app):
    nodes = pod_nodes(app, "web")
    client = next(name for name, node in sorted(nodes.items()) if node == "node-2")
    ip = app.get("svc", "web-node")["spec"]["clusterIP"]
    answers = hits(app, client, f"http://{ip}/", 20)
    assert {nodes.get(a) for a in answers} == {"node-2"}, answers


def test_outside_reaches_the_node_port_through_every_node(app):
    nodes = pod_nodes(app, "web")
    for node, ip in NODES.items():
        answers = from_outside(app, f"http://{ip}:30080/", 12)
        assert not [a for a in answers if a[0].startswith("ERR")], (node, answers)
        # cluster policy: masqueraded, so a pod sees the node that forwarded the connection
        # (its lab address, or its bridge address when the pod is on that node)
        gateway = f"10.244.{node.split('-')[1]}.1"
        assert {client for _, client in answers} <= {ip, gateway}
        assert len({nodes[pod] for pod, _ in answers}) >= 2  # not only the node's own pods


def test_external_traffic_policy_local_answers_only_where_an_endpoint_lives(app):
    (solo_pod, solo_node), = pod_nodes(app, "solo").items()
    for node, ip in NODES.items():
        answers = from_outside(app, f"http://{ip}:30081/", 3)
        if node == solo_node:
            assert answers == [[solo_pod, OUTSIDE_IP]] * 3  # the client's own address
        else:
            assert all(a[0] == "ERR:URLError" or a[0].startswith("ERR") for a in answers), (node, answers)


def test_dns_answers_the_same_on_every_node(app):
    nodes = pod_nodes(app, "web")
    ip = app.get("svc", "web")["spec"]["clusterIP"]
    for node in NODES:
        pod = next(name for name, n in sorted(nodes.items()) if n == node)
        res = app.exec(pod, "dig", "+short", "+time=2", "web.default.svc.cluster.local")
        assert res.stdout.split() == [ip], (node, res.stdout, res.stderr)


def test_killed_agent_loses_its_endpoints_and_gets_them_back(app):
    state = Path(app.state_dir)
    pid = int((state / "nodes" / "node-2" / "daemon.pid").read_text())
    assert endpoint_nodes(app, "web")["node-2"] == 2
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    app.wait_for(lambda: endpoint_nodes(app, "web")["node-2"] == 0, timeout=15, interval=0.5)
    removed_after = time.monotonic() - killed
    print(f"endpoints of node-2 removed {removed_after:.1f} s after its agent was killed")
    node2 = next(n for n in app.get("nodes")["items"] if n["metadata"]["name"] == "node-2")
    assert not any(c["type"] == "Ready" and c["status"] == "True" for c in node2["status"]["conditions"])
    # traffic keeps flowing, to the pods of the other nodes
    answers = from_outside(app, f"http://{NODES['node-1']}:30080/", 20)
    nodes = pod_nodes(app, "web")
    assert not [a for a in answers if a[0].startswith("ERR")], answers
    assert {nodes[a[0]] for a in answers} <= {"node-1", "node-3"}
    cluster.start_agent(app.cfg, 2)  # as systemd would restart it
    app.wait_for(lambda: endpoint_nodes(app, "web")["node-2"] == 2, timeout=30, interval=0.5)
    answers = from_outside(app, f"http://{NODES['node-3']}:30080/", 40)
    assert "node-2" in {pod_nodes(app, "web").get(a[0]) for a in answers}


LB = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lab, namespace: metallb-system}
spec:
  addresses: [192.168.49.240-192.168.49.250]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lab, namespace: metallb-system}
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def lab_mac(lab, index: int) -> str:
    naming = lab.cfg.naming.for_node(index)
    return subprocess.run(["ip", "netns", "exec", naming.node_netns, "cat", f"/sys/class/net/{naming.lab_link}/address"],
                          capture_output=True, text=True, check=True).stdout.strip()


def answered_by_mac(lab, ip: str) -> str | None:
    """Forget the neighbour, fetch through the LB IP, and say which MAC answered ARP for it."""
    outside = lab.cfg.naming.outside_netns
    subprocess.run(["ip", "netns", "exec", outside, "ip", "neigh", "flush", "all"], check=True)
    if from_outside(lab, f"http://{ip}/", 1)[0][0].startswith("ERR"):
        return None
    neigh = subprocess.run(["ip", "netns", "exec", outside, "ip", "neigh", "show", ip],
                           capture_output=True, text=True).stdout.split()
    return neigh[neigh.index("lladdr") + 1] if "lladdr" in neigh else None


def test_the_load_balancer_ip_moves_when_its_node_goes(app):
    app.apply(LB)
    ip = app.wait_for(lambda: app.get("svc", "web-lb").get("status", {}).get("loadBalancer", {}).get("ingress"))[0]["ip"]
    macs = {i: lab_mac(app, i) for i in (1, 2, 3)}
    speaker = app.wait_for(lambda: answered_by_mac(app, ip), timeout=10)
    index = next(i for i, mac in macs.items() if mac == speaker)  # exactly one node answers
    pid = int((Path(app.state_dir) / "nodes" / f"node-{index}" / "daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        moved = app.wait_for(lambda: (m := answered_by_mac(app, ip)) not in (None, speaker) and m, timeout=20,
                             interval=0.5)
        assert moved in macs.values()
    finally:
        cluster.start_agent(app.cfg, index)
    app.wait_for(lambda: all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                             for n in app.get("nodes")["items"]), timeout=20)


def test_etcd_restart_loses_nothing(app):
    before = {s["metadata"]["name"]: (s["spec"]["clusterIP"], [p.get("nodePort") for p in s["spec"]["ports"]])
              for s in app.get("svc")["items"]}
    pods = {p["metadata"]["name"]: (p["spec"]["nodeName"], p["status"]["podIP"]) for p in app.get("pods")["items"]}
    etcd = int((Path(app.state_dir) / "etcd.pid").read_text())
    kill_pids([etcd])
    time.sleep(3)  # everything keeps serving from its own rules meanwhile
    answers = from_outside(app, f"http://{NODES['node-2']}:30080/", 5)
    assert not [a for a in answers if a[0].startswith("ERR")]
    cluster.start_etcd(app.cfg)
    cluster.wait_for_etcd(app.cfg)
    after = {s["metadata"]["name"]: (s["spec"]["clusterIP"], [p.get("nodePort") for p in s["spec"]["ports"]])
             for s in app.get("svc")["items"]}
    assert after == before
    assert {p["metadata"]["name"]: (p["spec"]["nodeName"], p["status"]["podIP"])
            for p in app.get("pods")["items"]} == pods
    # and the cluster goes on: a new Service gets its own ClusterIP and serves
    app.apply("""
apiVersion: v1
kind: Service
metadata: {name: after-restart}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
""")
    ip = app.get("svc", "after-restart")["spec"]["clusterIP"]
    assert ip not in {v[0] for v in before.values()}
    client = sorted(pod_nodes(app, "web"))[0]
    assert not [a for a in hits(app, client, f"http://{ip}/", 6) if a.startswith("ERR")]
    app.wait_for(lambda: all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                             for n in app.get("nodes")["items"]), timeout=20)


SERVICE = """---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{port: 80}}]
"""


def test_two_controllers_racing_never_hand_out_one_cluster_ip(app):
    """A second controller on the same etcd admits its own folder while the first admits
    another: every Service gets a ClusterIP, and no two the same."""
    second = Path(tempfile.mkdtemp(prefix="kp-ctl-", dir="/tmp"))
    (second / "manifests").mkdir()
    ns = app.cfg.naming.for_node(1).node_netns
    argv = ["ip", "netns", "exec", ns, str(Path(sys.executable).with_name("kproxy")), "controller",
            "--state-dir", str(second), "--store", app.cfg.store_url, "--manifests", str(second / "manifests"),
            "--store-ca", app.cfg.store_ca, "--store-cert", app.cfg.store_cert, "--store-key", app.cfg.store_key,
            "--name", "controller-b", "--node-ip", NODES["node-1"]]
    with open(second / "controller.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(2)  # it is up and watching
        (second / "manifests" / "race.yaml").write_text("".join(SERVICE.format(name=f"race-b-{i}") for i in range(40)))
        (app.manifests / "race.yaml").write_text("".join(SERVICE.format(name=f"race-a-{i}") for i in range(40)))

        def admitted():
            items = [s for s in app.get("svc")["items"] if s["metadata"]["name"].startswith("race-")]
            return items if len(items) == 80 and all(s["spec"].get("clusterIP") for s in items) else None
        try:
            items = app.wait_for(admitted, timeout=60, interval=0.5)
        except AssertionError:
            names = {s["metadata"]["name"]: s["spec"].get("clusterIP") for s in app.get("svc")["items"]}
            raise AssertionError(f"not admitted: {sorted(n for n in names if n.startswith('race-'))}\n"
                                 + (second / "controller.log").read_text()[-3000:]
                                 + (Path(app.state_dir) / "daemon.log").read_text()[-3000:]) from None
        ips = [s["spec"]["clusterIP"] for s in items]
        assert len(set(ips)) == 80, collections.Counter(ips).most_common(3)
        assert proc.poll() is None, (second / "controller.log").read_text()[-2000:]
    finally:
        kill_pids([proc.pid])
        (app.manifests / "race.yaml").unlink(missing_ok=True)
        shutil.rmtree(second, ignore_errors=True)


def test_node_leases_are_renewed(app):
    """Each node's Lease (kube-node-lease/<node>) is renewed like the kubelet's: its renewTime
    stays recent however long the lab has run (the first test started it a minute or more ago)."""
    store = cluster.lab_store(app.cfg)
    for node in NODES:
        lease = store.get(f"/registry/leases/kube-node-lease/{node}")
        assert lease["spec"]["holderIdentity"] == node
        renewed = calendar.timegm(time.strptime(lease["spec"]["renewTime"], "%Y-%m-%dT%H:%M:%SZ"))
        assert time.time() - renewed < 16, (node, lease["spec"]["renewTime"])
    table = app.kproxy("get", "leases", "-n", "kube-node-lease").stdout.splitlines()
    assert table[0].split() == ["NAME", "HOLDER", "AGE"]
    assert sorted(line.split()[:2] for line in table[1:]) == [[n, n] for n in sorted(NODES)]
    assert "kproxy-controller" in app.kproxy("get", "leases", "-A").stdout
