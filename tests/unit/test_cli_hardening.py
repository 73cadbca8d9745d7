"""Issue 12 findings 7, 12 and 13 on the CLI side, without root or a daemon.

Concurrent applies (one file, one `created`), one error line instead of a traceback, what
apply says matches what it wrote, the folder index, `status` advice carrying the lab's own
options, and daemon liveness that a zombie or a reused pid does not fool.
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kproxy import cli, control
from kproxy.cli import apply, common
from kproxy.api import admission
from kproxy.config import LabConfig
from kproxy.store import manifests

SVC = """apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}}}]
"""


def svc(name="web", port=80) -> dict:
    return yaml.safe_load(SVC.format(name=name, port=port))


@pytest.fixture
def root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def lab(tmp_path, root):
    """A configured lab that is not running (apply writes the folder and warns)."""
    cfg = LabConfig(state_dir=str(tmp_path / "state"), sandbox=True)
    cfg.save()
    Path(cfg.manifests).mkdir(parents=True)
    return cfg


def run(cfg: LabConfig, *args, env=None):
    return CliRunner().invoke(cli.main, list(args), env={"KPROXY_STATE_DIR": cfg.state_dir, **(env or {})})


def write_input(tmp_path, name="web", port=80) -> str:
    p = tmp_path / f"in-{name}-{port}.yaml"
    p.write_text(SVC.format(name=name, port=port))
    return str(p)


def one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]


# -- #7: concurrent applies -----------------------------------------------------------------
def _slow_upsert(folder, obj, q):
    real = manifests._write_atomic

    def slow(path, text, mode=None):  # widen the window between "absent?" and the write
        time.sleep(0.3)
        real(path, text, mode)

    manifests._write_atomic = slow
    q.put(manifests.upsert(Path(folder), obj))


def test_two_concurrent_applies_of_one_new_object_write_one_file(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_upsert, args=(tmp_path, svc(), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert sorted(q.get(timeout=1) for _ in procs) == ["created", "unchanged"]
    assert [p.name for p in tmp_path.iterdir()] == ["service-default-web.yaml"]


def test_concurrent_applies_in_threads_configure_rather_than_duplicate(tmp_path):
    import threading
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(manifests.upsert(tmp_path, svc(port=p))))
               for p in (80, 81)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["configured", "created"]
    assert len(list(tmp_path.iterdir())) == 1


def test_delete_removes_every_document_of_the_identity(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC.format(name="web", port=80))
    (tmp_path / "b.yaml").write_text(SVC.format(name="web", port=81) + "---\n" + SVC.format(name="api", port=80))
    assert manifests.remove(tmp_path, "Service", "default", "web") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml"]
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())["metadata"]["name"] == "api"
    assert manifests.find(tmp_path, ("Service", "default", "web")) is None


def test_apply_then_delete_through_the_cli_leaves_nothing(lab, tmp_path):
    f = write_input(tmp_path)
    assert run(lab, "apply", "-f", f).stdout == "service/web created\n"
    assert run(lab, "apply", "-f", f).stdout == "service/web unchanged\n"
    res = run(lab, "delete", "-f", f)
    assert res.exit_code == 0 and res.stdout == 'service "web" deleted\n'
    assert list(Path(lab.manifests).iterdir()) == []


# -- #12: no traceback; what is written matches what is said ---------------------------------
@pytest.mark.parametrize("junk", ["non-utf8", "directory", "deep", "fifo"])
def test_apply_works_whatever_else_the_folder_holds(lab, tmp_path, junk):
    folder = Path(lab.manifests)
    if junk == "non-utf8":
        (folder / "latin1.yaml").write_bytes(b"kind: Service\nmetadata: {name: caf\xe9}\n")
    elif junk == "directory":
        (folder / "x.yaml").mkdir()
    elif junk == "deep":
        (folder / "deep.yaml").write_text("[" * 10000 + "]" * 10000)  # 100,000: H1's reader refuses it
    else:
        os.mkfifo(folder / "pipe.yaml")
    res = run(lab, "apply", "-f", write_input(tmp_path))
    assert "Traceback" not in res.output
    assert res.exit_code == 0 and res.stdout == "service/web created\n", res.output
    assert (folder / "service-default-web.yaml").is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(lab, tmp_path, monkeypatch):
    run(lab, "apply", "-f", write_input(tmp_path, port=80))
    path = Path(lab.manifests) / "service-default-web.yaml"
    before = path.read_text()

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", enospc)
    res = run(lab, "apply", "-f", write_input(tmp_path, port=81))
    assert one_line_error(res) == f"error: cannot write {path}: No space left on device"
    assert "configured" not in res.output
    assert path.read_text() == before  # the old version, whole
    assert sorted(p.name for p in Path(lab.manifests).iterdir()) == [path.name]  # no temporary file left
    res = run(lab, "apply", "-f", write_input(tmp_path, "new"))
    assert one_line_error(res).startswith("error: cannot write ")
    assert not (Path(lab.manifests) / "service-default-new.yaml").exists()


def test_an_unexpected_exception_is_one_line_and_exit_1(lab, tmp_path, monkeypatch):
    def boom(*a, **kw):
        raise KeyError("spec")

    monkeypatch.setattr(manifests.Index, "refresh", boom)
    res = run(lab, "apply", "-f", write_input(tmp_path))
    assert one_line_error(res) == "error: kproxy apply failed: KeyError: 'spec'"
    res = run(lab, "apply", "-f", write_input(tmp_path), env={"KPROXY_DEBUG": "1"})
    assert res.exit_code == 1 and "Traceback" in res.output


def test_an_object_the_validation_cannot_take_is_refused_by_name(lab, tmp_path, monkeypatch):
    def boom(obj, **kw):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(admission, "validate", boom)  # the gate's step 4
    src = write_input(tmp_path)
    res = run(lab, "apply", "-f", src)
    assert one_line_error(res) == f'error: error validating "{src}": Service "web": unhashable type: \'list\''
    assert list(Path(lab.manifests).iterdir()) == []  # refused: nothing written


def test_an_os_error_names_its_file(lab, monkeypatch):
    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", "/var/lib/kproxy/store.db")

    monkeypatch.setattr(common, "open_store", denied)
    (Path(lab.state_dir) / "daemon.pid").write_text(f"{os.getpid()}\n")
    monkeypatch.setattr(control, "process_alive", lambda pid, state_dir=None, proc="/proc": True)
    res = run(lab, "get", "pods")
    assert one_line_error(res) == "error: kproxy get failed: /var/lib/kproxy/store.db: Permission denied"


def test_a_lab_that_does_not_confirm_is_not_called_a_failure(lab, tmp_path, monkeypatch):
    """etcd down after the folder was written: say it was written, not that it failed."""
    (Path(lab.state_dir) / "daemon.pid").write_text(f"{os.getpid()}\n")
    monkeypatch.setattr(control, "process_alive", lambda pid, state_dir=None, proc="/proc": True)
    monkeypatch.setattr(apply, "open_store", lambda cfg, client: None)
    monkeypatch.setattr(apply, "control", lambda *a, **kw: {"ready": True})

    def etcd_down(store, objs):
        raise ConnectionRefusedError("etcd at http://192.168.49.2:2379 does not answer")

    monkeypatch.setattr(apply, "_refused", etcd_down)
    res = run(lab, "apply", "-f", write_input(tmp_path))
    assert res.stdout == "service/web created\n"
    line = one_line_error(res)
    assert line.startswith(f"error: written to {lab.manifests}, but the lab did not confirm it (etcd at ")
    assert (Path(lab.manifests) / "service-default-web.yaml").is_file()


# -- #13: the folder index ------------------------------------------------------------------
@pytest.fixture
def not_racy(monkeypatch):
    """Files written by the test count as settled (else a file changed in the last 2 s is re-read)."""
    monkeypatch.setattr(manifests, "RACY_SECONDS", 0)


def test_the_index_parses_only_changed_files(tmp_path, not_racy):
    folder, index_path = tmp_path / "m", tmp_path / "index.json"
    folder.mkdir()
    for i in range(30):
        (folder / f"s{i}.yaml").write_text(SVC.format(name=f"s{i}", port=80))
    with manifests.session(folder, index_path) as f:
        assert f.index.parsed == 30
        assert f.find(("Service", "default", "s7"))["metadata"]["name"] == "s7"
    with manifests.session(folder, index_path) as f:
        assert f.index.parsed == 0
        assert f.upsert(svc("new")) == "created"
    (folder / "s3.yaml").write_text(SVC.format(name="renamed", port=80))
    with manifests.session(folder, index_path) as f:
        assert f.index.parsed == 1  # the changed file
        assert f.find(("Service", "default", "s3")) is None
        assert f.find(("Service", "default", "renamed")) is not None


def test_a_file_changed_just_now_is_read_again_whatever_its_stamp(tmp_path):
    """Two writes within one timestamp tick look alike: a racy entry is not trusted."""
    (tmp_path / "a.yaml").write_text(SVC.format(name="a", port=80))
    index_path = tmp_path.parent / (tmp_path.name + "-index.json")
    with manifests.session(tmp_path, index_path) as f:
        assert f.index.parsed == 1
    with manifests.session(tmp_path, index_path) as f:
        assert f.index.parsed == 1


def test_a_big_file_is_not_read_again_per_apply(tmp_path, monkeypatch, not_racy):
    folder, index_path = tmp_path / "m", tmp_path / "index.json"
    folder.mkdir()
    big = folder / "big.yaml"
    big.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n" +
                   "".join(f"  k{i}: v\n" for i in range(20000)))
    manifests.upsert(folder, svc(), index_path=index_path)
    reads = []
    real = manifests.manifest.read_file
    monkeypatch.setattr(manifests.manifest, "read_file", lambda p: reads.append(Path(p).name) or real(p))
    for i in range(5):
        manifests.upsert(folder, svc(f"s{i}"), index_path=index_path)
    assert "big.yaml" not in reads


# -- #13: status advice, stale pid files ---------------------------------------------------
def test_status_of_a_stopped_multi_node_lab_advises_its_own_options(tmp_path, root):
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True, nodes=3, overlay="vxlan", lb_pools=["192.168.49.240/28"],
                    node_port_range=(30000, 30100))
    cfg.save()
    res = run(cfg, "status")
    assert res.exit_code == 1
    assert (f"start it with: kproxy up --state-dir {tmp_path} --sandbox --nodes 3 --overlay vxlan "
            "--service-node-port-range 30000-30100 --lb-pool 192.168.49.240/28\n") in res.output


def test_status_of_a_single_node_lab_stays_short(tmp_path, root):
    cfg = LabConfig(state_dir=str(tmp_path), sandbox=True)
    cfg.save()
    assert f"start it with: kproxy up --state-dir {tmp_path} --sandbox\n" in run(cfg, "status").output


def fake_proc(tmp_path, pid, state, argv):
    d = tmp_path / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (py (x) y) {state} 1 {pid} {pid} 0 -1 4194560\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return str(tmp_path / "proc")


@pytest.mark.parametrize("state, argv, state_dir, alive", [
    ("S", ["/usr/bin/python3", "-m", "kproxy.daemon", "--state-dir", "/lab"], "/lab", True),
    ("R", ["/venv/bin/python", "/venv/bin/kproxy", "agent", "--state-dir", "/lab/nodes/node-2"], "/lab/nodes/node-2", True),
    ("Z", ["/usr/bin/python3", "-m", "kproxy.daemon", "--state-dir", "/lab"], "/lab", False),  # killed -9, not reaped
    ("S", ["/usr/bin/python3", "-m", "kproxy.daemon", "--state-dir", "/other"], "/lab", False),  # another lab's
    ("S", ["sleep", "1000"], "/lab", False),  # the pid was reused
    ("S", ["/usr/bin/python3", "-S", "-I", "-m", "kproxy.node.podserver"], "/lab", False),  # a pod, not a daemon
])
def test_liveness_of_a_pid(tmp_path, state, argv, state_dir, alive):
    proc = fake_proc(tmp_path, 4242, state, argv)
    assert control.process_alive(4242, state_dir, proc) is alive
    assert control.process_alive(4343, state_dir, proc) is False  # no such pid


def test_a_zombie_daemon_is_not_a_running_lab(tmp_path):
    child = subprocess.Popen(["sleep", "0"])  # exits at once; not reaped until wait(): a zombie
    try:
        deadline = time.monotonic() + 5
        while control._proc_state(child.pid, "/proc") != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "daemon.pid").write_text(f"{child.pid}\n")
        assert common.daemon_pid(str(tmp_path)) is None
    finally:
        child.wait()
    (tmp_path / "daemon.pid").write_text("garbage\n")
    assert common.daemon_pid(str(tmp_path)) is None


def test_apply_of_a_duplicated_identity_keeps_one_copy_and_says_so(lab, tmp_path):
    folder = Path(lab.manifests)
    (folder / "a.yaml").write_text(SVC.format(name="web", port=80))
    (folder / "b.yaml").write_text(SVC.format(name="api", port=80) + "---\n" + SVC.format(name="web", port=81))
    res = run(lab, "apply", "-f", write_input(tmp_path, port=82))
    assert res.exit_code == 0 and res.stdout == "service/web configured\n"
    assert f"warning: service/web was also in {folder / 'b.yaml'}: that copy was removed" in res.output
    assert manifests.find(folder, ("Service", "default", "web"))["spec"]["ports"] == [{"port": 82}]
    assert [d["metadata"]["name"] for d in yaml.safe_load_all((folder / "b.yaml").read_text())] == ["api"]


def test_kill_pids_does_not_wait_for_a_zombie():
    from kproxy.teardown import kill_pids
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = time.monotonic()
        kill_pids([child.pid], grace=3)  # SIGTERM ends it; unreaped, it stays a zombie
        assert time.monotonic() - started < 2
    finally:
        child.kill()
        child.wait()


def test_etcd_down_is_one_line_that_says_so(lab, monkeypatch):
    from etcd3gw import exceptions as etcd_exc

    def down(cfg, client):
        try:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        except OSError:
            raise etcd_exc.ConnectionFailedError()  # etcd3gw's errors carry no text: their context does

    monkeypatch.setattr(common, "open_store", down)
    (Path(lab.state_dir) / "daemon.pid").write_text(f"{os.getpid()}\n")
    monkeypatch.setattr(control, "process_alive", lambda pid, state_dir=None, proc="/proc": True)
    res = run(lab, "get", "svc")
    assert one_line_error(res) == ("error: kproxy get failed: the lab's etcd does not answer "
                                   "(ConnectionFailedError: [Errno 111] Connection refused)")


def test_apply_edits_the_document_that_holds_the_object_in_place(tmp_path):
    """The writer parses each document with the reader's safe loader: an edit lands in the
    document that holds the object, and the file's other documents and comments stay."""
    text = "# keep me\n" + SVC.format(name="api", port=80) + "---\n" + SVC.format(name="web", port=80)
    (tmp_path / "both.yaml").write_text(text)
    assert manifests.upsert(tmp_path, svc(port=81)) == "configured"
    assert [p.name for p in tmp_path.iterdir()] == ["both.yaml"]
    new = (tmp_path / "both.yaml").read_text()
    assert new.startswith("# keep me\n")
    docs = [d for d in yaml.safe_load_all(new) if d]
    assert [(d["metadata"]["name"], d["spec"]["ports"][0]["port"]) for d in docs] == [("api", 80), ("web", 81)]


def test_a_cluster_scoped_object_is_one_identity_whatever_namespace_its_manifest_gives(tmp_path):
    """The API server drops metadata.namespace of a Namespace: apply writes it without one, and
    delete of the same manifest (namespace and all) finds and removes it."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "namespace": "default"}}
    assert manifests.upsert(tmp_path, ns, cluster_scoped=True) == "created"
    assert [p.name for p in tmp_path.iterdir()] == ["namespace-shop.yaml"]
    assert "namespace:" not in (tmp_path / "namespace-shop.yaml").read_text()
    assert manifests.upsert(tmp_path, ns, cluster_scoped=True) == "unchanged"
    assert manifests.remove(tmp_path, "Namespace", "default", "shop", cluster_scoped=True) is True
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("role, args, saved", [
    ("controller", ["--name", "node-1", "--node-ip", "192.168.49.2"],
     {"node_name": "node-1", "node_ip": "192.168.49.2"}),
    ("agent", ["--node", "node-2", "--node-ip", "192.168.49.3", "--pod-cidr", "10.244.2.0/24", "--sandbox"],
     {"node_name": "node-2", "node_ip": "192.168.49.3", "pod_cidr": "10.244.2.0/24", "sandbox": True,
      "extra": {"role": "agent"}}),
])
def test_a_cluster_process_saves_its_settings_and_runs_the_daemon_in_its_role(lab, monkeypatch, role, args, saved):
    """`kproxy controller` / `kproxy agent` (what systemd and `up --nodes` start) hand over to
    the daemon in their role, with the flags saved in the state dir: not an empty exit 0."""
    import kproxy.daemon
    ran = []
    monkeypatch.setattr(kproxy.daemon, "main", lambda argv: ran.append(argv))
    res = run(lab, role, "--store", "https://192.168.49.2:2379", *args)
    assert res.exit_code == 0, res.output
    assert ran == [["--state-dir", lab.state_dir, "--role", role]]
    cfg = LabConfig.load(lab.state_dir)
    assert cfg.store_url == "https://192.168.49.2:2379"
    assert {k: getattr(cfg, k) for k in saved} == saved


def test_apply_of_no_object_is_kubectls_error_and_writes_nothing(lab, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n# nothing here\n---\n")
    res = run(lab, "apply", "-f", str(empty))
    assert one_line_error(res) == "error: no objects passed to apply"
    assert not any(Path(lab.manifests).iterdir())


def test_a_system_namespace_may_not_be_deleted(lab):
    res = run(lab, "delete", "namespace", "default")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert 'Error from server (Forbidden): namespaces "default" is forbidden: this namespace may not be deleted' \
        in res.output
