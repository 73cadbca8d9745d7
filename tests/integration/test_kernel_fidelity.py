"""What a student sees: the reference case rendered by kproxy, loaded into a real kernel with the
machine's iptables-restore (in a namespace this test creates) and dumped with iptables-save,
equals the upstream kube-proxy node's dump in ../shared/reference/kube-proxy-iptables/."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from kproxy.proxy.applier import CANARY, JUMPS, TABLES, with_listing
from kproxy.proxy.render import ProxyConfig, render

REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/kube-proxy-iptables"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")


def normalized(saved: str) -> dict[str, list[str]]:
    """Declarations and rules per table, without comments and counters, sorted."""
    out: dict[str, list[str]] = {}
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out[table] = []
        elif table and line.startswith((":", "-A")):
            out[table].append(re.sub(r" \[\d+:\d+\]$", "", line))
    return {t: sorted(lines) for t, lines in out.items()}


@pytest.fixture
def netns():
    name = f"kpt{uuid.uuid4().hex[:4]}-fidelity"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name])


def test_rendered_rules_as_the_kernel_prints_them(netns):
    docs = [d for d in yaml.safe_load_all((REFERENCE / "manifests.yaml").read_text()) if d]
    cfg = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"],
                      conntrack_tcp_liberal=True)  # the reference dump was loaded without nfacct rules
    text = render([d for d in docs if d["kind"] == "Service"],
                  [d for d in docs if d["kind"] == "EndpointSlice"], cfg).text
    run = lambda *args, **kw: subprocess.run(["ip", "netns", "exec", netns, *args], check=True,  # noqa: E731
                                             capture_output=True, text=True, **kw)
    run("iptables-restore", "--noflush", input=text)
    for table in TABLES:  # what kproxy's applier adds around the restore, as kube-proxy does
        run("iptables", "-t", table, "-N", CANARY)
    for table, chain, args in reversed(JUMPS):
        run("iptables", "-t", table, "-I", chain, *args)
    ours = normalized(run("iptables-save").stdout)
    theirs = normalized((REFERENCE / "kernel-save.txt").read_text())
    assert ours == theirs


def test_listing_restore_and_the_proxier_leave_the_same_ruleset(netns):
    """The applier's listing line (`-S` after each table header, issue 7) changes nothing in
    what the kernel holds: the reference case loaded with it, and through a real Proxier full
    sync (streamed, jumps and canaries added), dumps the same as the plain restore."""
    docs = [d for d in yaml.safe_load_all((REFERENCE / "manifests.yaml").read_text()) if d]
    cfg = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"],
                      conntrack_tcp_liberal=True)
    services = [d for d in docs if d["kind"] == "Service"]
    slices = [d for d in docs if d["kind"] == "EndpointSlice"]
    text = render(services, slices, cfg).text
    run = lambda *args, **kw: subprocess.run(["ip", "netns", "exec", netns, *args], check=True,  # noqa: E731
                                             capture_output=True, text=True, **kw)
    run("iptables-restore", "--noflush", input=text)
    plain = normalized(run("iptables-save").stdout)
    run("iptables-restore", input="*filter\nCOMMIT\n*nat\nCOMMIT\n")  # flush both tables
    for table in ("filter", "nat"):
        run("iptables", "-t", table, "-X")
    run("iptables-restore", "--noflush", input=with_listing(text))
    assert normalized(run("iptables-save").stdout) == plain
    # the Proxier's own path, in the same netns, from a fresh table again
    run("iptables-restore", input="*filter\nCOMMIT\n*nat\nCOMMIT\n")
    for table in ("filter", "nat"):
        run("iptables", "-t", table, "-X")
    code = ("import sys, yaml; from kproxy.proxy.proxier import Proxier; from kproxy.proxy.render import ProxyConfig\n"
            "docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n"
            "p = Proxier(ProxyConfig(cluster_cidr='10.0.0.0/8', node_name='test-node', node_ips=['192.168.0.2'],"
            " conntrack_tcp_liberal=True))\n"
            "p.sync([d for d in docs if d['kind'] == 'Service'], [d for d in docs if d['kind'] == 'EndpointSlice'],"
            " full=True)\n")
    run(sys.executable, "-c", code, str(REFERENCE / "manifests.yaml"))
    ours = normalized(run("iptables-save").stdout)
    theirs = normalized((REFERENCE / "kernel-save.txt").read_text())
    assert ours == theirs
