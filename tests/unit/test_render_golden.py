"""The upstream reference case: TestOverallIPTablesRules' services must render rule for rule.

Inputs and expected text live in /work/shared/reference/kube-proxy-iptables (see its
README); comparison is after upstream's own sort, as upstream's test does.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import yaml

from kproxy.proxy.render import ProxyConfig, render
from kproxy.proxy.sorting import parse, sort_restore_text

REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/kube-proxy-iptables"

pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")

NFACCT_INVALID = " -m nfacct --nfacct-name ct_state_invalid_dropped_pkts"


def assert_same_rules(expected: str, got: str) -> None:
    """Compare sorted restore texts, showing a unified diff on failure."""
    want, have = sort_restore_text(expected), sort_restore_text(got)
    if want != have:
        diff = "".join(difflib.unified_diff(want.splitlines(True), have.splitlines(True), "expected", "rendered"))
        pytest.fail(f"rendered rules differ from the expected text:\n{diff}")


def _objects() -> tuple[list[dict], list[dict]]:
    docs = [d for d in yaml.safe_load_all((REFERENCE / "manifests.yaml").read_text()) if d]
    return [d for d in docs if d["kind"] == "Service"], [d for d in docs if d["kind"] == "EndpointSlice"]


def _render(**overrides):
    services, slices = _objects()
    cfg = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"], **overrides)
    return render(services, slices, cfg)


@pytest.fixture(scope="module")
def expected() -> str:
    return (REFERENCE / "expected-restore.txt").read_text()


def _without_nfacct_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if "-m nfacct" not in line)


def test_with_nfacct_matches_upstream_exactly(expected):
    assert_same_rules(expected, _render(nfacct=True).text)


def test_without_nfacct_keeps_invalid_drop_like_upstream(expected):
    """Without the counters upstream drops the localhost NodePort rules but keeps the
    INVALID drop, just without its nfacct match (TestDropInvalidRule)."""
    text = "".join(
        line.replace(NFACCT_INVALID, "")
        for line in expected.splitlines(True)
        if "localhost_nps_accepted_pkts" not in line
    )
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n" in text
    assert_same_rules(text, _render().text)


def test_without_nfacct_and_tcp_liberal_is_expected_minus_both_nfacct_lines(expected):
    """The text kernel-save.txt was loaded from: both nfacct rules simply gone."""
    assert_same_rules(_without_nfacct_lines(expected), _render(conntrack_tcp_liberal=True).text)


def test_expected_text_is_already_in_upstream_sort_order(expected):
    assert sort_restore_text(expected) == expected


def test_declared_chains_match_expected(expected):
    result = _render(nfacct=True)
    tables = {t.name: t for t in parse(expected)}
    assert set(result.filter_chains) == {c.name for c in tables["filter"].chains}
    assert set(result.nat_chains) == {c.name for c in tables["nat"].chains}
    assert result.deleted_chains == []


def test_service_chains_index():
    chains = _render().service_chains
    assert chains["ns5/svc5"] == {
        "KUBE-SVC-NUKIZ6OKUXPJNT4C",
        "KUBE-EXT-NUKIZ6OKUXPJNT4C",
        "KUBE-FW-NUKIZ6OKUXPJNT4C",
        "KUBE-SEP-I77PXRDZVX7PMWMN",
    }
    assert chains["ns4/svc4"] == {
        "KUBE-SVC-4SW47YFZTEDKD3PK",
        "KUBE-EXT-4SW47YFZTEDKD3PK",
        "KUBE-SEP-UKSFD7AGPMPPLUHC",
        "KUBE-SEP-C6EBXVWJJZMIWKLZ",
    }
    assert chains["ns6/svc6"] == set()  # no endpoints: only a filter REJECT rule
    fixed = {"KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"}
    assert set().union(*chains.values()) == set(_render().nat_chains) - fixed


def test_chain_names_match_what_the_kernel_holds():
    """kernel-save.txt is the same ruleset loaded on a real kernel: same KUBE-* chains."""
    saved = (REFERENCE / "kernel-save.txt").read_text()
    result = _render()
    for table, ours in (("filter", result.filter_chains), ("nat", result.nat_chains)):
        body = saved.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
        kernel = set(re.findall(r"^:(KUBE-\S+) ", body, re.M)) - {"KUBE-PROXY-CANARY"}
        assert kernel == set(ours), table
