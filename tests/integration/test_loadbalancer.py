"""LoadBalancer Services without a cloud: MetalLB-style pools, layer-2 ARP answers from the
node (scapy), and the API server's type-change semantics, with real packets from `outside`."""
from __future__ import annotations

import re
import subprocess

import pytest

NODE_IP = "192.168.49.2"

POOL = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lab, namespace: metallb-system}
spec:
  addresses: [192.168.49.240-192.168.49.241]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lab, namespace: metallb-system}
spec:
  ipAddressPools: [lab]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: s, image: x, ports: [{containerPort: 80}]}]
"""

SVC = """
apiVersion: v1
kind: Service
metadata: {name: %(name)s%(annotations)s}
spec:
  type: %(type)s%(extra)s
  selector: {app: shop}
  ports: [{port: 80}]
"""


def service(name: str, stype: str = "LoadBalancer", extra: str = "", annotations: str = "") -> str:
    return SVC % {"name": name, "type": stype, "extra": extra, "annotations": annotations}


def ingress_ips(lab, name):
    return [i["ip"] for i in lab.get("svc", name).get("status", {}).get("loadBalancer", {}).get("ingress", [])]


def outside_curl(lab, url, max_time="2"):
    return lab.exec("outside", "curl", "-s", "--max-time", max_time, url)


def outside_neigh(lab, ip):
    return subprocess.run(["ip", "netns", "exec", lab.cfg.naming.outside_netns, "ip", "neigh", "show", ip],
                          capture_output=True, text=True).stdout


def node_mac(lab):
    out = subprocess.run(["ip", "netns", "exec", lab.cfg.naming.node_netns, "cat",
                          f"/sys/class/net/{lab.cfg.naming.lab_link}/address"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def shop(lab):
    lab.apply(POOL)
    return {p["metadata"]["name"] for p in lab.wait_for(lambda: len(lab.ready_pods("shop")) == 2 and lab.ready_pods("shop"))}


def test_outside_reaches_a_pool_ip_learnt_by_arp(lab, shop):
    lab.apply(service("front"))
    ip = lab.wait_for(lambda: ingress_ips(lab, "front"))[0]
    assert ip == "192.168.49.240"  # the pool's first free address
    assert re.search(rf"\bfront\s+LoadBalancer\s+\S+\s+{re.escape(ip)}\s", lab.kproxy("get", "svc").stdout)
    res = outside_curl(lab, f"http://{ip}/", "5")
    assert res.returncode == 0 and res.stdout.split()[1] in shop, res
    assert node_mac(lab) in outside_neigh(lab, ip)  # learnt from kproxy's ARP reply


def test_deleting_the_service_frees_its_ip(lab, shop):
    ip = ingress_ips(lab, "front")[0]
    lab.kproxy("delete", "svc", "front")
    subprocess.run(["ip", "netns", "exec", lab.cfg.naming.outside_netns, "ip", "neigh", "flush", "all"])
    assert outside_curl(lab, f"http://{ip}/").returncode != 0  # nobody answers ARP for it any more
    lab.apply(service("again"))
    assert lab.wait_for(lambda: ingress_ips(lab, "again")) == [ip]  # back in the pool, handed out again


def test_an_ip_in_use_is_refused_with_an_event(lab, shop):
    taken = ingress_ips(lab, "again")[0]
    lab.apply(service("thief", annotations=f", annotations: {{metallb.universe.tf/loadBalancerIPs: '{taken}'}}"))
    events = lab.wait_for(lambda: "address also in use by default/again" in lab.kproxy("get", "events").stdout
                          and lab.kproxy("get", "events").stdout)
    assert "AllocationFailed" in events
    assert "<pending>" in [line for line in lab.kproxy("get", "svc").stdout.splitlines() if line.startswith("thief")][0]
    lab.kproxy("delete", "svc", "thief")


def test_exhausted_pool_leaves_pending(lab, shop):
    lab.apply(service("second"))
    lab.wait_for(lambda: ingress_ips(lab, "second"))
    lab.apply(service("third"))
    lab.wait_for(lambda: "no available IPs" in lab.kproxy("get", "events").stdout)
    assert ingress_ips(lab, "third") == []
    lab.kproxy("delete", "svc", "second")
    lab.wait_for(lambda: ingress_ips(lab, "third"), timeout=10)  # a freed IP goes to the waiting one
    lab.kproxy("delete", "svc", "third")


def test_type_changes_keep_what_kubernetes_keeps(lab, shop):
    def answers_cluster_ip():
        ip = lab.get("svc", "flip")["spec"]["clusterIP"]
        out = lab.exec("node/node-1", "curl", "-s", "--max-time", "2", f"http://{ip}/").stdout
        return out.split()[1] in shop

    lab.apply(service("flip", "ClusterIP"))
    cip = lab.get("svc", "flip")["spec"]["clusterIP"]
    assert answers_cluster_ip()
    lab.apply(service("flip", "NodePort"))
    s = lab.get("svc", "flip")
    assert s["spec"]["clusterIP"] == cip
    np = s["spec"]["ports"][0]["nodePort"]
    assert outside_curl(lab, f"http://{NODE_IP}:{np}/").stdout.split()[1] in shop
    lab.apply(service("flip", "LoadBalancer"))
    s = lab.get("svc", "flip")
    assert s["spec"]["clusterIP"] == cip and s["spec"]["ports"][0]["nodePort"] == np
    lb = lab.wait_for(lambda: ingress_ips(lab, "flip"))[0]
    assert outside_curl(lab, f"http://{lb}/", "5").stdout.split()[1] in shop
    lab.apply(service("flip", "ClusterIP"))
    s = lab.get("svc", "flip")
    assert s["spec"]["clusterIP"] == cip and "nodePort" not in s["spec"]["ports"][0]
    assert ingress_ips(lab, "flip") == [] and answers_cluster_ip()
    lab.apply(service("flip", "ExternalName", extra="\n  externalName: shop.example.com"))
    s = lab.get("svc", "flip")
    assert "clusterIP" not in s["spec"] or s["spec"]["clusterIP"] in ("", None)
    assert "default/flip" not in lab.node_save()  # an ExternalName programs no rule
    lab.apply(service("flip", "ClusterIP"))
    assert answers_cluster_ip()


def test_port_forward_reaches_a_pod_from_the_hosts_loopback(lab, shop):
    """kubectl port-forward's job: 127.0.0.1 on the host (loopback only) into the sandbox."""
    import os
    import sys
    import urllib.request
    proc = subprocess.Popen([sys.executable, "-m", "kproxy.cli", "port-forward", "svc/flip", ":80"],
                            env={**os.environ, "KPROXY_STATE_DIR": str(lab.state_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> 80", line).group(1))
        answers = []
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                answers.append(r.read().decode().split()[1])
        assert set(answers) <= shop and len(set(answers)) == 1  # one pod, as kubectl picks one
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ issue 12 #11
HIJACK = """
apiVersion: v1
kind: Service
metadata: {name: hijack}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/cloud
  selector: {app: shop}
  ports: [{port: 80}]
status:
  loadBalancer:
    ingress: [{ip: 127.0.0.1}]
"""

OUTSIDE_POOL = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: grabby, namespace: metallb-system}
spec:
  addresses: [192.168.49.96/28]
"""


def _apply_refused(lab, tmp_path, text: str) -> str:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    res = lab.kproxy("apply", "-f", str(f), check=False)
    assert res.returncode == 1, res
    return res.stderr


def _status_text(lab) -> str:
    res = lab.kproxy("status", check=False)
    return res.stdout + res.stderr


def test_a_manifest_status_ingress_on_loopback_is_refused(lab, shop, tmp_path):
    expected = 'status.loadBalancer.ingress[0].ip: Invalid value: "127.0.0.1": may not be in the loopback range'
    assert expected in _apply_refused(lab, tmp_path, HIJACK)  # kproxy apply answers as the API server
    # written straight into the folder (an editor), the daemon refuses it too and programs nothing
    (lab.manifests / "hijack.yaml").write_text(HIJACK)
    try:
        lab.wait_for(lambda: expected in _status_text(lab), timeout=10)
        assert "127.0.0.1/32" not in lab.node_save()
        assert lab.kproxy("get", "svc", "hijack", check=False).returncode != 0
    finally:
        (lab.manifests / "hijack.yaml").unlink()


def test_a_pool_holding_the_outside_hosts_address_is_refused(lab, shop, tmp_path):
    expected = ('spec.addresses[0]: Invalid value: "192.168.49.96/28": holds 192.168.49.100, '
                "the address of the lab's outside host")
    assert expected in _apply_refused(lab, tmp_path, OUTSIDE_POOL)
    (lab.manifests / "grabby.yaml").write_text(OUTSIDE_POOL)
    try:
        lab.wait_for(lambda: expected in _status_text(lab), timeout=10)
    finally:
        (lab.manifests / "grabby.yaml").unlink()
