"""The command lines of a cluster's processes: etcd, the controller and each node's agent.

One place for them, so the emulated nodes of `kproxy up --nodes N` and the systemd units of
the Vagrant lab run exactly the same commands.

etcd admits only clients with a certificate of the lab CA (`--client-cert-auth`), and its peer
port only members with one (`--peer-client-cert-auth`); plain HTTP is not served at all. The
certificates live in STATE/pki (kproxy/cluster/pki.py).
"""
from __future__ import annotations

from pathlib import Path

from .pki import Pki, TlsFiles

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def store_url(ip: str) -> str:
    """Where the cluster's etcd answers (its JSON gateway, which etcd3gw speaks), over TLS."""
    return f"https://{ip}:{ETCD_CLIENT_PORT}"


def etcd_argv(name: str, data_dir: str, ip: str, pki_dir: str) -> list[str]:
    """A one-member etcd listening on the node's address (and its loopback, for the node's CLI),
    with TLS and client-certificate authentication on both its client and peer ports."""
    pki = Pki(pki_dir)
    (cert, key), (peer_cert, peer_key) = pki.etcd_server(name), pki.etcd_peer(name)
    client = store_url(ip)
    peer = f"https://127.0.0.1:{ETCD_PEER_PORT}"
    return ["etcd", "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", f"{client},https://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}",
            "--initial-cluster-state", "new",
            "--client-cert-auth", "--trusted-ca-file", str(pki.ca_cert),
            "--cert-file", str(cert), "--key-file", str(key),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(pki.ca_cert),
            "--peer-cert-file", str(peer_cert), "--peer-key-file", str(peer_key),
            "--logger", "zap", "--log-level", "warn"]


def tls_args(tls: TlsFiles) -> list[str]:
    return ["--store-ca", tls.ca, "--store-cert", tls.cert, "--store-key", tls.key]


def controller_argv(kproxy: str, state_dir: str, store: str, manifests: str,
                    extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`kproxy controller`: validation, allocation, Deployments -> pods, scheduling, endpoints.
    Its etcd certificate: STATE/pki/controller.crt."""
    tls = Pki.of(state_dir).client("controller")
    return [kproxy, "controller", "--state-dir", state_dir, "--store", store, *tls_args(tls),
            "--manifests", manifests, *extra]


def agent_argv(kproxy: str, state_dir: str, store: str, node: str, node_ip: str, pod_cidr: str | None = None,
               sandbox: bool = False, pki_dir: str | None = None, proxy_mode: str = "iptables") -> list[str]:
    """`kproxy agent`: one node's pods, iptables rules and layer-2 announcements. Its etcd
    certificate: PKI/node-NODE.crt (PKI: the lab's pki folder, default STATE/pki)."""
    tls = Pki(pki_dir or Path(state_dir) / "pki").client(f"node-{node}")
    argv = [kproxy, "agent", "--state-dir", state_dir, "--store", store, *tls_args(tls), "--node", node,
            "--node-ip", node_ip]
    if pod_cidr:
        argv += ["--pod-cidr", pod_cidr]
    if sandbox:
        argv.append("--sandbox")
    if proxy_mode != "iptables":
        argv += ["--proxy-mode", proxy_mode]
    return argv
