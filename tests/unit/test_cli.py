"""The `kproxy` command's kubectl habits, without root or a daemon.

Each test builds a lab state dir by hand: a saved LabConfig, a SqliteStore filled with the
objects the daemon would have stored, and (for a "running" lab) a daemon.pid naming this test
process. `os.geteuid` is patched to 0 so the root check passes (and to 1000 to test it), and
`time.time` is frozen so every AGE is exact.
"""
from __future__ import annotations

import calendar
import copy
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest

from kproxy.node.inpod import in_pod
import yaml
from click.testing import CliRunner

from kproxy import cli, describe, tables
from kproxy.cli import access, apply, get
from kproxy.api import defaults
from kproxy.config import LabConfig
from kproxy.controllers import replicas
from kproxy.store.base import object_key
from kproxy.store.sqlite import SqliteStore

CREATED = "2024-05-01T12:00:00Z"
T0 = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0))
NOW = T0 + 600  # every object is 10m old


# -- fixtures -----------------------------------------------------------------------------
def deployment(name="web", replicas_=2, ns="default", image="nginx"):
    d = {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": ns},
         "spec": {"replicas": replicas_, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}},
                               "spec": {"containers": [{"name": name, "image": image,
                                                        "ports": [{"name": "http", "containerPort": 8080}],
                                                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}}}}
    d = defaults.apply_defaults(d)
    d["metadata"].update(uid="d-uid", creationTimestamp=CREATED)
    return d


def running_pod(deploy, suffix, ip, ready=True, template_hash=None, terminating=False):
    h = template_hash or replicas.pod_template_hash(deploy["spec"]["template"])
    pod = replicas.new_pod(deploy, h, random.Random(suffix), set(), CREATED)
    pod["metadata"]["name"] = f"{deploy['metadata']['name']}-{h}-{suffix}"
    pod["spec"]["nodeName"] = "node-1"
    cond = lambda t, ok: {"type": t, "status": "True" if ok else "False"}  # noqa: E731
    pod["status"] = {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.49.2", "startTime": CREATED,
        "conditions": [cond("PodScheduled", True), cond("Initialized", True), cond("ContainersReady", ready),
                       cond("Ready", ready)],
        "containerStatuses": [{"name": c["name"], "ready": ready, "restartCount": 0, "started": True,
                               "state": {"running": {"startedAt": CREATED}}, "image": c.get("image", "")}
                              for c in pod["spec"]["containers"]]}
    if terminating:
        pod["metadata"]["deletionTimestamp"] = CREATED
    return pod


def service(name="web", ns="default", **spec):
    s = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}], **spec}}
    s = defaults.apply_defaults(s)
    s["metadata"].update(uid=f"{name}-uid", creationTimestamp=CREATED)
    s["spec"].setdefault("clusterIP", "10.96.0.20")
    s["spec"].setdefault("clusterIPs", [s["spec"]["clusterIP"]])
    return s


class Lab:
    def __init__(self, root: Path):
        self.dir = root
        self.cfg = LabConfig(state_dir=str(root), sandbox=True)
        self.cfg.save()
        Path(self.cfg.manifests).mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(root / "store.db")

    def start(self):
        (self.dir / "daemon.pid").write_text(f"{os.getpid()}\n")

    def stop(self):
        (self.dir / "daemon.pid").unlink(missing_ok=True)

    def put(self, *objs):
        for o in objs:
            m = o["metadata"]
            self.store.put(object_key(o["kind"], m.get("namespace"), m["name"]), o)

    def run(self, *args, input=None):
        return CliRunner().invoke(cli.main, list(args), input=input, env={"KPROXY_STATE_DIR": str(self.dir)})


@pytest.fixture(autouse=True)
def this_process_is_a_daemon(monkeypatch):
    """A "running" lab's daemon.pid names this test process: let its command line pass as kproxy's."""
    from kproxy import control
    mine, real = control.cmdline(os.getpid()), control.is_kproxy
    monkeypatch.setattr(control, "is_kproxy", lambda argv: argv == mine or real(argv))


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW)


@pytest.fixture
def root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def lab(tmp_path, root, clock):
    """A running lab: web Deployment (2 Ready pods of the current template, one old pod
    terminating), Services web + kubernetes, their Endpoints and slices, events."""
    lab = Lab(tmp_path)
    lab.start()
    d = deployment()
    h = replicas.pod_template_hash(d["spec"]["template"])
    pods = [running_pod(d, "aaaaa", "10.244.0.9"), running_pod(d, "bbbbb", "10.244.0.10"),
            running_pod(d, "ccccc", "10.244.0.3", ready=False, template_hash="oldhash", terminating=True)]
    d["status"] = {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                   "updatedReplicas": 2}
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-1", "creationTimestamp": CREATED,
                         "labels": {"kubernetes.io/hostname": "node-1", "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"},
                                     {"type": "Hostname", "address": "node-1"}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                       "nodeInfo": {"kubeProxyVersion": "kproxy", "kubeletVersion": "kproxy"}}}
    nss = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "creationTimestamp": CREATED},
            "status": {"phase": "Active"}} for n in ("default", "kube-system")]
    web, kube = service("web"), service("kubernetes", clusterIP="10.96.0.1", selector=None,
                                        ports=[{"name": "https", "port": 443, "targetPort": 6443}])
    np = service("web-np", type="NodePort", clusterIP="10.96.0.30",
                 ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}])
    eps = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default",
                                                                 "creationTimestamp": CREATED},
           "subsets": [{"addresses": [{"ip": "10.244.0.9"}, {"ip": "10.244.0.10"}, {"ip": "10.244.0.2"}],
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
          "metadata": {"name": "web-abcde", "namespace": "default", "creationTimestamp": CREATED,
                       "labels": {"kubernetes.io/service-name": "web"}},
          "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
          "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": True}},
                        {"addresses": ["10.244.0.10"], "conditions": {"ready": True}},
                        {"addresses": ["10.244.0.3"], "conditions": {"ready": False}}]}
    lab.put(d, *pods, node, *nss, web, kube, np, eps, sl)
    ev = lambda n, kind, name, reason, msg, typ="Normal", count=1: {  # noqa: E731
        "apiVersion": "v1", "kind": "Event", "type": typ, "reason": reason, "message": msg, "count": count,
        "metadata": {"name": n, "namespace": "default"},
        "involvedObject": {"kind": kind, "namespace": "default", "name": name},
        "firstTimestamp": CREATED, "lastTimestamp": "2024-05-01T12:05:00Z"}
    lab.store.put("/registry/events/default/e1", ev("e1", "Pod", pods[0]["metadata"]["name"], "Scheduled",
                                                     f"Successfully assigned default/{pods[0]['metadata']['name']} "
                                                     "to node-1"))
    lab.store.put("/registry/events/default/e2", ev("e2", "Pod", pods[0]["metadata"]["name"], "Unhealthy",
                                                     "Readiness probe failed: HTTP probe failed", "Warning", 3))
    lab.store.put("/registry/events/default/e3", ev("e3", "Deployment", "web", "ScalingReplicaSet",
                                                     f"Scaled up replica set web-{h} from 0 to 2"))
    lab.hash = h
    lab.pods = pods
    return lab


def out_lines(res):
    return res.output.rstrip("\n").split("\n")


# -- label selectors ----------------------------------------------------------------------
@pytest.mark.parametrize("text, labels, want", [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app!=web", {"app": "db"}, True),
    ("app!=web", {}, True),  # as upstream: a missing key satisfies !=
    ("app!=web", {"app": "web"}, False),
    ("app", {"app": ""}, True),
    ("app", {"tier": "x"}, False),
    ("!app", {"tier": "x"}, True),
    ("!app", {"app": "web"}, False),
    ("app=web,tier=front", {"app": "web", "tier": "front"}, True),
    ("app=web,tier=front", {"app": "web", "tier": "back"}, False),
    ("app in (web, db),!canary", {"app": "db"}, True),
    ("app in (web,db)", {"app": "cache"}, False),
    ("app notin (web)", {}, True),
    ("app notin (web)", {"app": "web"}, False),
    ("app.kubernetes.io/name=web", {"app.kubernetes.io/name": "web"}, True),
    (" app = web , tier ", {"app": "web", "tier": "x"}, True),
    ("rank>2", {"rank": "3"}, True),
    ("rank<2", {"rank": "3"}, False),
    ("", {"anything": "x"}, True),
])
def test_label_selector_matching(text, labels, want):
    assert get.requirements_match(get.parse_selector(text), labels) is want


def test_label_selector_parsing():
    assert get.parse_selector("a=b,c!=d,e,!f,g in (x,y)") == [
        ("a", "=", ("b",)), ("c", "!=", ("d",)), ("e", "exists", ()), ("f", "!", ()), ("g", "in", ("x", "y"))]


@pytest.mark.parametrize("bad", ["a=b=c", "=b", "a in ()", "a,,b", "a>x", "a b"])
def test_bad_label_selectors_are_refused(bad):
    with pytest.raises(get.SelectorError):
        get.parse_selector(bad)


# -- yaml as kubectl writes it ------------------------------------------------------------
def test_yaml_quotes_like_kubectl():
    doc = {"status": "True", "resourceVersion": "", "port": "80", "answer": "yes", "plain": "Running",
           "colon": "a: b", "n": 3, "b": True, "multi": "line1\nline2\n"}
    text = get.to_yaml(doc)
    assert 'status: "True"' in text
    assert 'resourceVersion: ""' in text
    assert 'port: "80"' in text
    assert 'answer: "yes"' in text
    assert "plain: Running" in text
    assert "colon: 'a: b'" in text
    assert "n: 3" in text and "b: true" in text
    assert "multi: |\n  line1\n  line2\n" in text
    assert list(yaml.safe_load(text)) == sorted(doc)  # keys sorted, as kubectl's
    assert yaml.safe_load(text) == doc


def test_get_o_yaml_quotes_condition_status(lab):
    res = lab.run("get", "pod", lab.pods[0]["metadata"]["name"], "-o", "yaml")
    assert res.exit_code == 0, res.output
    assert 'status: "True"' in res.output and "'True'" not in res.output
    assert res.output.startswith("apiVersion: v1\nkind: Pod\nmetadata:\n")


# -- root and a lab that is not running -----------------------------------------------------
NEED_ROOT = "error: this command needs root (network namespaces and iptables): run it with sudo\n"


@pytest.mark.parametrize("args", [
    ["get", "pods"], ["apply", "-f", "{file}"], ["delete", "svc", "web"], ["exec", "x", "--", "true"],
    ["logs", "x"], ["status"], ["describe", "pod", "x"], ["rules"], ["up", "--sandbox"], ["down"],
])
def test_lab_commands_need_root(tmp_path, monkeypatch, args):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lab = Lab(tmp_path)
    lab.start()
    f = tmp_path / "x.yaml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    res = lab.run(*[a.replace("{file}", str(f)) for a in args])
    assert res.exit_code == 1
    assert res.output == NEED_ROOT
    assert not list(Path(lab.cfg.manifests).iterdir())  # nothing was written


def test_rules_render_and_help_need_no_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    f = tmp_path / "svc.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                 "spec: {clusterIP: 10.96.0.5, selector: {app: web}, ports: [{port: 80}]}\n")
    res = CliRunner().invoke(cli.main, ["rules", "--render", "-f", str(f)])
    assert res.exit_code == 0, res.output
    assert "default/web" in res.output
    for cmd in ("get", "apply", "exec", "logs", "describe", "status"):
        res = CliRunner().invoke(cli.main, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output


@pytest.mark.parametrize("args", [["get", "pods"], ["exec", "web", "--", "true"], ["logs", "web"], ["rules"],
                                  ["describe", "pod", "web"]])
def test_commands_say_when_the_lab_is_not_running(lab, args):
    lab.stop()
    res = lab.run(*args)
    assert res.exit_code == 1
    assert res.output == (f"error: the lab in {lab.dir} is not running; start it with "
                          f"kproxy up --state-dir {lab.dir} --sandbox\n")


def test_status_of_a_stopped_lab(lab):
    lab.stop()
    res = lab.run("status")
    assert res.exit_code == 1
    assert out_lines(res)[0] == "daemon: not running"


def test_status_of_a_running_lab(lab):
    lab.store.put("/kproxy/proxy-status", {"lastSync": CREATED, "full": True, "durationSeconds": 0.01,
                                           "servicesWritten": 3})
    res = lab.run("status")
    assert res.exit_code == 0
    assert out_lines(res)[0] == f"daemon: running, pid {os.getpid()}"
    assert "last rules sync: 2024-05-01T12:00:00Z (full, 3 Services written, 10.0 ms)" in res.output


def test_status_shows_component_health_and_exits_1_on_a_failed_one(lab):
    """#1: a failing background thread is impossible to miss: `status` names it and exits 1."""
    lab.store.put("/kproxy/health", {"role": "all", "node": "node-1", "pid": os.getpid(), "components": {
        "control-socket": {"state": "ok", "since": CREATED, "restarts": 0},
        "announcer": {"state": "failed", "since": CREATED, "restarts": 3,
                      "message": "Scapy_Exception: Failed to compile filter expression"},
        "disk": {"state": "failed", "since": CREATED, "restarts": 0,
                 "message": "disk full: /var/lib/kproxy/store.db: No space left on device"}}})
    res = lab.run("status")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "components ok: control-socket" in res.output
    assert (f"component announcer: failed since {CREATED}, restarted 3 times: "
            "Scapy_Exception: Failed to compile filter expression") in res.output
    assert f"disk full: /var/lib/kproxy/store.db: No space left on device (since {CREATED})" in res.output


def test_status_lists_problems_with_their_file_and_exits_0(lab):
    lab.store.put("/kproxy/health", {"role": "all", "node": "node-1", "components": {
        "reconcile": {"state": "ok", "since": CREATED, "restarts": 0}}})
    lab.store.put("/kproxy/manifest-errors", [
        {"source": "/m/web.yaml", "kind": "Service", "namespace": "default", "name": "web",
         "message": 'The Service "web" is invalid: spec.clusterIP: Invalid value: "10.96.0.010": must be a valid IP'},
        {"source": "/m/bad.yaml", "kind": "Deployment", "namespace": "default", "name": "bad",
         "message": "Internal error occurred: Deployment default/bad: KeyError: 'template'"}])
    res = lab.run("status")
    assert res.exit_code == 0
    assert ('error: /m/web.yaml: The Service "web" is invalid: spec.clusterIP: Invalid value: "10.96.0.010": '
            "must be a valid IP") in out_lines(res)
    assert "error: /m/bad.yaml: Internal error occurred: Deployment default/bad: KeyError: 'template'" in out_lines(res)


# -- apply --------------------------------------------------------------------------------
INGRESS = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ing}
spec: {rules: []}
"""

TEAM = """apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team-a}
spec:
  selector: {app: api}
  ports: [{port: 80}]
"""


def test_apply_refuses_kinds_the_lab_does_not_serve(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ingress.yaml").write_text(INGRESS + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n")
    lab.stop()
    res = lab.run("apply", "-f", "ingress.yaml")
    assert res.exit_code == 1
    served = "Namespace, IPAddressPool, L2Advertisement, Service, Deployment, Pod, Endpoints, EndpointSlice"
    assert res.output == (
        f'error: Ingress "ing" from "ingress.yaml" is not applied: the lab serves {served}, not Ingress\n'
        f'error: ConfigMap "cm" from "ingress.yaml" is not applied: the lab serves {served}, not ConfigMap\n')
    Path("crd.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    res = lab.run("apply", "-f", "crd.yaml")
    assert res.output == ('error: resource mapping not found for name: "w" namespace: "" from "crd.yaml": '
                          'no matches for kind "Widget" in version "example.com/v1"\n'
                          "ensure CRDs are installed first\n")
    assert not list(Path(lab.cfg.manifests).iterdir())


def test_apply_refuses_a_removed_api_version(lab, tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n")
    lab.stop()
    res = lab.run("apply", "-f", str(f))
    assert res.exit_code == 1
    assert 'no matches for kind "Deployment" in version "extensions/v1beta1"' in res.output


def test_apply_of_a_namespace_and_its_objects_in_one_file(lab, tmp_path):
    f = tmp_path / "team.yaml"
    f.write_text(TEAM)
    lab.stop()
    res = lab.run("apply", "-f", str(f))
    assert res.exit_code == 0, res.output
    assert res.stdout == "namespace/team-a created\nservice/api created\n"
    assert "takes effect at `kproxy up`" in res.stderr
    names = sorted(p.name for p in Path(lab.cfg.manifests).iterdir())
    assert names == ["namespace-team-a.yaml", "service-team-a-api.yaml"]
    again = lab.run("apply", "-f", str(f))
    assert again.stdout == "namespace/team-a unchanged\nservice/api unchanged\n"


def test_apply_into_a_missing_namespace_is_refused_like_kubectl(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("extra.yaml").write_text(TEAM.split("---\n")[1])
    lab.stop()
    res = lab.run("apply", "-f", "extra.yaml")
    assert res.exit_code == 1
    assert res.output == ('Error from server (NotFound): error when creating "extra.yaml": '
                          'namespaces "team-a" not found\n')
    assert not list(Path(lab.cfg.manifests).iterdir())


def test_apply_of_an_invalid_object(lab, tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: dup}\n"
                 "spec: {ports: [{name: a, port: 80}, {name: a, port: 81}]}\n")
    lab.stop()
    res = lab.run("apply", "-f", str(f))
    assert res.exit_code == 1
    assert res.output.startswith('The Service "dup" is invalid: spec.ports[1].name: Duplicate value: "a"')


def test_apply_wait_needs_a_running_lab(lab, tmp_path):
    f = tmp_path / "team.yaml"
    f.write_text(TEAM)
    lab.stop()
    res = lab.run("apply", "-f", str(f), "--wait")
    assert res.exit_code == 1
    assert "not running" in res.output
    assert not list(Path(lab.cfg.manifests).iterdir())


@pytest.mark.parametrize("msg, want", [
    ('namespaces "team-a" not found',
     'Error from server (NotFound): error when creating "extra.yaml": namespaces "team-a" not found'),
    ('Service "dup" is invalid: spec.clusterIP: Invalid value: "10.96.0.1": provided IP is already allocated',
     'The Service "dup" is invalid: spec.clusterIP: Invalid value: "10.96.0.1": provided IP is already allocated'),
    ('Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: x',
     'The Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: x'),
])
def test_daemon_refusals_are_worded_like_kubectl(msg, want):
    assert apply.server_error(msg, "extra.yaml") == want


def test_apply_wait_conditions_for_a_deployment(lab):
    d = lab.store.get(object_key("Deployment", "default", "web"))
    applied = {k: v for k, v in copy.deepcopy(d).items() if k != "status"}
    ps = {"lastSync": CREATED}
    # one old pod is still terminating: not yet
    assert apply.not_live(lab.store, applied, T0, ps) == "deployment.apps/web: 2/2 pods Ready (2 exist, 1 old or terminating)"
    lab.store.delete(object_key("Pod", "default", lab.pods[2]["metadata"]["name"]))
    assert apply.not_live(lab.store, applied, T0, ps) is None
    # a scale to 3 the store does not show yet, then shows without the third pod
    applied["spec"]["replicas"] = 3
    assert apply.not_live(lab.store, applied, T0, ps) == "deployment.apps/web: the stored spec does not show the apply yet"
    d["spec"]["replicas"] = 3
    lab.put(d)
    assert apply.not_live(lab.store, applied, T0, ps) == "deployment.apps/web: 2/3 pods Ready (2 exist)"


def test_apply_wait_conditions_for_a_service(lab):
    svc = service("web")
    applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    assert apply.not_live(lab.store, applied, T0 + 5, {"lastSync": CREATED}) == "service/web: rules not programmed yet"
    assert apply.not_live(lab.store, applied, T0 + 5, {"lastSync": "2024-05-01T12:00:05Z"}) is None
    # an unchanged re-apply changes no rule, so no new sync comes: the last one programmed it
    old_sync = {"lastSync": CREATED, "services": ["default/web"]}
    assert apply.not_live(lab.store, applied, T0 + 5, old_sync, synced=True) is None
    assert apply.not_live(lab.store, applied, T0 + 5, old_sync, synced=False) == "service/web: rules not programmed yet"
    svc["spec"].pop("clusterIP")
    lab.put(svc)
    assert apply.not_live(lab.store, applied, T0, {"lastSync": CREATED}) == "service/web: no clusterIP allocated yet"
    applied["spec"]["ports"][0]["port"] = 81
    assert "does not show the apply yet" in apply.not_live(lab.store, applied, T0, {"lastSync": CREATED})
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hl"},
                "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}}
    lab.put(service("hl", clusterIP="None", clusterIPs=["None"], selector={"app": "web"}, ports=[{"port": 80}]))
    assert apply.not_live(lab.store, headless, T0 + 5, {}) is None


# -- get ----------------------------------------------------------------------------------
def test_get_pods_with_a_label_selector_and_labels(lab):
    res = lab.run("get", "pods", "-l", "app=web,pod-template-hash!=oldhash", "--show-labels")
    assert res.exit_code == 0, res.output
    lines = out_lines(res)
    assert re.split(r"\s{2,}", lines[0]) == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
    assert [line.split()[0] for line in lines[1:]] == [f"web-{lab.hash}-aaaaa", f"web-{lab.hash}-bbbbb"]
    assert lines[1].split()[-1] == f"app=web,pod-template-hash={lab.hash}"
    none = lab.run("get", "pods", "-l", "app=nothing")
    assert none.exit_code == 0 and none.output == "No resources found in default namespace.\n"
    bad = lab.run("get", "pods", "-l", "a=b=c")
    assert bad.exit_code == 1 and bad.output.startswith("error: unable to parse requirement")


def test_get_of_an_unknown_name(lab):
    res = lab.run("get", "pods", "nosuch")
    assert res.exit_code == 1
    assert res.output == 'Error from server (NotFound): pods "nosuch" not found\n'
    res = lab.run("get", "deploy/nosuch")
    assert res.output == 'Error from server (NotFound): deployments.apps "nosuch" not found\n'
    res = lab.run("get", "svc", "web", "nosuch")
    assert res.exit_code == 1
    assert res.stdout.split("\n")[1].split()[0] == "web"
    assert res.stderr == 'Error from server (NotFound): services "nosuch" not found\n'


def test_get_unknown_kind(lab):
    res = lab.run("get", "ingress")
    assert res.exit_code == 1 and res.output == 'error: the server doesn\'t have a resource type "ingress"\n'


def test_get_several_kinds(lab):
    res = lab.run("get", "deploy,svc")
    assert res.exit_code == 0, res.output
    sections = res.output.rstrip("\n").split("\n\n")
    assert len(sections) == 2
    assert sections[0].split("\n")[1].split()[:2] == ["deployment.apps/web", "2/2"]
    assert [r.split()[0] for r in sections[1].split("\n")[1:]] == ["service/kubernetes", "service/web",
                                                                   "service/web-np"]


def test_get_all(lab):
    res = lab.run("get", "all")
    assert res.exit_code == 0, res.output
    sections = [s.split("\n") for s in res.output.rstrip("\n").split("\n\n")]
    assert [s[0].split()[:2] for s in sections] == [["NAME", "READY"], ["NAME", "TYPE"], ["NAME", "READY"],
                                                   ["NAME", "DESIRED"]]
    assert [r.split()[0] for r in sections[0][1:]] == [f"pod/web-{lab.hash}-aaaaa", f"pod/web-{lab.hash}-bbbbb",
                                                       "pod/web-oldhash-ccccc"]
    assert sections[1][1].split()[0] == "service/kubernetes"
    assert sections[2][1].split()[0] == "deployment.apps/web"
    assert [r.split()[:4] for r in sections[3][1:]] == [[f"replicaset.apps/web-{lab.hash}", "2", "2", "2"],
                                                       ["replicaset.apps/web-oldhash", "0", "0", "0"]]


def test_get_replicasets(lab):
    res = lab.run("get", "rs")
    assert res.exit_code == 0, res.output
    width = len(f"web-{lab.hash}") + 3
    assert out_lines(res) == [
        "NAME".ljust(width) + "DESIRED   CURRENT   READY   AGE",
        f"web-{lab.hash}".ljust(width) + "2         2         2       10m",
        "web-oldhash".ljust(width) + "0         0         0       10m",
    ]
    res = lab.run("get", "replicasets", f"web-{lab.hash}", "-o", "json")
    import json
    rs = json.loads(res.output)
    assert rs["kind"] == "ReplicaSet" and rs["spec"]["replicas"] == 2
    assert rs["metadata"]["ownerReferences"][0]["name"] == "web"
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": lab.hash}


def test_replica_sets_follow_the_current_template():
    d = deployment(replicas_=3)
    new = [running_pod(d, s, f"10.244.0.{i}") for i, s in enumerate(("aaaaa", "bbbbb"), 2)]
    old = [running_pod(d, "ccccc", "10.244.0.9", template_hash="zzzz")]
    rss = {rs["metadata"]["name"]: rs for rs in tables.replica_sets([d], new + old)}
    h = replicas.pod_template_hash(d["spec"]["template"])
    assert rss[f"web-{h}"]["spec"]["replicas"] == 3 and rss[f"web-{h}"]["status"]["replicas"] == 2
    assert rss["web-zzzz"]["spec"]["replicas"] == 0 and rss["web-zzzz"]["status"]["readyReplicas"] == 1
    # a Deployment whose pods are not there yet still has its ReplicaSet
    assert [rs["metadata"]["name"] for rs in tables.replica_sets([d], [])] == [f"web-{h}"]


def test_get_endpoints_orders_addresses_as_the_api_server_stores_them(lab):
    res = lab.run("get", "ep", "web")
    assert res.exit_code == 0
    # SortSubsets compares IPs as strings: 10.244.0.10 < 10.244.0.2 < 10.244.0.9
    assert out_lines(res)[1].split()[1] == "10.244.0.10:8080,10.244.0.2:8080,10.244.0.9:8080"


def test_endpoints_cell_lists_each_port_with_every_address():
    ep = {"metadata": {"name": "x", "creationTimestamp": CREATED},
          "subsets": [{"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
                       "ports": [{"port": 80}, {"port": 443}]}]}
    assert tables._endpoints(ep) == "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more..."


def test_get_nodes(lab):
    res = lab.run("get", "nodes")
    assert out_lines(res) == ["NAME     STATUS   ROLES           AGE   VERSION",
                              "node-1   Ready    control-plane   10m   v1.33.0-kproxy"]
    wide = lab.run("get", "no", "-o", "wide")  # kubectl's wide columns (printers.go), then kproxy's POD-CIDR
    assert out_lines(wide)[0].split()[5:] == ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION",
                                              "CONTAINER-RUNTIME", "POD-CIDR"]
    assert out_lines(wide)[1].split()[5:7] + out_lines(wide)[1].split()[-1:] == \
        ["192.168.49.2", "<none>", "10.244.0.0/24"]


def test_get_o_name(lab):
    res = lab.run("get", "deploy,svc", "-o", "name")
    assert res.output == "deployment.apps/web\nservice/kubernetes\nservice/web\nservice/web-np\n"


# -- describe -----------------------------------------------------------------------------
def test_tabwriter_aligns_blocks_like_go():
    text = "Name:\tweb\nNamespace:\tdefault\nIPs:\n  IP:\t10.0.0.1\nControlled By:\tReplicaSet/x\n"
    # kubectl's own pod output: "  IP:" aligns with "Controlled By:", not with "Name:"
    assert describe.tabwrite(text) == ("Name:       web\nNamespace:  default\nIPs:\n  IP:           10.0.0.1\n"
                                       "Controlled By:  ReplicaSet/x\n")
    # a three-cell line forms its own column inside the block
    assert describe.tabwrite("Port:\thttp\t80/TCP\nTargetPort:\thttp/TCP\n") == \
        "Port:        http  80/TCP\nTargetPort:  http/TCP\n"


def test_describe_pod(lab):
    name = lab.pods[0]["metadata"]["name"]
    res = lab.run("describe", "pod", name)
    assert res.exit_code == 0, res.output
    lines = res.output.split("\n")
    # columns align per block of tab-separated lines, as Go's tabwriter does for kubectl
    assert lines[:16] == [
        f"Name:             {name}",
        "Namespace:        default",
        "Priority:         0",
        "Service Account:  default",
        "Node:             node-1/192.168.49.2",
        "Start Time:       Wed, 01 May 2024 12:00:00 +0000",
        "Labels:           app=web",
        f"                  pod-template-hash={lab.hash}",
        "Annotations:      <none>",
        "Status:           Running",
        "IP:               10.244.0.9",
        "IPs:",
        "  IP:           10.244.0.9",
        f"Controlled By:  ReplicaSet/web-{lab.hash}",
        "Containers:",
        "  web:",
    ], res.output
    for line in ["    Image:          nginx", "    Port:           8080/TCP", "    Host Port:      0/TCP",
                 "    State:          Running", "      Started:      Wed, 01 May 2024 12:00:00 +0000",
                 "    Ready:          True", "    Restart Count:  0",
                 "    Readiness:      http-get http://:8080/ delay=0s timeout=1s period=10s #success=1 #failure=3",
                 "    Environment:    <none>", "    Mounts:         <none>",
                 "Conditions:", "  Type              Status", "  PodScheduled      True ",
                 "  ContainersReady   True ", "QoS Class:          BestEffort",
                 "Tolerations:        <none>",
                 "Events:", "  Type     Reason     Age               From               Message",
                 "  ----     ------     ----              ----               -------",
                 f"  Normal   Scheduled  10m               default-scheduler  Successfully assigned default/{name} to node-1",
                 "  Warning  Unhealthy  5m (x3 over 10m)  kubelet            Readiness probe failed: HTTP probe failed"]:
        assert line in lines, (line, res.output)


def test_describe_pod_with_a_command_and_no_events(lab):
    pod = copy.deepcopy(lab.pods[1])
    pod["metadata"].update(name="client", ownerReferences=[], labels={})
    pod["spec"]["containers"] = [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]
    pod["status"]["containerStatuses"] = [{"name": "c", "ready": False, "restartCount": 2,
                                           "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    lab.put(pod)
    text = lab.run("describe", "pod/client").output
    lines = text.split("\n")
    assert "Controlled By" not in text
    assert "Labels:           <none>" in lines
    i = lines.index("    Command:")
    assert lines[i + 1:i + 3] == ["      sleep", "      3600"]
    assert "    State:          Waiting" in lines and "      Reason:       CrashLoopBackOff" in lines
    assert "    Port:          <none>" in lines and "  IP:  10.244.0.10" in lines
    assert text.rstrip("\n").endswith("Events:             <none>")


def test_describe_service(lab):
    res = lab.run("describe", "svc", "web-np")
    assert res.exit_code == 0, res.output
    assert res.output.split("\n")[:4] == ["Name:                     web-np", "Namespace:                default",
                                          "Labels:                   <none>", "Annotations:              <none>"]
    lines = res.output.split("\n")
    for line in ["Selector:                 app=web-np", "Type:                     NodePort",
                 "IP:                       10.96.0.30", "Port:                     <unset>  80/TCP",
                 "TargetPort:               8080/TCP", "NodePort:                 <unset>  30080/TCP",
                 "Endpoints:                <none>", "Session Affinity:         None",
                 "External Traffic Policy:  Cluster", "Events:                   <none>"]:
        assert line in lines, (line, res.output)
    web = lab.run("describe", "service", "web").output.split("\n")
    assert "Port:                     http  80/TCP" in web
    assert "TargetPort:               http/TCP" in web
    # ready endpoints only, in the slice's order
    assert "Endpoints:                10.244.0.9:8080,10.244.0.10:8080" in web
    assert "Internal Traffic Policy:  Cluster" in web


def test_describe_deployment(lab):
    res = lab.run("describe", "deploy", "web")
    assert res.exit_code == 0, res.output
    lines = res.output.split("\n")
    for line in ["Replicas:               2 desired | 2 updated | 2 total | 2 available | 0 unavailable",
                 "Selector:               app=web", "StrategyType:           RollingUpdate",
                 "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
                 "Pod Template:", "  Labels:  app=web", "  Containers:", "   web:",
                 "    Image:         nginx", "    Port:          8080/TCP", "  Volumes:         <none>",
                 f"NewReplicaSet:     web-{lab.hash} (2/2 replicas created)",
                 "OldReplicaSets:    web-oldhash (0/0 replicas created)"]:
        assert line in lines, (line, res.output)
    assert "  Normal  ScalingReplicaSet  5m (x1 over 10m)" not in res.output
    assert f"  Normal  ScalingReplicaSet  10m   deployment-controller  Scaled up replica set web-{lab.hash} from 0 to 2" \
        in lines


def test_describe_node_and_namespace(lab):
    node = lab.run("describe", "node", "node-1").output.split("\n")
    assert "Roles:              control-plane" in node
    assert "  InternalIP:  192.168.49.2" in node
    assert "Non-terminated Pods:   (3 in total)" in node
    assert "  Kubelet Version:     v1.33.0-kproxy" in node
    ns = lab.run("describe", "ns", "default").output
    assert ns.split("\n")[:4] == ["Name:         default", "Labels:       kubernetes.io/metadata.name=default",
                                  "Annotations:  <none>", "Status:       Active"]


def test_describe_unknown_and_unsupported(lab):
    res = lab.run("describe", "pod", "nosuch")
    assert res.exit_code == 1 and res.output == 'Error from server (NotFound): pods "nosuch" not found\n'
    res = lab.run("describe", "ep", "web")
    assert res.exit_code == 1 and "kproxy describe supports" in res.output


# -- delete -------------------------------------------------------------------------------
def test_delete_uses_kubectls_words(lab, tmp_path):
    lab.stop()
    f = tmp_path / "all.yaml"
    f.write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "x"}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}]))
    assert lab.run("apply", "-f", str(f)).exit_code == 0
    res = lab.run("delete", "svc", "web")
    assert res.exit_code == 0 and res.stdout == 'service "web" deleted\n'
    assert "takes effect at `kproxy up`" in res.stderr
    res = lab.run("delete", "deploy/web")
    assert res.stdout == 'deployment.apps "web" deleted\n'
    res = lab.run("delete", "svc", "web")
    assert res.exit_code == 1 and res.stderr == 'Error from server (NotFound): services "web" not found\n'


def test_delete_a_namespace_deletes_what_is_in_it(lab, tmp_path):
    lab.stop()
    f = tmp_path / "team.yaml"
    f.write_text(TEAM)
    lab.run("apply", "-f", str(f))
    res = lab.run("delete", "ns", "team-a")
    assert res.stdout == 'namespace "team-a" deleted\n'
    assert not list(Path(lab.cfg.manifests).iterdir())
    lab.run("apply", "-f", str(f))
    res = lab.run("delete", "-f", str(f))  # the Service went with its namespace: still "deleted"
    assert res.exit_code == 0 and res.stdout == 'namespace "team-a" deleted\nservice "api" deleted\n'


# -- exec and logs ------------------------------------------------------------------------
class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch):
    calls = []

    def fake_exec(file, argv):
        calls.append(argv)
        raise Exec()

    monkeypatch.setattr(os, "execvp", fake_exec)
    monkeypatch.setattr(cli, "PASS_THROUGH", (Exec,))  # seen by the test, not turned into an error line
    monkeypatch.setattr(access, "detach_stdin", lambda: calls.append("no stdin"))
    from kproxy.node import access as node_access  # where the pod's command line is made
    monkeypatch.setattr(node_access, "netns_exists", lambda name: True)
    return calls


@pytest.mark.parametrize("flags", [["-it"], ["-ti"], ["-i", "-t"], ["--stdin", "--tty"]])
def test_exec_accepts_kubectls_terminal_flags(lab, execs, flags):
    name = lab.pods[0]["metadata"]["name"]
    res = lab.run("exec", *flags, name, "--", "hostname")
    assert isinstance(res.exception, Exec), res.output
    # in the pod's network and with its hostname, as its containers run
    assert execs == [in_pod(lab.cfg.naming.pod_netns("default", name), name, ["hostname"])]


def test_exec_without_i_gets_no_stdin(lab, execs):
    lab.run("exec", lab.pods[0]["metadata"]["name"], "--", "cat")
    assert execs[0] == "no stdin"


def test_exec_into_a_deployment_picks_a_ready_pod(lab, execs):
    res = lab.run("exec", "deploy/web", "--", "true")
    assert isinstance(res.exception, Exec), res.output
    assert execs[-1][3] == lab.cfg.naming.pod_netns("default", lab.pods[0]["metadata"]["name"])


def test_exec_refusals(lab, execs):
    res = lab.run("exec", "node/nope", "--", "true")
    assert res.exit_code == 1 and res.output == 'error: nodes "nope" not found\n'
    res = lab.run("exec", "nosuch", "--", "true")
    assert res.exit_code == 1 and res.output == 'Error from server (NotFound): pods "nosuch" not found\n'
    res = lab.run("exec", "deploy/nosuch", "--", "true")
    assert res.output == 'Error from server (NotFound): deployments.apps "nosuch" not found\n'
    res = lab.run("exec", lab.pods[0]["metadata"]["name"], "-c", "nope", "--", "true")
    assert res.output == f"error: container nope is not valid for pod {lab.pods[0]['metadata']['name']}\n"
    res = lab.run("exec", lab.pods[0]["metadata"]["name"])
    assert res.output == "error: you must specify at least one command for the container\n"
    res = lab.run("exec", "node/node-1", "--", "true")
    assert isinstance(res.exception, Exec)
    assert execs[-1] == ["ip", "netns", "exec", lab.cfg.naming.node_netns, "true"]


@pytest.fixture
def logfile(lab):
    name = lab.pods[0]["metadata"]["name"]
    d = lab.dir / "logs" / f"default_{name}"
    d.mkdir(parents=True)
    (d / "web.log").write_text("one\ntwo\nthree\n")
    return d / "web.log"


def test_logs(lab, logfile):
    name = lab.pods[0]["metadata"]["name"]
    assert lab.run("logs", name).output == "one\ntwo\nthree\n"
    assert lab.run("logs", f"pod/{name}", "--tail", "1").output == "three\n"
    assert lab.run("logs", name, "-c", "web", "--tail=2").output == "two\nthree\n"
    res = lab.run("logs", "deploy/web")
    assert res.stdout == "one\ntwo\nthree\n"
    assert res.stderr == f"Found 2 pods, using pod/{name}\n"


def test_logs_errors(lab, logfile):
    res = lab.run("logs", "x")
    assert res.exit_code == 1 and res.output == 'Error from server (NotFound): pods "x" not found\n'
    res = lab.run("logs", lab.pods[0]["metadata"]["name"], "-c", "nope")
    assert res.exit_code == 1 and res.output == f"error: container nope is not valid for pod {lab.pods[0]['metadata']['name']}\n"
    res = lab.run("logs", lab.pods[1]["metadata"]["name"])
    assert res.exit_code == 1 and "is waiting to start" in res.output


def test_logs_follow_until_the_pod_is_gone(lab, logfile):
    name = lab.pods[0]["metadata"]["name"]

    def later():
        time.sleep(0.5)
        with open(logfile, "a") as f:
            f.write("four\n")
        time.sleep(0.5)
        SqliteStore(lab.dir / "store.db").delete(object_key("Pod", "default", name))

    t = threading.Thread(target=later)
    t.start()
    res = lab.run("logs", "-f", name, "--tail", "1")
    t.join()
    assert res.exit_code == 0
    assert res.output == "three\nfour\n"


# -- rules --render -----------------------------------------------------------------------
def test_render_refuses_and_warns(tmp_path):
    f = tmp_path / "svcs.yaml"
    f.write_text(INGRESS + """---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec: {type: NodePort, clusterIP: 10.96.0.7, selector: {app: web}, ports: [{port: 80, nodePort: 8080}]}
""")
    res = CliRunner().invoke(cli.main, ["rules", "--render", "-f", str(f)])
    assert res.exit_code == 1
    err = res.stderr
    assert 'Ingress "ing" from' in err and "is not applied: the lab serves" in err
    assert ('warning: Service "web" has no spec.clusterIP: --render needs fixed clusterIPs '
            "(a running lab allocates them)") in err
    assert 'The Service "np" is invalid: spec.ports[0].nodePort: Invalid value: 8080' in err
    assert "--service-node-port-range 8080-32767" in err
    fixed = CliRunner().invoke(cli.main, ["rules", "--render", "-f", str(f), "--service-node-port-range", "8000-9000"])
    assert 'The Service "np" is invalid' not in fixed.stderr


def test_render_of_valid_services_exits_0(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                 "spec: {clusterIP: 10.96.0.5, selector: {app: web}, ports: [{port: 80}]}\n"
                 "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
                 "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n"
                 "    spec: {containers: [{name: w, image: x}]}\n")
    res = CliRunner().invoke(cli.main, ["rules", "--render", "-f", str(f)])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""


@pytest.mark.parametrize("args", [["trace", "client", "svc/web"], ["explain", "svc/web"],
                                  ["graph", "--svc", "web", "-o", "dot"]])
def test_trace_explain_and_the_chain_picture_work_in_an_nftables_lab_too(lab, args):
    """They no longer refuse an nftables lab (tests/integration/test_trace.py runs them in both
    modes); here (no pod, no netns) they end with the usual one line, whatever the mode."""
    lab.cfg.proxy_mode = "nftables"
    lab.cfg.save()
    res = lab.run(*args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "reads the iptables mode's rules" not in res.output
    assert 'pods "client" not found' in res.output or "is not running" in res.output, res.output


def test_status_names_the_proxy_mode(lab):
    lab.cfg.proxy_mode = "nftables"
    lab.cfg.save()
    assert "proxy mode: nftables" in lab.run("status").output.splitlines()
