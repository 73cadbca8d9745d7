"""The command lines of a cluster's processes: etcd, the controller and each node's agent.

One place for them, so the emulated nodes of `kproxy up --nodes N` and the systemd units of
the Vagrant lab run exactly the same commands.
"""
from __future__ import annotations

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def store_url(ip: str) -> str:
    """Where the cluster's etcd answers (its JSON gateway, which etcd3gw speaks)."""
    return f"http://{ip}:{ETCD_CLIENT_PORT}"


def etcd_argv(name: str, data_dir: str, ip: str) -> list[str]:
    """A one-member etcd listening on the node's address (and its loopback, for the node's CLI)."""
    client = store_url(ip)
    return ["etcd", "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", f"{client},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", client,
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster", f"{name}=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"]


def controller_argv(kproxy: str, state_dir: str, store: str, manifests: str,
                    extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`kproxy controller`: validation, allocation, Deployments -> pods, scheduling, endpoints."""
    return [kproxy, "controller", "--state-dir", state_dir, "--store", store, "--manifests", manifests, *extra]


def agent_argv(kproxy: str, state_dir: str, store: str, node: str, node_ip: str, pod_cidr: str | None = None,
               sandbox: bool = False) -> list[str]:
    """`kproxy agent`: one node's pods, iptables rules and layer-2 announcements."""
    argv = [kproxy, "agent", "--state-dir", state_dir, "--store", store, "--node", node, "--node-ip", node_ip]
    if pod_cidr:
        argv += ["--pod-cidr", pod_cidr]
    if sandbox:
        argv.append("--sandbox")
    return argv
