"""An emulated multi-node lab on one host: `kproxy up --sandbox --nodes N`.

    outside (192.168.49.100, the lab switch `<p>-sw`)
      ├── node-1 (192.168.49.2, pods 10.244.1.0/24): etcd, the controller, an agent
      ├── node-2 (192.168.49.3, pods 10.244.2.0/24): an agent
      └── node-N ...

Every process runs the command line of kproxy/cluster/commands.py, the same ones the Vagrant
lab's systemd units run. State: STATE/etcd (etcd's data), STATE (the controller), and
STATE/nodes/node-N (each agent); pod logs in STATE/logs for every node; the lab's CA and every
process's etcd certificate in STATE/pki (kproxy/cluster/pki.py), made by `up`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import netns as pr_netns

from kproxy.config import LabConfig
from kproxy.node.network import NodeConfig, NodeNetwork, _ipr, _up, list_netns

from . import commands
from .access import NetnsStore
from .pki import Pki, ensure_node_pki


def node_name(index: int) -> str:
    return f"node-{index}"


def node_ip(cfg: LabConfig, index: int) -> str:
    return str(ipaddress.ip_network(cfg.lab_cidr).network_address + 1 + index)


def node_pod_cidr(cfg: LabConfig, index: int) -> str:
    """Node N's pod CIDR: the cluster CIDR's /24 number N (10.244.N.0/24)."""
    net = ipaddress.ip_network(cfg.cluster_cidr)
    return str(net.network_address + index * 256) + "/24"


def controller_config(cfg: LabConfig) -> LabConfig:
    """The lab's own settings, as the controller (on node-1) runs them."""
    tls = Pki.of(cfg.state_dir).client("controller")
    return dataclasses.replace(cfg, node_index=1, node_name=node_name(1), node_ip=node_ip(cfg, 1),
                               pod_cidr=node_pod_cidr(cfg, 1), store_url=commands.store_url(node_ip(cfg, 1)),
                               store_ca=tls.ca, store_cert=tls.cert, store_key=tls.key,
                               lab_prefix=cfg.naming.prefix, logs_dir=str(Path(cfg.state_dir) / "logs"))


def node_config(cfg: LabConfig, index: int) -> LabConfig:
    """Node N's agent settings: its own state dir, the lab's prefix, logs and store."""
    tls = Pki.of(cfg.state_dir).client(f"node-{node_name(index)}")
    return dataclasses.replace(cfg, state_dir=str(Path(cfg.state_dir) / "nodes" / node_name(index)),
                               lab_prefix=cfg.naming.prefix, node_index=index, node_name=node_name(index), node_ip=node_ip(cfg, index),
                               pod_cidr=node_pod_cidr(cfg, index), store_ca=tls.ca, store_cert=tls.cert,
                               store_key=tls.key)


def node_network(cfg: LabConfig) -> NodeNetwork:
    return NodeNetwork(cfg.naming, NodeConfig(
        node_name=cfg.node_name, sandbox=True, pod_cidr=cfg.node_pod_cidr, cluster_cidr=cfg.cluster_cidr,
        service_cidr=cfg.service_cidr, lab_cidr=cfg.lab_cidr, node_host=1 + cfg.node_index, switch=True))


def build_network(cfg: LabConfig) -> None:
    """`outside` with the lab switch, and each node's namespace plugged into it."""
    naming = cfg.naming
    outside = naming.outside_netns
    if outside not in list_netns():
        pr_netns.create(outside)
    prefixlen = ipaddress.ip_network(cfg.lab_cidr).prefixlen
    with _ipr(outside) as ipr:
        _up(ipr, "lo")
        if not ipr.link_lookup(ifname=naming.switch):
            ipr.link("add", ifname=naming.switch, kind="bridge")
            sw = ipr.link_lookup(ifname=naming.switch)[0]
            ipr.addr("add", index=sw, address=NodeConfig(lab_cidr=cfg.lab_cidr).outside_ip, prefixlen=prefixlen)
        _up(ipr, naming.switch)
    for i in range(1, cfg.nodes + 1):
        node_network(node_config(cfg, i)).setup()
    with _ipr(outside) as ipr:  # `outside` knows no pod or Service: only the lab network
        if not ipr.get_default_routes(family=2):
            ipr.route("add", dst="0.0.0.0/0", gateway=node_ip(cfg, 1))


def kproxy_bin() -> str:
    return str(Path(sys.executable).with_name("kproxy"))


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def make_pki(cfg: LabConfig) -> Pki:
    """The lab CA (made once, kept by `down`, removed by `down --purge`) and the certificates of
    etcd on node-1, the controller, every node's agent and the DNS pods, in STATE/pki."""
    pki = Pki.of(cfg.state_dir)
    for i in range(1, cfg.nodes + 1):
        ensure_node_pki(pki, node_name(i), node_ip(cfg, i), control_plane=i == 1)
    return pki


def start_etcd(cfg: LabConfig) -> int:
    """etcd on node-1 (its data in STATE/etcd survives restarts), TLS only; returns its pid."""
    state = Path(cfg.state_dir)
    ns = cfg.naming.for_node(1).node_netns
    pki = make_pki(cfg)
    argv = ["ip", "netns", "exec", ns,
            *commands.etcd_argv(node_name(1), str(state / "etcd"), node_ip(cfg, 1), str(pki.root))]
    proc = _spawn(argv, state / "etcd.log")
    (state / "etcd.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def wait_for_etcd(cfg: LabConfig, timeout: float = 30) -> None:
    store = lab_store(cfg)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                store.revision()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start in {timeout}s; see {cfg.state_dir}/etcd.log")
                time.sleep(0.2)
    finally:
        store.close()


def start_controller(cfg: LabConfig) -> subprocess.Popen:
    ctl = controller_config(cfg)
    ctl.save()
    return _spawn(commands.controller_argv(kproxy_bin(), ctl.state_dir, ctl.store_url, ctl.manifests),
                  Path(cfg.state_dir) / "daemon.log")


def start_agent(cfg: LabConfig, index: int) -> subprocess.Popen:
    node = node_config(controller_config(cfg), index)
    Path(node.state_dir).mkdir(parents=True, exist_ok=True)
    node.save()
    return _spawn(commands.agent_argv(kproxy_bin(), node.state_dir, node.store_url, node.node_name, node.node_ip,
                                      node.pod_cidr, sandbox=True, pki_dir=str(Pki.of(cfg.state_dir).root),
                                      proxy_mode=cfg.proxy_mode),
                  Path(node.state_dir) / "agent.log")


def process_pids(cfg: LabConfig) -> dict[str, int]:
    """The lab's running processes by role: agents first, then the controller, etcd last."""
    state = Path(cfg.state_dir)
    found = {}
    for pidfile in sorted(state.glob("nodes/*/daemon.pid")):
        found[f"agent {pidfile.parent.name}"] = pidfile
    found["controller"] = state / "daemon.pid"
    found["etcd"] = state / "etcd.pid"
    pids = {}
    for role, pidfile in found.items():
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
            pids[role] = pid
        except (OSError, ValueError):
            continue
    return pids


def lab_store(cfg: LabConfig) -> NetnsStore:
    """The lab's etcd, read from inside node-1 (a sandbox lab) or from here (a real node)."""
    from kproxy.store.etcd import EtcdStore
    url = cfg.store_url or commands.store_url(node_ip(cfg, 1))
    ns = cfg.naming.for_node(1).node_netns if cfg.sandbox else None
    return NetnsStore(EtcdStore(url, timeout=5, **cfg.store_tls), ns)
