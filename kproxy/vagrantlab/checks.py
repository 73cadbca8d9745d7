"""The checks scripts/vagrant-test runs on the booted lab, from the host and from the VMs.

WHY each one asserts what it does: they are issue 17's list of what the Vagrant lab must show on
real VMs, each checked by what answered (a pod's name and IP, a MAC in the host's ARP table, a
node's boot id), never by a command's exit code alone. The host talks to the VMs only on the
lab's host-only network (192.168.56.0/24) and over vagrant's ssh on the management network.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import re
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path

from kproxy.vagrantlab.host import Lab
from kproxy.vagrantlab.run import CheckFailed, Runner

HERE = Path(__file__).resolve().parent
DEMO = "/opt/kproxy/examples/demo"
NODEPORT = 30080
ANSWER = re.compile(r"pod (\S+) namespace (\S+) ip (\S+) client (\S+)")


class Cluster:
    """ssh to the VMs (vagrant's ssh-config), kproxy on node-1, HTTP from the host."""

    def __init__(self, r: Runner, lab: Lab):
        self.r, self.lab = r, lab

    def ssh(self, node: str, cmd: str, *, timeout: float = 120, check: bool = True, input: str | None = None) -> str:
        argv = ["ssh", "-F", str(self.lab.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", node, cmd]
        return self.r.run(argv, capture=True, check=check, timeout=timeout, input=input).stdout

    def kproxy(self, args: str, node: str = "node-1", **kw) -> str:
        return self.ssh(node, f"sudo kproxy {args}", **kw)

    def snapshot(self) -> dict[str, list[dict]]:
        """Nodes, pods and Services in ONE kproxy call: each call starts Python on the VM, which
        costs 10-40 s on an emulated CPU that also runs etcd, the controller and the agent."""
        items = json.loads(self.kproxy("get nodes,pods,svc -A -o json"))["items"]
        self.snap = {k: [o for o in items if o.get("kind") == k] for k in ("Node", "Pod", "Service")}
        return self.snap

    def pods(self, selector: str = "app=web") -> list[dict]:
        key, value = selector.split("=")
        return [p for p in self.snapshot()["Pod"] if p["metadata"].get("namespace") == "default"
                and p["metadata"].get("labels", {}).get(key) == value]

    def running(self, selector: str = "app=web") -> list[dict]:
        return [p for p in self.pods(selector) if p.get("status", {}).get("phase") == "Running"
                and all(c.get("ready") for c in p["status"].get("containerStatuses", [{"ready": True}]))]

    def svc(self, name: str, fresh: bool = False) -> dict:
        """A default-namespace Service (from the last snapshot unless `fresh`)."""
        snap = self.snapshot() if fresh or not getattr(self, "snap", None) else self.snap
        found = [o for o in snap["Service"] if o["metadata"]["name"] == name and o["metadata"].get("namespace") == "default"]
        if not found and not fresh:
            return self.svc(name, fresh=True)
        if not found:
            raise CheckFailed(f"no Service default/{name}")
        return found[0]

    def ready_nodes(self) -> dict[str, dict]:
        out = {}
        for n in self.snapshot()["Node"]:
            conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True":
                out[n["metadata"]["name"]] = n
        return out

    def exec_curl(self, pod: str, url: str, times: int, node: str = "node-1") -> list[tuple[str, str]]:
        """`times` requests from inside `pod` (kproxy exec on the node running it): (pod, ip) that answered."""
        # one `kproxy exec` (a Python start costs seconds on an emulated CPU), the loop inside the pod
        loop = f"for i in $(seq {times}); do curl -s -m 5 {shlex.quote(url)}; echo; done"
        out = self.ssh(node, f"sudo kproxy exec {shlex.quote(pod)} -- sh -c {shlex.quote(loop)}",
                       timeout=120 + 6 * times, check=False)
        return [(m.group(1), m.group(3)) for m in ANSWER.finditer(out)]

    def http(self, host: str, port: int, path: str = "/", timeout: float = 5) -> str:
        """GET from the host, straight to the address (no proxy from the environment)."""
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()

    def try_http(self, host: str, port: int) -> str | None:
        try:
            return self.http(host, port)
        except (OSError, http.client.HTTPException):
            return None

    def mac_of(self, node: str) -> str:
        """The MAC of the VM's lab-network interface (the one holding its node IP)."""
        ip = self.lab.node_ip(int(node.split("-")[1]))
        cmd = f"ip -o -4 addr show | awk '$4 ~ /^{re.escape(ip)}\\// {{print $2; exit}}'"
        iface = self.ssh(node, cmd).strip()
        return self.ssh(node, f"cat /sys/class/net/{iface}/address").strip().lower()

    def host_mac_for(self, ip: str) -> str | None:
        """Which MAC this host's ARP table has for `ip` on the lab bridge."""
        out = self.r.out(["ip", "neigh", "show", "to", ip, "dev", self.lab.lab_bridge], check=False)
        m = re.search(r"lladdr ([0-9a-f:]{17})", out)
        return m.group(1) if m and "FAILED" not in out else None


# -- the checks: each returns a short detail for the report, or raises CheckFailed ---------------
def nodes_ready(c: Cluster) -> str:
    want = {n: (c.lab.node_ip(i), f"10.244.{i}.0/24") for i, n in enumerate(c.lab.node_names, start=1)}
    def probe():
        ready = c.ready_nodes()
        return ready if set(want) <= set(ready) else None
    ready = c.r.wait_for(f"nodes {sorted(want)} Ready", probe, timeout=180)
    for name, (ip, cidr) in want.items():
        node = ready[name]
        addr = {a["type"]: a["address"] for a in node["status"].get("addresses", [])}
        if addr.get("InternalIP") != ip or node["spec"].get("podCIDR") != cidr:
            raise CheckFailed(f"{name}: InternalIP {addr.get('InternalIP')} podCIDR {node['spec'].get('podCIDR')}, "
                              f"want {ip} {cidr}")
    return ", ".join(f"{n} {ip} {cidr}" for n, (ip, cidr) in want.items())


def deployment_spread(c: Cluster) -> str:
    c.kproxy(f"apply -f {DEMO} -f - --wait --timeout 300", input=(HERE / "lb.yaml").read_text(), timeout=400)
    def probe():
        pods = c.running()
        return pods if {p["spec"].get("nodeName") for p in pods} >= set(c.lab.node_names) else None
    pods = c.r.wait_for("web pods Running on every VM", probe, timeout=180)
    return ", ".join(sorted(f"{p['metadata']['name']}@{p['spec']['nodeName']}" for p in pods))


def clusterip_across_vms(c: Cluster) -> str:
    """A web pod on node-1 asks the ClusterIP: a node-2 pod answers (pod-to-pod across the VMs
    through the VIP), and so does the asking pod itself (hairpin: its own reply comes back
    through the masquerade kube-proxy adds for that case)."""
    pods = c.running()
    cip = c.svc("web")["spec"]["clusterIP"]  # from the same snapshot
    me = next((p for p in pods if p["spec"]["nodeName"] == "node-1"), None)
    if not me:
        raise CheckFailed("no web pod on node-1")
    name = me["metadata"]["name"]
    node2_ips = {p["status"]["podIP"] for p in pods if p["spec"]["nodeName"] == "node-2"}
    seen: list[tuple[str, str]] = []
    for _ in range(3):
        seen += c.exec_curl(name, f"http://{cip}/", 12)
        if any(ip in node2_ips for _, ip in seen) and any(p == name for p, _ in seen):
            break
    if not any(ip in node2_ips for _, ip in seen):
        raise CheckFailed(f"{name} -> {cip}: no answer from a node-2 pod {sorted(node2_ips)}: {seen}")
    if not any(p == name for p, _ in seen):
        raise CheckFailed(f"{name} -> {cip}: never answered by itself (hairpin): {seen}")
    return f"{name} -> {cip}: {len(seen)} answers from {sorted({p for p, _ in seen})}"


def nodeport_from_host(c: Cluster) -> str:
    got = []
    for i in range(1, c.lab.nodes + 1):
        ip = c.lab.node_ip(i)
        text = c.r.wait_for(f"NodePort {ip}:{NODEPORT}", lambda ip=ip: c.try_http(ip, NODEPORT), timeout=60)
        m = ANSWER.search(text)
        if not m:
            raise CheckFailed(f"{ip}:{NODEPORT} answered {text!r}, not a web pod")
        got.append(f"{ip} -> {m.group(1)}")
    return ", ".join(got)


def loadbalancer_moves(c: Cluster) -> str:
    """The Service's LoadBalancer IP answers the host; the host's ARP entry for it is the MAC of
    the VM elected to announce it; stop that VM's agent and the IP moves to the other VM."""
    ingress = c.r.wait_for("web-lb gets an IP", lambda: c.svc("web-lb", fresh=True).get("status", {}).get("loadBalancer", {}).get("ingress"), timeout=150)
    ip = ingress[0]["ip"]
    lo, hi = c.lab.lb_pool.split("-")
    if not ipaddress.ip_address(lo) <= ipaddress.ip_address(ip) <= ipaddress.ip_address(hi):
        raise CheckFailed(f"web-lb got {ip}, outside the pool {c.lab.lb_pool}")
    macs = {c.mac_of(n): n for n in c.lab.node_names}

    def announcer(exclude: str | None = None):
        c.r.run(["ip", "neigh", "flush", "to", ip, "dev", c.lab.lab_bridge], check=False)
        text = c.try_http(ip, 80)
        mac = c.host_mac_for(ip)
        node = macs.get(mac or "")
        return (node, text) if node and node != exclude and text and ANSWER.search(text) else None

    first, _ = c.r.wait_for(f"{ip} answers the host, ARP from a VM", announcer, timeout=90)
    c.ssh(first, "sudo systemctl stop kproxy-agent")
    try:
        second, text = c.r.wait_for(f"{ip} moves off {first}", lambda: announcer(exclude=first), timeout=120)
    finally:
        c.ssh(first, "sudo systemctl start kproxy-agent")
    c.r.wait_for(f"{first} Ready again", lambda: first in c.ready_nodes(), timeout=240)
    c.r.wait_for("web pods Running on every VM again",
                 lambda: {p["spec"].get("nodeName") for p in c.running()} >= set(c.lab.node_names), timeout=180)
    return f"{ip}: ARP from {first}, then from {second} once {first}'s agent stopped ({ANSWER.search(text).group(1)} answered)"


def dns_from_pod(c: Cluster) -> str:
    pod = next(p for p in c.running() if p["spec"]["nodeName"] == "node-1")["metadata"]["name"]
    cip = c.svc("web")["spec"]["clusterIP"]
    fqdn = "web.default.svc.cluster.local"
    # one exec: dig the full name, then curl the short one (the pod's resolv.conf search path)
    script = f"dig +short +time=3 +tries=2 {fqdn}; curl -s -m 5 http://web/"
    out = c.ssh("node-1", f"sudo kproxy exec {pod} -- sh -c {shlex.quote(script)}", timeout=180, check=False)
    addrs = [w for w in out.split() if re.fullmatch(r"[\d.]+", w)]
    if cip not in addrs[:1]:
        raise CheckFailed(f"{pod}: dig {fqdn} -> {addrs[:1]}, want {cip} ({out.strip()[:200]!r})")
    answer = ANSWER.search(out)
    if not answer:
        raise CheckFailed(f"{pod}: curl http://web/ got no answer ({out.strip()[:200]!r})")
    return f"{pod}: {fqdn} -> {cip}; http://web/ answered by {answer.group(1)}"


def agent_restarted(c: Cluster) -> str:
    node = c.lab.node_names[-1]
    show = "systemctl show -p MainPID -p NRestarts kproxy-agent"
    before = dict(line.split("=", 1) for line in c.ssh(node, show).split())
    c.ssh(node, f"sudo kill -9 {before['MainPID']}")
    def probe():
        now = dict(line.split("=", 1) for line in c.ssh(node, show).split())
        active = c.ssh(node, "systemctl is-active kproxy-agent", check=False).strip() == "active"
        return now if active and now["MainPID"] not in ("0", before["MainPID"]) else None
    after = c.r.wait_for(f"{node}'s agent restarted by systemd", probe, timeout=60, interval=1)
    c.r.wait_for(f"{node} Ready", lambda: node in c.ready_nodes(), timeout=240)
    return (f"{node}: kill -9 {before['MainPID']} -> systemd started {after['MainPID']} "
            f"(NRestarts {before['NRestarts']} -> {after['NRestarts']}), node Ready")


def reboot_comes_back(c: Cluster) -> str:
    node = c.lab.node_names[-1]
    ip = c.lab.node_ip(c.lab.nodes)
    boot0 = c.ssh(node, "cat /proc/sys/kernel/random/boot_id").strip()
    t0 = time.monotonic()
    try:
        c.ssh(node, "sudo systemctl reboot", check=False, timeout=30)
    except subprocess.TimeoutExpired:
        pass  # the connection may hang while sshd goes down
    def booted():
        b = c.ssh(node, "cat /proc/sys/kernel/random/boot_id", timeout=20, check=False).strip()
        return b if re.fullmatch(r"[0-9a-f-]{36}", b) and b != boot0 else None
    c.r.wait_for(f"{node} rebooted", booted, timeout=420, interval=5)
    up = time.monotonic() - t0
    c.r.wait_for(f"{node} Ready after its reboot", lambda: node in c.ready_nodes(), timeout=240)
    text = c.r.wait_for(f"NodePort {ip}:{NODEPORT} after the reboot", lambda: c.try_http(ip, NODEPORT), timeout=180)
    cip = c.svc("web")["spec"]["clusterIP"]
    via = c.ssh(node, f"curl -s -m 5 http://{cip}/", check=False)
    if not ANSWER.search(text) or not ANSWER.search(via):
        raise CheckFailed(f"{node} after reboot: NodePort answered {text!r}, ClusterIP from the node {via!r}")
    return f"{node}: back in {up:.0f} s, Ready; NodePort answered by {ANSWER.search(text).group(1)}, ClusterIP from it by {ANSWER.search(via).group(1)}"


def etcd_needs_a_cert(c: Cluster) -> str:
    """From the host: plain HTTP and TLS without a client certificate are refused; the same
    request with node-1's certificate (copied out for this check, then deleted) is answered."""
    ip = c.lab.node_ip(1)
    ca = c.lab.vagrant_dir / ".pki" / "ca.crt"
    plain = c.try_http(ip, 2379) or ""
    if "etcdserver" in plain:
        raise CheckFailed(f"http://{ip}:2379 answered without TLS: {plain}")
    ctx = ssl.create_default_context(cafile=str(ca))
    refused = tls_get(ctx, ip)
    if refused.startswith("{"):
        raise CheckFailed(f"https://{ip}:2379/version answered without a client certificate: {refused}")
    cert, key = c.lab.work / "etcd-client.crt", c.lab.work / "etcd-client.key"
    try:
        for src, dst in (("node-node-1.crt", cert), ("node-node-1.key", key)):
            dst.touch(mode=0o600)
            dst.write_text(c.ssh("node-1", f"sudo cat /var/lib/kproxy/pki/{src}"))
        ctx.load_cert_chain(str(cert), str(key))
        answered = tls_get(ctx, ip)
    finally:
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
    if '"etcdserver"' not in answered:
        raise CheckFailed(f"with node-1's certificate: {answered}")
    return f"plain HTTP: {plain.strip()[:60] or 'refused'}; TLS, no cert: {refused}; with node-1's cert: {answered.strip()}"


def tls_get(ctx: ssl.SSLContext, ip: str) -> str:
    try:
        with socket.create_connection((ip, 2379), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=ip) as s:
            s.sendall(f"GET /version HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
        return body or "(empty reply)"
    except (ssl.SSLError, OSError) as e:
        return f"refused ({type(e).__name__}: {getattr(e, 'reason', None) or e})"


def workshop_from_host(c: Cluster) -> str:
    """vagrant/lab, the students' way to drive the lab from the host without `vagrant ssh` each time."""
    out = c.r.out([str(c.lab.vagrant_dir / "lab"), "get", "nodes"], cwd=c.lab.vagrant_dir,
                  env=c.lab.vagrant_env(), timeout=120)
    if not all(re.search(rf"^{n}\s+Ready", out, re.M) for n in c.lab.node_names):
        raise CheckFailed(f"vagrant/lab get nodes printed {out!r}")
    return "vagrant/lab get nodes: " + ", ".join(f"{n} Ready" for n in c.lab.node_names)


CHECKS = [
    ("nodes Ready with their pod CIDRs", nodes_ready),
    ("Deployment spread over the VMs", deployment_spread),
    ("ClusterIP: node-1 pod -> node-2 pods, hairpin", clusterip_across_vms),
    ("NodePort from the host on every VM IP", nodeport_from_host),
    ("workshop from the host (vagrant/lab)", workshop_from_host),
    ("DNS by name from a pod", dns_from_pod),
    ("etcd refuses a client without a certificate", etcd_needs_a_cert),
    ("LoadBalancer IP: ARP from one VM, moves", loadbalancer_moves),
    ("agent restarted by systemd after kill -9", agent_restarted),
    ("a rebooted VM comes back Ready, serving", reboot_comes_back),
]


def run_checks(r: Runner, lab: Lab) -> bool:
    c = Cluster(r, lab)
    results = [r.check(name, fn, c) for name, fn in CHECKS]
    return all(results)
