"""Issue 13: one admission gate. Updating an immutable field is refused with the API server's
words, by `kproxy apply` (exit 1, the folder untouched) and by the daemon when the file is
edited in place (`kproxy status` names the file), and the admitted object keeps serving: its
pods answer through its Service, at its old ClusterIP."""
from __future__ import annotations

import pytest

from .conftest import hits

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: %(app)s}}
  template:
    metadata: {labels: {app: %(app)s}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
"""

SVC = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}%(cluster_ip)s
  ports: [{name: http, port: 80, targetPort: http}]
"""

SELECTOR_IMMUTABLE = ('Deployment.apps "web" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:'
                      'map[string]string{"app":"web2"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: '
                      "field is immutable")


@pytest.fixture(scope="module")
def web(lab):
    lab.apply(WEB % {"app": "web"} + "---" + SVC % {"cluster_ip": ""})
    pods = lab.wait_for(lambda: len(lab.ready_pods("web")) == 2 and lab.ready_pods("web"))
    return {p["metadata"]["name"] for p in pods}


def _answers(lab, ip: str) -> list[str]:
    # 20 new connections: both pods answer but for a 2 in a million chance (6 missed one in 32 runs)
    return hits(lab, "node/node-1", f"http://{ip}/", 20)


def _status_lines(lab) -> list[str]:
    return lab.kproxy("status").stdout.splitlines()


def _refused_apply(lab, tmp_path, text: str):
    f = tmp_path / "changed.yaml"
    f.write_text(text)
    return lab.kproxy("apply", "-f", str(f), check=False)


def test_a_changed_deployment_selector_is_refused_and_the_old_pods_keep_serving(lab, web, tmp_path):
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    path = lab.manifests / "deployment-default-web.yaml"
    before = path.read_text()
    res = _refused_apply(lab, tmp_path, WEB % {"app": "web2"})
    assert res.returncode == 1
    assert res.stderr == f"The {SELECTOR_IMMUTABLE}\n"
    assert path.read_text() == before  # not written
    path.write_text(WEB % {"app": "web2"})  # the same change, made in the folder
    lab.wait_for(lambda: f"error: {path}: {SELECTOR_IMMUTABLE}" in _status_lines(lab), timeout=15)
    assert lab.get("deploy", "web")["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert {p["metadata"]["name"] for p in lab.ready_pods("web")} == web  # nothing was replaced
    assert set(_answers(lab, ip)) == web
    path.write_text(before)  # fixed: the problem goes
    lab.wait_for(lambda: not any("spec.selector" in line for line in _status_lines(lab)), timeout=15)


def test_a_changed_cluster_ip_is_refused_and_the_old_one_keeps_answering(lab, web, tmp_path):
    ip = lab.get("svc", "web")["spec"]["clusterIP"]
    other = "10.96.0.222" if ip != "10.96.0.222" else "10.96.0.223"
    expected = (f'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{{"{other}"}}: '
                "may not change once set")
    path = lab.manifests / "service-default-web.yaml"
    before = path.read_text()
    changed = SVC % {"cluster_ip": f"\n  clusterIP: {other}"}
    res = _refused_apply(lab, tmp_path, changed)
    assert res.returncode == 1
    assert res.stderr == f"The {expected}\n"
    assert path.read_text() == before
    assert lab.kproxy("apply", "-f", str(path)).stdout == "service/web unchanged\n"  # a re-apply is no update
    path.write_text(changed)
    lab.wait_for(lambda: f"error: {path}: {expected}" in _status_lines(lab), timeout=15)
    assert lab.get("svc", "web")["spec"]["clusterIP"] == ip
    assert set(_answers(lab, ip)) == web
    assert f"-d {other}/32" not in lab.node_save()
    path.write_text(before)
    lab.wait_for(lambda: not any("clusterIPs" in line for line in _status_lines(lab)), timeout=15)
