"""Pods at the limits (issue 12 #4, #10, #3): names as long as Kubernetes allows, securityContext
users, and `replicas: 1000000000`, in a real (sandboxed) lab. Tests run in file order."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .conftest import hits, prefixed_netns

DEPLOY = "d" * 230
POD = "p" * 253

LONG = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {DEPLOY}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: longdeploy}}}}
  template:
    metadata: {{labels: {{app: longdeploy}}}}
    spec:
      containers: [{{name: web, image: x, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: longdeploy}}
spec:
  selector: {{app: longdeploy}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {POD}, labels: {{app: longpod}}}}
spec:
  containers: [{{name: web, image: x, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: longpod}}
spec:
  selector: {{app: longpod}}
  ports: [{{port: 80, targetPort: 8080}}]
"""

USERS = """
apiVersion: v1
kind: Pod
metadata: {name: nobody, labels: {app: nobody}}
spec:
  securityContext: {runAsUser: 65534, runAsNonRoot: true}
  containers: [{name: c, image: x, command: [sh, -c, "id -u; id -g; exec sleep 3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: nobody-server, labels: {app: nobody-server}}
spec:
  containers:
  - {name: web, image: x, ports: [{containerPort: 80}], securityContext: {runAsUser: 65534, runAsGroup: 65534}}
---
apiVersion: v1
kind: Pod
metadata: {name: rootless}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: c, image: x, command: [sleep, "3600"]}]
"""

BOMB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: bomb}
spec:
  replicas: 1000000000
  selector: {matchLabels: {app: bomb}}
  template:
    metadata: {labels: {app: bomb}}
    spec:
      containers: [{name: web, image: x, ports: [{containerPort: 8080}]}]
"""

LATE = """
apiVersion: v1
kind: Service
metadata: {name: late}
spec:
  selector: {app: longpod}
  ports: [{port: 81, targetPort: 8080}]
"""


def _cluster_ip(lab, name: str) -> str:
    return lab.get("svc", name)["spec"]["clusterIP"]


def _serving(lab) -> bool:
    ready = len(lab.ready_pods("longdeploy")) == 2 and len(lab.ready_pods("longpod")) == 1
    return ready and set(hits(lab, "outside", f"http://{_cluster_ip(lab, 'longdeploy')}/", 6)) \
        <= {p["metadata"]["name"] for p in lab.ready_pods("longdeploy")} \
        and hits(lab, "outside", f"http://{_cluster_ip(lab, 'longpod')}/", 2) == [POD, POD]


def test_long_names_run_and_serve(lab):
    lab.apply(LONG, wait=False)
    lab.wait_for(lambda: _serving(lab), timeout=90, interval=1)
    ours = prefixed_netns(lab.cfg.naming.prefix)
    assert all(len(n) <= 63 for n in ours), ours
    assert lab.cfg.naming.pod_netns("default", POD) in ours
    res = lab.exec(POD, "hostname", check=True)
    assert res.stdout.strip() == POD[:63]  # the kubelet's truncated hostname
    assert re.search(r'"GET / HTTP/1.1" 200', lab.kproxy("logs", POD).stdout)


def test_long_names_survive_down_and_up(lab):
    prefix = lab.cfg.naming.prefix
    lab.down()
    assert prefixed_netns(prefix) == []  # `down` leaves no netns, nor their /etc/netns files
    assert not list(Path("/etc/netns").glob(f"{prefix}-*"))
    lab.up()
    lab.wait_for(lambda: _serving(lab), timeout=90, interval=1)


def test_run_as_user(lab):
    lab.apply(USERS, wait=False)
    lab.wait_for(lambda: lab.kproxy("logs", "nobody", check=False).stdout.split() == ["65534", "65534"], timeout=60)
    assert lab.exec("nobody", "id", "-u", check=True).stdout.strip() == "65534"  # exec runs as the container
    # the built-in server binds port 80 as uid 65534 (ip_unprivileged_port_start=0 in the pod's netns)
    lab.wait_for(lambda: lab.ready_pods("nobody-server"), timeout=60)
    netns = lab.cfg.naming.pod_netns("default", "nobody-server")
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
    uids = {re.search(r"^Uid:\s+(\d+)", open(f"/proc/{p}/status").read(), re.M).group(1) for p in pids}
    assert uids == {"65534"}
    ip = lab.get("pod", "nobody-server")["status"]["podIP"]
    assert hits(lab, "outside", f"http://{ip}:80/", 1) == ["nobody-server"]


def test_run_as_non_root_without_a_user_is_refused(lab):
    want = 'container has runAsNonRoot and image will run as root (pod: "rootless_default('

    def refused():
        pod = lab.get("pod", "rootless")
        waiting = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        return waiting.get("reason") == "CreateContainerConfigError" and waiting.get("message", "").startswith(want)
    lab.wait_for(refused, timeout=30)
    assert lab.get("pod", "rootless")["status"]["phase"] == "Pending"
    events = lab.get("events")["items"]
    assert any(e["reason"] == "Failed" and e["message"].startswith("Error: " + want)
               and e["message"].endswith(")\", container: c)") for e in events), \
        [(e["reason"], e["message"]) for e in events if e["involvedObject"]["name"] == "rootless"]


def _rss_mb(lab) -> float:
    pid = (lab.state_dir / "daemon.pid").read_text().strip()
    return int(re.search(r"^VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read(), re.M).group(1)) / 1024


def test_a_billion_replicas_leave_the_daemon_alive(lab):
    lab.apply(BOMB, wait=False)
    # the node takes 253 pods (its /24); 500 more wait, Pending, and no more are made
    pods = lambda: [p for p in lab.get("pods")["items"] if p["metadata"].get("labels", {}).get("app") == "bomb"]  # noqa: E731
    lab.wait_for(lambda: len(pods()) >= 500, timeout=60, interval=1)
    start = time.monotonic()
    lab.apply(LATE, wait=False)  # another Service is programmed meanwhile
    lab.wait_for(lambda: "default/late" in lab.node_save(), timeout=10, interval=0.2)
    programmed = time.monotonic() - start
    assert programmed < 5, f"a Service took {programmed:.1f} s to be programmed"
    everywhere = lambda: json.loads(lab.kproxy("get", "pods", "-A", "-o", "json").stdout)["items"]  # noqa: E731
    lab.wait_for(lambda: len([p for p in everywhere() if p["spec"].get("nodeName")]) == 253, timeout=240, interval=2)
    time.sleep(2)
    mine = pods()
    waiting = [p for p in mine if not p["spec"].get("nodeName")]
    assert len(waiting) == 500 and all(p["status"]["phase"] == "Pending" for p in waiting)
    assert len(mine) <= 253 + 500
    assert waiting[0]["status"]["conditions"][0]["message"] == "0/1 nodes are available: 1 Too many pods."
    failed = [e for e in lab.get("events")["items"] if e["reason"] == "FailedScheduling"]
    assert {e["message"] for e in failed} == {"0/1 nodes are available: 1 Too many pods."}
    assert all(e["count"] == 1 for e in failed)  # once per pod, not once per pass
    node = lab.get("node", "node-1")
    assert node["status"]["allocatable"]["pods"] == "253"
    rss = _rss_mb(lab)
    assert rss < 300, f"daemon RSS {rss:.0f} MB"
    table = lab.kproxy("get", "deploy", "bomb").stdout
    assert re.search(r"bomb\s+\d+/1000000000", table), table
    assert lab.kproxy("status", check=False).returncode == 0
    # the existing Services still answer
    assert hits(lab, "outside", f"http://{_cluster_ip(lab, 'longpod')}/", 2) == [POD, POD]
    lab.kproxy("delete", "deploy", "bomb")
    lab.wait_for(lambda: not pods(), timeout=180, interval=2)
    assert _serving(lab)
    print(f"daemon RSS with {len(mine)} bomb pods: {rss:.0f} MB; a Service programmed in {programmed:.1f} s",
          file=sys.stderr)
