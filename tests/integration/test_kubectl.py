"""Issue 14's "Done when", with the real clients against a sandboxed lab's API server.

The machine's kubectl (1.30+, 1.32 on these machines), Debian's kubectl 1.20 and the official
Python client are pointed at the lab only through `export KUBECONFIG=$(kproxy kubeconfig --path)`
and do what a student types in a Services course, step by step, on one lab: the demo applied,
listed, watched, described, scaled, rolled out, labelled, exposed, deleted. Every step asserts
what a user sees: kubectl's own lines, the allocated ClusterIP, which pods answer a connection
from inside the lab. The tests run in file order and build on each other (as a session does);
each says what it needs from the ones before.

Streams (logs, exec, port-forward, proxy) are tested with the streams code, not here.
"""
from __future__ import annotations

import ipaddress
import json
import stat
import threading
import time
from pathlib import Path

import pytest

from .conftest import REPO, hits, wait_for
from .kubeclients import Kubectl, kubeconfig_path, machine_kubectl, old_kubectl, python_client

POOL = "192.168.49.240-192.168.49.250"
LAB_UP_ARGS = ("--lb-pool", POOL)  # a LoadBalancer IP gives `describe svc` an event to show
NODE_IP = "192.168.49.2"
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
BAD_NODE_PORT = """apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 8080}]
"""
# what the Kubernetes API server answers, as kubectl prints it (pkg/registry/core/service/portallocator)
BAD_NODE_PORT_MESSAGE = ('The Service "bad" is invalid: spec.ports[0].nodePort: Invalid value: 8080: provided port '
                         'is not in the valid range. The range of valid ports is 30000-32767')


@pytest.fixture(scope="module")
def kubeconfig(lab) -> str:
    return kubeconfig_path(lab)


@pytest.fixture(scope="module")
def kubectl(lab, kubeconfig) -> Kubectl:
    return Kubectl(machine_kubectl(), kubeconfig, cwd=str(REPO))


@pytest.fixture(scope="module")
def old(lab, kubeconfig) -> Kubectl:
    return Kubectl(old_kubectl(), kubeconfig, cwd=str(REPO))


def rows(table: str) -> tuple[list[str], dict[str, list[str]]]:
    """kubectl's table: (the header's columns, {first column: the row's columns})."""
    lines = table.strip().splitlines()
    return lines[0].split(), {line.split()[0]: line.split() for line in lines[1:]}


def live_pods(kubectl: Kubectl, app: str) -> list[dict]:
    return [p for p in kubectl.json("get", "pods", "-l", f"app={app}")["items"]
            if not p["metadata"].get("deletionTimestamp")]


# ----------------------------------------------------------------------- set-up and the demo


def test_the_kubeconfig_is_all_a_user_needs(lab, kubeconfig, kubectl):
    mode = stat.S_IMODE(Path(kubeconfig).stat().st_mode)
    assert mode == 0o600, oct(mode)
    version = json.loads(kubectl.run("version", "-o", "json").stdout)
    client = version["clientVersion"]
    assert (int(client["major"]), int(client["minor"].rstrip("+"))) >= (1, 30), client
    assert version["serverVersion"]["gitVersion"].startswith("v1."), version
    # the API behind the default/kubernetes Service, as on a real cluster
    header, table = rows(kubectl.run("get", "svc", "kubernetes").stdout)
    assert table["kubernetes"][1:5] == ["ClusterIP", "10.96.0.1", "<none>", "443/TCP"], table


def test_apply_the_demo(lab, kubectl):
    out = kubectl.run("apply", "-f", "examples/demo").stdout
    assert out.splitlines() == ["deployment.apps/web created", "service/web created", "service/web-nodeport created"]
    # applied again: kubectl's three-way merge finds nothing to change (last-applied kept)
    out = kubectl.run("apply", "-f", "examples/demo").stdout
    assert out.splitlines() == ["deployment.apps/web unchanged", "service/web unchanged",
                                "service/web-nodeport unchanged"]
    # one source of truth: kproxy sees what kubectl wrote (a file in the manifests folder)
    assert lab.get("deployments", "web")["spec"]["replicas"] == 3
    assert any("web-nodeport" in p.read_text() for p in lab.manifests.rglob("*") if p.is_file())


def test_wait_for_the_web_pods_ready(lab, kubectl):
    out = kubectl.run("wait", "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=120s", timeout=150).stdout
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith("pod/web-") and line.endswith(" condition met") for line in lines), out
    assert sorted(line.split()[0][4:] for line in lines) == sorted(p["metadata"]["name"] for p in lab.ready_pods("web"))


def test_get_svc_wide_shows_the_allocated_cluster_ip(lab, kubectl):
    header, table = rows(kubectl.run("get", "svc", "-o", "wide").stdout)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip) in SERVICE_CIDR
    web, nodeport = table["web"], table["web-nodeport"]
    assert [web[1], web[2], web[3], web[4], web[6]] == ["ClusterIP", ip, "<none>", "80/TCP", "app=web"]
    assert [nodeport[1], nodeport[3], nodeport[4], nodeport[6]] == ["NodePort", "<none>", "80:30080/TCP", "app=web"]


def test_jsonpath_prints_the_cluster_ip(lab, kubectl):
    out = kubectl.run("get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert out == lab.get("svc", "web")["spec"]["clusterIP"]


def test_get_pods_watch_sees_a_scale_up(lab, kubectl):
    before = {p["metadata"]["name"] for p in live_pods(kubectl, "web")}
    assert len(before) == 3
    watch = kubectl.popen("get", "pods", "-l", "app=web", "-w")
    try:
        watch.wait_line(lambda line: line.split()[:2] == ["NAME", "READY"], timeout=20)
        for _ in before:
            watch.wait_line(lambda line: line.split()[0] in before, timeout=10)
        assert kubectl.run("scale", "deploy/web", "--replicas", "4").stdout.strip() == "deployment.apps/web scaled"
        new = watch.wait_line(lambda line: line.split()[0].startswith("web-") and line.split()[0] not in before,
                              timeout=20).split()[0]
        # the same new pod comes back Running and 1/1 in a later event
        watch.wait_line(lambda line: line.split()[:3] == [new, "1/1", "Running"], timeout=60)
    finally:
        watch.stop()
    assert {p["metadata"]["name"] for p in live_pods(kubectl, "web")} == before | {new}


def test_describe_svc_web_with_endpoints_and_events(lab, kubectl):
    """Needs web at 4 Ready pods (the watch test). Turning it into a LoadBalancer Service
    (strategic merge patch) gets it an IP from the lab's pool, and the IPAllocated event."""
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    out = kubectl.run("describe", "svc", "web").stdout
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines()
              if ":" in line and not line.startswith(" ")}
    assert fields["Name"] == "web" and fields["Namespace"] == "default" and fields["Selector"] == "app=web"
    assert fields["Type"] == "ClusterIP" and fields["IP"] == ip
    assert fields["Port"] == "http  80/TCP" and fields["TargetPort"] == "http/TCP"
    pod_ips = sorted(f"{p['status']['podIP']}:8080" for p in live_pods(kubectl, "web"))
    shown, _, more = fields["Endpoints"].partition(" + ")  # kubectl prints 3: "a,b,c + 1 more..."
    assert set(shown.split(",")) <= set(pod_ips) and len(shown.split(",")) == 3, fields["Endpoints"]
    assert more == f"{len(pod_ips) - 3} more...", fields["Endpoints"]
    assert "Events" in fields  # "<none>" yet: a ClusterIP Service has had nothing happen to it

    assert kubectl.run("patch", "svc", "web", "-p", '{"spec":{"type":"LoadBalancer"}}').stdout.strip() == \
        "service/web patched"
    lb_ip = wait_for(lambda: kubectl.run("get", "svc", "web", "-o",
                                         "jsonpath={.status.loadBalancer.ingress[0].ip}").stdout, timeout=15)
    assert lb_ip.startswith("192.168.49.24") or lb_ip.startswith("192.168.49.25"), lb_ip
    out = kubectl.run("describe", "svc", "web").stdout
    assert f"LoadBalancer Ingress:     {lb_ip}" in out, out
    events = out.split("Events:", 1)[1].splitlines()
    assert any(line.split()[:2] == ["Normal", "IPAllocated"] and lb_ip in line for line in events), out


def test_scale_to_one_endpoints_follow_within_2s_and_only_that_pod_answers(lab, kubectl):
    """Needs web at 4 pods; leaves it at 1."""
    assert kubectl.run("scale", "deploy/web", "--replicas", "1").stdout.strip() == "deployment.apps/web scaled"
    t0 = time.monotonic()

    def one_endpoint():
        out = kubectl.run("get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}").stdout.split()
        return out if len(out) == 1 else None
    (ep_ip,) = wait_for(one_endpoint, timeout=10, interval=0.05)
    took = time.monotonic() - t0
    print(f"endpoints of web down to 1 address {took:.2f} s after kubectl scale returned")
    assert took <= 2.0, took
    (pod,) = [p for p in live_pods(kubectl, "web") if p["status"].get("podIP") == ep_ip]
    name = pod["metadata"]["name"]
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    answers = hits(lab, "node/node-1", f"http://{ip}/", 20)
    assert set(answers) == {name}, answers
    answers = hits(lab, "outside", f"http://{NODE_IP}:30080/", 10)
    assert set(answers) == {name}, answers


def test_rollout_status_waits_for_the_scale_up(lab, kubectl):
    """Needs web at 1; leaves it at 2 Ready pods."""
    kubectl.run("scale", "deploy/web", "--replicas", "2")
    out = kubectl.run("rollout", "status", "deploy/web", "--timeout=90s", timeout=120).stdout
    assert out.splitlines()[-1] == 'deployment "web" successfully rolled out', out
    assert len(lab.ready_pods("web")) == 2  # when it says so, they are Ready
    out = kubectl.run("wait", "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=30s").stdout
    assert len(out.splitlines()) == 2, out


# ------------------------------------------------------------------- a user's own Deployment


def test_create_deployment_and_expose_it_as_a_node_port(lab, kubectl):
    out = kubectl.run("create", "deployment", "hello", "--image=nginx:1.27", "--port=80").stdout
    assert out.strip() == "deployment.apps/hello created"
    kubectl.run("rollout", "status", "deploy/hello", "--timeout=90s", timeout=120)
    out = kubectl.run("expose", "deployment", "hello", "--port", "80", "--type", "NodePort").stdout
    assert out.strip() == "service/hello exposed"
    svc = kubectl.json("get", "svc", "hello")
    assert svc["spec"]["selector"] == {"app": "hello"}
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    pods = {p["metadata"]["name"] for p in live_pods(kubectl, "hello")}
    answers = wait_for(lambda: (a := hits(lab, "outside", f"http://{NODE_IP}:{node_port}/", 6))
                       and all(x in pods for x in a) and a, timeout=10, interval=0.5)
    assert set(answers) == pods, answers


def test_label_a_service_and_select_it(lab, kubectl):
    assert kubectl.run("label", "svc", "hello", "tier=demo").stdout.strip() == "service/hello labeled"
    assert kubectl.run("get", "svc", "-l", "tier=demo", "-o", "name").stdout.split() == ["service/hello"]
    assert kubectl.run("get", "svc", "-l", "tier!=demo", "-o", "name").stdout.split().count("service/hello") == 0
    assert lab.get("svc", "hello")["metadata"]["labels"]["tier"] == "demo"  # written to the folder


def test_delete_wait_removes_the_deployment_its_pods_and_its_service(lab, kubectl):
    out = kubectl.run("delete", "deployment", "hello", "--wait", "--timeout=60s", timeout=90).stdout
    assert out.strip() == 'deployment.apps "hello" deleted'
    gone = kubectl.run("get", "deployment", "hello", check=False)
    assert gone.returncode == 1
    assert gone.stderr.strip() == 'Error from server (NotFound): deployments.apps "hello" not found'
    assert kubectl.run("delete", "svc", "hello", "--wait").stdout.strip() == 'service "hello" deleted'
    wait_for(lambda: not kubectl.json("get", "pods", "-l", "app=hello")["items"], timeout=30, interval=0.5)
    assert "hello" not in {s["metadata"]["name"] for s in lab.get("svc")["items"]}


def test_a_bad_node_port_is_refused_in_the_api_servers_words(lab, kubectl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_NODE_PORT)
    res = kubectl.run("apply", "-f", str(bad), check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == BAD_NODE_PORT_MESSAGE, res.stderr
    # one admission gate: kproxy's own apply refuses it with the same words
    mine = lab.kproxy("apply", "-f", str(bad), check=False)
    assert mine.returncode == 1 and BAD_NODE_PORT_MESSAGE in mine.stderr, mine.stderr
    assert kubectl.run("get", "svc", "bad", check=False).returncode == 1  # nothing was written


# --------------------------------------------------------------------------- other clients


def test_the_python_client_lists_creates_and_watches_services(lab, kubeconfig):
    from kubernetes import client, watch
    v1 = python_client(kubeconfig)
    listed = v1.list_namespaced_service("default")
    assert {"kubernetes", "web", "web-nodeport"} <= {s.metadata.name for s in listed.items}
    assert "kube-system" in {s.metadata.namespace for s in v1.list_service_for_all_namespaces().items}
    seen: list[tuple[str, dict]] = []
    w = watch.Watch()
    started = threading.Event()

    def follow():
        started.set()
        for ev in w.stream(v1.list_namespaced_service, "default", resource_version=listed.metadata.resource_version,
                           timeout_seconds=30):
            if ev["object"].metadata.name == "pyclient":
                seen.append((ev["type"], dict(ev["object"].metadata.labels or {})))
                if ev["type"] == "DELETED":
                    w.stop()
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    started.wait(5)
    created = v1.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="pyclient"),
        spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)])))
    assert ipaddress.ip_address(created.spec.cluster_ip) in SERVICE_CIDR
    assert lab.get("svc", "pyclient")["spec"]["clusterIP"] == created.spec.cluster_ip
    v1.patch_namespaced_service("pyclient", "default", {"metadata": {"labels": {"seen": "yes"}}})
    v1.delete_namespaced_service("pyclient", "default")
    t.join(35)
    types = [k for i, (k, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != k]
    assert types == ["ADDED", "MODIFIED", "DELETED"], seen
    assert any(k == "MODIFIED" and labels.get("seen") == "yes" for k, labels in seen), seen


def test_kubectl_1_20_gets_applies_and_deletes(lab, old, tmp_path):
    version = old.run("version", "--short").stdout
    assert "Client Version: v1.20." in version and "Server Version: v1." in version, version
    lines = old.run("get", "svc", "-A").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "TYPE"]
    listed = {tuple(line.split()[:2]) for line in lines[1:]}
    assert {("default", "kubernetes"), ("default", "web"), ("default", "web-nodeport")} <= listed, lines
    svc = tmp_path / "old.yaml"
    svc.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: old-client}\n"
                   "spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n")
    assert old.run("apply", "-f", str(svc)).stdout.strip() == "service/old-client created"
    assert old.run("apply", "-f", str(svc)).stdout.strip() == "service/old-client unchanged"
    svc.write_text(svc.read_text().replace("port: 80,", "port: 81,"))
    assert old.run("apply", "-f", str(svc)).stdout.strip() == "service/old-client configured"
    ip = old.run("get", "svc", "old-client", "-o", "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}").stdout
    assert ip == f"{lab.get('svc', 'old-client')['spec']['clusterIP']}:81"
    assert old.run("delete", "-f", str(svc)).stdout.strip() == 'service "old-client" deleted'
    gone = old.run("get", "svc", "old-client", check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == 'Error from server (NotFound): services "old-client" not found'
