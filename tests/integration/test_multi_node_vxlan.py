"""Two emulated nodes joined by a VXLAN overlay (`up --nodes 2 --overlay vxlan`), like flannel:
pods reach pods on the other node through a ClusterIP, and the packets cross the VTEPs."""
from __future__ import annotations

import json
import subprocess

from .conftest import hits

LAB_UP_ARGS = ("--nodes", "2", "--overlay", "vxlan")

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
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
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def vxlan_tx_packets(lab, index: int) -> int:
    naming = lab.cfg.naming.for_node(index)
    out = subprocess.run(["ip", "netns", "exec", naming.node_netns, "ip", "-j", "-s", "link", "show",
                          f"{naming.prefix}-vx"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


def test_pods_reach_the_other_node_over_vxlan(lab):
    lab.apply(APP)
    nodes = {p["metadata"]["name"]: p for p in lab.ready_pods("web")}
    assert {p["spec"]["nodeName"] for p in nodes.values()} == {"node-1", "node-2"}
    # the Nodes carry what flannel publishes: the VTEP's MAC and the tunnel's address
    node2 = next(n for n in lab.get("nodes")["items"] if n["metadata"]["name"] == "node-2")
    backend = json.loads(node2["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"])
    assert backend["VNI"] == 1 and len(backend["VtepMAC"]) == 17
    remote = next(p for p in nodes.values() if p["spec"]["nodeName"] == "node-2")
    route = subprocess.run(["ip", "netns", "exec", lab.cfg.naming.for_node(1).node_netns, "ip", "route", "get",
                            remote["status"]["podIP"]], capture_output=True, text=True, check=True).stdout
    assert f"via 10.244.2.0 dev {lab.cfg.naming.prefix}-vx" in route
    before = vxlan_tx_packets(lab, 1)
    client = next(name for name, p in sorted(nodes.items()) if p["spec"]["nodeName"] == "node-1")
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    answers = hits(lab, client, f"http://{ip}/", 40)
    assert not [a for a in answers if a.startswith("ERR")], answers
    assert {nodes[a]["spec"]["nodeName"] for a in answers} == {"node-1", "node-2"}
    assert vxlan_tx_packets(lab, 1) - before >= 10  # the node-2 answers' packets left through the VTEP
