"""The one admission gate (api/admission.py): create, update (immutable fields with the API
server's words), namespaces, pools, unserved kinds; and the daemon and `kproxy apply` giving the
same answer for the same object because both ask the gate."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from kproxy import cli
from kproxy.api import admission
from kproxy.api.admission import INVALID, NO_MATCH, NOT_FOUND, Admission
from kproxy.config import LabConfig
from kproxy.context import key_of
from kproxy.daemon import Daemon
from kproxy.frontend import MANIFEST_ERRORS

GATE = Admission()
POD_FORBIDDEN = ("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                 "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
                 "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                 "previously negative)")


def service(name="web", **spec):
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def deployment(name="web", labels=None, replicas=2):
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}


def pod(name="p", image="busybox", port=80):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": image, "ports": [{"containerPort": port}]}]}}


def admitted(obj, **allocated):
    """What the lab stores for ``obj``: defaulted, with the allocator's values and its own fields."""
    out = GATE.admit(obj).obj
    out["spec"].update(allocated)
    out["metadata"]["uid"] = "u-1"
    out["status"] = {}
    return out


# -- create ---------------------------------------------------------------------------------
def test_a_valid_object_comes_back_defaulted():
    verdict = GATE.admit(service())
    assert verdict.ok and verdict.message is None and not verdict.update
    assert verdict.obj["metadata"]["namespace"] == "default" and verdict.obj["spec"]["type"] == "ClusterIP"


def test_an_invalid_object_is_refused_with_the_api_servers_words():
    verdict = GATE.admit(service(ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]))
    assert verdict.reason == INVALID
    assert verdict.message == 'Service "web" is invalid: spec.ports[1].name: Duplicate value: "a"'
    assert verdict.kubectl_message("web.yaml") == 'The Service "web" is invalid: spec.ports[1].name: Duplicate value: "a"'


def test_the_lab_settings_are_the_gates():
    obj = service(type="NodePort", ports=[{"port": 80, "nodePort": 8080}])
    assert "provided port is not in the valid range. The range of valid ports is 30000-32767" in GATE.admit(obj).message
    assert Admission((8000, 9000)).admit(obj).ok
    assert "is not in the valid range. The range of valid IPs is 10.96.0.0/12" in GATE.admit(
        service(clusterIP="10.0.0.5")).message
    assert Admission(service_cidr="10.0.0.0/24").admit(service(clusterIP="10.0.0.5")).ok


@pytest.mark.parametrize("obj, words", [
    ({**deployment(), "apiVersion": "apps/v2"}, 'no matches for kind "Deployment" in version "apps/v2"'),
    ({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}, "is not applied: kproxy makes its node itself"),
    ({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"}},
     'StatefulSet "s" from "f.yaml" is not applied: the lab serves Namespace, '),
])
def test_unserved_kinds_are_refused_before_anything_else(obj, words):
    verdict = GATE.admit(obj, "f.yaml")
    assert verdict.reason == NO_MATCH and words in verdict.message
    assert verdict.kubectl_message() == f"error: {verdict.message}"
    assert "ensure CRDs" not in (GATE.admit(obj, "f.yaml", hint=False).message or "")


def test_a_missing_namespace_is_not_found_after_validation():
    obj = service()
    obj["metadata"]["namespace"] = "team"
    verdict = GATE.admit(obj, "web.yaml", namespaces=set())
    assert (verdict.reason, verdict.message) == (NOT_FOUND, 'namespaces "team" not found')
    assert verdict.kubectl_message("web.yaml") == ('Error from server (NotFound): error when creating "web.yaml": '
                                                   'namespaces "team" not found')
    assert GATE.admit(obj, namespaces={"team"}).ok
    assert GATE.admit(obj, namespaces=lambda ns: ns == "team").ok
    assert GATE.admit(obj).ok  # no lab (rules --render): namespaces are not asked
    obj["metadata"]["namespace"] = "kube-system"
    assert GATE.admit(obj, namespaces=set()).ok  # a lab's own namespaces always exist
    obj["spec"]["ports"] = [{"name": "a", "port": 80}, {"name": "a", "port": 81}]
    obj["metadata"]["namespace"] = "team"
    assert GATE.admit(obj, namespaces=set()).reason == INVALID  # validation comes first, as upstream


def test_a_pool_whose_addresses_do_not_parse_is_refused():
    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "p", "namespace": "metallb-system"}, "spec": {"addresses": ["10.0.0.9-10.0.0.1"]}}
    verdict = GATE.admit(pool)
    assert verdict.reason == INVALID
    assert verdict.message == ('IPAddressPool.metallb.io "p" is invalid: spec.addresses[0]: Invalid value: '
                               '"10.0.0.9-10.0.0.1": the range ends before it starts')
    pool["spec"]["addresses"] = ["10.0.0.1-10.0.0.9"]
    assert GATE.admit(pool).ok


def test_a_bug_in_validation_refuses_the_object_by_name(monkeypatch):
    def boom(obj, **kw):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(admission, "validate", boom)
    verdict = Admission().admit(service(), "web.yaml")
    assert verdict.kubectl_message() == 'error: error validating "web.yaml": Service "web": unhashable type: \'list\''


# -- update: Deployment ----------------------------------------------------------------------
def test_a_deployments_selector_is_immutable():
    old = admitted(deployment())
    assert GATE.admit(deployment(replicas=5), old=old).ok  # replicas may change
    verdict = GATE.admit(deployment(labels={"app": "web", "v": "2"}), old=old)
    assert verdict.update and verdict.reason == INVALID
    assert verdict.message == (
        'Deployment.apps "web" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:'
        'map[string]string{"app":"web", "v":"2"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: '
        "field is immutable")


# -- update: Service -------------------------------------------------------------------------
def test_reapplying_a_service_that_leaves_allocations_empty_is_not_an_update_of_them():
    old = admitted(service(type="NodePort"), clusterIP="10.96.0.12", clusterIPs=["10.96.0.12"])
    old["spec"]["ports"][0]["nodePort"] = 30080
    assert GATE.admit(service(type="NodePort"), old=old).ok
    verdict = GATE.admit(service(type="NodePort", clusterIP="10.96.0.12"), old=old)
    assert verdict.ok and verdict.obj["spec"]["clusterIP"] == "10.96.0.12"
    assert "nodePort" not in GATE.admit(service(type="NodePort"), old=old).obj["spec"]["ports"][0]  # as declared


def test_a_services_cluster_ip_may_not_change_once_set():
    old = admitted(service(), clusterIP="10.96.0.12", clusterIPs=["10.96.0.12"])
    verdict = GATE.admit(service(clusterIP="10.96.0.50"), old=old)
    assert verdict.message == ('Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.96.0.50"}: '
                               "may not change once set")
    assert GATE.admit(service(clusterIP="None"), old=old).message == (
        'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{"None"}: may not change once set')
    assert GATE.admit(service(type="ExternalName", externalName="example.com", selector=None), old=old).ok


def test_a_services_ip_families_may_not_change_once_set():
    dual = Admission(service_cidr=["10.96.0.0/12", "fd00:10:96::/112"])
    old = dual.admit(service(ipFamilyPolicy="RequireDualStack")).obj
    old["spec"].update(clusterIPs=["10.96.0.12", "fd00:10:96::c"], clusterIP="10.96.0.12", ipFamilies=["IPv4", "IPv6"])
    verdict = dual.admit(service(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"]), old=old)
    assert verdict.message == ('Service "web" is invalid: spec.ipFamilies[0]: Invalid value: '
                               '[]string{"IPv6", "IPv4"}: may not change once set')


def test_a_load_balancers_class_may_not_change_once_set():
    old = admitted(service(type="LoadBalancer", loadBalancerClass="example.com/a"),
                   clusterIP="10.96.0.12", clusterIPs=["10.96.0.12"])
    verdict = GATE.admit(service(type="LoadBalancer", loadBalancerClass="example.com/b"), old=old)
    assert verdict.message == ('Service "web" is invalid: spec.loadBalancerClass: Invalid value: "example.com/b": '
                               "may not change once set")


# -- update: Pod and Namespace ---------------------------------------------------------------
def test_a_pods_spec_changes_only_in_its_images():
    old = admitted(pod(), nodeName="node-1")  # the scheduler's nodeName stays when the file has none
    assert GATE.admit(pod(), old=old).ok
    assert GATE.admit(pod(image="busybox:1.36"), old=old).ok
    verdict = GATE.admit(pod(port=8080), old=old)
    assert verdict.message == (f'Pod "p" is invalid: {POD_FORBIDDEN}\n'
                               "- spec.containers[0].ports[0].containerPort: 80\n"
                               "+ spec.containers[0].ports[0].containerPort: 8080")
    relabelled = pod()
    relabelled["metadata"]["labels"]["tier"] = "fe"
    assert GATE.admit(relabelled, old=old).ok  # metadata is not the spec


def test_a_namespace_update_is_admitted():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    old = GATE.admit(ns).obj
    ns["metadata"]["labels"] = {"env": "dev"}
    assert GATE.admit(ns, old=old).ok  # a Namespace has no field an update may not change but its name


# -- one gate: the daemon and `kproxy apply` say the same -------------------------------------
def _daemon(state: Path) -> Daemon:
    cfg = LabConfig(state_dir=str(state), sandbox=True)
    cfg.save()
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    return Daemon(cfg, controller=True, agent=False)


def _folder_problem(d: Daemon, text: str) -> str:
    (Path(d.cfg.manifests) / "web.yaml").write_text(text)
    d.frontend.poll()
    [problem] = [p for p in d.store.get(MANIFEST_ERRORS) if p.get("source", "").endswith("web.yaml")]
    return problem["message"]


def _apply(d: Daemon, tmp_path: Path, text: str, monkeypatch):
    from kproxy import control
    mine, real = control.cmdline(os.getpid()), control.is_kproxy
    monkeypatch.setattr(control, "is_kproxy", lambda argv: argv == mine or real(argv))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (Path(d.cfg.state_dir) / "daemon.pid").write_text(f"{os.getpid()}\n")  # "running": this process
    f = tmp_path / "web.yaml"
    f.write_text(text)
    return CliRunner().invoke(cli.main, ["apply", "-f", str(f)], env={"KPROXY_STATE_DIR": d.cfg.state_dir})


DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: %s}}
  template:
    metadata: {labels: {app: %s}}
    spec: {containers: [{name: web, image: x}]}
"""


def test_the_daemon_and_apply_refuse_an_update_with_the_same_message(tmp_path, monkeypatch):
    d = _daemon(tmp_path / "lab")
    (Path(d.cfg.manifests) / "web.yaml").write_text(DEPLOY % ("web", "web"))
    d.frontend.poll()
    stored = d.store.get(key_of("Deployment", "default", "web"))
    assert stored["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    changed = DEPLOY % ("web2", "web2")
    res = _apply(d, tmp_path, changed, monkeypatch)
    assert res.exit_code == 1
    assert (Path(d.cfg.manifests) / "web.yaml").read_text() == DEPLOY % ("web", "web")  # the folder is not written
    from_folder = _folder_problem(d, changed)  # the same change, written straight into the folder
    assert from_folder.startswith('Deployment.apps "web" is invalid: spec.selector: Invalid value: ')
    assert from_folder.endswith(": field is immutable")
    assert res.stderr == f"The {from_folder}\n"
    assert d.store.get(key_of("Deployment", "default", "web"))["spec"]["selector"] == {"matchLabels": {"app": "web"}}


def test_the_daemon_and_apply_refuse_a_bad_object_with_the_same_message(tmp_path, monkeypatch):
    d = _daemon(tmp_path / "lab")
    bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, nodePort: 80}], type: NodePort}\n"
    res = _apply(d, tmp_path, bad, monkeypatch)
    assert res.exit_code == 1 and not list(Path(d.cfg.manifests).iterdir())
    from_folder = _folder_problem(d, bad)
    assert "provided port is not in the valid range" in from_folder
    assert res.stderr == f"The {from_folder}\n"
    unserved = "apiVersion: apps/v2\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n"
    (Path(d.cfg.manifests) / "web.yaml").unlink()
    res = _apply(d, tmp_path, unserved, monkeypatch)
    from_folder = _folder_problem(d, unserved)
    assert res.stderr.splitlines()[0] == f"error: {from_folder}".replace(
        str(Path(d.cfg.manifests) / "web.yaml"), str(tmp_path / "web.yaml"))


def test_a_pool_holding_a_lab_address_is_refused_by_the_gate():
    from kproxy.api.admission import Admission
    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "p", "namespace": "metallb-system"},
            "spec": {"addresses": ["192.168.49.240-192.168.49.250", "192.168.49.96/28"]}}
    gate = Admission(reserved=lambda: {"192.168.49.100": "the lab's outside host"})
    v = gate.admit(pool, "pool.yaml", namespaces={"metallb-system"})
    assert v.message == ('IPAddressPool.metallb.io "p" is invalid: spec.addresses[1]: Invalid value: "192.168.49.96/28": '
                         "holds 192.168.49.100, the address of the lab's outside host: a pool may not hand out "
                         "a node's or the lab's own address")
    assert Admission().admit(pool, "pool.yaml", namespaces={"metallb-system"}).ok  # no lab: nothing reserved
