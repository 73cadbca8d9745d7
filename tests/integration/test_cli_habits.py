"""kubectl habits against a real (sandboxed) lab: what a kubectl user types, and what comes back.

The tests run in file order against one lab; each checks outcomes (names, counts, exit codes,
answers from pods), not merely that a command ran.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from .conftest import hits

TEAM = """
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: team-a}
spec:
  replicas: %(replicas)d
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api, tier: back}}
    spec:
      containers: [{name: api, image: x, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team-a}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: http}]
"""

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
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
metadata: {name: client, labels: {app: client}}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"""

TALKER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: talker}
spec:
  replicas: 2
  selector: {matchLabels: {app: talker}}
  template:
    metadata: {labels: {app: talker}}
    spec:
      containers:
      - name: talk
        image: busybox
        command: [sh, -c, 'echo "hello from $HOSTNAME"; echo second line; exec sleep 3600']
"""

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ing}
spec:
  rules: [{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"""


def write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def names(table: str, prefix: str = "") -> list[str]:
    return [line.split()[0] for line in table.strip().splitlines()[1:] if line.split()[0].startswith(prefix)]


@pytest.fixture(scope="module")
def web(lab):
    lab.apply(WEB)
    pods = lab.wait_for(lambda: len(lab.ready_pods("web")) == 2 and lab.ready_pods("web"))
    lab.wait_for(lambda: lab.ready_pods("client"))
    return sorted(p["metadata"]["name"] for p in pods)


def test_a_namespace_and_its_objects_apply_in_one_go(lab):
    res = lab.apply(TEAM % {"replicas": 2})  # --wait
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["namespace/team-a created", "deployment.apps/api created",
                                       "service/api created"]
    # --wait returned only when exactly the applied number of pods were Ready
    pods = lab.get("pods", namespace="team-a")["items"]
    assert len(pods) == 2
    assert all(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) for p in pods)
    assert lab.get("svc", "api", namespace="team-a")["spec"]["clusterIP"]


def test_apply_wait_follows_a_scale_down(lab):
    res = lab.apply(TEAM % {"replicas": 1})
    assert "deployment.apps/api configured" in res.stdout
    pods = lab.get("pods", namespace="team-a")["items"]
    assert len(pods) == 1 and not pods[0]["metadata"].get("deletionTimestamp")


def test_refusals_are_worded_like_kubectl(lab, tmp_path):
    missing_ns = write(tmp_path, "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: nope}\n"
                       "spec: {ports: [{port: 80}]}\n", "extra.yaml")
    res = lab.kproxy("apply", "-f", str(missing_ns), check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == (f'Error from server (NotFound): error when creating "{missing_ns}": '
                                  'namespaces "nope" not found')
    taken = write(tmp_path, "apiVersion: v1\nkind: Service\nmetadata: {name: dup}\n"
                  "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n", "dup.yaml")
    res = lab.kproxy("apply", "-f", str(taken), check=False)
    assert res.returncode == 1
    assert res.stderr.startswith('The Service "dup" is invalid: ') and "already allocated" in res.stderr
    assert not list(lab.manifests.glob("*dup*"))  # refused: not left in the folder
    assert lab.kproxy("get", "svc", "dup", check=False).returncode == 1


def test_an_ingress_is_refused_and_the_lab_keeps_serving(lab, web, tmp_path):
    path = write(tmp_path, INGRESS, "ingress.yaml")
    res = lab.kproxy("apply", "-f", str(path), check=False)
    assert res.returncode == 1
    assert len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith(f'error: Ingress "ing" from "{path}" is not applied: the lab serves Namespace, ')
    assert not any("Ingress" in f.read_text() for f in lab.manifests.rglob("*.yaml"))
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    answers = hits(lab, "client", f"http://{ip}/", 6)
    assert set(answers) <= set(web) and len(answers) == 6, answers
    curl = lab.kproxy("exec", "client", "--", "curl", "-s", "--max-time", "5", f"http://{ip}/")
    assert re.match(r"pod web-\S+ namespace default", curl.stdout), curl.stdout


def test_get_pods_by_label(lab, web):
    out = lab.kproxy("get", "pods", "-l", "app=web").stdout
    assert names(out) == web
    out = lab.kproxy("get", "pods", "-l", "app!=web", "--show-labels").stdout
    assert names(out) == ["client"]
    assert out.splitlines()[0].split()[-1] == "LABELS" and out.splitlines()[1].split()[-1] == "app=client"
    out = lab.kproxy("get", "pods", "-n", "team-a", "-l", "app in (api),tier").stdout
    assert len(names(out)) == 1 and names(out)[0].startswith("api-")
    none = lab.kproxy("get", "pods", "-l", "app=nothing")
    assert none.stdout == "" and none.stderr == "No resources found in default namespace.\n"


def test_get_all_and_replicasets(lab, web):
    out = lab.kproxy("get", "all").stdout
    sections = out.strip().split("\n\n")
    assert [s.split()[1] for s in sections] == ["READY", "TYPE", "READY", "DESIRED"]
    assert names(sections[0], "pod/web-") == [f"pod/{n}" for n in web]
    assert "pod/client" in names(sections[0])
    assert {"service/kubernetes", "service/web"} <= set(names(sections[1]))
    assert names(sections[2]) == ["deployment.apps/web"]
    rs = [line.split() for line in sections[3].splitlines()[1:]]
    rs_name = "-".join(web[0].split("-")[:2])
    assert [r[:4] for r in rs] == [[f"replicaset.apps/{rs_name}", "2", "2", "2"]]
    assert lab.kproxy("get", "rs", rs_name).stdout.splitlines()[1].split()[:4] == [rs_name, "2", "2", "2"]


def test_get_several_kinds_and_unknown_names(lab, web):
    out = lab.kproxy("get", "deploy,svc", "-n", "team-a").stdout
    assert names(out.split("\n\n")[0]) == ["deployment.apps/api"]
    assert names(out.split("\n\n")[1]) == ["service/api"]
    res = lab.kproxy("get", "pods", "nosuch", check=False)
    assert res.returncode == 1 and res.stderr == 'Error from server (NotFound): pods "nosuch" not found\n'


def test_describe_pod(lab, web):
    res = lab.kproxy("describe", "pod", web[0])
    lines = res.stdout.splitlines()
    assert re.match(rf"^Name:\s+{web[0]}$", lines[0])
    assert re.search(r"^Node:\s+node-1/192\.168\.49\.2$", res.stdout, re.M)
    assert re.search(r"^Status:\s+Running$", res.stdout, re.M)
    assert re.search(rf"^Controlled By:\s+ReplicaSet/{'-'.join(web[0].split('-')[:2])}$", res.stdout, re.M)
    assert re.search(r"^    Ready:\s+True$", res.stdout, re.M)
    assert re.search(r"^  Ready\s+True $", res.stdout, re.M)  # the Conditions table
    assert re.search(rf"^  Normal\s+Scheduled\s+\S+\s+default-scheduler\s+Successfully assigned default/{web[0]} "
                     r"to node-1$", res.stdout, re.M)
    svc = lab.kproxy("describe", "svc", "web").stdout
    endpoints = re.search(r"^Endpoints:\s+(\S+)$", svc, re.M).group(1).split(",")
    assert len(endpoints) == 2 and all(e.endswith(":8080") for e in endpoints)
    deploy = lab.kproxy("describe", "deploy", "web").stdout
    assert re.search(r"^Replicas:\s+2 desired \| 2 updated \| 2 total \| 2 available \| 0 unavailable$", deploy, re.M)


def test_exec_it_and_into_a_deployment(lab, web):
    res = lab.kproxy("exec", "-it", web[0], "--", "hostname", check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()
    res = lab.kproxy("exec", "-ti", "deploy/web", "--", sys.executable, "-c",
                     "import socket; print(socket.create_connection(('127.0.0.1', 8080), 2).getpeername()[1])",
                     check=False)
    assert res.returncode == 0 and res.stdout.strip() == "8080", res.stderr  # a web pod: its server listens
    res = lab.kproxy("exec", "node/nope", "--", "true", check=False)
    assert res.returncode == 1 and res.stderr == 'error: nodes "nope" not found\n'


def test_logs_of_a_deployment(lab):
    lab.apply(TALKER)
    res = lab.kproxy("logs", "deploy/talker")
    first = re.match(r"Found 2 pods, using pod/(talker-\S+)$", res.stderr.strip())
    assert first, res.stderr
    assert res.stdout.splitlines() == [f"hello from {first.group(1)}", "second line"]
    assert lab.kproxy("logs", f"pod/{first.group(1)}", "--tail", "1").stdout == "second line\n"
    assert lab.kproxy("logs", first.group(1), "-c", "talk", "--tail=1").stdout == "second line\n"
    res = lab.kproxy("logs", "x", check=False)
    assert res.returncode == 1 and res.stderr == 'Error from server (NotFound): pods "x" not found\n'


def test_delete_speaks_kubectl(lab, tmp_path):
    assert lab.kproxy("delete", "deploy", "talker").stdout == 'deployment.apps "talker" deleted\n'
    res = lab.kproxy("delete", "-f", str(write(tmp_path, TEAM % {"replicas": 1}, "team.yaml")))
    assert res.stdout.splitlines() == ['namespace "team-a" deleted', 'deployment.apps "api" deleted',
                                       'service "api" deleted']
    res = lab.kproxy("delete", "svc", "nosuch", check=False)
    assert res.returncode == 1 and res.stderr == 'Error from server (NotFound): services "nosuch" not found\n'
    lab.wait_for(lambda: not lab.kproxy("get", "pods", "-n", "team-a").stdout, timeout=30)


def test_a_stopped_lab_says_so(lab, web):
    lab.down()
    try:
        stopped = (f"error: the lab in {lab.state_dir} is not running; start it with "
                   f"kproxy up --state-dir {lab.state_dir}")
        for args in (("get", "pods"), ("exec", web[0], "--", "true"), ("logs", web[0]), ("rules",)):
            res = lab.kproxy(*args, check=False)
            assert res.returncode == 1 and res.stderr.startswith(stopped) and "--sandbox" in res.stderr, args
        res = lab.kproxy("status", check=False)
        assert res.returncode == 1 and res.stdout.splitlines()[0] == "daemon: not running"
        res = lab.kproxy("delete", "svc", "web")
        assert res.stdout == 'service "web" deleted\n' and "takes effect at `kproxy up`" in res.stderr
    finally:
        lab.up()
    assert lab.kproxy("get", "svc", "web", check=False).returncode == 1
    assert len(lab.wait_for(lambda: len(lab.ready_pods("web")) == 2 and lab.ready_pods("web"))) == 2
