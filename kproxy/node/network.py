"""Node networking with pyroute2: the sandbox hosts, the node bridge and each pod's veth.

Sandbox layout (everything inside namespaces this instance created, nothing in the root one):

    outside (192.168.49.100) --veth-- node (192.168.49.2)  [bridge 10.244.0.1/24] --veth-- pods

Multi-node (`switch`): `outside` holds the lab switch (a bridge carrying its 192.168.49.100) and
node N (192.168.49.N+1, pods 10.244.N.0/24) plugs its lab link into it; nodes reach each other's
pods through host-gw routes (`set_peer_routes`), as in Kubernetes the Hard Way.

The service CIDR is routed to the bridge, so a packet to a VIP with no rule stays on the node.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import logging
import os
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pyroute2 import IPRoute, NetNS, netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from . import dnsconfig
from .naming import Naming

log = logging.getLogger(__name__)

VXLAN_VNI, VXLAN_PORT = 1, 4789  # flannel's defaults
ONLINK = 4                       # RTNH_F_ONLINK: the VTEP address is reached on the device
RTPROT_STATIC = 4                # how pyroute2 marks the routes we add (and `ip route` shows)
# what containerd sets in every pod's netns: a container running as a non-root user
# (securityContext.runAsUser) still binds its port 80 and pings
POD_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}


@dataclass(frozen=True)
class NodeConfig:
    node_name: str = "node-1"
    sandbox: bool = True
    pod_cidr: str = "10.244.0.0/24"        # this node's share of the cluster CIDR
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    lab_cidr: str = "192.168.49.0/24"      # the sandbox's node network
    node_host: int = 2                     # node IP = lab_cidr + node_host
    outside_host: int = 100
    switch: bool = False                   # multi-node: the lab link goes to the lab switch

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def node_ip(self) -> str:
        return str(ipaddress.ip_network(self.lab_cidr).network_address + self.node_host)

    @property
    def outside_ip(self) -> str:
        return str(ipaddress.ip_network(self.lab_cidr).network_address + self.outside_host)


def list_netns() -> list[str]:
    return sorted(pr_netns.listnetns())


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _sysctl(netns: str | None, key: str, value: str) -> None:
    if netns is None:
        with open(_sysctl_path(key), "w") as f:
            f.write(value)
    else:
        subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", f"echo {value} > {_sysctl_path(key)}"],
                       check=True)


@contextmanager
def _ipr(netns: str | None) -> Iterator[IPRoute]:
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
NETNS_RUN_DIR = "/run/netns"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def _thread_in_netns(name: str | None) -> Iterator[None]:
    """Move the calling thread (only it) into netns ``name`` for the block, and back. A netlink
    socket opened inside stays bound to that netns: no helper process (pyroute2's NetNS forks
    one per use, the larger part of a pod's network setup)."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@contextmanager
def _ipr_here(netns: str | None) -> Iterator[IPRoute]:
    """An IPRoute bound to ``netns`` (None: the calling thread's own), without forking."""
    with _thread_in_netns(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _create_netns(name: str) -> None:
    """`ip netns add` in the calling thread: a new netns for this thread, bind-mounted on
    /run/netns/NAME, then back to where it was. Falls back to pyroute2's (forking) create."""
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.isdir(NETNS_RUN_DIR) or not os.listdir(NETNS_RUN_DIR):
        pr_netns.create(name)  # the first one also sets up /run/netns as a shared mount
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            try:
                if _libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount")
            finally:
                _setns(own)
        except OSError:
            os.unlink(path)
            pr_netns.create(name)
    finally:
        os.close(own)


def _up(ipr, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=idx, state="up")
    return idx


class NodeNetwork:
    """Creates and removes the node's links; `node_ns` is None when the node is the real host."""

    def __init__(self, naming: Naming, cfg: NodeConfig, saved_sysctls: Path | None = None):
        self.naming, self.cfg = naming, cfg
        self.node_ns = naming.node_netns if cfg.sandbox else None
        self.saved_sysctls = saved_sysctls  # host mode: where the host's own values are kept

    # -- node ---------------------------------------------------------------------------
    def setup(self) -> None:
        n, cfg = self.naming, self.cfg
        if cfg.sandbox:
            for name in (n.node_netns,) if cfg.switch else (n.node_netns, n.outside_netns):
                if name not in list_netns():
                    pr_netns.create(name)
        with _ipr(self.node_ns) as ipr:
            _up(ipr, "lo")
            if not ipr.link_lookup(ifname=n.bridge):
                ipr.link("add", ifname=n.bridge, kind="bridge")
                br = ipr.link_lookup(ifname=n.bridge)[0]
                ipr.addr("add", index=br, address=cfg.gateway,
                         prefixlen=ipaddress.ip_network(cfg.pod_cidr).prefixlen)
            br = _up(ipr, n.bridge)
            if not any(r.get_attr("RTA_DST") == str(ipaddress.ip_network(cfg.service_cidr).network_address)
                       for r in ipr.get_routes(oif=br)):
                ipr.route("add", dst=cfg.service_cidr, oif=br)
            if cfg.sandbox and not ipr.link_lookup(ifname=n.lab_link):
                peer = n.switch_port if cfg.switch else n.lab_link
                ipr.link("add", ifname=n.lab_link, kind="veth", peer={"ifname": peer, "net_ns_fd": n.outside_netns})
                idx = ipr.link_lookup(ifname=n.lab_link)[0]
                ipr.addr("add", index=idx, address=cfg.node_ip,
                         prefixlen=ipaddress.ip_network(cfg.lab_cidr).prefixlen)
                _up(ipr, n.lab_link)
        if cfg.sandbox and cfg.switch:
            with _ipr(n.outside_netns) as ipr:
                port = ipr.link_lookup(ifname=n.switch_port)[0]
                ipr.link("set", index=port, master=ipr.link_lookup(ifname=n.switch)[0], state="up")
        elif cfg.sandbox:
            with _ipr(n.outside_netns) as ipr:
                _up(ipr, "lo")
                idx = ipr.link_lookup(ifname=n.lab_link)[0]
                if not ipr.get_addr(index=idx, family=2):
                    ipr.addr("add", index=idx, address=cfg.outside_ip,
                             prefixlen=ipaddress.ip_network(cfg.lab_cidr).prefixlen)
                _up(ipr, n.lab_link)
                if not ipr.get_default_routes(family=2):
                    ipr.route("add", dst="0.0.0.0/0", gateway=cfg.node_ip)
        # Pods reach VIPs through the bridge and back out of it. The kernel would answer with
        # ICMP redirects, which also reset its per-host ICMP rate limit, so a REJECT's
        # "port unreachable" would be suppressed and "connection refused" become a timeout.
        for key, value in (("net.ipv4.ip_forward", "1"),
                           ("net.ipv4.conf.all.route_localnet", "1"),   # localhost NodePorts
                           ("net.bridge.bridge-nf-call-iptables", "1"),  # bridged replies un-DNAT
                           ("net.ipv4.conf.all.send_redirects", "0"),
                           (f"net.ipv4.conf.{n.bridge}.send_redirects", "0")):
            try:
                if self.node_ns is None:
                    self._remember_sysctl(key)
                _sysctl(self.node_ns, key, value)
            except (OSError, subprocess.CalledProcessError) as e:
                log.warning("sysctl %s=%s failed: %s", key, value, e)

    def _remember_sysctl(self, key: str) -> None:
        """On a real host, keep the value a setting had before, for teardown to put back."""
        if self.saved_sysctls is None or self.naming.prefix in key:
            return  # a setting of our own link goes with the link
        saved = json.loads(self.saved_sysctls.read_text()) if self.saved_sysctls.exists() else {}
        if key not in saved and os.path.exists(_sysctl_path(key)):
            with open(_sysctl_path(key)) as f:
                saved[key] = f.read().strip()
            self.saved_sysctls.write_text(json.dumps(saved, indent=1))

    def teardown(self) -> None:
        """Remove the node's links and routes (host mode) or its namespaces (sandbox)."""
        n = self.naming
        if self.cfg.sandbox and self.cfg.switch:
            return  # an emulated node's netns may hold etcd and the controller: `kproxy down` removes it
        if self.cfg.sandbox:
            for name in (n.outside_netns, n.node_netns):
                if name in list_netns():
                    pr_netns.remove(name)
            return
        self.set_peer_routes({})  # host-gw routes to other nodes' pods (VXLAN's go with its link)
        with _ipr(None) as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name.startswith(n.prefix):
                    ipr.link("del", index=link["index"])
        if self.saved_sysctls is not None and self.saved_sysctls.exists():
            for key, value in json.loads(self.saved_sysctls.read_text()).items():
                try:
                    _sysctl(None, key, value)
                except OSError as e:
                    log.warning("cannot restore sysctl %s=%s: %s", key, value, e)
            self.saved_sysctls.unlink()

    def set_peer_routes(self, routes: dict[str, str]) -> None:
        """host-gw: route each other node's pod CIDR via that node's address; drop stale ones."""
        cluster = ipaddress.ip_network(self.cfg.cluster_cidr)
        with _ipr(self.node_ns) as ipr:
            for r in ipr.get_routes(family=2, table=254):
                dst, gw = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
                if dst and gw and r["dst_len"] and r["proto"] == RTPROT_STATIC \
                        and ipaddress.ip_network(f"{dst}/{r['dst_len']}").subnet_of(cluster) \
                        and routes.get(f"{dst}/{r['dst_len']}") != gw:
                    ipr.route("del", dst=f"{dst}/{r['dst_len']}", gateway=gw)
            for cidr, via in routes.items():
                ipr.route("replace", dst=cidr, gateway=via)

    # -- VXLAN overlay (like flannel's vxlan backend) -------------------------------------
    @property
    def vxlan(self) -> str:
        return f"{self.naming.prefix}-vx"

    def setup_vxlan(self, node_ip: str) -> str:
        """This node's VTEP: VNI 1 on UDP 4789 over the node's address, holding the pod CIDR's
        network address (10.244.N.0/32, as flannel.1 does); returns its MAC for the others."""
        net = ipaddress.ip_network(self.cfg.pod_cidr)
        with _ipr(self.node_ns) as ipr:
            if not ipr.link_lookup(ifname=self.vxlan):
                under = next((a["index"] for a in ipr.get_addr(family=2) if a.get_attr("IFA_ADDRESS") == node_ip), None)
                ipr.link("add", ifname=self.vxlan, kind="vxlan", vxlan_id=VXLAN_VNI, vxlan_port=VXLAN_PORT,
                         vxlan_local=node_ip, vxlan_learning=0, **({"vxlan_link": under} if under else {}))
                idx = ipr.link_lookup(ifname=self.vxlan)[0]
                ipr.addr("add", index=idx, address=str(net.network_address), prefixlen=32)
            idx = _up(ipr, self.vxlan)
            return ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")

    def set_vxlan_peers(self, peers: dict[str, tuple[str, str]]) -> None:
        """Each other node's pod CIDR -> (its address, its VTEP MAC): a route via its VTEP
        address on the VXLAN device, the neighbour entry for it, and the FDB entry saying
        which node to tunnel that MAC to. Stale routes of the cluster CIDR go."""
        cluster = ipaddress.ip_network(self.cfg.cluster_cidr)
        with _ipr(self.node_ns) as ipr:
            vx = ipr.link_lookup(ifname=self.vxlan)[0]
            for r in ipr.get_routes(family=2, table=254):
                dst = r.get_attr("RTA_DST")
                if dst and r["dst_len"] and ipaddress.ip_network(f"{dst}/{r['dst_len']}").subnet_of(cluster) \
                        and r.get_attr("RTA_OIF") == vx and f"{dst}/{r['dst_len']}" not in peers:
                    ipr.route("del", dst=f"{dst}/{r['dst_len']}", oif=vx)
            for cidr, (node_ip, mac) in peers.items():
                vtep = str(ipaddress.ip_network(cidr).network_address)
                ipr.neigh("replace", dst=vtep, lladdr=mac, ifindex=vx, state="permanent")
                try:  # `bridge fdb append`: the kernel has no replace for VXLAN FDB entries
                    ipr.fdb("append", ifindex=vx, lladdr=mac, dst=node_ip)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
                ipr.route("replace", dst=cidr, gateway=vtep, oif=vx, flags=ONLINK)

    # -- pods ---------------------------------------------------------------------------
    def add_pod(self, namespace: str, name: str, ip: str) -> str:
        """Create the pod's netns and wire it to the bridge; returns the netns name."""
        n, cfg = self.naming, self.cfg
        pod_ns, veth = n.pod_netns(namespace, name), n.pod_veth(namespace, name)
        if pod_ns in list_netns():
            self.remove_pod(namespace, name)
        _create_netns(pod_ns)
        with _ipr_here(self.node_ns) as ipr:
            ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod_ns})
            idx = ipr.link_lookup(ifname=veth)[0]
            br = ipr.link_lookup(ifname=n.bridge)[0]
            ipr.link("set", index=idx, master=br, state="up")
            ipr.brport("set", index=idx, mode=1)  # hairpin: a pod reaches itself via its Service
        with _ipr_here(pod_ns) as ipr:
            _up(ipr, "lo")
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=ip, prefixlen=ipaddress.ip_network(cfg.pod_cidr).prefixlen)
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=cfg.gateway)
        with _thread_in_netns(pod_ns):  # this thread's /proc/sys/net is the pod's
            for key, value in POD_SYSCTLS.items():
                with open(_sysctl_path(key), "w") as f:
                    f.write(value)
        return pod_ns

    def remove_pod(self, namespace: str, name: str) -> None:
        n = self.naming
        pod_ns, veth = n.pod_netns(namespace, name), n.pod_veth(namespace, name)
        with _ipr_here(self.node_ns) as ipr:
            for idx in ipr.link_lookup(ifname=veth):
                ipr.link("del", index=idx)
        if pod_ns in list_netns():
            for pid in netns_pids(pod_ns):  # never leave a process behind in a namespace we drop
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            pr_netns.remove(pod_ns)
        dnsconfig.remove_pod_files(pod_ns)  # its /etc/netns/<netns>/ resolv.conf and hosts


def netns_pids(name: str) -> list[int]:
    """Processes living in a named netns (what `ip netns pids` prints)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def enter_netns(name: str) -> None:
    """Move the calling thread (call before starting threads: the whole daemon) into `name`."""
    pr_netns.setns(name)
    os.environ["KPROXY_NETNS"] = name
