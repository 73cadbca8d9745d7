"""systemd units for a cluster of real machines (the Vagrant lab): etcd, the controller, the agents.

Each unit runs a command line of commands.py, so real nodes run exactly what the emulated
nodes of `kproxy up --sandbox --nodes N` run, with the emulated lab's state layout, which is
what the CLI expects under its state dir (`KPROXY_STATE_DIR`, default /var/lib/kproxy):

- first node: STATE is the controller (so `kproxy apply/get` there talk to it), STATE/etcd
  holds etcd's data, STATE/nodes/<node> is this node's agent;
- every other node: STATE is the node's agent (so `kproxy get` works there too).

etcd serves TLS only and asks every client for a certificate of the lab CA: `kproxy units
--ca-from DIR` copies the CA from DIR (the Vagrantfile makes it on the host, in vagrant/.pki,
which the synced folder brings to every VM) into STATE/pki and issues this node's certificates
there: etcd's and the controller's on the first node, the agent's and the DNS pods' on every node.
Every unit runs with UMask=0077: what kproxy writes under STATE is root's only.
"""
from __future__ import annotations

import ipaddress
import shlex
import sys
from pathlib import Path

import click

from . import commands
from .pki import Pki, ensure_node_pki

ETCD_UNIT = "kproxy-etcd.service"
CONTROLLER_UNIT = "kproxy-controller.service"
AGENT_UNIT = "kproxy-agent.service"
DEFAULT_STATE_DIR = "/var/lib/kproxy"


def exec_line(argv: list[str]) -> str:
    """argv as systemd parses ExecStart: shell quoting, with `%` and `$` escaped (specifiers,
    variables). systemd also C-unescapes backslashes, which shell quoting cannot express."""
    if any("\\" in a or "\n" in a for a in argv):
        raise ValueError(f"cannot put a backslash or newline in ExecStart: {argv!r}")
    return shlex.join(argv).replace("%", "%%").replace("$", "$$")


def unit_text(description: str, argv: list[str], after=(), requires=(), wants=(), service_type: str = "simple",
              kill_mode: str = "control-group", environment=("PYTHONUNBUFFERED=1",), pre=(),
              umask: str = "0077") -> str:
    """One service that systemd restarts forever (StartLimitIntervalSec=0: a node whose etcd is
    not up yet keeps retrying instead of giving up after 5 quick failures)."""
    unit = [f"Description={description}", "StartLimitIntervalSec=0"]
    unit += [f"{key}={' '.join(names)}" for key, names in
             (("After", after), ("Requires", requires), ("Wants", wants)) if names]
    service = [f"Type={service_type}", *(f"ExecStartPre={exec_line(p)}" for p in pre),
               f"ExecStart={exec_line(argv)}", "Restart=always", "RestartSec=2",
               f"KillMode={kill_mode}", f"UMask={umask}", *(f"Environment={e}" for e in environment)]
    return "\n".join(["[Unit]", *unit, "", "[Service]", *service, "", "[Install]",
                      "WantedBy=multi-user.target", ""])


def node_units(role_first_node: bool, node: str, node_ip: str, first_ip: str, pod_cidr: str, kproxy_bin: str,
               state_dir: str = DEFAULT_STATE_DIR, manifests: str | None = None,
               proxy_mode: str = "iptables") -> dict[str, str]:
    """The unit files of one node: etcd + controller + agent on the first node, an agent elsewhere."""
    state = Path(state_dir)
    store = commands.store_url(first_ip)
    pki_dir = str(Pki.of(state).root)
    online = ("network-online.target",)  # etcd and the agent use the node's address: wait for it
    files = {}
    if role_first_node:
        files[ETCD_UNIT] = unit_text(
            f"kproxy cluster store (etcd) on {node}", commands.etcd_argv(node, str(state / "etcd"), node_ip, pki_dir),
            after=online, wants=online, service_type="notify", environment=())  # etcd tells systemd when it serves
        files[CONTROLLER_UNIT] = unit_text(
            "kproxy controller (admission, allocation, Deployments, scheduling, endpoints)",
            commands.controller_argv(kproxy_bin, str(state), store, manifests or str(state / "manifests"),
                                     ["--name", node, "--node-ip", node_ip]),
            after=(ETCD_UNIT,), requires=(ETCD_UNIT,))
    # KillMode=mixed: SIGTERM to the agent alone, which stops its pods and removes its rules itself
    agent_state = state / "nodes" / node if role_first_node else state
    files[AGENT_UNIT] = unit_text(
        f"kproxy agent of {node} (pods, iptables rules, routes)",
        commands.agent_argv(kproxy_bin, str(agent_state), store, node, node_ip, pod_cidr, pki_dir=pki_dir,
                            proxy_mode=proxy_mode),
        after=online + ((ETCD_UNIT,) if role_first_node else ()), wants=online, kill_mode="mixed",
        pre=[["-/sbin/modprobe", "br_netfilter"]])  # bridged pod traffic must meet iptables, after a reboot too
    return files


def _ip(ctx, param, value):
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _cidr(ctx, param, value):
    try:
        return str(ipaddress.ip_network(value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("units")
@click.option("--node", required=True, help="This node's name, e.g. node-2.")
@click.option("--node-ip", required=True, callback=_ip, help="This node's address on the node network.")
@click.option("--first-node-ip", required=True, callback=_ip, help="The first node's address: etcd's.")
@click.option("--pod-cidr", required=True, callback=_cidr, help="This node's pod CIDR, e.g. 10.244.2.0/24.")
@click.option("--control-plane/--no-control-plane", default=None,
              help="Also etcd and the controller (default: when --node-ip is --first-node-ip).")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True, help="The CLI's state dir.")
@click.option("--manifests", default=None, help="The controller's manifests folder (default STATE/manifests).")
@click.option("--kproxy", "kproxy_bin", default=None, help="The kproxy command (default: next to this Python).")
@click.option("--write", "write_dir", default=None, type=click.Path(file_okay=False),
              help="Write the unit files into DIR (e.g. /etc/systemd/system) instead of printing them.")
@click.option("--ca-from", "ca_from", default=None, type=click.Path(exists=True, file_okay=False),
              help="The lab CA's folder (ca.crt, ca.key; the same on every node): copy it into STATE/pki and "
                   "issue this node's etcd certificates there.")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default="iptables", show_default=True,
              help="The agent's kube-proxy mode.")
def units(node, node_ip, first_node_ip, pod_cidr, control_plane, state_dir, manifests, kproxy_bin, write_dir,
          ca_from, proxy_mode):
    """Render the systemd units of one real node of a multi-node lab (see vagrant/README.md)."""
    if control_plane is None:
        control_plane = node_ip == first_node_ip
    if ca_from:
        from kproxy.config import private_dir
        private_dir(state_dir)
        try:
            ensure_node_pki(Pki.of(state_dir), node, node_ip, control_plane, ca_source=ca_from)
        except (OSError, RuntimeError) as e:
            raise click.ClickException(f"cannot issue the certificates of {node} from {ca_from}: {e}") from None
        click.echo(f"certificates of {node} in {Pki.of(state_dir).root}", err=True)
    kproxy_bin = kproxy_bin or str(Path(sys.executable).with_name("kproxy"))
    files = node_units(control_plane, node, node_ip, first_node_ip, pod_cidr, kproxy_bin, state_dir, manifests,
                       proxy_mode)
    for name, text in files.items():
        if write_dir:
            Path(write_dir).mkdir(parents=True, exist_ok=True)
            (Path(write_dir) / name).write_text(text)
            click.echo(str(Path(write_dir) / name))
        else:
            click.echo(f"# {name}\n{text}")


if __name__ == "__main__":  # usable before `kproxy units` is registered: python -m kproxy.cluster.units
    units()
