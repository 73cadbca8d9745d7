"""Issue 12 #2, #1, #6, #7, #12 on the daemon, without root: one object's failure is confined
to it, a failing background thread cannot be missed, a half-saved file loses nothing, one
identity in two files is reported, and a full disk says so. A Daemon on a temporary SQLite
store drives its roles' steps (`frontend.poll`, `controllers.reconcile_pods`, `_loop`) directly."""
from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from kproxy import supervise
from kproxy.config import LabConfig
from kproxy.controllers import allocation, endpoints, replicas
from kproxy.context import key_of
from kproxy.daemon import HEALTH, Daemon
from kproxy.frontend import MANIFEST_ERRORS

SVC = """apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}, targetPort: 8080}}]
"""

DEPLOY = """apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: c, image: x, command: [sleep, "100"]}}]}}
"""


def _daemon(tmp_path: Path, agent: bool = False) -> Daemon:
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True)
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    return Daemon(cfg, controller=True, agent=agent)


def _write(d: Daemon, name: str, text: str) -> Path:
    p = Path(d.cfg.manifests) / name
    p.write_text(text)
    return p


def _age_folder(d: Daemon, seconds: float = 5.0) -> None:
    """Make the folder look unchanged for `seconds` (mtimes and the daemon's own clock)."""
    past = time.time() - seconds
    for p in [Path(d.cfg.manifests), *Path(d.cfg.manifests).iterdir()]:
        os.utime(p, (past, past))
    d.frontend.signature = None  # mtimes changed: the next poll reads the folder again
    d.frontend.poll()
    d.frontend.sig_changed_at = time.monotonic() - seconds


def _svc(d: Daemon, name: str) -> dict | None:
    return d.store.get(key_of("Service", "default", name))


def _events(d: Daemon, reason: str) -> list[dict]:
    return [e for _, e in d.store.list("/registry/events/") if e["reason"] == reason]


# -- #2 confinement ------------------------------------------------------------------------
def test_an_object_whose_admission_raises_does_not_stop_the_others(tmp_path, monkeypatch):
    d = _daemon(tmp_path)
    real = allocation.allocate_service

    def allocate(txn, svc, *args, **kw):
        if svc["metadata"]["name"] == "bad":
            raise RuntimeError("allocator bug")
        return real(txn, svc, *args, **kw)
    monkeypatch.setattr(allocation, "allocate_service", allocate)
    _write(d, "bad.yaml", SVC.format(name="bad", port=80))
    _write(d, "good.yaml", SVC.format(name="good", port=80))
    d.frontend.poll()  # raised for everything before
    assert _svc(d, "good")["spec"]["clusterIP"]
    assert _svc(d, "bad") is None
    problems = d.store.get(MANIFEST_ERRORS)
    bad = [p for p in problems if p.get("name") == "bad"]
    assert bad and bad[0]["kind"] == "Service" and bad[0]["namespace"] == "default"
    assert bad[0]["source"].endswith("bad.yaml")
    assert "Internal error occurred" in bad[0]["message"] and "allocator bug" in bad[0]["message"]
    assert [e["involvedObject"]["name"] for e in _events(d, "FailedCreate")] == ["bad"]
    # fixed: admitted on the next load, the problem goes
    monkeypatch.setattr(allocation, "allocate_service", real)
    _write(d, "bad.yaml", SVC.format(name="bad", port=81))
    d.frontend.poll()
    assert _svc(d, "bad") is not None
    assert not [p for p in d.store.get(MANIFEST_ERRORS) if p.get("name") == "bad"]


def test_a_file_whose_reading_raises_does_not_stop_the_others(tmp_path, monkeypatch):
    from kproxy.api import manifest
    d = _daemon(tmp_path)
    real = manifest.read_file

    def read(path):
        if path.name == "bad.yaml":
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return real(path)
    monkeypatch.setattr(manifest, "read_file", read)
    _write(d, "bad.yaml", SVC.format(name="bad", port=80))
    _write(d, "good.yaml", SVC.format(name="good", port=80))
    d.frontend.poll()
    assert _svc(d, "good") is not None
    (problem,) = d.store.get(MANIFEST_ERRORS)
    assert problem["source"].endswith("bad.yaml") and "Exceeds the limit" in problem["message"]


def test_a_deployment_whose_reconcile_raises_does_not_stop_the_others(tmp_path, monkeypatch):
    d = _daemon(tmp_path)
    _write(d, "a.yaml", DEPLOY.format(name="bad"))
    _write(d, "b.yaml", DEPLOY.format(name="good"))
    d.frontend.poll()
    real = replicas.reconcile_deployment

    def reconcile(deploy, *args, **kw):
        if deploy["metadata"]["name"] == "bad":
            raise KeyError("template")
        return real(deploy, *args, **kw)
    monkeypatch.setattr(replicas, "reconcile_deployment", reconcile)
    d.controllers.reconcile_pods()
    owners = [replicas.owner_deployment(p) for p in d.ctx.objects["Pod"].values()]
    assert owners.count("good") == 2 and "bad" not in owners
    d._publish()
    problem = next(p for p in d.store.get(MANIFEST_ERRORS) if p.get("name") == "bad")
    assert problem["kind"] == "Deployment" and problem["source"].endswith("a.yaml")
    assert _events(d, "FailedReconcile")[0]["involvedObject"]["name"] == "bad"
    monkeypatch.setattr(replicas, "reconcile_deployment", real)  # works again: the problem clears
    d.controllers.reconcile_pods()
    d._publish()
    assert not [p for p in d.store.get(MANIFEST_ERRORS) if p.get("name") == "bad"]


def test_a_service_whose_endpoints_raise_keeps_its_slices_and_the_others_get_theirs(tmp_path, monkeypatch):
    d = _daemon(tmp_path)
    _write(d, "svc.yaml", SVC.format(name="bad", port=80) + "---\n" + SVC.format(name="good", port=80))
    d.frontend.poll()
    d.controllers.sync_endpoints()
    before = {k for k in d.ctx.objects["EndpointSlice"] if "/bad" in k}
    assert before
    real = endpoints.slices_for_service

    def slices(svc, *args, **kw):
        if svc["metadata"]["name"] == "bad":
            raise ValueError("boom")
        return real(svc, *args, **kw)
    monkeypatch.setattr(endpoints, "slices_for_service", slices)
    d.controllers.sync_endpoints()
    assert {k for k in d.ctx.objects["EndpointSlice"] if "/bad" in k} == before  # kept, not removed
    assert key_of("Endpoints", "default", "good") in d.ctx.objects["Endpoints"]
    assert ("FailedToUpdateEndpointSlices", "Service", "default", "bad") in d.ctx.obj_problems


def test_a_service_whose_rules_fail_to_render_is_left_out_and_the_others_programmed(tmp_path, monkeypatch):
    from kproxy.proxy import render
    d = _daemon(tmp_path, agent=True)  # the proxy role comes with the agent
    _write(d, "svc.yaml", SVC.format(name="bad", port=80) + "---\n" + SVC.format(name="good", port=80))
    d.frontend.poll()
    synced = []

    def sync(services, slices, full=False, changed=None):
        names = sorted(s["metadata"]["name"] for s in services)
        if "bad" in names:
            raise TypeError("'<' not supported between instances of 'str' and 'NoneType'")
        synced.append(names)
        return types.SimpleNamespace(full=full, duration=0.0, applied=False)
    d.proxy.proxier = types.SimpleNamespace(cfg=render.ProxyConfig(cluster_cidr="10.244.0.0/16", node_name="node-1",
                                                             node_ips=["192.168.49.2"]), sync=sync,
                                      health_check_ports=dict)
    real = render.render

    def render_one(services, *args, **kw):
        if services[0]["metadata"]["name"] == "bad":
            raise TypeError("'<' not supported between instances of 'str' and 'NoneType'")
        return real(services, *args, **kw)
    monkeypatch.setattr(render, "render", render_one)
    d.proxy.sync()  # raised for every Service before
    assert d.ctx.dirty and list(d.proxy.quarantine) == [key_of("Service", "default", "bad")]
    d.proxy.sync()
    assert synced == [["good"]]
    assert ("FailedProxyRules", "Service", "default", "bad") in d.ctx.obj_problems
    assert _events(d, "FailedProxyRules")[0]["involvedObject"]["name"] == "bad"


def test_a_failing_pass_is_a_failed_component_in_the_health_record(tmp_path, monkeypatch):
    d = _daemon(tmp_path)
    monkeypatch.setattr("kproxy.daemon.time.sleep", lambda s: None)

    def broken(now):
        d.stopping.set()
        raise RuntimeError("the kernel said no")
    d._pass = broken
    d._loop()
    comp = d.store.get(HEALTH)["components"]["reconcile"]
    assert comp["state"] == "failed" and comp["message"] == "RuntimeError: the kernel said no"
    assert _events(d, "ReconcileFailed")


# -- #1 background threads -----------------------------------------------------------------
def test_a_failing_thread_is_logged_reported_and_restarted(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(supervise, "BACKOFF_FIRST", 0.5)
    d = _daemon(tmp_path)
    runs = []

    def target():
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise OSError("libpcap is not available")
        d.ctx.components.ok("announcer")
        d.stopping.wait()
    t = d.ctx.supervise("announcer", target)
    time.sleep(0.2)  # failed, waiting its back-off: the published health record says so
    d._publish()
    rec = d.store.get(HEALTH)["components"]["announcer"]
    assert rec["state"] == "failed" and rec["message"] == "OSError: libpcap is not available"
    deadline = time.monotonic() + 5
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 2  # restarted
    assert "announcer failed (OSError: libpcap is not available)" in caplog.text
    assert "Traceback" in caplog.text
    ev = _events(d, "AnnouncerFailed")
    assert ev and ev[0]["involvedObject"] == {"kind": "Node", "namespace": "", "name": d.cfg.node_name}
    assert ev[0]["message"] == "announcer: OSError: libpcap is not available"
    time.sleep(0.05)
    comp = d.ctx.components.snapshot()["announcer"]
    assert comp["state"] == "ok" and comp["restarts"] == 1
    d.stopping.set()
    t.join(2)


def test_the_announcer_fails_in_its_supervised_thread_when_libpcap_is_missing(tmp_path, monkeypatch):
    """#1: without libpcap the sniffer thread died without a log line; now it is a failed
    `announcer` component, an AnnouncerFailed event, and `run` is retried."""
    scapy = pytest.importorskip("scapy.all")
    monkeypatch.setattr(supervise, "BACKOFF_FIRST", 0.05)

    def no_libpcap(*args, **kw):
        raise scapy.Scapy_Exception("Failed to compile filter expression arp and arp[6:2] = 1 (-1)")
    monkeypatch.setattr(scapy.conf, "L2listen", no_libpcap)
    d = _daemon(tmp_path, agent=True)
    monkeypatch.setattr(type(d.agent), "host_iface", lambda self: "lo")  # not the sandbox's lab link
    d.cfg.sandbox = False
    d.ctx.objects["Service"][key_of("Service", "default", "lb")] = {
        "kind": "Service", "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}
    d.agent.announce_load_balancers()
    deadline = time.monotonic() + 10
    while not _events(d, "AnnouncerFailed") and time.monotonic() < deadline:
        time.sleep(0.05)
    comp = d.ctx.components.snapshot()["announcer"]
    assert comp["state"] == "failed" and "Failed to compile filter" in comp["message"]
    assert d.agent.announcer.ips == {"192.0.2.10"}
    d.stopping.set()
    d.agent.announcer.stop()


def test_status_of_the_control_socket_carries_the_health(tmp_path):
    d = _daemon(tmp_path)
    d.ctx.components.failed("announcer", "OSError: no libpcap")
    a, b = socket.socketpair()
    with b:
        b.sendall(b"{}\n")
        d._answer(a)
        reply = b.recv(65536)
    import json
    health = json.loads(reply)["health"][HEALTH]
    assert health["components"]["announcer"]["state"] == "failed"


# -- #6 half-saved files ---------------------------------------------------------------------
def test_a_file_saved_in_two_steps_loses_no_service(tmp_path):
    d = _daemon(tmp_path)
    both = SVC.format(name="one", port=80) + "---\n" + SVC.format(name="two", port=80)
    f = _write(d, "app.yaml", both)
    _age_folder(d)
    ip = _svc(d, "two")["spec"]["clusterIP"]
    f.write_text(SVC.format(name="one", port=80) + "---\n")  # the editor's first step
    d.frontend.poll()
    assert _svc(d, "two") is not None and d.frontend.removals_waiting  # not deleted while the file changes
    f.write_text(both)  # 50 ms later: the second step
    d.frontend.poll()
    assert _svc(d, "two")["spec"]["clusterIP"] == ip and not d.frontend.removals_waiting
    # a real removal happens once the folder is quiet
    f.write_text(SVC.format(name="one", port=80))
    past = time.time() - 5
    for p in (f, f.parent):
        os.utime(p, (past, past))
    d.frontend.poll()
    assert _svc(d, "two") is not None  # just seen changing: waits
    d.frontend.sig_changed_at = time.monotonic() - 5  # a second later, nothing changed: the poll removes it
    d.frontend.poll()
    assert _svc(d, "two") is None and _svc(d, "one") is not None


def test_kproxy_delete_removes_at_once(tmp_path):
    """`kproxy apply/delete` write the folder whole and ask for a sync: no quiet wait."""
    d = _daemon(tmp_path)
    _write(d, "one.yaml", SVC.format(name="one", port=80))
    f = _write(d, "two.yaml", SVC.format(name="two", port=80))
    d.frontend.poll()
    f.unlink()
    d.frontend.folder_settled = True  # what the control socket's "sync" sets
    d.frontend.poll()
    assert _svc(d, "two") is None


# -- #7 one identity in two files --------------------------------------------------------------
def test_one_identity_in_two_files_is_reported_and_never_flips(tmp_path):
    d = _daemon(tmp_path)
    _write(d, "b.yaml", SVC.format(name="web", port=81))
    d.frontend.poll()
    _write(d, "a.yaml", SVC.format(name="web", port=80))  # read first, by file order
    for _ in range(3):
        d.frontend.signature = None
        d.frontend.poll()
        assert _svc(d, "web")["spec"]["ports"][0]["port"] == 81  # the version admitted before
    problems = [p for p in d.store.get(MANIFEST_ERRORS) if "declared in both" in p["message"]]
    assert sorted(Path(p["source"]).name for p in problems) == ["a.yaml", "b.yaml"]
    assert 'Service "web" in namespace default is declared in both' in problems[0]["message"]
    assert _events(d, "DuplicateManifest")


def test_a_new_identity_in_two_files_is_the_first_files(tmp_path):
    d = _daemon(tmp_path)
    _write(d, "b.yaml", SVC.format(name="web", port=81))
    _write(d, "a.yaml", SVC.format(name="web", port=80))
    d.frontend.poll()
    assert _svc(d, "web")["spec"]["ports"][0]["port"] == 80
    (Path(d.cfg.manifests) / "a.yaml").unlink()  # resolved: the other file's version, no problem
    d.frontend.folder_settled = True
    d.frontend.poll()
    assert _svc(d, "web")["spec"]["ports"][0]["port"] == 81
    assert not [p for p in d.store.get(MANIFEST_ERRORS) if "declared in both" in p["message"]]


# -- #12 disk full ------------------------------------------------------------------------------
def test_disk_full_is_a_status_line_and_an_event_and_pods_keep_restarting(tmp_path, monkeypatch):
    d = _daemon(tmp_path, agent=True)
    ticks = []
    d.agent.kubelet = types.SimpleNamespace(pods={}, tick=lambda guard=None: ticks.append(1), finished_pods=lambda: [])

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "store.db"))
    monkeypatch.setattr(d.controllers, "reconcile", full)
    with pytest.raises(OSError):
        d._pass(time.monotonic())
    assert ticks == [1]  # probes and restarts still ran
    monkeypatch.setattr("kproxy.daemon.time.sleep", lambda s: None)

    def once(now):
        d.stopping.set()
        full()
    d._pass = once
    d._loop()
    disk = d.store.get(HEALTH)["components"]["disk"]
    assert disk["state"] == "failed"
    assert disk["message"] == f"disk full: {tmp_path / 'store.db'}: No space left on device"
    assert _events(d, "NodeHasDiskPressure")
    # space again: the next pass clears it
    d.stopping.clear()
    d._pass = lambda now: d.stopping.set()
    d._loop()
    assert d.store.get(HEALTH)["components"]["disk"]["state"] == "ok"


def test_a_pod_that_fails_its_tick_does_not_stop_the_others(tmp_path):
    from kproxy.node.kubelet import Kubelet
    seen = []
    k = Kubelet.__new__(Kubelet)
    bad = types.SimpleNamespace(terminating_since=None, pod={"metadata": {"name": "bad", "namespace": "default"}})
    good = types.SimpleNamespace(terminating_since=None, pod={"metadata": {"name": "good", "namespace": "default"}})
    k.pods = {"bad": bad, "good": good}

    def check(rt, now):
        if rt is bad:
            raise OSError(errno.ENOSPC, "No space left on device")
        seen.append(rt.pod["metadata"]["name"])
        return False
    k._check_containers = check
    k._check_readiness = k._check_liveness = lambda rt, now: False
    d = _daemon(tmp_path)
    k.tick(guard=lambda p: d.ctx.confined("FailedSync", "Pod", p["metadata"]["namespace"], p["metadata"]["name"]))
    assert seen == ["good"]
    assert ("FailedSync", "Pod", "default", "bad") in d.ctx.obj_problems
    assert d.ctx.components.is_failed("disk")


def test_the_folder_refuses_what_apply_refuses_an_unserved_version_and_a_mistyped_pool(tmp_path):
    """One refusal for the folder and `kproxy apply` (meta.no_match_error): `apps/v2` is not
    served; a pool whose addresses are not strings is a type error, not a crash of the pass."""
    d = _daemon(tmp_path)
    _write(d, "v2.yaml", DEPLOY.format(name="v2").replace("apps/v1", "apps/v2"))
    _write(d, "pool.yaml", "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\n"
                           "metadata: {name: p, namespace: metallb-system}\nspec: {addresses: [5]}\n")
    _write(d, "good.yaml", SVC.format(name="good", port=80))
    d.frontend.poll()
    assert _svc(d, "good")["spec"]["clusterIP"]
    problems = {p["source"].rsplit("/", 1)[1]: p["message"] for p in d.store.get(MANIFEST_ERRORS)}
    assert 'no matches for kind "Deployment" in version "apps/v2"' in problems["v2.yaml"]
    assert "spec.addresses[0]" in problems["pool.yaml"] and "Internal error" not in problems["pool.yaml"]
    assert d.store.get(key_of("Deployment", "default", "v2")) is None


def test_symlinks_in_the_folder_are_reported_and_a_broken_one_stops_nothing(tmp_path):
    """The poll never follows a symlink (a broken one made every pass fail with ENOENT)."""
    d = _daemon(tmp_path)
    folder = Path(d.cfg.manifests)
    (folder / "broken.yaml").symlink_to(tmp_path / "gone.yaml")
    (folder / "shadow.yaml").symlink_to("/etc/shadow")
    _write(d, "good.yaml", SVC.format(name="good", port=80))
    d.frontend.poll()
    assert _svc(d, "good")["spec"]["clusterIP"]
    problems = {p["source"].rsplit("/", 1)[1]: p["message"] for p in d.store.get(MANIFEST_ERRORS)}
    assert set(problems) == {"broken.yaml", "shadow.yaml"}
    assert all("symbolic link" in m for m in problems.values())
    assert "root:" not in str(problems)


def test_a_pool_withheld_for_holding_a_lab_address_says_so_once(tmp_path):
    """A pool admitted before a Node took an address in it hands out nothing: an event says why
    (once, not every pass), so the <pending> Services are not a silent mystery."""
    d = _daemon(tmp_path)
    d.ctx.objects["IPAddressPool"]["/p"] = {"kind": "IPAddressPool", "spec": {"addresses": ["192.168.49.96/28"]},
                                        "metadata": {"name": "p", "namespace": "metallb-system"}}
    assert d.ctx.pools() == [] and d.ctx.pools() == []
    (ev,) = _events(d, "PoolWithheld")
    assert ev["count"] == 1 and ev["involvedObject"]["name"] == "p"
    assert "holds 192.168.49.100 (the lab's outside host)" in ev["message"]
