"""Holes found by re-running issue 12's red team on the merged code (roles, admission gate,
CLI package): each test fails on the code before its fix."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from kproxy import cli
from kproxy.api import manifest
from kproxy.config import LabConfig


class _Endless(io.RawIOBase):
    """/dev/zero as a stream: reading all of it never ends."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        b[:] = b"\0" * len(b)
        return len(b)


def test_stdin_is_read_only_up_to_the_size_cap():
    docs = manifest.read_stream(io.BufferedReader(_Endless()), "STDIN")
    assert len(docs) == 1 and "larger than 3145728 bytes" in docs[0].error


def test_stdin_that_is_not_utf8_is_named_as_such():
    docs = manifest.read_stream(io.BytesIO(b"\xff\xfe kind: x\n"), "STDIN")
    assert docs[0].error == "error reading STDIN: invalid UTF-8 at byte 0: manifests must be UTF-8 text"


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = LabConfig(state_dir=str(tmp_path / "state"), sandbox=True)
    cfg.save()
    Path(cfg.manifests).mkdir(parents=True)
    return cfg


def test_apply_from_stdin_with_bad_bytes_is_one_clear_line(lab):
    res = CliRunner().invoke(cli.main, ["apply", "-f", "-"], input=b"\xff\n",
                             env={"KPROXY_STATE_DIR": lab.state_dir})
    assert res.exit_code == 1
    assert "invalid UTF-8 at byte 0" in res.output and "internal error" not in res.output


def _pool(*addresses):
    return {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "p", "namespace": "metallb-system"}, "spec": {"addresses": list(addresses)}}


@pytest.mark.parametrize("text, held", [
    ("127.0.0.0/30", "127.0.0.0"), ("127.0.0.1/32", "127.0.0.1"), ("126.255.255.254-127.0.0.2", "127.0.0.0"),
    ("0.0.0.0/31", "0.0.0.0"), ("169.254.0.0/24", "169.254.0.0"), ("224.0.0.1-224.0.0.9", "224.0.0.1"),
    ("239.1.1.0/24", "239.1.1.0"), ("255.255.255.255", "255.255.255.255"),
])
def test_a_pool_holding_a_special_address_is_refused(text, held):
    """A pool is refused what a LoadBalancer ingress is refused: it would hand that address out."""
    from kproxy.api.validation import validate
    errs = [str(e) for e in validate(_pool("192.168.200.0/29", text))]
    assert len(errs) == 1, errs
    assert errs[0].startswith(f'spec.addresses[1]: Invalid value: "{text}": holds {held}: a LoadBalancer IP may not')


def test_an_ordinary_pool_is_still_accepted():
    from kproxy.api.validation import validate
    assert validate(_pool("192.168.200.0/24", "10.0.0.1-10.0.0.9", "172.16.0.5")) == []


def test_an_undefined_alias_as_a_merge_key_names_the_merge_key_not_a_python_object():
    (doc,) = manifest.read_text("apiVersion: v1\nkind: Service\n<<: *nope\nmetadata: {name: a}\n", "f.yaml")
    assert "object at 0x" not in doc.error
    assert "line 3: <<: found undefined alias nope" in doc.error


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "1e308"])
def test_trace_refuses_a_timeout_the_probe_cannot_use(value):
    """-5 printed the probe's traceback as 'no answer', nan/inf/1e308 'cannot convert float ... to integer'."""
    res = CliRunner().invoke(cli.main, ["trace", "--timeout", value, "outside", "svc/web"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--timeout'" in res.output and "Traceback" not in res.output


def test_a_stopped_multi_node_lab_is_started_again_with_its_own_options(tmp_path, monkeypatch):
    """`get`/`exec`/`logs` after the controller died said 'start it with kproxy up' (one node, no
    sandbox), as `status` did before issue 12 #13: every command now gives the lab's own `up`."""
    from kproxy.cli import common
    cfg = LabConfig(state_dir=str(tmp_path / "s"), sandbox=True, nodes=3)
    cfg.save()
    msg = common.not_running(cfg.state_dir)
    assert msg.endswith(f"start it with kproxy up --state-dir {cfg.state_dir} --sandbox --nodes 3")
    assert common.not_running(str(tmp_path / "none")).endswith("start it with kproxy up")


def test_status_of_a_multi_node_lab_with_an_agent_killed_names_it_and_exits_1(tmp_path, monkeypatch):
    """kill -9 of agent node-2: status listed the live processes only, with exit 0, while node-2
    went NotReady (and `up` refuses while the controller runs)."""
    from kproxy.cli import lifecycle
    from kproxy.cluster import lab as cluster_lab
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = LabConfig(state_dir=str(tmp_path / "s"), sandbox=True, nodes=3, store_url="https://192.168.49.2:2379")
    cfg.save()
    for n in (1, 2, 3):
        (tmp_path / "s" / "nodes" / f"node-{n}").mkdir(parents=True)
        (tmp_path / "s" / "nodes" / f"node-{n}" / "daemon.pid").write_text(str(100 + n))
    (tmp_path / "s" / "etcd.pid").write_text("99")
    alive = {"agent node-1": 101, "agent node-3": 103, "controller": 100, "etcd": 99}
    monkeypatch.setattr(lifecycle, "daemon_pid", lambda state_dir: 100)
    monkeypatch.setattr(cluster_lab, "process_pids", lambda c: dict(alive))
    monkeypatch.setattr(lifecycle, "open_store", lambda *a, **k: None)
    monkeypatch.setattr(lifecycle, "control", lambda *a, **k: {})
    res = CliRunner().invoke(cli.main, ["status", "--state-dir", cfg.state_dir])
    assert res.exit_code == 1, res.output
    assert "agent node-2: not running" in res.output
    assert f"kproxy up --state-dir {cfg.state_dir} --sandbox --nodes 3" in res.output
    alive["agent node-2"] = 102
    res = CliRunner().invoke(cli.main, ["status", "--state-dir", cfg.state_dir])
    assert res.exit_code == 0 and "not running" not in res.output, res.output


@pytest.mark.parametrize("node", ["../../etc", "NODE-1", "a/b", "x" * 254])
def test_a_pod_bound_to_a_node_name_that_is_not_a_name_is_refused(node):
    """ValidateNodeName: `nodeName: ../../etc` was admitted and left Pending on a node that cannot exist."""
    from kproxy.api.validation import validate
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}}
    from kproxy.api.defaults import apply_defaults
    errs = [str(e) for e in validate(apply_defaults(pod))]
    assert len(errs) == 1 and errs[0].startswith(f'spec.nodeName: Invalid value: "{node}"'), errs
    pod["spec"]["nodeName"] = "node-2"
    assert validate(apply_defaults(pod)) == []


def _huge_pod(size: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "sleep 1"],
                                     "args": ["x" * size]}]}}


def test_an_object_too_big_for_one_etcd_request_is_refused_in_etcds_words():
    """A 2 MB Pod (well under the 3 MiB file cap) was admitted and written; etcd then refused it
    ('Too Many Requests', its 1.5 MiB limit) and every controller pass failed: no new Service was
    programmed while the file stayed in the folder."""
    from kproxy.api import admission
    gate = admission.Admission(remember=True)
    verdict = gate.admit(_huge_pod(2_000_000), "huge.yaml")
    assert verdict.reason == admission.TOO_LARGE and verdict.message == "etcdserver: request is too large"
    assert verdict.kubectl_message("huge.yaml") == \
        'Error from server: error when creating "huge.yaml": etcdserver: request is too large'
    assert gate.admit(_huge_pod(1_000_000), "big.yaml").ok  # under the limit: still taken


def test_apply_of_an_object_too_big_for_etcd_writes_nothing(lab, tmp_path):
    import json as _json
    src = tmp_path / "huge.json"
    src.write_text(_json.dumps(_huge_pod(2_000_000)))
    res = CliRunner().invoke(cli.main, ["apply", "-f", str(src)], env={"KPROXY_STATE_DIR": lab.state_dir})
    assert res.exit_code == 1 and "etcdserver: request is too large" in res.output, res.output
    assert os.listdir(lab.manifests) == []


def test_reapplying_a_headless_service_without_cluster_ip_keeps_it_headless(tmp_path):
    """patchAllocatedValues carries an old clusterIP "None" too (needsClusterIP of both): a headless
    Service re-applied without `clusterIP` became a ClusterIP Service with a new address."""
    import random
    from kproxy.controllers.allocation import CLUSTER_IPS, ServiceRanges, allocate_service
    from kproxy.store.sqlite import SqliteStore
    store = SqliteStore(tmp_path / "s.db")
    spec = {"clusterIP": "None", "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hl", "namespace": "default"}, "spec": spec}
    with store.transaction() as txn:
        old = allocate_service(txn, svc, None, ServiceRanges(), random.Random(1))
    new = {**svc, "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}
    with store.transaction() as txn:
        allocate_service(txn, new, old, ServiceRanges(), random.Random(1))
    assert (new["spec"]["clusterIP"], new["spec"]["clusterIPs"]) == ("None", ["None"])
    assert dict(store.list(CLUSTER_IPS)) == {}
    store.close()


def test_down_purge_leaves_only_the_manifests_folder(lab, monkeypatch):
    """The folder index (`apply`'s, 0600, every file's objects) outlived `down --purge`."""
    from kproxy import teardown
    monkeypatch.setattr(teardown, "remove_leftovers", lambda cfg: [])
    state = Path(lab.state_dir)
    (state / "folder-index.json").write_text("{}")
    res = CliRunner().invoke(cli.main, ["down", "--purge", "--state-dir", lab.state_dir])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in state.iterdir()) == [Path(lab.manifests).name]


def test_apply_from_a_closed_stdin_is_one_clear_line(lab, monkeypatch):
    """`apply -f - <&-` said `kproxy apply failed: AttributeError: 'NoneType' object ...`."""
    from kproxy.cli import common
    monkeypatch.setattr(common.sys, "stdin", None)
    with pytest.raises(SystemExit) as exc:
        common._read_documents("-")
    assert exc.value.code == 1


def _selector_pod(name: str, selector: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"nodeSelector": selector, "containers": [{"name": "c"}]}}


def test_a_pod_whose_node_selector_no_node_matches_stays_pending(tmp_path):
    """`nodeSelector: {disk: ssd}` with no such node ran the pod on node-1 anyway."""
    from kproxy.controllers import pods as podw
    from kproxy.context import key_of
    from kproxy.daemon import Daemon
    d = Daemon(LabConfig(state_dir=str(tmp_path), sandbox=True), controller=True, agent=True)
    d.agent.register_node()
    ssd, here = _selector_pod("ssd", {"disk": "ssd"}), _selector_pod("here", {"kubernetes.io/hostname": "node-1"})
    for pod in (ssd, here):
        podw.schedule(d.ctx, pod)
    assert not ssd["spec"].get("nodeName")
    assert ssd["status"]["conditions"][0]["message"] == \
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    assert here["spec"]["nodeName"] == "node-1"
    events = [e for _, e in d.store.list("/registry/events/") if e["reason"] == "FailedScheduling"]
    assert [e["involvedObject"]["name"] for e in events] == ["ssd"]
    assert d.ctx.objects["Pod"][key_of("Pod", "default", "ssd")]["status"]["phase"] == "Pending"


def test_the_scheduler_message_sorts_its_reasons_as_fit_error_does():
    from kproxy.controllers import replicas
    assert replicas.too_many_pods(3, 1, 0, 2) == ("0/3 nodes are available: 1 Too many pods, "
                                                  "2 node(s) didn't match Pod's node affinity/selector.")


def test_failed_scheduling_is_reported_by_the_scheduler_not_the_kubelet():
    from kproxy.describe import event_source
    ev = {"reason": "FailedScheduling", "involvedObject": {"kind": "Pod", "name": "p"}}
    assert event_source(ev) == "default-scheduler"
    assert event_source({**ev, "reason": "Started"}) == "kubelet"


@pytest.mark.parametrize("pool", ["127.0.0.0/30", "0.0.0.0-0.0.0.3", "224.0.0.0/28"])
def test_up_refuses_a_lb_pool_holding_a_special_address(tmp_path, monkeypatch, pool):
    """--lb-pool took 127.0.0.0/30 (the manifest form of it is refused since this branch)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def no_lab(self):
        raise AssertionError("the pool was taken: up went on to start a lab")
    monkeypatch.setattr(LabConfig, "save", no_lab)  # whatever happens, no lab is started here
    res = CliRunner().invoke(cli.main, ["up", "--sandbox", "--state-dir", str(tmp_path / "s"), "--lb-pool", pool])
    assert res.exit_code == 1, res.output
    assert res.output.startswith(f"error: --lb-pool {pool}: holds ") and "a LoadBalancer IP may not be" in res.output


def test_a_stored_pool_holding_loopback_hands_out_nothing(tmp_path):
    """A pool admitted before the rule (a store of an older lab) must not hand out 127.0.0.0 either:
    a refused update of it would keep the stored version serving."""
    from kproxy.context import key_of
    from kproxy.daemon import Daemon
    d = Daemon(LabConfig(state_dir=str(tmp_path), sandbox=True), controller=True, agent=True)
    for name, addresses in (("lo", ["127.0.0.0/30"]), ("ok", ["192.168.49.240-192.168.49.250"])):
        d.ctx.objects["IPAddressPool"][key_of("IPAddressPool", "metallb-system", name)] = _pool(*addresses) | {
            "metadata": {"name": name, "namespace": "metallb-system"}}
    assert [p.name for p in d.ctx.pools()] == ["ok"]
    d.ctx.pools()  # said once
    withheld = [e for _, e in d.store.list("/registry/events/") if e["reason"] == "PoolWithheld"]
    assert len(withheld) == 1 and "holds 127.0.0.0: a LoadBalancer IP may not be in the loopback range" in \
        withheld[0]["message"]
