"""The Vagrant lab without VMs: syntax of the Vagrantfile and provision.sh, the systemd units they
install, and that the addresses the Vagrantfile gives each VM are the ones its units run with."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kproxy.cluster import commands
from kproxy.cluster.units import AGENT_UNIT, CONTROLLER_UNIT, ETCD_UNIT, exec_line, node_units, units

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"
PROVISION = VAGRANT / "provision.sh"
KPROXY = "/opt/kproxy/.venv/bin/kproxy"
STATE = "/var/lib/kproxy"
needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")

# Loads a Vagrantfile with a stand-in `Vagrant.configure` that records every setting as
# {"path": "vm.define.node-1.vm.network", "args": [...], "kw": {...}}.
RUBY_RECORDER = r"""
require "json"
class Rec
  def initialize(log, path) @log, @path = log, path end
  def respond_to_missing?(*) true end
  def method_missing(name, *args, **kw, &blk)
    path = @path + [name.to_s]
    @log << {"path" => path.join("."), "args" => args, "kw" => kw}
    child = Rec.new(@log, blk ? path + args.map(&:to_s) : path)
    blk.call(child) if blk && name != :ruby  # a trigger's Ruby (the lab CA) runs at `vagrant up` only
    child
  end
end
module Vagrant
  LOG = []
  def self.configure(_version) yield Rec.new(LOG, []) end
end
load ARGV[0]
puts JSON.generate(Vagrant::LOG)
"""


def unit_argv(text: str) -> list[str]:
    line = next(li for li in text.splitlines() if li.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def light_settings() -> dict:
    """The Vagrantfile's defaults, read as text (no Ruby needed)."""
    text = VAGRANTFILE.read_text()
    get = lambda key, pat: re.search(rf'"{key}" => {pat}', text).group(1)  # noqa: E731
    return {"nodes": int(get("nodes", r"(\d+)")), "network": get("network", r'"([\d.]+)"'),
            "first_host": int(get("first_host", r"(\d+)"))}


def expected_args(s: dict) -> dict[str, list[str]]:
    """provision.sh's arguments per node: NODE NODE_IP FIRST_NODE_IP INDEX NODES PROXY_MODE."""
    ips = [f"{s['network']}.{s['first_host'] + i}" for i in range(s["nodes"])]
    return {f"node-{i}": [f"node-{i}", ips[i - 1], ips[0], str(i), str(s["nodes"]), s.get("proxy_mode", "iptables")]
            for i in range(1, s["nodes"] + 1)}


def provisioned_units(args: list[str], tmp_path: Path) -> dict[str, str]:
    """What provision.sh would install for these arguments: its `kproxy units` call, run here."""
    out = subprocess.run(["bash", str(PROVISION), *args], env={**os.environ, "KPROXY_DRY_RUN": "1"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "units"
    where = tmp_path / args[0]
    res = CliRunner().invoke(units, [*out[1:], "--write", str(where)])
    assert res.exit_code == 0, res.output
    return {p.name: p.read_text() for p in where.iterdir()}


def record_vagrantfile(tmp_path: Path, env: dict | None = None, config_yaml: str | None = None) -> list[dict]:
    """Evaluate a copy of the Vagrantfile (a local vagrant/config.yaml must not leak into the test)."""
    shutil.copy(VAGRANTFILE, tmp_path / "Vagrantfile")
    if config_yaml is not None:
        (tmp_path / "config.yaml").write_text(config_yaml)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KPROXY_")}
    out = subprocess.run(["ruby", "-e", RUBY_RECORDER, str(tmp_path / "Vagrantfile")], env={**clean, **(env or {})},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def vm_settings(log: list[dict]) -> dict[str, dict]:
    """Per node: its IP on the private network and provision.sh's arguments."""
    nodes = {}
    for rec in log:
        m = re.fullmatch(r"vm\.define\.(node-\d+)\.vm\.(network|provision|hostname=)", rec["path"])
        if m:
            node = nodes.setdefault(m.group(1), {})
            if m.group(2) == "network":
                assert rec["args"] == ["private_network"]
                node["ip"] = rec["kw"]["ip"]
            elif m.group(2) == "provision":
                assert rec["args"] == ["shell"] and rec["kw"]["path"] == "provision.sh"
                node["args"] = rec["kw"]["args"]
            else:
                node["hostname"] = rec["args"][0]
    return nodes


# -- syntax ---------------------------------------------------------------------------------
@needs_ruby
def test_vagrantfile_syntax():
    res = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


def test_provision_syntax():
    subprocess.run(["bash", "-n", str(PROVISION)], check=True)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrant_validate(tmp_path):
    """--ignore-provider: without it vagrant needs a usable provider (a VirtualBox or libvirt host).
    Vagrant's home and the lab's .vagrant folder go to tmp_path: the test leaves nothing behind."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KPROXY_")}
    clean |= {"VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
              "VAGRANT_CHECKPOINT_DISABLE": "1"}
    res = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANT, env=clean, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "validated successfully" in res.stdout, res.stdout + res.stderr


# -- units ----------------------------------------------------------------------------------
def test_first_node_runs_etcd_controller_and_agent():
    files = node_units(True, "node-1", "192.168.56.11", "192.168.56.11", "10.244.1.0/24", KPROXY, STATE,
                       f"{STATE}/manifests")
    assert set(files) == {ETCD_UNIT, CONTROLLER_UNIT, AGENT_UNIT}
    store = "https://192.168.56.11:2379"
    assert unit_argv(files[ETCD_UNIT]) == commands.etcd_argv("node-1", f"{STATE}/etcd", "192.168.56.11",
                                                              f"{STATE}/pki")
    assert unit_argv(files[CONTROLLER_UNIT]) == commands.controller_argv(
        KPROXY, STATE, store, f"{STATE}/manifests", ["--name", "node-1", "--node-ip", "192.168.56.11"])
    assert unit_argv(files[AGENT_UNIT]) == commands.agent_argv(
        KPROXY, f"{STATE}/nodes/node-1", store, "node-1", "192.168.56.11", "10.244.1.0/24", pki_dir=f"{STATE}/pki")
    assert f"--store-cert {STATE}/pki/node-node-1.crt" in files[AGENT_UNIT]
    assert "Type=notify" in files[ETCD_UNIT]
    assert "After=kproxy-etcd.service" in files[CONTROLLER_UNIT]
    assert "Requires=kproxy-etcd.service" in files[CONTROLLER_UNIT]
    for text in files.values():
        assert "Restart=always" in text and "RestartSec=2" in text and "WantedBy=multi-user.target" in text
        assert "UMask=0077" in text  # finding 9: what the units write under STATE is root's only


def test_other_nodes_run_an_agent_only():
    files = node_units(False, "node-3", "192.168.56.13", "192.168.56.11", "10.244.3.0/24", KPROXY, STATE)
    assert list(files) == [AGENT_UNIT]
    assert unit_argv(files[AGENT_UNIT]) == commands.agent_argv(
        KPROXY, STATE, "https://192.168.56.11:2379", "node-3", "192.168.56.13", "10.244.3.0/24")
    assert "--sandbox" not in files[AGENT_UNIT]
    assert "After=network-online.target" in files[AGENT_UNIT]
    assert "Wants=network-online.target" in files[AGENT_UNIT]


def test_exec_line_escapes_systemd_specifiers():
    line = exec_line(["echo", "100%", "$HOME", "a b"])
    assert line == "echo 100%% '$$HOME' 'a b'"
    with pytest.raises(ValueError):
        exec_line(["echo", "a\\b"])


def test_units_command_prints_or_writes(tmp_path):
    base = ["--node", "node-2", "--node-ip", "192.168.56.12", "--first-node-ip", "192.168.56.11",
            "--pod-cidr", "10.244.2.0/24", "--kproxy", KPROXY]
    res = CliRunner().invoke(units, base)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"# {AGENT_UNIT}\n[Unit]")
    res = CliRunner().invoke(units, [*base, "--control-plane", "--write", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ETCD_UNIT, CONTROLLER_UNIT, AGENT_UNIT])
    res = CliRunner().invoke(units, [*base[:-4], "--pod-cidr", "10.244.2.0/33"])
    assert res.exit_code == 2 and "--pod-cidr" in res.output


# -- the Vagrantfile's nodes agree with what provision.sh installs ----------------------------
@pytest.mark.parametrize("proxy_mode", ["iptables", "nftables"])
def test_provisioned_units_match_the_vagrantfile(tmp_path, proxy_mode):
    """Each node's units run the emulated lab's command lines (commands.py), the proxy mode too."""
    s = light_settings()
    assert s == {"nodes": 3, "network": "192.168.56", "first_host": 11}
    s["proxy_mode"] = proxy_mode
    first_ip = f"{s['network']}.{s['first_host']}"
    for i, (node, args) in enumerate(expected_args(s).items(), start=1):
        files = provisioned_units(args, tmp_path / proxy_mode)
        assert set(files) == ({ETCD_UNIT, CONTROLLER_UNIT, AGENT_UNIT} if i == 1 else {AGENT_UNIT})
        agent = unit_argv(files[AGENT_UNIT])
        assert agent == commands.agent_argv(KPROXY, STATE if i > 1 else f"{STATE}/nodes/{node}",
                                            commands.store_url(first_ip), node, args[1], f"10.244.{i}.0/24",
                                            pki_dir=f"{STATE}/pki", proxy_mode=proxy_mode)
        assert ("--proxy-mode nftables" in files[AGENT_UNIT]) == (proxy_mode == "nftables")
        if i == 1:
            assert unit_argv(files[ETCD_UNIT]) == commands.etcd_argv(node, f"{STATE}/etcd", first_ip, f"{STATE}/pki")


@needs_ruby
@pytest.mark.parametrize("env, config_yaml, want", [
    ({}, None, {"nodes": 3, "network": "192.168.56", "first_host": 11}),
    ({"KPROXY_NODES": "5"}, None, {"nodes": 5, "network": "192.168.56", "first_host": 11}),
    ({"KPROXY_PROXY_MODE": "nftables"}, None, {"nodes": 3, "network": "192.168.56", "first_host": 11,
                                              "proxy_mode": "nftables"}),
    ({}, "proxy_mode: nftables\n", {"nodes": 3, "network": "192.168.56", "first_host": 11,
                                    "proxy_mode": "nftables"}),
    ({"KPROXY_NODES": "2"}, "nodes: 4\nnetwork: 10.20.30\nfirst_host: 100\n",
     {"nodes": 2, "network": "10.20.30", "first_host": 100}),
])
def test_vagrantfile_nodes(tmp_path, env, config_yaml, want):
    log = record_vagrantfile(tmp_path, env, config_yaml)
    vms = vm_settings(log)
    expected = expected_args(want)
    assert list(vms) == list(expected)
    for node, vm in vms.items():
        assert vm == {"hostname": node, "ip": expected[node][1], "args": expected[node]}
    paths = {r["path"]: r["args"] for r in log}
    assert paths["vm.box="] == ["debian/bookworm64"]
    for provider in ("libvirt", "virtualbox"):
        assert paths[f"vm.provider.{provider}.memory="] == [1024]
        assert paths[f"vm.provider.{provider}.cpus="] == [2]
    synced = next(r for r in log if r["path"] == "vm.synced_folder")
    assert synced["args"] == ["..", "/vagrant"] and synced["kw"]["type"] == "rsync"


@needs_ruby
def test_vagrantfile_refuses_bad_node_counts(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as e:
        record_vagrantfile(tmp_path, {"KPROXY_NODES": "0"})
    assert "KPROXY_NODES must be 1..50" in e.value.stderr
    with pytest.raises(subprocess.CalledProcessError) as e:
        record_vagrantfile(tmp_path, {"KPROXY_PROXY_MODE": "ipvs"})
    assert "KPROXY_PROXY_MODE must be iptables or nftables, not ipvs" in e.value.stderr


def test_provision_refuses_an_unknown_proxy_mode():
    res = subprocess.run(["bash", str(PROVISION), "node-1", "192.168.56.11", "192.168.56.11", "1", "1", "ipvs"],
                         env={**os.environ, "KPROXY_DRY_RUN": "1"}, capture_output=True, text=True)
    assert res.returncode == 2 and "PROXY_MODE must be iptables or nftables, not ipvs" in res.stderr
    five = subprocess.run(["bash", str(PROVISION), "node-1", "192.168.56.11", "192.168.56.11", "1", "1"],
                          env={**os.environ, "KPROXY_DRY_RUN": "1"}, capture_output=True, text=True, check=True)
    assert five.stdout.splitlines()[-2:] == ["--proxy-mode", "iptables"]  # the default


def test_local_example_is_a_local_nodeport():
    """The README's `externalTrafficPolicy: Local` exercise: one pod, selected by the Service."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((VAGRANT / "examples" / "local.yaml").read_text())}
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["spec"]["replicas"] == 1
    assert svc["spec"]["externalTrafficPolicy"] == "Local" and svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["nodePort"] == 30081


# -- the lab CA: made on the host by the Vagrantfile, each node's certificates by `units --ca-from` --
@needs_ruby
def test_vagrant_nodes_get_certificates_of_one_lab_ca(tmp_path):
    """Finding 8 on real VMs: the units ask etcd for TLS and client certificates; those come from one
    CA the Vagrantfile makes on the host (Ruby's OpenSSL) and the synced folder brings to every node."""
    from cryptography import x509

    ca_dir = tmp_path / "host" / ".pki"
    script = RUBY_RECORDER.replace("puts JSON.generate(Vagrant::LOG)", "ensure_lab_ca(ARGV[1]); ensure_lab_ca(ARGV[1])")
    res = subprocess.run(["ruby", "-e", script, str(VAGRANTFILE), str(ca_dir)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert stat_mode(ca_dir) == 0o700 and stat_mode(ca_dir / "ca.key") == 0o600
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    s = light_settings()
    for i, (node, args) in enumerate(expected_args(s).items(), start=1):
        state = tmp_path / node
        out = subprocess.run(["bash", str(PROVISION), *args], env={**os.environ, "KPROXY_DRY_RUN": "1"},
                             capture_output=True, text=True, check=True).stdout.splitlines()[1:]
        out[out.index("--state-dir") + 1] = str(state)
        res = CliRunner().invoke(units, [*out, "--ca-from", str(ca_dir), "--write", str(tmp_path / f"{node}-units")])
        assert res.exit_code == 0, res.output
        pki = state / "pki"
        assert stat_mode(state) == 0o700 and stat_mode(pki) == 0o700
        assert (pki / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
        names = {p.name for p in pki.iterdir()}
        assert {f"node-{node}.crt", "coredns.crt"} <= names
        assert ("etcd-server-node-1.crt" in names) == ("controller.crt" in names) == (i == 1)
        for name in names:
            assert stat_mode(pki / name) == 0o600, name
            if name.endswith(".crt") and name != "ca.crt":
                x509.load_pem_x509_certificate((pki / name).read_bytes()).verify_directly_issued_by(ca)
        # the files the units name are the ones just issued (their paths under the real state dir)
        agent = (tmp_path / f"{node}-units" / AGENT_UNIT).read_text()
        assert f"--store-cert {state}/pki/node-{node}.crt" in agent


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777
