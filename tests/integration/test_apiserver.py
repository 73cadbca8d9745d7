"""Issue 14 items 1-3: the lab's Kubernetes API server, driven by the machine's kubectl and by
raw HTTPS with the admin client certificate, in a sandbox lab.

What is proven here, each by what a client saw: no anonymous access (401 Status), the
kubeconfig is 0600, the server listens on no non-loopback address of the host (only
127.0.0.1 in the root namespace; the node's address:6443 inside the lab, also behind the
`kubernetes` Service); reads carry resourceVersions; writes land in the manifests folder and
come back with allocated fields; a stale update is a 409 Conflict in the API server's words;
a hand-edited manifest file shows as a watch event with a new resourceVersion; a watch from a
version older than the watch cache's window gets 410 Expired.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import free_port, sandbox_lab

WINDOW = 20  # the watch cache's window in this lab (KPROXY_WATCH_CACHE_SIZE)
KUBECTL = shutil.which("kubectl")

SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


@pytest.fixture(scope="module")
def lab():
    if KUBECTL is None:
        pytest.fail("kubectl is not installed (scripts/setup --test installs it)")
    with sandbox_lab() as the_lab:
        the_lab.env["KPROXY_WATCH_CACHE_SIZE"] = str(WINDOW)
        the_lab.api_port = free_port()
        the_lab.up("--no-cluster-dns", "--api-port", str(the_lab.api_port))
        yield the_lab


@pytest.fixture(scope="module")
def api(lab):
    """(base URL, a requests session with the admin client certificate, kubectl's env)."""
    path = lab.kproxy("kubeconfig", "--path").stdout.strip()
    text = Path(path).read_text()
    base = re.search(r"server: (https://127\.0\.0\.1:\d+)", text).group(1)
    assert base.endswith(f":{lab.api_port}")  # up --api-port
    pki = lab.state_dir / "pki"
    s = requests.Session()
    s.trust_env = False  # the lab's CA, no proxy
    s.verify, s.cert = str(pki / "ca.crt"), (str(pki / "admin.crt"), str(pki / "admin.key"))
    env = {**os.environ, "KUBECONFIG": path, "NO_PROXY": "127.0.0.1", "HTTPS_PROXY": "", "https_proxy": ""}
    return base, s, env, Path(path)


def kubectl(env, *args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def test_no_anonymous_access_and_a_private_kubeconfig(lab, api):
    base, s, env, path = api
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    anon = requests.Session()
    anon.trust_env = False
    for url in ("/api/v1/services", "/version", "/healthz", "/apis"):
        r = anon.get(base + url, verify=s.verify, timeout=10)
        assert r.status_code == 401, url
        assert r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    bad = anon.get(base + "/api/v1/services", verify=s.verify, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401
    assert "API server: https://127.0.0.1:" in lab.kproxy("status").stdout


def test_listens_on_no_non_loopback_host_address(lab, api):
    base, s, env, _ = api
    pid = int((lab.state_dir / "daemon.pid").read_text())
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]
    assert mine, out  # the API's socket is there, in the host's namespace ...
    assert all(addr.startswith("127.0.0.1:") for addr in mine), mine  # ... and only on loopback
    assert base.rsplit(":", 1)[1] in {a.rsplit(":", 1)[1] for a in mine}
    # inside the lab: the node's address at 6443, and the `kubernetes` Service in front of it
    for url in ("https://192.168.49.2:6443/version", "https://10.96.0.1/version"):
        res = lab.exec("node/node-1", "curl", "-sk", "--max-time", "5", url)
        assert json.loads(res.stdout)["reason"] == "Unauthorized", (url, res.stdout, res.stderr)
    ca = (lab.state_dir / "pki" / "ca.crt").read_text()
    res = lab.exec("outside", sys.executable, "-c",
                   "import ssl,socket,sys;c=ssl.create_default_context(cadata=sys.argv[1]);"
                   "s=c.wrap_socket(socket.create_connection(('192.168.49.2',6443),5),"
                   "server_hostname='kubernetes.default.svc');print(s.version())", ca)
    assert res.stdout.startswith("TLS"), res.stderr  # the serving certificate names the Service's DNS name


def test_kubectl_reads_and_writes_through_the_folder(lab, api):
    base, s, env, _ = api
    listing = json.loads(kubectl(env, "get", "svc", "-A", "-o", "json").stdout)
    names = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listing["items"]}
    assert ("default", "kubernetes") in names
    assert all(int(i["metadata"]["resourceVersion"]) > 0 for i in listing["items"])
    out = kubectl(env, "create", "-f", "-", stdin=json.dumps(SVC)).stdout
    assert out.strip() == "service/web created"
    assert (lab.manifests / "service-default-web.yaml").exists()  # the folder holds it now
    got = json.loads(kubectl(env, "get", "svc", "web", "-o", "json").stdout)
    assert ipaddress.ip_address(got["spec"]["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    assert got["metadata"]["uid"]
    # the lab's own view agrees: the same object, the same ClusterIP
    assert lab.get("svc", "web")["spec"]["clusterIP"] == got["spec"]["clusterIP"]
    # a stale update: kubectl replace with the resourceVersion read before a change
    kubectl(env, "label", "svc", "web", "tier=front")
    got["metadata"]["labels"] = {"tier": "back"}
    res = kubectl(env, "replace", "-f", "-", stdin=json.dumps(got), check=False)
    assert res.returncode == 1
    assert ('Operation cannot be fulfilled on services "web": the object has been modified; please apply your '
            "changes to the latest version and try again") in res.stderr
    fresh = json.loads(kubectl(env, "get", "svc", "web", "-o", "json").stdout)
    assert fresh["metadata"]["labels"] == {"tier": "front"}
    res = kubectl(env, "get", "svc", "nope", check=False)
    assert res.returncode == 1 and res.stderr.strip() == 'Error from server (NotFound): services "nope" not found'
    res = kubectl(env, "create", "-f", "-", stdin=json.dumps(SVC), check=False)
    assert 'Error from server (AlreadyExists): error when creating "STDIN": services "web" already exists' \
        in res.stderr


def test_raw_https_create_conflict_and_delete(lab, api):
    base, s, env, _ = api
    url = base + "/api/v1/namespaces/default/services"
    body = {"metadata": {"name": "raw"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}
    r = s.post(url, json=body, timeout=30)
    assert r.status_code == 201, r.text
    made = r.json()
    assert 30000 <= made["spec"]["ports"][0]["nodePort"] <= 32767  # allocated by the lab before the answer
    stale = dict(made)
    r = s.put(url + "/raw", json={**made, "metadata": {**made["metadata"], "labels": {"v": "1"}}}, timeout=30)
    assert r.status_code == 200 and int(r.json()["metadata"]["resourceVersion"]) > \
        int(made["metadata"]["resourceVersion"])
    r = s.put(url + "/raw", json={**stale, "metadata": {**stale["metadata"], "labels": {"v": "2"}}}, timeout=30)
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"
    bad = {"metadata": {"name": "bad"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}}
    r = s.post(url, json=bad, timeout=30)
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "spec.ports[0].nodePort"
    assert not (lab.manifests / "service-default-bad.yaml").exists()
    r = s.delete(url + "/raw", timeout=30)
    assert r.status_code == 200 and r.json()["metadata"]["name"] == "raw"
    assert not (lab.manifests / "service-default-raw.yaml").exists()
    assert s.get(url + "/raw", timeout=10).status_code == 404


def test_a_hand_edited_file_is_a_watch_event_and_old_versions_are_gone(lab, api):
    base, s, env, _ = api
    url = base + "/api/v1/namespaces/default/services"
    before = s.get(url + "/web", timeout=10).json()
    old_rv = int(before["metadata"]["resourceVersion"])
    events = []
    with s.get(url, params={"watch": "true", "fieldSelector": "metadata.name=web"}, stream=True, timeout=30) as w:
        lines = w.iter_lines()
        events.append(json.loads(next(lines)))  # the current state first (no resourceVersion given)
        path = lab.manifests / "service-default-web.yaml"
        path.write_text(path.read_text().replace("port: 80", "port: 81"))  # by hand, as an editor would
        started = time.monotonic()
        events.append(json.loads(next(lines)))
        latency = time.monotonic() - started
    assert events[0]["type"] == "ADDED" and int(events[0]["object"]["metadata"]["resourceVersion"]) == old_rv
    assert events[1]["type"] == "MODIFIED"
    assert events[1]["object"]["spec"]["ports"][0]["port"] == 81
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > old_rv
    assert latency < 5
    # WINDOW more changes: the watch cache no longer holds what followed old_rv
    for i in range(WINDOW + 2):
        r = s.patch(url + "/web", data=json.dumps({"metadata": {"labels": {"n": str(i)}}}),
                    headers={"Content-Type": "application/merge-patch+json"}, timeout=30)
        assert r.status_code == 200, r.text
    with s.get(url, params={"watch": "true", "resourceVersion": str(old_rv)}, stream=True, timeout=30) as w:
        first = json.loads(next(w.iter_lines()))
    assert first["type"] == "ERROR"
    st = first["object"]
    assert (st["code"], st["reason"]) == (410, "Expired")
    floor = int(re.fullmatch(rf"too old resource version: {old_rv} \((\d+)\)", st["message"]).group(1))
    assert floor > old_rv
    # the same through kubectl
    res = kubectl(env, "get", "--raw", f"/api/v1/namespaces/default/services?watch=true&resourceVersion={old_rv}")
    assert json.loads(res.stdout.splitlines()[0])["object"]["message"] == st["message"]


def test_kubectl_create_commands_send_protobuf_and_land_in_the_folder(lab, api):
    """`kubectl create deployment/service/namespace` use typed clients: protobuf bodies."""
    base, s, env, _ = api
    assert kubectl(env, "create", "namespace", "shop").stdout.strip() == "namespace/shop created"
    out = kubectl(env, "create", "deployment", "hello", "-n", "shop", "--image=nginx", "--port=8080").stdout
    assert out.strip() == "deployment.apps/hello created"
    out = kubectl(env, "create", "service", "nodeport", "hello", "-n", "shop", "--tcp=80:8080",
                  "--node-port=30123").stdout
    assert out.strip() == "service/hello created"
    svc = json.loads(kubectl(env, "get", "svc", "hello", "-n", "shop", "-o", "json").stdout)
    assert svc["spec"]["ports"] == [{"name": "80-8080", "nodePort": 30123, "port": 80, "protocol": "TCP",
                                     "targetPort": 8080}]
    assert svc["spec"]["selector"] == {"app": "hello"}
    dep = json.loads(kubectl(env, "get", "deploy", "hello", "-n", "shop", "-o", "json").stdout)
    assert dep["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    names = sorted(p.name for p in lab.manifests.iterdir())
    assert {"namespace-shop.yaml", "deployment-shop-hello.yaml", "service-shop-hello.yaml"} <= set(names), names
    assert kubectl(env, "delete", "namespace", "shop").stdout.strip() == 'namespace "shop" deleted'
    assert not [n for n in lab.manifests.iterdir() if "shop" in n.name]


def test_deleting_a_deployments_pod_marks_it_and_the_deployment_replaces_it(lab, api):
    base, s, env, _ = api
    kubectl(env, "create", "deployment", "solo", "--image=nginx", "--port=8080")
    kubectl(env, "wait", "--for=condition=Available", "deploy/solo", "--timeout=60s")
    pods = json.loads(kubectl(env, "get", "pods", "-l", "app=solo", "-o", "json").stdout)["items"]
    assert len(pods) == 1
    old = pods[0]["metadata"]["name"]
    assert kubectl(env, "delete", "pod", old).stdout.strip() == f'pod "{old}" deleted'  # waits until gone
    res = kubectl(env, "get", "pod", old, check=False)
    assert f'pods "{old}" not found' in res.stderr
    kubectl(env, "wait", "--for=condition=Ready", "pod", "-l", "app=solo", "--timeout=60s")
    new = json.loads(kubectl(env, "get", "pods", "-l", "app=solo", "-o", "json").stdout)["items"]
    assert [p["metadata"]["name"] for p in new] != [old] and len(new) == 1
    assert not [f for f in lab.manifests.iterdir() if f.name.startswith("pod-")]  # a mark, not a file
    assert kubectl(env, "delete", "deployment", "solo").stdout.strip() == 'deployment.apps "solo" deleted'


def test_kubectl_delete_removes_the_file(lab, api):
    base, s, env, _ = api
    assert kubectl(env, "delete", "svc", "web").stdout.strip() == 'service "web" deleted'
    assert not (lab.manifests / "service-default-web.yaml").exists()
    res = kubectl(env, "get", "svc", "web", check=False)
    assert 'services "web" not found' in res.stderr


def test_hostile_clients_leave_the_daemon_responsive_and_leak_no_fds(lab, api):
    """200 watches that never read, then dropped with a RST; a client trickling its headers; a
    4 MiB body: the daemon's open files come back to where they were and it keeps answering."""
    import ssl
    base, s, _, _ = api
    pid = int((lab.state_dir / "daemon.pid").read_text().split()[0])
    fds = lambda: len(os.listdir(f"/proc/{pid}/fd"))  # noqa: E731
    assert s.get(base + "/api/v1/services", timeout=10).status_code == 200
    before = fds()
    pki = lab.state_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    port = int(base.rsplit(":", 1)[1])
    socks = []
    for _ in range(200):
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
        c.sendall(b"GET /api/v1/services?watch=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        socks.append(c)
    slow = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
    slow.sendall(b"GET /version HTTP/1.1\r\n")  # and never the rest
    t0 = time.monotonic()
    assert s.get(base + "/api/v1/namespaces/default/services/kubernetes", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 5
    assert lab.kproxy("status", timeout=30).returncode == 0  # every component healthy, answering
    big = s.post(base + "/api/v1/namespaces/default/services", data=b"{" + b" " * (4 << 20) + b"}",
                 headers={"Content-Type": "application/json"}, timeout=30)
    assert (big.status_code, big.json()["reason"]) == (413, "RequestEntityTooLarge")
    for c in socks + [slow]:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    deadline = time.monotonic() + 20
    while fds() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fds() <= before + 2, (fds(), before)
    assert s.get(base + "/version", timeout=10).status_code == 200


def _pids_with(argv: list[str]) -> list[int]:
    want = "\0".join(argv).encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open(f"/proc/{d}/cmdline", "rb").read().rstrip(b"\0") == want:
                    out.append(int(d))
            except OSError:
                pass
    return out


def test_a_client_killed_mid_exec_or_port_forward_leaves_no_process_or_fd(lab, api):
    import signal
    base, s, env, _ = api
    pid = int((lab.state_dir / "daemon.pid").read_text().split()[0])
    fds = lambda: len(os.listdir(f"/proc/{pid}/fd"))  # noqa: E731
    kubectl(env, "create", "deployment", "hold", "--image=nginx", "--port=8080")
    kubectl(env, "wait", "--for=condition=Ready", "pod", "-l", "app=hold", "--timeout=60s")
    pod = json.loads(kubectl(env, "get", "pods", "-l", "app=hold", "-o", "json").stdout)["items"][0]["metadata"]["name"]
    before = fds()
    argv = ["sleep", "4321"]
    client = subprocess.Popen([KUBECTL, "exec", pod, "--", *argv], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _pids_with(argv) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pids_with(argv), "the exec never started"
        client.send_signal(signal.SIGKILL)  # abrupt: no close frame
        client.wait(10)
        deadline = time.monotonic() + 15
        while _pids_with(argv) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _pids_with(argv)
    finally:
        client.kill()
    for p in left:  # (what this test started, by pid, before failing)
        os.kill(p, signal.SIGKILL)
    assert not left, f"the exec'd command outlived its client: {left}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pf = subprocess.Popen([KUBECTL, "port-forward", f"pod/{pod}", f"{port}:8080"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "Forwarding from" in pf.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(100).startswith(b"HTTP/1.")
            pf.send_signal(signal.SIGKILL)  # mid-connection
            pf.wait(10)
    finally:
        pf.kill()
    deadline = time.monotonic() + 20
    while fds() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fds() <= before + 2, (fds(), before)
    assert s.get(base + "/version", timeout=10).status_code == 200
    kubectl(env, "delete", "deployment", "hold")
