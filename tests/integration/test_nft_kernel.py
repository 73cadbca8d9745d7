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
