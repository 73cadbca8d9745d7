"""kproxy's own nftables golden cases (tests/unit/golden_nft/*.yaml), for what the shared
reference case does not show: ITP Local, ETP Local with a local endpoint, affinity over several
endpoints, source ranges that let the node in, UDP, unnamed ports, terminating endpoints, no
local-traffic detector. Each file says where its expected text comes from (upstream's own test
text, or upstream proxier.go's templates); base.txt is upstream's baseRules, the fixed part.
They need nothing outside the repository.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kproxy.proxy.model import ProxyConfig
from kproxy.proxy.nft.render import render
from tests.unit.nft_compare import assert_same_transaction

GOLDEN = Path(__file__).parent / "golden_nft"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
BASE = {"cluster_cidr": "10.0.0.0/8", "node_name": "test-node", "node_ips": ["192.168.0.2"]}


def render_case(case: dict):
    cfg = ProxyConfig(**{**BASE, **(case.get("config") or {})})
    docs = case["manifests"]
    return render([d for d in docs if d["kind"] == "Service"], [d for d in docs if d["kind"] == "EndpointSlice"],
                  cfg, ["172.30.0.0/16"])


@pytest.mark.parametrize("name", CASES)
def test_golden_case(name):
    case = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
    expected = (GOLDEN / "base.txt").read_text() + case["expected"]
    assert_same_transaction(expected, render_case(case).text)


def test_cases_exist():
    assert len(CASES) >= 5


def test_masquerade_all_marks_every_clusterip_packet():
    """--masquerade-all: the ClusterIP rule masquerades whatever the source (no detector test)."""
    case = yaml.safe_load((GOLDEN / "upstream_sync_repeated_final.yaml").read_text())
    case["config"] = {"masquerade_all": True}
    rules = render_case(case).table.chains["service-ULMVA6XW-ns1/svc1/tcp/p80"].rules
    assert rules[0] == "ip daddr 172.30.0.41 jump mark-for-masquerade"


def test_no_service_cidr_no_unallocated_drop():
    case = yaml.safe_load((GOLDEN / "itp_local.yaml").read_text())
    cfg = ProxyConfig(**BASE)
    docs = case["manifests"]
    result = render([d for d in docs if d["kind"] == "Service"], [], cfg)
    assert result.table.chains["cluster-ips-check"].rules == [
        'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"']


def test_element_shared_by_two_ports_is_one_element():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "ns"},
           "spec": {"clusterIP": "172.30.0.9", "ports": [{"name": "x", "port": 80}, {"name": "y", "port": 81}]}}
    out = render([svc], [], ProxyConfig(**BASE)).text
    assert out.count("add element ip kube-proxy cluster-ips { 172.30.0.9 }") == 1


# -- the command -------------------------------------------------------------------------------

def _manifest_file(tmp_path, name="itp_local"):
    case = yaml.safe_load((GOLDEN / f"{name}.yaml").read_text())
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(case["manifests"]))
    return f


def test_rules_render_nftables_command(tmp_path):
    from click.testing import CliRunner

    from kproxy import cli
    f = _manifest_file(tmp_path)
    args = ["rules", "--render", "-f", str(f), "--cluster-cidr", "10.0.0.0/8", "--node-name", "test-node",
            "--node-ip", "192.168.0.2", "--service-cidr", "172.30.0.0/16"]
    nft = CliRunner().invoke(cli.main, [*args, "--proxy-mode", "nftables"])
    assert nft.exit_code == 0, nft.output
    case = yaml.safe_load((GOLDEN / "itp_local.yaml").read_text())
    assert_same_transaction((GOLDEN / "base.txt").read_text() + case["expected"], nft.stdout)
    ipt = CliRunner().invoke(cli.main, args)  # iptables stays the default
    assert ipt.exit_code == 0 and ipt.stdout.startswith("*filter")


def test_rules_render_rejects_a_bad_service_cidr(tmp_path):
    from click.testing import CliRunner

    from kproxy import cli
    res = CliRunner().invoke(cli.main, ["rules", "--render", "--proxy-mode", "nftables", "-f",
                                        str(_manifest_file(tmp_path)), "--service-cidr", "172.30.0.0/33"])
    assert res.exit_code != 0 and '--service-cidr "172.30.0.0/33"' in res.output
    assert "Traceback" not in res.output


def test_rules_render_nftables_keeps_the_admission_gate(tmp_path):
    from click.testing import CliRunner

    from kproxy import cli
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\n"
                 "spec: {clusterIP: 172.30.0.9, ports: [{port: 80}]}\n")
    res = CliRunner().invoke(cli.main, ["rules", "--render", "--proxy-mode", "nftables", "-f", str(f)])
    assert res.exit_code == 1 and "Bad_Name" in res.output and "cluster-ips { 172.30.0.9 }" not in res.output


def test_live_rules_read_the_labs_own_mode(tmp_path):
    """Live, `rules` shows what the lab's mode programs (tests/integration/test_nft_mode.py);
    without a lab, --proxy-mode nftables is refused like any live `rules`."""
    from click.testing import CliRunner

    from kproxy import cli
    res = CliRunner().invoke(cli.main, ["rules", "--proxy-mode", "nftables", "--state-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no lab in" in res.output
