"""The host side of scripts/vagrant-test: packages, the local box, libvirt on isolated networks,
the VMs' apt proxy and wheelhouse, `vagrant up`, and the teardown that puts the host back.

WHY so careful about the host: the test runs as root on a shared machine (CI, a teacher's laptop).
Everything it creates has a name of its own (networks, bridges, box, pid files), what it found
before it started is written down first (state.json: /dev/kvm's mode, ip_forward, whether libvirtd
or a storage pool already existed), and teardown removes only what the state file says it made,
also after a crash: the next run's first step is that teardown. The networks have no <forward>:
the VMs reach the host and each other, nothing beyond (the lab's packets stay on two bridges).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from kproxy.vagrantlab.run import CheckFailed, Runner

VIRSH = ["virsh", "-c", "qemu:///system"]
POOL_CONF = Path("/etc/libvirt/storage")  # where libvirt keeps pool definitions
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass
class Lab:
    """One run's names and numbers (defaults: what vagrant/Vagrantfile and the README use)."""
    work: Path
    repo: Path = REPO
    nodes: int = 2
    cpus: int = 1
    memory: int = 1024
    driver: str = "qemu"                   # this kind of machine's /dev/kvm cannot boot Debian's kernel
    box: str = "kproxy/debian12-local"
    mgmt_net: str = "vagrant-libvirt"      # vagrant-libvirt's management network (eth0, DHCP, ssh)
    mgmt_bridge: str = "kpvt-mgmt0"
    mgmt_prefix: str = "192.168.121"
    lab_net: str = "kproxy-lab"            # the Vagrantfile's private network (eth1, node IPs)
    lab_bridge: str = "kpvt-lab0"
    lab_prefix: str = "192.168.56"
    first_host: int = 11
    lb_pool: str = "192.168.56.240-192.168.56.250"
    apt_port: int = 3142
    extra_env: dict = field(default_factory=dict)

    @property
    def node_names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.nodes + 1)]

    def node_ip(self, i: int) -> str:
        return f"{self.lab_prefix}.{self.first_host + i - 1}"

    @property
    def checkout(self) -> Path:
        return self.work / "kproxy"

    @property
    def vagrant_dir(self) -> Path:
        return self.checkout / "vagrant"

    @property
    def box_file(self) -> Path:
        return self.work / "box" / "debian12-kproxy.box"

    @property
    def wheelhouse(self) -> Path:
        return self.work / "wheelhouse"

    @property
    def ssh_config(self) -> Path:
        return self.work / "ssh-config"

    @property
    def state_file(self) -> Path:
        return self.work / "state.json"

    def vagrant_env(self) -> dict:
        """What `vagrant up` runs with: the Vagrantfile's offline classroom settings."""
        return {"VAGRANT_HOME": str(self.work / "vagrant.d"), "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1",
                "KPROXY_BOX": self.box, "KPROXY_NODES": str(self.nodes), "KPROXY_CPUS": str(self.cpus),
                "KPROXY_MEMORY": str(self.memory), "KPROXY_NETWORK": self.lab_prefix,
                "KPROXY_FIRST_HOST": str(self.first_host), "KPROXY_LIBVIRT_DRIVER": self.driver,
                "KPROXY_MANAGEMENT_NETWORK": "none",
                "KPROXY_APT_PROXY": f"http://{self.mgmt_prefix}.1:{self.apt_port}",
                "KPROXY_WHEELHOUSE": str(self.wheelhouse), "KPROXY_PIP_INDEX": "", **self.extra_env}


# -- state: what the host was like, and what this run started ----------------------------------
def load_state(lab: Lab) -> dict:
    try:
        return json.loads(lab.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_state(lab: Lab, state: dict) -> None:
    tmp = lab.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(lab.state_file)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


# -- install -------------------------------------------------------------------------------------
def vagrant_packages(repo: Path = REPO) -> list[str]:
    """scripts/setup's --vagrant list: one list of what the Vagrant lab needs on a host."""
    m = re.search(r"^vagrant_pkgs=\(([^)]*)\)", (repo / "scripts" / "setup").read_text(), re.M)
    if not m:
        raise RuntimeError("scripts/setup has no vagrant_pkgs=(...) list")
    return m.group(1).split()


def install(r: Runner, lab: Lab) -> None:
    pkgs = vagrant_packages(lab.repo)
    missing = [p for p in pkgs if "ok installed" not in r.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture=True, check=False).stdout]
    if not missing:
        r.say(f"  all {len(pkgs)} packages there (scripts/setup --vagrant's list)")
        return
    r.say(f"  apt-get install {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if r.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, check=False).returncode:
        r.run(["apt-get", "update", "-q"])
        r.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


# -- box -----------------------------------------------------------------------------------------
def box(r: Runner, lab: Lab, rebuild: bool = False) -> None:
    env = lab.vagrant_env()
    if rebuild or not lab.box_file.exists():
        lab.box_file.parent.mkdir(parents=True, exist_ok=True)
        r.say(f"  building {lab.box_file} with debootstrap (cached for the next runs)")
        r.run(["bash", str(HERE / "mkbox.sh"), str(lab.box_file)])
        rebuild = True
    else:
        r.say(f"  reusing {lab.box_file} (built {time.strftime('%Y-%m-%d %H:%M', time.gmtime(lab.box_file.stat().st_mtime))} UTC)")
    listed = r.out(["vagrant", "box", "list"], env=env)
    if rebuild or not any(line.split()[:1] == [lab.box] for line in listed.splitlines()):
        r.run(["vagrant", "box", "add", "--force", "--name", lab.box, str(lab.box_file)], env=env)


# -- host-up ------------------------------------------------------------------------------------
NET_XML = """<network>
  <name>{name}</name>
  <bridge name='{bridge}' stp='off' delay='0'/>
  <ip address='{prefix}.1' netmask='255.255.255.0'>{dhcp}</ip>
</network>
"""


def network_xml(name: str, bridge: str, prefix: str, dhcp: bool) -> str:
    """An isolated libvirt network: no <forward> element, so no NAT and no route beyond the host."""
    d = f"<dhcp><range start='{prefix}.10' end='{prefix}.254'/></dhcp>" if dhcp else ""
    return NET_XML.format(name=name, bridge=bridge, prefix=prefix, dhcp=d)


def libvirt_up(r: Runner) -> bool:
    return r.ok([*VIRSH, "version"], timeout=20)


def preflight(r: Runner, lab: Lab) -> None:
    """Refuse to touch a host where our names or subnets are taken by something else."""
    addrs = r.out(["ip", "-4", "-o", "addr", "show"])
    for prefix in (lab.mgmt_prefix, lab.lab_prefix):
        if re.search(rf"\binet {re.escape(prefix)}\.", addrs):
            raise CheckFailed(f"{prefix}.0/24 is already on an interface of this host: not ours to use")
    if libvirt_up(r):
        nets = r.out([*VIRSH, "net-list", "--all", "--name"]).split()
        taken = {lab.mgmt_net, lab.lab_net} & set(nets)
        if taken:
            raise CheckFailed(f"libvirt networks {sorted(taken)} exist already (not made by this run)")
        doms = r.out([*VIRSH, "list", "--all", "--name"]).split()
        ours = [d for d in doms if d in {f"vagrant_{n}" for n in lab.node_names}]
        if ours:
            raise CheckFailed(f"libvirt domains {ours} exist already (not made by this run)")


def host_up(r: Runner, lab: Lab) -> None:
    state = load_state(lab)
    if not state:
        kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
        state = {"kvm": [stat.S_IMODE(kvm.st_mode), kvm.st_gid] if kvm else None,
                 "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
                 "libvirt_was_up": libvirt_up(r), "started": {}, "networks": [], "pool_made": False,
                 "pool_conf_existed": POOL_CONF.exists()}
        save_state(lab, state)
    preflight(r, lab)
    if state["kvm"]:
        # What udev does on Debian: root:kvm 0660. Without it libvirt's QEMU probe fails and retries.
        shutil.chown("/dev/kvm", group="kvm")
        os.chmod("/dev/kvm", 0o660)
    if not libvirt_up(r):
        start_libvirt(r, lab, state)
    r.wait_for("libvirtd answers", lambda: libvirt_up(r), timeout=60, interval=1)
    for name, bridge, prefix, dhcp in ((lab.mgmt_net, lab.mgmt_bridge, lab.mgmt_prefix, True),
                                        (lab.lab_net, lab.lab_bridge, lab.lab_prefix, False)):
        xml = lab.work / f"net-{name}.xml"
        xml.write_text(network_xml(name, bridge, prefix, dhcp))
        state["networks"].append(name)
        save_state(lab, state)
        r.run([*VIRSH, "net-define", str(xml)])
        r.run([*VIRSH, "net-start", name])
        r.say(f"  network {name}: bridge {bridge} {prefix}.1/24, isolated (no forward){', DHCP' if dhcp else ''}")
    pools = r.out([*VIRSH, "pool-list", "--all", "--name"]).split()
    if "default" not in pools:  # vagrant-libvirt keeps boxes and disks there; remove it after if we made it
        state["pool_made"] = True
        save_state(lab, state)
        pool_dir = Path("/var/lib/libvirt/images")
        pool_dir.mkdir(parents=True, exist_ok=True)
        r.run([*VIRSH, "pool-define-as", "default", "dir", "--target", str(pool_dir)])
        r.run([*VIRSH, "pool-start", "default"])
    start_apt_proxy(r, lab, state)
    r.say(f"  apt proxy: apt-cacher-ng on {lab.mgmt_prefix}.1:{lab.apt_port}")
    r.run([str(lab.repo / "scripts" / "wheelhouse"), str(lab.wheelhouse)])
    r.say(f"  wheelhouse: {len(list(lab.wheelhouse.glob('*.whl')))} wheels in {lab.wheelhouse}")


def systemd_host() -> bool:
    return Path("/run/systemd/system").is_dir()


def start_libvirt(r: Runner, lab: Lab, state: dict) -> None:
    if systemd_host():
        r.run(["systemctl", "start", "libvirtd.service"])
        state["started"]["libvirtd.service"] = True
        save_state(lab, state)
        return
    for daemon in ("virtlogd", "libvirtd"):  # no systemd (a container): the daemons themselves
        pidfile = lab.work / f"{daemon}.pid"
        r.run([daemon, "-d", "-p", str(pidfile)], timeout=30)
        pid = r.wait_for(f"{daemon} pid file", lambda: read_pid(pidfile), timeout=20, interval=0.5)
        state["started"][daemon] = pid
        save_state(lab, state)


def start_apt_proxy(r: Runner, lab: Lab, state: dict) -> None:
    """apt-cacher-ng for the VMs, with its own config copy: it listens on the management bridge
    only (and loopback), and fetches Debian packages from the mirror this host's apt uses."""
    conf = lab.work / "acng-conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/apt-cacher-ng", conf)
    mirror = host_mirror()
    (conf / "backends_debian").write_text(mirror.rstrip("/") + "/\n")
    for p in [conf, *conf.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    run_dir = lab.work / "acng-run"
    run_dir.mkdir(exist_ok=True)
    shutil.chown(run_dir, user="apt-cacher-ng")
    pidfile = run_dir / "pid"
    r.run(["runuser", "-u", "apt-cacher-ng", "--", "/usr/sbin/apt-cacher-ng", "-c", str(conf),
           f"BindAddress=127.0.0.1 {lab.mgmt_prefix}.1", f"Port={lab.apt_port}", f"pidfile={pidfile}",
           f"SocketPath={run_dir}/socket", "ForeGround=0"], timeout=30)
    pid = r.wait_for("apt-cacher-ng pid file", lambda: read_pid(pidfile), timeout=20, interval=0.5)
    state["started"]["apt-cacher-ng"] = pid
    save_state(lab, state)
    r.wait_for("apt-cacher-ng answers", lambda: port_open(f"{lab.mgmt_prefix}.1", lab.apt_port), timeout=20, interval=0.5)


def host_mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 or one-line sources)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    return "http://deb.debian.org/debian"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# -- lab-up --------------------------------------------------------------------------------------
def lab_up(r: Runner, lab: Lab) -> None:
    """A copy of the checkout (tracked and untracked-not-ignored files: uncommitted changes are
    tested too), then `vagrant up` of it with the offline classroom settings."""
    shutil.rmtree(lab.checkout, ignore_errors=True)
    lab.checkout.mkdir(parents=True)
    files = r.out(["git", "-C", str(lab.repo), "ls-files", "-z", "-c", "-o", "--exclude-standard"])
    r.run(["rsync", "-a", "--from0", "--files-from=-", f"{lab.repo}/", f"{lab.checkout}/"], input=files)
    env = lab.vagrant_env()
    r.say(f"  vagrant up: {lab.nodes} nodes, {lab.cpus} CPU, {lab.memory} MiB, driver {lab.driver}, "
          f"apt via {env['KPROXY_APT_PROXY']}, pip from {lab.wheelhouse}")
    r.run(["vagrant", "up", "--provider=libvirt"], cwd=lab.vagrant_dir, env=env)
    lab.ssh_config.write_text(r.out(["vagrant", "ssh-config"], cwd=lab.vagrant_dir, env=env, timeout=120))


# -- teardown ------------------------------------------------------------------------------------
def libvirt_chains(r: Runner) -> list[str]:
    """libvirt's leftover rules, as iptables-save and nft show them."""
    out = []
    for cmd in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        if shutil.which(cmd[0]):
            res = r.run(cmd, capture=True, check=False, timeout=30)
            out += [f"{cmd[0]}: {line.strip()}" for line in res.stdout.splitlines() if "libvirt" in line.lower()]
    return out


def teardown(r: Runner, lab: Lab, remove_box: bool = False) -> list[str]:
    """Remove what state.json says this run made; returns what is still left (empty: clean)."""
    state = load_state(lab)
    env = lab.vagrant_env()
    if not state:  # host-up never ran (or a teardown finished): nothing of ours on the host
        if remove_box:
            remove_box_files(r, lab, env)
        return []
    up = libvirt_up(r) if shutil.which("virsh") else False
    if not up and state.get("networks") and any(k in state.get("started", {}) for k in ("libvirtd", "libvirtd.service")):
        start_libvirt(r, lab, state)  # libvirtd died (or was killed) before it removed our networks
        up = libvirt_up(r)
    if lab.vagrant_dir.is_dir() and (lab.vagrant_dir / ".vagrant").exists() and up:
        if not r.ok(["vagrant", "destroy", "-f"], cwd=lab.vagrant_dir, env=env, timeout=300):
            r.say("  vagrant destroy failed: removing the domains with virsh")
    if up:
        for dom in [d for d in r.out([*VIRSH, "list", "--all", "--name"]).split() if d in {f"vagrant_{n}" for n in lab.node_names}]:
            r.run([*VIRSH, "destroy", dom], check=False)
            r.run([*VIRSH, "undefine", dom, "--remove-all-storage"], check=False)
        nets = r.out([*VIRSH, "net-list", "--all", "--name"]).split()
        for net in set(state.get("networks", [])) & set(nets):
            r.run([*VIRSH, "net-destroy", net], check=False)
            r.run([*VIRSH, "net-undefine", net], check=False)
        if r.ok([*VIRSH, "pool-info", "default"]):
            vols = r.out([*VIRSH, "vol-list", "default"], check=False).splitlines()[2:]
            box_vol = lab.box.replace("/", "-VAGRANTSLASH-")
            for vol in (line.split()[0] for line in vols if line.split()):
                # the box's copy in the pool goes too when the pool is ours (vagrant uploads it again)
                if vol.startswith("vagrant_node-") or ((remove_box or state.get("pool_made")) and vol.startswith(box_vol)):
                    r.run([*VIRSH, "vol-delete", "--pool", "default", vol], check=False)
            rest = [line for line in r.out([*VIRSH, "vol-list", "default"], check=False).splitlines()[2:] if line.split()]
            if state.get("pool_made") and not rest:
                r.run([*VIRSH, "pool-destroy", "default"], check=False)
                r.run([*VIRSH, "pool-undefine", "default"], check=False)
                for d in () if state.get("pool_conf_existed", True) else (POOL_CONF / "autostart", POOL_CONF):
                    with contextlib.suppress(OSError):  # libvirt made them for our pool; rmdir: only if empty
                        d.rmdir()
    if remove_box:
        remove_box_files(r, lab, env)
    started = state.get("started", {})
    others_left = up and any(n for n in r.out([*VIRSH, "net-list", "--name"], check=False).split())  # active ones
    for name in ("apt-cacher-ng", "libvirtd", "virtlogd"):
        pid = started.get(name)
        if pid and pid_alive(pid) and proc_name(pid).startswith(name[:15]):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not pid_alive(pid):
                    break
                time.sleep(0.2)
    if started.get("libvirtd.service"):
        r.run(["systemctl", "stop", "libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket",
               "libvirtd-admin.socket"], check=False)
    if not state.get("libvirt_was_up") and not others_left:
        remove_libvirt_chains(r)
    if state.get("kvm") and os.path.exists("/dev/kvm"):
        mode, gid = state["kvm"]
        os.chown("/dev/kvm", -1, gid)
        os.chmod("/dev/kvm", mode)
    if "ip_forward" in state:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(state["ip_forward"] + "\n")
    left = leftovers(r, lab, state)
    if not left:
        lab.state_file.unlink(missing_ok=True)
    return left


def remove_box_files(r: Runner, lab: Lab, env: dict) -> None:
    if shutil.which("vagrant"):
        r.run(["vagrant", "box", "remove", "-f", lab.box], env=env, check=False, timeout=120)
    lab.box_file.unlink(missing_ok=True)


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


LIBVIRT_CHAINS = {"filter": [("INPUT", "LIBVIRT_INP"), ("FORWARD", "LIBVIRT_FWX"), ("FORWARD", "LIBVIRT_FWI"),
                             ("FORWARD", "LIBVIRT_FWO"), ("OUTPUT", "LIBVIRT_OUT")],
                  "nat": [("POSTROUTING", "LIBVIRT_PRT")], "mangle": [("POSTROUTING", "LIBVIRT_PRT")]}


def remove_libvirt_chains(r: Runner) -> None:
    """libvirt adds top-level chains when it starts its first network and keeps them after the
    last one goes; they are empty then. Removed only when libvirt was not running before us."""
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table, pairs in LIBVIRT_CHAINS.items():
            for parent, chain in pairs:
                while r.ok([tool, "-w", "-t", table, "-D", parent, "-j", chain], timeout=30):
                    pass
                r.run([tool, "-w", "-t", table, "-F", chain], check=False, capture=True, timeout=30)
                r.run([tool, "-w", "-t", table, "-X", chain], check=False, capture=True, timeout=30)


def leftovers(r: Runner, lab: Lab, state: dict) -> list[str]:
    """What a clean host must not have: our VMs, networks, bridges, libvirt chains, daemons, processes."""
    left = []
    links = r.out(["ip", "-o", "link", "show"], check=False)
    left += [f"link {b}" for b in (lab.mgmt_bridge, lab.lab_bridge) if re.search(rf": {b}[:@]", links)]
    left += [f"link {m.group(1)} (a VM's tap)" for m in re.finditer(r": (vnet\d+)[:@]", links)]
    if not state.get("libvirt_was_up"):
        left += libvirt_chains(r)
    for name, pid in state.get("started", {}).items():
        if isinstance(pid, int) and pid_alive(pid) and proc_name(pid).startswith(name[:15]):
            left.append(f"process {name} ({pid})")
    left += [f"process {comm} ({pid})" for pid, comm in lab_processes(lab)]
    if state.get("kvm") and os.path.exists("/dev/kvm"):
        st = os.stat("/dev/kvm")
        if [stat.S_IMODE(st.st_mode), st.st_gid] != state["kvm"]:
            left.append(f"/dev/kvm mode {oct(stat.S_IMODE(st.st_mode))} gid {st.st_gid}")
    return left


def lab_processes(lab: Lab) -> list[tuple[int, str]]:
    """QEMU processes, and the dnsmasq libvirt runs for our management network."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            comm = proc_name(int(pid_dir.name))
            if comm.startswith("qemu-system") or (comm == "dnsmasq" and lab.mgmt_net in _cmdline(pid_dir)):
                found.append((int(pid_dir.name), comm))
    return found


def _cmdline(pid_dir: Path) -> str:
    try:
        return (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
