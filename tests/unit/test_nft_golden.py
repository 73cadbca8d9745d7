"""The upstream nftables reference case: TestOverallNFTablesRules' inputs must render line for line.

Inputs and expected text live in ../shared/reference/kube-proxy-nftables (see its README): the
two texts must hold the same lines (blank lines and `#` comments ignored), and each chain's
rules must come in the same order. The case uses the same manifests as the iptables one.
"""

from __future__ import annotations

import collections
import re

import pytest
import yaml
from click.testing import CliRunner

from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft import names
from kproxy.proxy.nft.render import render
from tests.reference import reference
from tests.unit.nft_compare import assert_same_transaction, lines

REFERENCE = reference("kube-proxy-nftables")
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")

CLI_ARGS = ["--cluster-cidr", "10.0.0.0/8", "--service-cidr", "172.30.0.0/16", "--node-name", "test-node",
            "--node-ip", "192.168.0.2", "--service-node-port-range", "3000-32767"]


def _objects() -> tuple[list[dict], list[dict]]:
    docs = [d for d in yaml.safe_load_all((REFERENCE / "manifests.yaml").read_text()) if d]
    return [d for d in docs if d["kind"] == "Service"], [d for d in docs if d["kind"] == "EndpointSlice"]


def _render():
    services, slices = _objects()
    cfg = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"])
    return render(services, slices, cfg, ["172.30.0.0/16"])


@pytest.fixture(scope="module")
def expected() -> str:
    return (REFERENCE / "expected-nft.txt").read_text()


def test_render_matches_upstream_line_for_line(expected):
    assert_same_transaction(expected, _render().text)


def test_rules_render_command_prints_the_same(expected):
    from kproxy import cli
    res = CliRunner().invoke(cli.main, ["rules", "--render", "--proxy-mode", "nftables",
                                        "-f", str(REFERENCE / "manifests.yaml"), *CLI_ARGS])
    assert res.exit_code == 0, res.output
    assert_same_transaction(expected, res.stdout)
    assert res.stdout == _render().text


def test_output_is_in_the_test_fakes_dump_order():
    """Table; each chain (by name) then its rules; each set, then each map (by name) then its elements."""
    out = lines(_render().text)
    assert out[0] == 'add table ip kube-proxy { comment "rules for kube-proxy" ; }'
    kinds = [ln.split()[1] for ln in out[1:]]
    first_set = kinds.index("set")
    assert set(kinds[:first_set]) == {"chain", "rule"}
    chains = [ln.split()[4] for ln in out if ln.startswith("add chain ")]
    assert chains == sorted(chains)
    decls = [(ln.split()[1], ln.split()[4]) for ln in out if ln.startswith(("add set ", "add map "))]
    assert decls == sorted(decls, key=lambda d: (d[0] == "map", d[1]))
    assert not any(ln.startswith(("flush", "delete")) for ln in out)


def test_transaction_declares_everything_before_use():
    """nft -f refuses a rule naming a chain or set it has not seen yet."""
    declared: set[str] = set()
    text = _render().transaction
    assert collections.Counter(lines(text)) == collections.Counter(lines(_render().text))
    for ln in lines(text):
        words = ln.split()
        if words[1] in ("chain", "set", "map"):
            declared.add(words[4])
            continue
        for ref in re.findall(r"(?:goto|jump) (\S+)|@(\S+)", ln):
            name = (ref[0] or ref[1]).rstrip(",}")
            assert name in declared, (name, ln)


def test_names_hash_as_upstream():
    assert names.service_port_base("ns1", "svc1", "TCP", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert names.endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80) == \
        "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    long = names.hash_and_truncate("x" * 300)
    assert len(long) == 240 and long.endswith("...")


def test_service_chains_index():
    chains = _render().service_chains
    assert chains["ns5/svc5"] == {
        "service-HVFWP5L3-ns5/svc5/tcp/p80", "external-HVFWP5L3-ns5/svc5/tcp/p80",
        "firewall-HVFWP5L3-ns5/svc5/tcp/p80", "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80",
    }
    assert chains["ns6/svc6"] == set()  # no endpoints: only a no-endpoint-services element
