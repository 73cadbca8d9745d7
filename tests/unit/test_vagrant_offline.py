"""The Vagrant lab's offline classroom settings and scripts/vagrant-test's parts, without VMs:
the Vagrantfile's settings as Ruby evaluates them (online defaults unchanged, offline ones turned
into the provider options and provisioners they name), vagrant/offline.sh's files, the scripts'
syntax, the settings scripts/vagrant-test passes being ones the Vagrantfile reads, and the
runner's time limits. The real thing (VMs) is scripts/vagrant-test itself."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kproxy.vagrantlab import host, main
from kproxy.vagrantlab.run import CheckFailed, PhaseTimeout, Runner
from tests.unit.test_vagrant import VAGRANT, VAGRANTFILE, needs_ruby, record_vagrantfile, vm_settings

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = VAGRANT / "offline.sh"


def paths(log: list[dict]) -> dict[str, list]:
    return {r["path"]: r["args"] for r in log}


def provisioners(log: list[dict]) -> list[dict]:
    return [r for r in log if r["path"] == "vm.provision"]


def wheels(tmp_path: Path) -> Path:
    d = tmp_path / "wheels"
    d.mkdir()
    (d / "click-8.5.1-py3-none-any.whl").write_bytes(b"")
    return d


# -- the Vagrantfile -----------------------------------------------------------------------------
@needs_ruby
def test_online_defaults_add_nothing_offline(tmp_path):
    log = record_vagrantfile(tmp_path)
    p = paths(log)
    assert p["vm.provider.libvirt.driver="] == ["kvm"]
    assert p["vm.provider.libvirt.management_network_mode="] == ["nat"]
    assert "vm.provider.libvirt.cpu_mode=" not in p
    assert p["vm.provider.libvirt.memory="] == [1024]
    assert provisioners(log) == []  # no offline provisioner: provision.sh alone, as before
    assert [r["args"][1] for r in log if r["path"] == "vm.synced_folder"] == ["/vagrant"]
    nets = [r for r in log if r["path"].endswith(".vm.network")]
    assert nets and all(r["kw"]["libvirt__forward_mode"] == "none" for r in nets)  # host-only on libvirt


@needs_ruby
def test_offline_settings_from_the_environment(tmp_path):
    w = wheels(tmp_path)
    log = record_vagrantfile(tmp_path, {"KPROXY_LIBVIRT_DRIVER": "qemu", "KPROXY_MANAGEMENT_NETWORK": "none",
                                        "KPROXY_APT_PROXY": "http://192.168.121.1:3142", "KPROXY_WHEELHOUSE": str(w),
                                        "KPROXY_BOX": "local/bookworm64", "KPROXY_NODES": "2"})
    p = paths(log)
    assert p["vm.box="] == ["local/bookworm64"]
    assert p["vm.provider.libvirt.driver="] == ["qemu"]
    assert p["vm.provider.libvirt.cpu_mode="] == ["custom"] and p["vm.provider.libvirt.cpu_model="] == ["qemu64"]
    assert p["vm.provider.libvirt.management_network_mode="] == ["none"]
    (prov,) = provisioners(log)
    assert prov["args"] == ["offline"] and prov["kw"]["type"] == "shell" and prov["kw"]["path"] == "offline.sh"
    assert prov["kw"]["args"] == ["http://192.168.121.1:3142", "", "/var/cache/kproxy-wheelhouse"]
    synced = {r["args"][1]: r for r in log if r["path"] == "vm.synced_folder"}
    assert synced["/var/cache/kproxy-wheelhouse"]["args"][0] == str(w)
    assert synced["/var/cache/kproxy-wheelhouse"]["kw"]["type"] == "rsync"
    assert list(vm_settings(log)) == ["node-1", "node-2"]


@needs_ruby
def test_offline_settings_from_config_yaml_env_wins(tmp_path):
    log = record_vagrantfile(tmp_path, {"KPROXY_PIP_INDEX": "http://10.0.0.1:3141/simple/"},
                             "libvirt_driver: qemu\napt_proxy: http://10.0.0.1:3142\npip_index: http://x/simple/\n")
    p = paths(log)
    assert p["vm.provider.libvirt.driver="] == ["qemu"]
    (prov,) = provisioners(log)
    assert prov["kw"]["args"] == ["http://10.0.0.1:3142", "http://10.0.0.1:3141/simple/", ""]


@needs_ruby
@pytest.mark.parametrize("env, message", [
    ({"KPROXY_LIBVIRT_DRIVER": "xen"}, "KPROXY_LIBVIRT_DRIVER must be kvm or qemu, not xen"),
    ({"KPROXY_MANAGEMENT_NETWORK": "bridge"}, "KPROXY_MANAGEMENT_NETWORK must be nat or none, not bridge"),
    ({"KPROXY_WHEELHOUSE": "/nonexistent-wheelhouse"}, "KPROXY_WHEELHOUSE: no wheels in /nonexistent-wheelhouse"),
])
def test_bad_offline_settings_are_refused(tmp_path, env, message):
    with pytest.raises(subprocess.CalledProcessError) as e:
        record_vagrantfile(tmp_path, env)
    assert message in e.value.stderr


def test_vagrant_test_passes_only_settings_the_vagrantfile_reads(tmp_path):
    """scripts/vagrant-test drives the lab through the Vagrantfile's own settings (KPROXY_<KEY>)."""
    keys = set(re.findall(r'^\s+"(\w+)" =>', VAGRANTFILE.read_text(), re.M))
    env = host.Lab(work=tmp_path).vagrant_env()
    passed = {k.removeprefix("KPROXY_").lower() for k in env if k.startswith("KPROXY_")}
    assert passed <= keys, passed - keys
    assert {"libvirt_driver", "management_network", "apt_proxy", "wheelhouse", "memory", "box"} <= passed
    assert env["KPROXY_MANAGEMENT_NETWORK"] == "none" and env["KPROXY_APT_PROXY"] == "http://192.168.121.1:3142"


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrant_validate_offline(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KPROXY_")}
    clean |= {"VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
              "VAGRANT_CHECKPOINT_DISABLE": "1", "KPROXY_LIBVIRT_DRIVER": "qemu", "KPROXY_NODES": "2",
              "KPROXY_MANAGEMENT_NETWORK": "none", "KPROXY_APT_PROXY": "http://192.168.121.1:3142",
              "KPROXY_WHEELHOUSE": str(wheels(tmp_path))}
    res = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=clean, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "validated successfully" in res.stdout, res.stdout + res.stderr


# -- vagrant/offline.sh --------------------------------------------------------------------------
def offline(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(OFFLINE), *args], env={**os.environ, "KPROXY_ROOT": str(root)},
                          capture_output=True, text=True)


def test_offline_sh_writes_apt_proxy_and_pip_config_and_removes_them(tmp_path):
    w = wheels(tmp_path)
    assert w == tmp_path / "wheels"  # /wheels in the VM, KPROXY_ROOT standing for /
    res = offline(tmp_path, "http://192.168.121.1:3142", "", "/wheels")
    assert res.returncode == 0, res.stderr
    apt = (tmp_path / "etc/apt/apt.conf.d/01kproxy-proxy").read_text()
    assert 'Acquire::http::Proxy "http://192.168.121.1:3142";' in apt
    pip = configparser.ConfigParser()
    pip.read(tmp_path / "etc/pip.conf")  # pip reads it with configparser too
    assert dict(pip["global"]) == {"find-links": "/wheels", "no-index": "true"}
    res = offline(tmp_path, "", "http://10.0.0.1:3141/simple/", "/wheels")
    pip = configparser.ConfigParser()
    pip.read(tmp_path / "etc/pip.conf")
    assert dict(pip["global"]) == {"find-links": "/wheels", "index-url": "http://10.0.0.1:3141/simple/",
                                   "trusted-host": "10.0.0.1"}
    assert not (tmp_path / "etc/apt/apt.conf.d/01kproxy-proxy").exists()
    assert offline(tmp_path, "", "", "").returncode == 0
    assert not (tmp_path / "etc/pip.conf").exists()


def test_offline_sh_keeps_a_pip_conf_it_did_not_write(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/pip.conf").write_text("[global]\ntimeout = 60\n")
    assert offline(tmp_path, "", "http://10.0.0.1/simple/", "").returncode == 0
    assert offline(tmp_path, "", "", "").returncode == 0
    assert (tmp_path / "etc/pip.conf").read_text() == "[global]\ntimeout = 60\n"


@pytest.mark.parametrize("args, message", [
    (("ftp://x", "", ""), "APT_PROXY must be an http(s):// URL"),
    (("", "x.example", ""), "PIP_INDEX must be an http(s):// URL"),
    (("", "", "/empty"), "no wheels in /empty"),
    (("a", "b"), "usage:"),
])
def test_offline_sh_refuses_bad_arguments(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    res = offline(tmp_path, *args)
    assert res.returncode != 0 and message in res.stderr


# -- scripts and their syntax ------------------------------------------------------------------
@pytest.mark.parametrize("script", ["vagrant/offline.sh", "vagrant/lab", "scripts/wheelhouse", "scripts/vagrant-test",
                                    "kproxy/vagrantlab/mkbox.sh"])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_vagrant_test_help_runs_without_a_venv():
    """scripts/vagrant-test uses the standard library only (it runs before any venv exists)."""
    res = subprocess.run([str(ROOT / "scripts/vagrant-test"), "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": shutil.which("python3") or "python3"})
    assert res.returncode == 0 and "--deadline" in res.stdout and "--teardown" in res.stdout
    for path in (ROOT / "kproxy/vagrantlab").glob("*.py"):
        imports = re.findall(r"^(?:from|import) ([\w.]+)", path.read_text(), re.M)
        third_party = {m.split(".")[0] for m in imports} - {"kproxy", "__future__"} - set(sys_modules())
        assert not third_party, (path.name, third_party)


def sys_modules() -> set[str]:
    import sys
    return set(sys.stdlib_module_names)


def test_lab_helper_usage():
    res = subprocess.run([str(VAGRANT / "lab"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "kubeconfig" in res.stdout and "./lab get pods" in res.stdout


def test_vagrant_packages_come_from_setup():
    pkgs = host.vagrant_packages()
    assert {"vagrant", "vagrant-libvirt", "libvirt-daemon-system", "qemu-system-x86", "debootstrap",
            "apt-cacher-ng"} <= set(pkgs)


def test_networks_are_isolated():
    xml = host.network_xml("kproxy-lab", "kpvt-lab0", "192.168.56", dhcp=False)
    assert "<forward" not in xml and "<dhcp>" not in xml and "address='192.168.56.1'" in xml
    assert "<forward" not in host.network_xml("vagrant-libvirt", "kpvt-mgmt0", "192.168.121", dhcp=True)


def test_lb_pool_is_on_the_lab_network_outside_node_ips():
    lab = host.Lab(work=Path("/nonexistent"))
    text = (ROOT / "kproxy/vagrantlab/lb.yaml").read_text()
    assert lab.lb_pool in text
    lo, hi = (int(x.rsplit(".", 1)[1]) for x in lab.lb_pool.split("-"))
    assert lab.lb_pool.startswith(lab.lab_prefix + ".") and lo > lab.first_host + 9 and hi < 255


# -- the runner ---------------------------------------------------------------------------------
def test_phase_time_limit_ends_the_whole_process_group(tmp_path):
    r = Runner(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(PhaseTimeout):
        with r.phase("slow", 1):
            r.sh("sleep 30 & sleep 30; wait")
    assert time.monotonic() - t0 < 15
    assert r.results[0][0] == "slow" and r.results[0][2].startswith("FAILED: PhaseTimeout")


def test_command_timeout_inside_a_phase_is_the_commands(tmp_path):
    r = Runner(tmp_path)
    with r.phase("p", 60):
        with pytest.raises(subprocess.TimeoutExpired):
            r.run(["sleep", "10"], timeout=0.5)
        assert not r.ok(["sleep", "10"], timeout=0.5)
        assert r.out(["echo", "hi"]) == "hi\n"
    assert r.results == [("p", pytest.approx(r.results[0][1]), "ok")]


def test_checks_record_failures_and_go_on(tmp_path):
    r = Runner(tmp_path)
    def bad():
        raise CheckFailed("nope")
    assert not r.check("first", bad)
    assert r.check("second", lambda: "fine")
    assert [(n, res) for n, _, res in r.checks] == [("first", "FAILED: nope"), ("second", "ok")]
    assert "FAILED: nope" in r.summary()


def test_deadline_stops_phases_but_not_teardown(tmp_path):
    r = Runner(tmp_path, deadline=time.time() - 1)
    with pytest.raises(PhaseTimeout):
        with r.phase("late", 60):
            pass
    with r.phase("teardown", 60, past_deadline=True):
        assert r.out(["true"]) == ""


def test_parse_deadline():
    assert abs(main.parse_deadline("+600") - (time.time() + 600)) < 2
    t = main.parse_deadline("19:58")
    assert time.gmtime(t)[3:5] == (19, 58) and 0 < t - time.time() <= 86400
    assert main.parse_deadline(None) is None


@needs_ruby
def test_config_example_is_an_offline_config_the_vagrantfile_takes(tmp_path):
    (tmp_path / "wheelhouse").mkdir()
    (tmp_path / "wheelhouse" / "click-8.5.1-py3-none-any.whl").write_bytes(b"")
    log = record_vagrantfile(tmp_path, {}, (VAGRANT / "config.example.yaml").read_text())
    p = paths(log)
    assert p["vm.box="] == ["kproxy/debian12-local"] and p["vm.provider.libvirt.management_network_mode="] == ["none"]
    (prov,) = provisioners(log)
    assert prov["kw"]["args"] == ["http://192.168.121.1:3142", "", "/var/cache/kproxy-wheelhouse"]
    synced = {r["args"][1]: r["args"][0] for r in log if r["path"] == "vm.synced_folder"}
    assert synced["/var/cache/kproxy-wheelhouse"] == str(tmp_path / "wheelhouse")  # relative to vagrant/


# -- teardown removes what the state file says this run made, nothing else -----------------------
class FakeRunner:
    """Answers virsh and friends from a canned host; records every command."""

    def __init__(self, host_state: dict):
        self.h = host_state
        self.cmds: list[list[str]] = []

    def say(self, _msg):
        pass

    note = say

    def run(self, argv, capture=False, check=True, **_kw):
        self.cmds.append(argv)
        a = argv[3:] if argv[:1] == ["virsh"] else argv
        out = ""
        if a[:1] == ["version"]:
            out = "ok"
        elif a[:2] == ["list", "--all"]:
            out = "\n".join(self.h["domains"])
        elif a[:2] == ["net-list", "--all"]:
            out = "\n".join(self.h["networks"])
        elif a[:1] == ["net-list"]:
            out = "\n".join(n for n in self.h["networks"] if n in self.h["active"])
        elif a[:1] == ["net-undefine"]:
            self.h["networks"].remove(a[1])
        elif a[:1] == ["vol-list"]:
            out = " Name   Path\n------\n" + "\n".join(f" {v}  /var/lib/libvirt/images/{v}" for v in self.h["vols"])
        elif a[:1] == ["vol-delete"]:
            self.h["vols"].remove(a[-1])
        return subprocess.CompletedProcess(argv, 0, out, "")

    def out(self, argv, **kw):
        return self.run(argv, capture=True, **kw).stdout

    def ok(self, argv, **kw):
        return self.run(argv, **kw).returncode == 0


def test_teardown_removes_only_what_this_run_made(tmp_path, monkeypatch):
    lab = host.Lab(work=tmp_path)
    host.save_state(lab, {"kvm": None, "libvirt_was_up": True, "started": {}, "pool_made": True,
                          "networks": ["vagrant-libvirt", "kproxy-lab"]})
    fake = FakeRunner({"domains": ["vagrant_node-1", "vagrant_node-2", "someone_else"],
                       "networks": ["default", "vagrant-libvirt", "kproxy-lab"], "active": ["vagrant-libvirt"],
                       "vols": ["kproxy-VAGRANTSLASH-debian12-local_vagrant_box_image_0_box.img",
                                "vagrant_node-1.img", "someone.qcow2"]})
    monkeypatch.setattr(host.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(host, "lab_processes", lambda lab: [])  # not this machine's real VMs
    assert host.teardown(fake, lab) == []
    virsh = [c[3:] for c in fake.cmds if c[:1] == ["virsh"]]
    assert ["destroy", "vagrant_node-1"] in virsh and ["destroy", "vagrant_node-2"] in virsh
    assert not any("someone_else" in c for c in virsh)
    assert sorted(c[1] for c in virsh if c[0] == "net-undefine") == ["kproxy-lab", "vagrant-libvirt"]
    assert fake.h["vols"] == ["someone.qcow2"]  # the box's pool copy and the node disk went, not others'
    assert ["pool-destroy", "default"] not in virsh  # the pool still holds someone's volume
    assert not lab.state_file.exists()
    # no state file: a second teardown touches nothing
    fake.cmds.clear()
    assert host.teardown(fake, lab) == [] and fake.cmds == []
