"""`kproxy trace` across two emulated nodes: the hops on each node the packet crosses."""
from __future__ import annotations

import json

import pytest

from .test_trace import no_trace_left

LAB_UP_ARGS = ("--nodes", "2")

SPREAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"""


@pytest.fixture(scope="module")
def pods(lab):
    lab.apply(SPREAD)
    ready = lab.wait_for(lambda: len(lab.ready_pods("web")) == 4 and lab.ready_pods("web"))
    client = lab.get("pods", "client")
    return client["spec"]["nodeName"], {p["status"]["podIP"]: p["spec"]["nodeName"] for p in ready}


def test_a_connection_to_a_pod_on_the_other_node_is_traced_on_both(lab, pods):
    client_node, nodes = pods
    if set(nodes.values()) == {client_node}:
        pytest.skip("the scheduler put every web pod on the client's node")
    for _ in range(30):  # until the dice send it to the other node
        doc = json.loads(lab.kproxy("trace", "client", "svc/web", "-o", "json").stdout)
        no_trace_left(lab)
        if nodes.get(doc["dnat"].split(":")[0]) != client_node:
            break
    else:
        pytest.fail("30 traces never left the client's node")
    entry, other = doc["nodes"]
    assert entry["node"] == client_node and other["node"] == nodes[doc["dnat"].split(":")[0]]
    assert any(s["chain"].startswith("KUBE-SEP-") and "-j DNAT" in s["rule"] for s in entry["request"]["steps"])
    # the other node sees the pod address already: its KUBE-SERVICES has nothing for it
    assert other["request"]["packet"].split()[2] == doc["dnat"]
    assert not any("-j DNAT" in s["rule"] for s in other["request"]["steps"])
    assert any(s["chain"] == "KUBE-SERVICES" and s["verdict"] == "no match" for s in other["request"]["steps"])
    assert doc["answeredBy"] == doc["endpointPod"]["name"]
    text = lab.kproxy("trace", "client", "svc/web").stdout
    assert f"node {client_node}, the first packet" in text
