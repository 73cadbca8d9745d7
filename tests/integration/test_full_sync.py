"""A Proxier's first full sync of many Services goes into the kernel in sections (several
commits in one iptables-restore, jumps and canaries included): the kernel must end up holding
exactly what one plain restore of render.render()'s text plus kube-proxy's jumps leaves, rule
for rule and in order; and later resyncs and partial syncs keep it so. In a netns this test
creates (no interfaces but lo), never the root namespace."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest

from kproxy.bench import gen
from kproxy.proxy.applier import CANARY, JUMPS, TABLES
from kproxy.proxy.render import ProxyConfig, render

CFG = dict(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])
N = 120


def saved(netns: str) -> str:
    """iptables-save without its comment lines and counters."""
    out = subprocess.run(["ip", "netns", "exec", netns, "iptables-save"], check=True, capture_output=True,
                         text=True).stdout
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#"))


@pytest.fixture
def two_netns():
    names = [f"kpt{uuid.uuid4().hex[:4]}-{what}" for what in ("sync", "plain")]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name])


# Runs inside the netns: a real Proxier (real applier, real streamed restore) on generated objects.
SYNC = """
import json, sys
from kproxy.bench import gen
from kproxy.proxy.proxier import Proxier
from kproxy.proxy.render import ProxyConfig
args = json.loads(sys.argv[1])
services, slices = gen.cluster(args["n"], seed=args["seed"])
p = Proxier(ProxyConfig(**args["cfg"]))
out = []
res = p.sync(services, slices, full=True)
out.append({"full": res.full, "sections": res.result.text.count("COMMIT"), "listing": p.last_listing})
for step in args["changes"]:
    gen.change_endpoints(slices, step)
    res = p.sync(services, slices)
    out.append({"full": res.full, "written": res.services_written})
if args["resync"]:
    res = p.sync(services, slices, full=True)
    out.append({"full": res.full, "sections": res.result.text.count("COMMIT")})
print(json.dumps(out))
"""


def expected(netns: str, changes: list[int]) -> str:
    """One plain restore of the render of the same objects, then kube-proxy's jumps and canaries."""
    services, slices = gen.cluster(N, seed=3)
    for step in changes:
        gen.change_endpoints(slices, step)
    run = lambda *args, **kw: subprocess.run(["ip", "netns", "exec", netns, *args], check=True,  # noqa: E731
                                             capture_output=True, text=True, **kw)
    run("iptables-restore", "--noflush", input=render(services, slices, ProxyConfig(**CFG)).text)
    for table in TABLES:
        run("iptables", "-t", table, "-N", CANARY)
    for table, chain, args in reversed(JUMPS):
        run("iptables", "-t", table, "-I", chain, *args)
    return saved(netns)


def run_proxier(netns: str, changes: list[int], resync: bool) -> list[dict]:
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SYNC,
                          json.dumps({"n": N, "seed": 3, "cfg": CFG, "changes": changes, "resync": resync})],
                         check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def test_a_first_sync_in_sections_leaves_what_one_restore_would(two_netns):
    ours, plain = two_netns
    steps = run_proxier(ours, [], resync=False)
    assert steps[0]["full"] and steps[0]["sections"] > 5 and not steps[0]["listing"]
    assert saved(ours) == expected(plain, [])


def test_partial_syncs_and_a_resync_after_it_keep_the_kernel_exact(two_netns):
    ours, plain = two_netns
    steps = run_proxier(ours, [0, 1, 2], resync=True)
    assert [s["full"] for s in steps] == [True, False, False, False, True]
    assert all(s["written"] == 1 for s in steps[1:4])
    assert steps[-1]["sections"] == 2  # a loaded table: one atomic commit per table (jumps there)
    assert saved(ours) == expected(plain, [0, 1, 2])
