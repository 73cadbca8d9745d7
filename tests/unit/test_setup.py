"""scripts/setup installs every Debian package the code runs or loads (a fresh Debian 12 image has
few of them), and scapy can compile the layer-2 announcer's filter.

The fresh-machine run of issue 12 failed because libpcap was missing: scapy's compile_filter
needs libpcap.so.0.8 (found by ctypes.util.find_library("pcap")), and the ARP announcer died."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup"

# every external program kproxy, its tests, bench or demo run -> the Debian package with it
# (those of Debian 12's essential set, e.g. util-linux's unshare/nsenter/taskset, need no install)
TOOLS = {"ip": "iproute2", "iptables": "iptables", "iptables-save": "iptables",
         "iptables-restore": "iptables", "conntrack": "conntrack", "sysctl": "procps",
         "modprobe": "kmod", "etcd": "etcd-server", "curl": "curl", "dig": "dnsutils",
         "wrk": "wrk", "nft": "nftables", "dot": "graphviz", "xtables-monitor": "iptables",
         "ss": "iproute2"}
# scripts/setup --test (scripts/test)
TEST_TOOLS = {"ruby": "ruby", "vagrant": "vagrant", "openssl": "openssl", "chromium": "chromium"}
# scripts/setup --vagrant (scripts/vagrant-test, kproxy/vagrantlab: its commands go through Runner.run/out/ok)
VAGRANT_TOOLS = {"vagrant": "vagrant", "virsh": "libvirt-clients", "libvirtd": "libvirt-daemon-system",
                 "virtlogd": "libvirt-daemon-system", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
                 "parted": "parted", "mkfs.ext4": "e2fsprogs", "rsync": "rsync", "curl": "curl",
                 "/usr/sbin/apt-cacher-ng": "apt-cacher-ng", "ssh": "openssh-client", "git": "git",
                 "iptables-save": "iptables", "ip6tables-save": "iptables", "iptables": "iptables",
                 "ip6tables": "iptables", "nft": "nftables", "ip": "iproute2"}
ESSENTIAL = {"sh", "bash", "cat", "true", "hostname", "getent", "unshare", "nsenter", "taskset", "python3",
             "apt-get", "sleep", "kill", "tr", "script"}  # script: bsdutils (Essential), a TTY for `kubectl exec -it`


def setup_packages(test: bool = False) -> set[str]:
    text = SETUP.read_text()
    base = re.search(r"^pkgs=\(([^)]*)\)", text, re.M).group(1).split()
    extra = re.search(r"pkgs\+=\(([^)]*)\)", text).group(1).split() if test else []
    return set(base) | set(extra)


def test_setup_names_libpcap_for_scapy():
    assert "libpcap0.8" in setup_packages()


def test_every_tool_the_code_runs_has_its_package_in_setup():
    pkgs = setup_packages()
    missing = {tool: pkg for tool, pkg in TOOLS.items() if pkg not in pkgs}
    assert not missing, f"scripts/setup does not install: {missing}"
    test_pkgs = setup_packages(test=True)
    assert not {t: p for t, p in TEST_TOOLS.items() if p not in test_pkgs}


def _commands_run() -> set[str]:
    """Program names in subprocess argv literals: ["X", ...] and ["ip", "netns", "exec", ns, "X", ...]."""
    found = set()
    for path in [*(REPO / "kproxy").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        if path.name == "test_setup.py":
            continue
        text = path.read_text()
        for m in re.finditer(r"subprocess\.(?:run|Popen|check_output|check_call)\(\s*\[\s*\"([\w.-]+)\"", text):
            found.add(m.group(1))
        for m in re.finditer(r"\"ip\", \"netns\", \"exec\", [\w.\[\]\"]+, \"([\w.-]+)\"", text):
            found.add(m.group(1))
        for m in re.finditer(r"\"--\", \"([a-z][\w.-]+)\"", text):
            found.add(m.group(1))
    return found


def test_vagrant_test_tools_are_in_setup_vagrant():
    text = SETUP.read_text()
    vagrant_pkgs = set(re.search(r"^vagrant_pkgs=\(([^)]*)\)", text, re.M).group(1).split())
    # openssh-client and git: a host that runs vagrant has them (vagrant depends on the first)
    missing = {t: p for t, p in VAGRANT_TOOLS.items()
               if p not in vagrant_pkgs | setup_packages() | {"openssh-client", "git"}}
    assert not missing, f"scripts/setup --vagrant does not install: {missing}"
    used = set()
    for path in (REPO / "kproxy" / "vagrantlab").glob("*.py"):
        used |= set(re.findall(r"\b(?:r|self\.r|self)\.(?:run|out|ok)\(\s*\[\s*\"([\w./-]+)\"", path.read_text()))
    used |= {"virsh"} if "VIRSH = [\"virsh\"" in (REPO / "kproxy/vagrantlab/host.py").read_text() else set()
    unknown = used - set(VAGRANT_TOOLS) - ESSENTIAL - {"dpkg-query", "runuser", "systemctl"}
    assert not unknown, f"add these commands' Debian packages to scripts/setup --vagrant and VAGRANT_TOOLS: {sorted(unknown)}"


def test_no_external_command_is_unaccounted_for():
    unknown = _commands_run() - set(TOOLS) - set(TEST_TOOLS) - ESSENTIAL
    assert not unknown, f"add these commands' Debian packages to scripts/setup and to TOOLS: {sorted(unknown)}"


def test_scapy_compiles_the_announcer_filter():
    """Fails on a machine where scripts/setup did not install libpcap0.8."""
    from scapy.arch.common import compile_filter
    compile_filter("arp", iface="lo")


def test_setup_is_valid_bash():
    subprocess.run(["bash", "-n", str(SETUP)], check=True)


def test_setup_test_unpacks_kubectl_1_20_where_the_tests_look_and_never_installs_it():
    """Debian's kubernetes-client (kubectl 1.20, the old client of issue 14's tests) Conflicts with
    the machine's `kubectl` package over /usr/bin/kubectl: setup --test unpacks its .deb into a
    private directory, the one tests/integration/kubeclients.py runs, and fails loudly if it
    cannot; the machine's kubectl (not in Debian 12) must already be on PATH."""
    from tests.integration.kubeclients import OLD_KUBECTL, OLD_KUBECTL_DIR
    text = SETUP.read_text()
    assert f"OLD_KUBECTL_DIR={OLD_KUBECTL_DIR}\n" in text
    assert OLD_KUBECTL == OLD_KUBECTL_DIR / "usr/bin/kubectl" and '"$OLD_KUBECTL_DIR/usr/bin/kubectl" version' in text
    assert "apt-get download -q kubernetes-client" in text and 'dpkg-deb -x "$dl"/kubernetes-client_' in text
    assert "FAILED to download or unpack kubernetes-client" in text
    assert "kubernetes-client" not in setup_packages(test=True)  # apt-get install would replace /usr/bin/kubectl
    assert "if ! command -v kubectl >/dev/null; then" in text
