"""What a student sees on an nftables-mode node: the reference case rendered by kproxy, loaded
with the machine's `nft -f` as one transaction (in a namespace this test creates) and listed
with `nft list table ip kube-proxy`, equals upstream's listing in
../shared/reference/kube-proxy-nftables/kernel-list.txt."""
from __future__ import annotations

import re
import subprocess
import uuid

import pytest
import yaml

from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft.render import render
from tests.reference import reference

REFERENCE = reference("kube-proxy-nftables")
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")


def normalized(listing: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per block ("table", "set NAME", "map NAME", "chain NAME"): its lines in order, and its
    elements sorted (the kernel lists a hash set's elements in hash order, not insertion order).
    Blocks are keyed, so their order (the order they were declared in) does not count."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    block = "table"
    out[block] = ([], [])
    pending: str | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if not line or line == "}" or line.startswith("table "):
            continue
        if pending is not None:  # continuation of "elements = { ..."
            pending += " " + line
            if not pending.endswith("}"):
                continue
            line, pending = pending, None
        elif line.startswith("elements = {") and not line.endswith("}"):
            pending = line
            continue
        m = re.match(r"^(set|map|chain) (\S+) \{$", line)
        if m:
            block = f"{m.group(1)} {m.group(2)}"
            out[block] = ([], [])
        elif line.startswith("elements = {"):
            body = line[len("elements = {"):-1]
            out[block][1].extend(sorted(e.strip() for e in body.split(",")))
        else:
            out[block][0].append(line)
    return {k: (v[0], sorted(v[1])) for k, v in out.items()}


@pytest.fixture
def netns():
    name = f"kpt{uuid.uuid4().hex[:4]}-nft"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name])


def test_rendered_table_as_the_kernel_lists_it(netns):
    docs = [d for d in yaml.safe_load_all((REFERENCE / "manifests.yaml").read_text()) if d]
    cfg = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"])
    result = render([d for d in docs if d["kind"] == "Service"],
                    [d for d in docs if d["kind"] == "EndpointSlice"], cfg, ["172.30.0.0/16"])

    def run(*args, **kw):
        return subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True, text=True,
                              **kw)

    run("nft", "-f", "-", input=result.transaction)
    listed = run("nft", "list", "table", "ip", "kube-proxy").stdout
    ours, theirs = normalized(listed), normalized((REFERENCE / "kernel-list.txt").read_text())
    assert set(ours) == set(theirs)
    for block in theirs:
        assert ours[block] == theirs[block], block
    # nothing outside the namespace's own table was made
    assert run("nft", "list", "tables").stdout.split() == ["table", "ip", "kube-proxy"]


def test_every_own_golden_case_loads(netns):
    """kproxy's own cases (tests/unit/golden_nft) load as one transaction each, and the kernel
    then holds exactly the chains and sets rendered (names ending in "/udp/" included)."""
    from tests.unit.test_nft_features import CASES, GOLDEN, render_case

    def run(*args, **kw):
        return subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True, text=True,
                              **kw)

    for name in CASES:
        result = render_case(yaml.safe_load((GOLDEN / f"{name}.yaml").read_text()))
        run("nft", "-f", "-", input=result.transaction)
        listed = normalized(run("nft", "list", "table", "ip", "kube-proxy").stdout)
        want = {f"chain {c}" for c in result.table.chains} | {
            f"{'map' if s.is_map else 'set'} {s.name}" for s in result.table.sets.values()}
        assert set(listed) - {"table"} == want, name
        run("nft", "delete", "table", "ip", "kube-proxy")


def test_the_syncers_transactions_leave_exactly_the_render(netns):
    """proxy/nft/syncer.py against the real kernel: a first sync, a resync that keeps a live
    affinity set's entries, then a Service and its affinity gone: each one `nft -f`, and the
    kernel then holds exactly the rendered chains, sets and maps."""
    from kproxy.proxy.conntrack import Conntrack
    from kproxy.proxy.nft.syncer import NftSyncer
    from tests.unit.test_nft_syncer import eps, svc

    def run(argv, stdin=None):
        return subprocess.run(["ip", "netns", "exec", netns, *argv], input=stdin, capture_output=True, text=True)

    cfg = ProxyConfig(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])
    s = NftSyncer(cfg, ["10.96.0.0/12"], run=run, conntrack=Conntrack(run=lambda a: None))

    def objects(listing: str) -> set[str]:
        return set(re.findall(r"^\t((?:chain|set|map) \S+) \{", listing, re.M))

    def rendered(res) -> set[str]:
        return {f"chain {c}" for c in res.result.table.chains} | {
            f"{'map' if x.is_map else 'set'} {x.name}" for x in res.result.table.sets.values()}

    both = [svc("web", "10.96.0.10", affinity=True), svc("db", "10.96.0.11")]
    slices = [eps("web", "10.244.0.5", "10.244.0.6"), eps("db", "10.244.0.7")]
    res = s.sync(both, slices)
    assert objects(run(["nft", "list", "table", "ip", "kube-proxy"]).stdout) == rendered(res)
    aff = next(n for n in res.result.table.sets if n.startswith("affinity-"))
    run(["nft", "add", "element", "ip", "kube-proxy", aff, "{ 192.168.49.100 }"])  # a client's entry
    s.sync(both, slices, full=True)
    assert "192.168.49.100" in run(["nft", "list", "set", "ip", "kube-proxy", aff]).stdout  # kept
    res = s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5", "10.244.0.6")])
    listed = run(["nft", "list", "table", "ip", "kube-proxy"]).stdout
    stale = {f"chain {c}" for c in s.stale_chains}  # db's chains: flushed, deleted after the grace
    assert stale and all("default/db" in c for c in stale) and "affinity-" not in listed
    assert objects(listed) == rendered(res) | stale
    assert "default/db" not in "".join(b for b in listed.split("\n\n") if not b.strip().startswith("chain"))
    run(["nft", "delete", "table", "ip", "kube-proxy"])
    assert not s.canary_present()
    s.sync([svc("web", "10.96.0.10")], [eps("web", "10.244.0.5", "10.244.0.6")], full=True)
    assert objects(run(["nft", "list", "table", "ip", "kube-proxy"]).stdout) == rendered(res)


SWITCH = r"""
import sys, tempfile
from kproxy.config import LabConfig
from kproxy.context import Context
from kproxy.proxy.role import ProxyRole
from kproxy.store.sqlite import SqliteStore
d = tempfile.mkdtemp()
cfg = LabConfig(state_dir=d, sandbox=True, proxy_mode=sys.argv[1])
ctx = Context(cfg, SqliteStore(d + "/s.db"), node_ip="192.168.49.2")
ProxyRole(ctx).make_proxier()
"""


def test_switching_modes_removes_the_other_modes_rules(netns):
    """kube-proxy's cleanup: a node starting in nftables mode removes the iptables mode's
    KUBE-* chains and jumps, and one starting in iptables mode the `ip kube-proxy` table;
    other chains and tables stay."""
    import sys

    def run(*args, **kw):
        return subprocess.run(["ip", "netns", "exec", netns, *args], check=True, capture_output=True, text=True,
                              **kw)

    run("iptables-restore", "--noflush", input="*nat\n:KUBE-SERVICES - [0:0]\n:MINE - [0:0]\n"
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")
    run("nft", "add", "table", "ip", "mine")
    run(sys.executable, "-c", SWITCH, "nftables")
    saved = run("iptables-save").stdout
    assert "KUBE-" not in saved and ":MINE" in saved
    run("nft", "-f", "-", input="add table ip kube-proxy\n")
    run(sys.executable, "-c", SWITCH, "iptables")
    tables = run("nft", "list", "tables").stdout
    assert "table ip kube-proxy" not in tables and "table ip mine" in tables


def test_partial_syncs_leave_the_kernel_as_a_fresh_full_render(netns, monkeypatch):
    """Upstream's partial sync path against the real kernel: after a full sync of N generated
    Services, each of a series of changes (endpoints replaced, Services added and deleted,
    ClientIP affinity switched on, a Service left without endpoints) is one partial `nft -f`
    naming only that Service; `nft list table ip kube-proxy` then equals, block for block and
    rule for rule, what one fresh full render of the same objects lists in a second netns (the
    chains gone stale are there, empty, until their grace is over, then deleted). The first
    full sync goes in sections (40 Services each here) as a big one does."""
    import time

    from kproxy.bench import gen
    from kproxy.proxy.conntrack import Conntrack
    from kproxy.proxy.nft import syncer
    from kproxy.proxy.nft.syncer import STALE_CHAIN_GRACE, NftSyncer

    monkeypatch.setattr(syncer, "SECTION_SERVICES", 40)

    fresh = f"kpt{uuid.uuid4().hex[:4]}-nftf"
    subprocess.run(["ip", "netns", "add", fresh], check=True)

    def runner(ns):
        def run(argv, stdin=None):
            return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
        return run

    def listed(ns) -> dict:
        return normalized(runner(ns)(["nft", "list", "table", "ip", "kube-proxy"]).stdout)

    cfg = ProxyConfig(cluster_cidr="10.244.0.0/16", node_name="node-1", node_ips=["192.168.49.2"])
    try:
        services, slices = gen.cluster(150, seed=3)
        s = NftSyncer(cfg, ["10.100.0.0/16"], run=runner(netns), conntrack=Conntrack(run=lambda a: None))
        first = s.sync(services, slices)
        assert first.full and first.sync_failures == 0 and "flush table" not in first.transaction

        def affinity(i):
            services[i]["spec"]["sessionAffinity"] = "ClientIP"
            services[i]["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 600}}
            return services[i]["metadata"]["name"]

        def add(k):
            services.append(gen.service(1000 + k, prefix="added"))
            name = services[-1]["metadata"]["name"]
            slices.append(gen.endpoint_slice(name, [gen.endpoint_ip(5000 + k), gen.endpoint_ip(5001 + k)]))
            return name

        def delete(i):
            name = services.pop(i)["metadata"]["name"]
            slices[:] = [sl for sl in slices if sl["metadata"]["labels"]["kubernetes.io/service-name"] != name]
            return name

        def no_endpoints(i):
            name = services[i]["metadata"]["name"]
            for sl in slices:
                if sl["metadata"]["labels"]["kubernetes.io/service-name"] == name:
                    sl["endpoints"] = []
            return name

        steps = [lambda k=k: gen.change_endpoints(slices, k) for k in range(6)]
        steps += [lambda: add(0), lambda: add(1), lambda: delete(5), lambda: affinity(10), lambda: no_endpoints(20),
                  lambda: gen.change_endpoints(slices, 99)]
        for step in steps:
            name = step()
            res = s.sync(services, slices)
            assert res.applied and not res.full, name
            others = set(re.findall(r"default/([a-z0-9-]+)/tcp", res.transaction)) - {name}
            assert not others, (name, others)  # only the changed Service's chains and elements
        full = render(services, slices, cfg, ["10.100.0.0/16"])
        runner(fresh)(["nft", "-f", "-"], full.transaction)
        want = listed(fresh)
        got = listed(netns)
        assert s.stale_chains and {f"chain {c}" for c in s.stale_chains} == set(got) - set(want)
        assert all(got[f"chain {c}"] == ([], []) for c in s.stale_chains)
        for block in want:
            assert got[block] == want[block], block
        time.sleep(STALE_CHAIN_GRACE)
        deleted, refused = s.delete_stale_chains()
        assert deleted and not refused and not s.stale_chains
        assert listed(netns) == want
        drift = next(c for c in first.result.service_chains[f"default/{services[0]['metadata']['name']}"]
                     if c.startswith("service-"))
        assert runner(netns)(["nft", "add", "rule", "ip", "kube-proxy", drift, "drop"]).returncode == 0
        assert listed(netns) != want
        again = s.sync(services, slices, full=True)  # a resync of the loaded table, in sections too
        assert again.full and "flush table" not in again.transaction and listed(netns) == want
    finally:
        subprocess.run(["ip", "netns", "delete", fresh])
