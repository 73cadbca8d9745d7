"""kubectl against a three-node lab (issue 14): the controller process serves the API, from the
cluster's etcd, and `kubectl get svc -A` still works after etcd restarts.

The lab and its workload are test_multi_node's (the same `up --sandbox --nodes 3`, the same APP
applied by its `app` fixture), so what kubectl lists is checked against what kproxy's own CLI
reads from the store.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from kproxy.cluster import lab as cluster
from kproxy.teardown import kill_pids

from .kubeclients import Kubectl, kubeconfig_path, machine_kubectl
from .test_multi_node import NODES, app  # noqa: F401 - app is the fixture applying test_multi_node.APP

LAB_UP_ARGS = ("--nodes", "3")


def svc_rows(kubectl: Kubectl) -> dict[tuple[str, str], list[str]]:
    """`kubectl get svc -A`: {(namespace, name): [TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S)]}."""
    lines = kubectl.run("get", "svc", "-A", "--request-timeout=20s", timeout=30).stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], lines
    return {(c[0], c[1]): c[2:6] for c in (line.split() for line in lines[1:])}


def expected_rows(lab) -> dict[tuple[str, str], list[str]]:
    """The same Services as kproxy's CLI reads them from etcd, in kubectl's cells."""
    out = {}
    for s in json.loads(lab.kproxy("get", "svc", "-A", "-o", "json").stdout)["items"]:
        ports = ",".join(f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}" if p.get("nodePort")
                         else f"{p['port']}/{p.get('protocol', 'TCP')}" for p in s["spec"]["ports"])
        out[(s["metadata"]["namespace"], s["metadata"]["name"])] = [s["spec"]["type"], s["spec"]["clusterIP"],
                                                                    "<none>", ports]
    return out


def test_the_controller_serves_kubectl_get_svc_all_namespaces(app):
    kubeconfig = kubeconfig_path(app)
    kubectl = Kubectl(machine_kubectl(), kubeconfig)
    rows = svc_rows(kubectl)
    assert rows == expected_rows(app)
    assert rows[("default", "kubernetes")][:2] == ["ClusterIP", "10.96.0.1"]
    assert rows[("default", "web")][0] == "NodePort" and rows[("default", "web")][3] == "80:30080/TCP"
    assert ("kube-system", "kube-dns") in rows
    # the three nodes, Ready, as the agents report them through etcd
    nodes = {line.split()[0]: line.split()[1] for line in kubectl.run("get", "nodes").stdout.splitlines()[1:]}
    assert nodes == {name: "Ready" for name in NODES}
    # the process listening on the kubeconfig's port is the controller (STATE/daemon.pid)
    port = kubectl.run("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    port = port.rsplit(":", 1)[1].rstrip("/")
    listeners = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    controller = cluster.process_pids(app.cfg)["controller"]
    assert f"pid={controller}," in listeners, (listeners, controller)


def test_kubectl_get_svc_all_namespaces_survives_an_etcd_restart(app):
    kubectl = Kubectl(machine_kubectl(), kubeconfig_path(app))
    before = svc_rows(kubectl)
    etcd = int((Path(app.state_dir) / "etcd.pid").read_text())
    kill_pids([etcd])
    try:
        # while etcd is away kubectl gets an answer or a Kubernetes error, never a hang
        t = time.monotonic()
        during = kubectl.run("get", "svc", "-A", "--request-timeout=10s", check=False, timeout=30)
        print(f"kubectl during the outage ({time.monotonic() - t:.1f} s, exit {during.returncode}): "
              f"{(during.stderr or during.stdout).strip()[:300]}")
        assert during.returncode == 0 or during.stderr.startswith(("Error from server", "error:")), during.stderr
    finally:
        cluster.start_etcd(app.cfg)
        cluster.wait_for_etcd(app.cfg)
    after = app.wait_for(lambda: (r := _try_rows(kubectl)) == before and r, timeout=30, interval=1)
    assert after == before
    # and writes go on through the API: a new Service gets a ClusterIP of its own
    out = kubectl.run("apply", "-f", "-", input="apiVersion: v1\nkind: Service\nmetadata: {name: after-etcd}\n"
                      "spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n").stdout
    assert out.strip() == "service/after-etcd created"
    ip = kubectl.run("get", "svc", "after-etcd", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ip and ip not in {r[1] for r in before.values()}
    assert svc_rows(kubectl)[("default", "after-etcd")][1] == ip
    assert kubectl.run("delete", "svc", "after-etcd").stdout.strip() == 'service "after-etcd" deleted'


def _try_rows(kubectl: Kubectl):
    try:
        return svc_rows(kubectl)
    except AssertionError:
        return None
