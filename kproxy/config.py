"""A lab instance's settings, saved in its state dir so every command finds the same lab."""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kproxy.node.naming import Naming, instance_prefix

DEFAULT_STATE_DIR = "/var/lib/kproxy"


PRIVATE_UMASK = 0o077  # kproxy's processes create files for root only (see private_dir)


def private_dir(path: str | Path) -> Path:
    """A state dir only root reads (0700, made stricter when it exists looser): it holds every
    object, every error (which may quote files), etcd's data, pod logs and the lab's keys."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    if p.stat().st_mode & 0o077:
        os.chmod(p, 0o700)
    return p


def state_dir_from_env(value: str | None) -> str:
    return os.path.abspath(value or os.environ.get("KPROXY_STATE_DIR") or DEFAULT_STATE_DIR)


@dataclass
class LabConfig:
    state_dir: str
    manifests: str = ""
    sandbox: bool = False
    service_cidr: str = "10.96.0.0/12"
    cluster_cidr: str = "10.244.0.0/16"
    node_name: str = "node-1"
    node_port_range: tuple[int, int] = (30000, 32767)
    lab_cidr: str = "192.168.49.0/24"
    cluster_domain: str = "cluster.local"
    lb_pools: list = field(default_factory=list)  # --lb-pool ranges: a pool named "default"
    cluster_dns: bool = True                     # kube-system/kube-dns + coredns pod
    dns_upstreams: list = field(default_factory=list)  # where names outside the cluster go
    iptables_sync_period: float = 30.0          # kube-proxy's --iptables-sync-period
    masquerade_all: bool = False                 # kube-proxy's --masquerade-all
    proxy_mode: str = "iptables"                 # kube-proxy's --proxy-mode: iptables or nftables
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    extra: dict = field(default_factory=dict)
    api_port: int = 0                            # the API server's port on the host's loopback (0: a free one)
    # multi-node: the cluster's etcd, the node count of an emulated lab, and this node's part
    store_url: str = ""                          # etcd (https://IP:2379); "" = the embedded SQLite store
    store_ca: str = ""                           # the CA etcd's certificate must chain to (STATE/pki/ca.crt)
    store_cert: str = ""                         # this process's etcd client certificate and key
    store_key: str = ""
    nodes: int = 1                               # emulated nodes of `up --sandbox --nodes N`
    node_index: int = 0                          # this node's number in a multi-node lab (0: single)
    node_ip: str = ""                            # this node's address ("" = derived)
    pod_cidr: str = ""                           # this node's pod CIDR ("" = the first /24)
    lab_prefix: str = ""                         # the lab's prefix, shared by its nodes' state dirs
    logs_dir: str = ""                           # pod logs ("" = STATE/logs)
    overlay: str = "host-gw"                     # how nodes reach each other's pods: host-gw or vxlan

    def __post_init__(self):
        self.state_dir = os.path.abspath(self.state_dir)
        if not self.manifests:
            self.manifests = os.path.join(self.state_dir, "manifests")
        self.manifests = os.path.abspath(self.manifests)
        self.node_port_range = tuple(self.node_port_range)

    @property
    def node_pod_cidr(self) -> str:
        """This node's pod CIDR: as configured, else the first /24 of the cluster CIDR (10.244.0.0/24)."""
        if self.pod_cidr:
            return self.pod_cidr
        net = ipaddress.ip_network(self.cluster_cidr)
        return str(next(net.subnets(new_prefix=max(24, net.prefixlen))))

    @property
    def naming(self) -> Naming:
        return Naming(self.lab_prefix or instance_prefix(self.state_dir),
                      str(self.node_index) if self.node_index else "")

    @property
    def multi_node(self) -> bool:
        return bool(self.store_url)

    @property
    def store_tls(self) -> dict:
        """EtcdStore's TLS arguments: the CA to trust and this process's client certificate."""
        return {"ca": self.store_ca or None, "cert": self.store_cert or None, "key": self.store_key or None}

    @property
    def logs(self) -> Path:
        return Path(self.logs_dir or Path(self.state_dir) / "logs")

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / "config.json"

    def save(self) -> None:
        private_dir(self.state_dir)
        self.path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.chmod(self.path, 0o600)

    @classmethod
    def load(cls, state_dir: str) -> "LabConfig | None":
        p = Path(state_dir) / "config.json"
        if not p.exists():
            return None
        return cls(**json.loads(p.read_text()))
