"""kube-proxy features with real packets: session affinity, traffic policies, UDP endpoint
replacement, rules repaired after a flush, LoadBalancer source ranges, health and metrics."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from .conftest import hits

LAB_UP_ARGS = ("--iptables-sync-period", "2")
NODE_IP, OUTSIDE_IP = "192.168.49.2", "192.168.49.100"

BACKENDS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: be}
spec:
  replicas: 3
  selector: {matchLabels: {app: be}}
  template:
    metadata: {labels: {app: be}}
    spec:
      containers: [{name: be, image: x, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 5353, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"""

AFFINITY = """
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: be}
  sessionAffinity: %s
  ports: [{port: 80, targetPort: http}]
"""

LOCAL = """
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: be}
  ports: [{port: 80, targetPort: http}]
"""

ELSEWHERE = """
apiVersion: v1
kind: Service
metadata: {name: elsewhere}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: elsewhere-1, labels: {kubernetes.io/service-name: elsewhere}}
addressType: IPv4
ports: [{port: 80, protocol: TCP, name: ""}]
endpoints: [{addresses: [%s], nodeName: node-2}]
"""

UDP = """
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp}
  ports: [{port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: udp}
spec:
  replicas: 1
  selector: {matchLabels: {app: udp}}
  template:
    metadata: {labels: {app: udp}}
    spec:
      containers: [{name: u, image: x, ports: [{containerPort: 5353, protocol: UDP}, {containerPort: 80}]}]
"""

LB = """
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: be}
  loadBalancerSourceRanges: [192.168.49.100/32]
  ports: [{port: 80, targetPort: http}]
status:
  loadBalancer:
    ingress: [{ip: 192.168.49.200}]   # on the node network, as a MetalLB layer-2 pool hands out
"""

WHOAMI = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40000))   # one source port: the same conntrack entry each time
s.settimeout(1.0)
for _ in range(3):
    s.sendto(b"whoami", (sys.argv[1], 53))
    try:
        print(s.recv(100).decode().strip()); break
    except socket.timeout:
        pass
else:
    print("TIMEOUT")
"""


def svc(lab, name):
    return lab.get("svc", name)


def client_of(body: str) -> str:
    return re.search(r"client (\S+):\d+", body).group(1)


@pytest.fixture(scope="module")
def backends(lab):
    lab.apply(BACKENDS)
    return {p["metadata"]["name"] for p in lab.wait_for(lambda: len(lab.ready_pods("be")) == 3 and lab.ready_pods("be"))}


def test_client_ip_affinity_sticks_and_can_be_switched_off(lab, backends):
    lab.apply(AFFINITY % "ClientIP")
    url = f"http://{svc(lab, 'sticky')['spec']['clusterIP']}/"
    answers = hits(lab, "client", url, 15)
    assert len(set(answers)) == 1 and answers[0] in backends, answers
    assert "-m recent" in lab.kproxy("rules", "svc/sticky").stdout
    lab.apply(AFFINITY % "None")
    spread = hits(lab, "client", url, 30)
    assert len(set(spread)) >= 2, spread
    assert "-m recent" not in lab.kproxy("rules", "svc/sticky").stdout


def test_external_traffic_policy_local_keeps_the_client_ip(lab, backends):
    lab.apply(LOCAL)
    port = svc(lab, "local")["spec"]["ports"][0]["nodePort"]
    body = lab.exec("outside", "curl", "-s", "--max-time", "3", f"http://{NODE_IP}:{port}/", check=True).stdout
    assert body.split()[1] in backends
    assert client_of(body) == OUTSIDE_IP  # no SNAT: the pod sees outside's own address
    hc = svc(lab, "local")["spec"].get("healthCheckNodePort")
    assert hc is None  # a NodePort Service has none; LoadBalancer ones do


def test_external_traffic_policy_local_drops_without_local_endpoints(lab, backends):
    some_pod_ip = lab.ready_pods("be")[0]["status"]["podIP"]
    lab.apply(ELSEWHERE % some_pod_ip)
    port = svc(lab, "elsewhere")["spec"]["ports"][0]["nodePort"]
    res = lab.exec("outside", "curl", "-s", "--max-time", "2", f"http://{NODE_IP}:{port}/")
    assert res.returncode == 28, res  # dropped, not refused: the node has no local endpoint
    assert re.search(r"default/elsewhere has no local endpoints.*-j DROP", lab.node_save())
    # inside the cluster the endpoint on the other node still serves
    ip = svc(lab, "elsewhere")["spec"]["clusterIP"]
    assert hits(lab, "client", f"http://{ip}/", 3)[0] in backends


def test_udp_client_follows_a_replaced_pod(lab):
    lab.apply(UDP)
    first = lab.wait_for(lambda: lab.ready_pods("udp"))[0]
    vip = svc(lab, "udp")["spec"]["clusterIP"]
    run = lambda: lab.kproxy("exec", "client", "--", sys.executable, "-c", WHOAMI, vip).stdout.strip()  # noqa: E731
    assert run() == first["metadata"]["name"]
    lab.kproxy("delete", "pod", first["metadata"]["name"])
    second = lab.wait_for(lambda: [p for p in lab.ready_pods("udp") if p["metadata"]["name"] != first["metadata"]["name"]])[0]
    assert second["status"]["podIP"] != first["status"]["podIP"]  # else the old NAT would still fit
    assert run() == second["metadata"]["name"]  # the stale conntrack entry was deleted


def test_rules_flushed_by_hand_come_back(lab, backends):
    ip = svc(lab, "sticky")["spec"]["clusterIP"]
    node = lab.cfg.naming.node_netns
    # flush and look in one go: a periodic resync may repair it within milliseconds of the flush
    start = time.monotonic()
    flushed = subprocess.run(["ip", "netns", "exec", node, "sh", "-c",
                              "iptables -t nat -F KUBE-SERVICES && iptables-save -t nat"],
                             check=True, capture_output=True, text=True).stdout
    entry = re.compile(rf"^-A KUBE-SERVICES -d {re.escape(ip)}/32 ", re.M)
    assert not entry.search(flushed)
    lab.wait_for(lambda: entry.search(lab.node_save()), timeout=10, interval=0.1)
    assert time.monotonic() - start <= 2 * 2 + 1  # within the 2 s sync period (plus one loop)
    assert hits(lab, "client", f"http://{ip}/", 3)[0] in backends


def test_load_balancer_source_ranges_admit_one_client_and_drop_another(lab, backends):
    lab.apply(LB)
    outside = ["ip", "netns", "exec", lab.cfg.naming.outside_netns]
    subprocess.run([*outside, "ip", "addr", "add", "192.168.49.101/24", "dev", lab.cfg.naming.lab_link], check=True)
    # what a layer-2 announcement would teach the client: the LB IP is reached through the node
    subprocess.run([*outside, "ip", "route", "add", "192.168.49.200/32", "via", NODE_IP], check=True)
    ok = lab.exec("outside", "curl", "-s", "--max-time", "3", "http://192.168.49.200/")
    assert ok.returncode == 0 and ok.stdout.split()[1] in backends, ok
    denied = lab.exec("outside", "curl", "-s", "--max-time", "2", "--interface", "192.168.49.101",
                      "http://192.168.49.200/")
    assert denied.returncode == 28, denied  # dropped (in KUBE-PROXY-FIREWALL), not refused
    saved = lab.node_save()
    assert re.search(r"^-A KUBE-FW-\w+ -s 192.168.49.100/32 .*-j KUBE-EXT-", saved, re.M)
    assert re.search(r"^-A KUBE-PROXY-FIREWALL -d 192.168.49.200/32 .*-j DROP", saved, re.M)
    # kube-proxy's order: the load-balancer firewall is the first thing FORWARD consults
    forward = re.findall(r"^-A FORWARD .*-j (\S+)", saved, re.M)
    assert forward[0] == "KUBE-PROXY-FIREWALL", forward


def test_a_one_service_change_is_a_partial_sync(lab, backends):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    lab.apply(AFFINITY % "ClientIP")
    status = lab.kproxy("status").stdout
    # the change's sync, or (when a periodic full resync came after it) the last partial one
    m = re.search(r"^last rules sync: (\S+) \(partial, 1 Services written", status, re.M) or \
        re.search(r"^last partial sync: (\S+) \(1 Services written", status, re.M)
    assert m and m.group(1) >= since, status


def test_healthz_and_metrics_like_kube_proxy(lab, backends):
    res = lab.exec("outside", "curl", "-s", "-w", " %{http_code}", f"http://{NODE_IP}:10256/healthz", check=True)
    body, code = res.stdout.rsplit(" ", 1)
    assert code == "200" and "lastUpdated" in json.loads(body)
    m = lab.exec("node/node-1", "curl", "-s", "http://127.0.0.1:10249/metrics", check=True).stdout
    count = int(re.search(r"^kubeproxy_sync_proxy_rules_duration_seconds_count (\d+)", m, re.M).group(1))
    assert count >= 5
    assert re.search(r'^kubeproxy_sync_proxy_rules_iptables_total\{table="nat"\} [1-9]', m, re.M)
    assert re.search(r"^kubeproxy_network_programming_duration_seconds_count [1-9]", m, re.M)
    # 10249 is bound to the node's loopback only
    assert lab.exec("outside", "curl", "-s", "--max-time", "2", f"http://{NODE_IP}:10249/metrics").returncode != 0
