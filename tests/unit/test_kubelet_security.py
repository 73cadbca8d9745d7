"""securityContext (issue 12 #10): who a container runs as, and the kubelet's refusals."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kproxy.node import inpod
from kproxy.node.kubelet import Container, Kubelet, PodRuntime
from kproxy.node.probes import ProbeState
from kproxy.node.security import CreateContainerConfigError, RunAs, run_as

WHERE = '(pod: "web_default(u-1)", container: c)'


def pod(pod_sc=None, container_sc=None, **extra):
    c = {"name": "c", **({"securityContext": container_sc} if container_sc is not None else {})}
    return {"metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {"containers": [c], **({"securityContext": pod_sc} if pod_sc is not None else {}), **extra},
            "status": {"podIP": "10.244.0.5"}}


def decide(p):
    return run_as(p, p["spec"]["containers"][0])


def test_no_security_context_runs_as_root_unchanged():
    assert decide(pod()) is None and decide(pod({}, {})) is None


def test_run_as_user_and_group():
    assert decide(pod({"runAsUser": 65534, "runAsNonRoot": True})) == RunAs(65534, 65534, (65534,))  # nobody:nogroup
    assert decide(pod({"runAsUser": 1234, "runAsGroup": 99})) == RunAs(1234, 99, (99,))
    assert decide(pod({"runAsUser": 4242424})) == RunAs(4242424, 0, (0,))  # no passwd entry: group 0, as containerd
    assert decide(pod({"runAsGroup": 7})) == RunAs(0, 7, (7,))
    assert decide(pod({"runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [5, 6], "fsGroup": 2000})) \
        == RunAs(1000, 1000, (1000, 5, 6, 2000))
    assert RunAs(1000, 1000, (1000, 5)).arg() == "1000:1000:1000,5"


def test_the_container_overrides_the_pod():
    assert decide(pod({"runAsUser": 1000, "runAsGroup": 1000}, {"runAsUser": 2000})) == RunAs(2000, 1000, (1000,))
    assert decide(pod({"runAsNonRoot": True}, {"runAsUser": 5})).uid == 5
    assert decide(pod({"runAsUser": 0, "runAsNonRoot": True}, {"runAsNonRoot": False})) == RunAs(0, 0, (0,))


def test_run_as_non_root_refusals_in_the_kubelets_words():
    with pytest.raises(CreateContainerConfigError) as e:
        decide(pod({"runAsNonRoot": True}))
    assert str(e.value) == f"container has runAsNonRoot and image will run as root {WHERE}"
    with pytest.raises(CreateContainerConfigError) as e:
        decide(pod(None, {"runAsNonRoot": True, "runAsUser": 0}))
    assert str(e.value) == f"container's runAsUser breaks non-root policy {WHERE}"
    for bad in ("65534", -1, True, 2**40):  # never silently root instead
        with pytest.raises(CreateContainerConfigError):
            decide(pod({"runAsUser": bad}))


def test_the_kubelet_refuses_to_start_and_says_why(tmp_path, monkeypatch):
    events = []
    kubelet = Kubelet.__new__(Kubelet)
    kubelet.log_dir, kubelet.launcher = tmp_path, None
    kubelet.event = lambda p, reason, msg, etype: events.append((reason, msg, etype))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a refused container was started"))
    p = pod({"runAsNonRoot": True})
    rt = PodRuntime(pod=p, netns="kp0000-web", containers=[Container(spec=p["spec"]["containers"][0])],
                    readiness=ProbeState(None))
    kubelet.node_ip = "192.168.49.2"
    kubelet._spawn(rt, rt.containers[0])
    assert events == [("Failed", f"Error: container has runAsNonRoot and image will run as root {WHERE}", "Warning")]
    assert not kubelet._check_containers(rt, 1e9)  # never retried as a crash
    status = kubelet.status(rt)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {
        "reason": "CreateContainerConfigError",
        "message": f"container has runAsNonRoot and image will run as root {WHERE}"}}


def test_in_pod_drops_to_the_user_after_setting_the_hostname():
    argv = inpod.in_pod("kp0000-web", "web", ["id", "-u"], "65534:65534:65534")
    assert argv[-4:] == ["--user", "65534:65534:65534", "id", "-u"]
    assert inpod.in_pod("ns", "web", ["id"]) == inpod.in_pod("ns", "web", ["id"], None)  # no user: as before
    server = inpod.in_pod("ns", "web", [*inpod.PODSERVER, "--pod", "web"], "1:1:1")
    assert server[-6:] == ["--hostname", "web", "--user", "1:1:1", "--pod", "web"]


def test_the_set_hostname_step_runs_the_command_as_the_user():
    """The in-pod step itself (no namespaces): as root it becomes uid 65534, then runs `id`."""
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root to change uid")
    script = inpod._SET_HOSTNAME.replace("socket.sethostname(sys.argv[1]); ", "")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", script, "web", "--user", "65534:65534:65534",
                          "sh", "-c", "id -u; id -g; id -G"], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["65534", "65534", "65534"]


def test_the_pod_server_drops_privileges(tmp_path):
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root to change uid")
    code = ("import sys, os; sys.path.insert(0, sys.argv[1]); import podserver; "
            "podserver.drop_privileges('65534:65534:65534,7'); print(os.getuid(), os.getgid(), sorted(os.getgroups()))")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(Path(inpod.__file__).parent)],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["65534", "65534", "[7,", "65534]"]


def test_exec_probes_run_as_their_container():
    submitted = []

    class Pool:
        def submit(self, fn, *args):
            submitted.append(args)

    kubelet = Kubelet.__new__(Kubelet)
    kubelet.pool = Pool()
    probe = {"exec": {"command": ["true"]}}
    p = pod({"runAsUser": 1000, "runAsGroup": 1000})
    c = p["spec"]["containers"][0]
    c.update(readinessProbe=probe, livenessProbe=probe)
    rt = PodRuntime(pod=p, netns="kp0000-web", containers=[Container(spec=c, liveness=ProbeState(probe))],
                    readiness=ProbeState(probe))
    rt.containers[0].proc = object()  # running
    rt.containers[0].liveness.next_at = 1.0
    kubelet._check_readiness(rt, 10.0)
    kubelet._check_liveness(rt, 10.0)
    assert [args[-1] for args in submitted] == ["1000:1000:1000", "1000:1000:1000"]
