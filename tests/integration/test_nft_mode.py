"""A lab in nftables mode (`kproxy up --proxy-mode nftables`): the same Services, the same
packets, programmed as kube-proxy's `table ip kube-proxy` instead of iptables rules.

The scenarios of test_single_host.py and test_fidelity.py that only look at packets are reused
as they are (imported: pytest runs them here against this module's lab); the ones that also read
iptables-save have their nftables counterpart below, on the same manifests.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from .conftest import chains_of, hits
from .test_fidelity import AFFINITY, BACKENDS, ELSEWHERE, NODE_IP, svc
from .test_fidelity import test_external_traffic_policy_local_keeps_the_client_ip  # noqa: F401
from .test_fidelity import test_udp_client_follows_a_replaced_pod  # noqa: F401
from .test_single_host import EMPTY, WEB, cluster_ip, spread_report
from .test_single_host import test_clusterip_spreads_from_the_node  # noqa: F401
from .test_single_host import test_clusterip_spreads_over_three_pods_from_a_pod  # noqa: F401
from .test_single_host import test_nodeport_answers_outside_via_node_ip  # noqa: F401
from .test_single_host import test_pod_reaches_itself_through_its_service  # noqa: F401

LAB_UP_ARGS = ("--proxy-mode", "nftables", "--iptables-sync-period", "2")


def nft_list(lab) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.cfg.naming.node_netns, "nft", "list", "table", "ip",
                           "kube-proxy"], capture_output=True, text=True).stdout


def programmed_endpoints(lab, port: str = "default/web/tcp/http") -> set[str]:
    """The endpoints the node's service chain for `port` sends to, as `nft list` shows them."""
    return set(re.findall(rf"goto endpoint-\w+-{re.escape(port)}__([0-9.]+)/", nft_list(lab)))


@pytest.fixture(scope="module")
def web(lab):
    """test_single_host's `web` (three nginx pods behind `web` and `web-np`), with fidelity's
    backends and their `client` pod, in this mode."""
    lab.apply(WEB % {"replicas": 3})
    lab.apply(BACKENDS)
    pods = lab.wait_for(lambda: len(lab.ready_pods("web")) == 3 and lab.ready_pods("web"))
    lab.wait_for(lambda: len(lab.ready_pods("be")) == 3)
    lab.wait_for(lambda: programmed_endpoints(lab) == {p["status"]["podIP"] for p in pods}, timeout=10)
    return {p["metadata"]["name"] for p in pods}


@pytest.fixture(scope="module")
def backends(lab, web):
    return {p["metadata"]["name"] for p in lab.ready_pods("be")}


def test_the_node_holds_the_nftables_table_and_no_iptables_rules(lab, web):
    saved = lab.node_save()
    assert not chains_of(saved) and "KUBE-" not in saved
    listed = nft_list(lab)
    rules = lab.kproxy("rules", "svc/web").stdout
    chains = set(re.findall(r"^\tchain (\S+) \{", rules, re.M))
    assert chains and all("default/web/" in c for c in chains)  # only web's own chains
    assert chains <= set(re.findall(r"^\tchain (\S+) \{", listed, re.M))
    assert re.search(rf"{re.escape(cluster_ip(lab, 'web'))} \. tcp \. 80 : goto service-\w+-default/web/tcp/http",
                     rules)
    assert "numgen random mod 3 vmap" in rules
    whole = lab.kproxy("rules").stdout  # what `nft list table ip kube-proxy` prints
    assert whole.startswith("table ip kube-proxy {") and set(re.findall(r"^\t(?:chain|set|map) \S+", whole, re.M)) \
        == set(re.findall(r"^\t(?:chain|set|map) \S+", listed, re.M))
    other = lab.kproxy("rules", "--proxy-mode", "iptables", check=False)
    assert other.returncode == 1 and "runs in nftables mode" in other.stderr


def test_healthz_metrics_and_status_in_this_mode(lab, web):
    res = lab.exec("outside", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{NODE_IP}:10256/healthz")
    assert res.stdout == "200", res
    m = lab.exec("node/node-1", "curl", "-s", "http://127.0.0.1:10249/metrics", check=True).stdout
    assert int(re.search(r"^kubeproxy_sync_proxy_rules_duration_seconds_count (\d+)", m, re.M).group(1)) >= 2
    assert re.search(r"^kubeproxy_network_programming_duration_seconds_count [1-9]", m, re.M)
    assert re.search(r"^last rules sync: \S+ \((full|partial), ", lab.kproxy("status").stdout, re.M)  # either kind


def test_service_without_endpoints_refuses_at_once(lab, web):
    lab.apply(EMPTY)
    ip = cluster_ip(lab, "nobody")
    start = time.monotonic()
    res = lab.exec("client", "curl", "-s", "--max-time", "5", f"http://{ip}/")
    assert res.returncode == 7, res  # refused (reject-chain), not a timeout (28)
    assert time.monotonic() - start < 2.5
    assert re.search(rf'{re.escape(ip)} \. tcp \. 80 comment "default/nobody" : goto reject-chain', nft_list(lab))


def test_client_ip_affinity_sticks(lab, backends):
    lab.apply(AFFINITY % "ClientIP")
    url = f"http://{svc(lab, 'sticky')['spec']['clusterIP']}/"
    answers = hits(lab, "client", url, 15)
    time.sleep(2.5)  # a periodic full resync (2 s) keeps the affinity sets and their entries
    answers += hits(lab, "client", url, 5)
    assert len(set(answers)) == 1 and answers[0] in backends, answers
    assert "update @affinity-" in lab.kproxy("rules", "svc/sticky").stdout
    lab.apply(AFFINITY % "None")
    assert len(set(hits(lab, "client", url, 30))) >= 2
    assert "affinity-" not in lab.kproxy("rules", "svc/sticky").stdout


def test_external_traffic_policy_local_drops_without_local_endpoints(lab, backends):
    lab.apply(ELSEWHERE % lab.ready_pods("be")[0]["status"]["podIP"])
    port = svc(lab, "elsewhere")["spec"]["ports"][0]["nodePort"]
    res = lab.exec("outside", "curl", "-s", "--max-time", "2", f"http://{NODE_IP}:{port}/")
    assert res.returncode == 28, res  # dropped, not refused: the node has no local endpoint
    rules = lab.kproxy("rules", "svc/elsewhere").stdout
    assert re.search(rf'tcp \. {port} comment "default/elsewhere[^"]*" : drop', rules), rules
    ip = svc(lab, "elsewhere")["spec"]["clusterIP"]
    assert hits(lab, "client", f"http://{ip}/", 3)[0] in backends  # the other node's endpoint serves


def test_the_table_deleted_by_hand_comes_back(lab, web):
    node = lab.cfg.naming.node_netns
    # delete and look in one go: a periodic resync may restore it within milliseconds
    start = time.monotonic()
    tables = subprocess.run(["ip", "netns", "exec", node, "sh", "-c",
                             "nft delete table ip kube-proxy && nft list tables"],
                            check=True, capture_output=True, text=True).stdout
    assert "table ip kube-proxy" not in tables
    lab.wait_for(lambda: programmed_endpoints(lab), timeout=10, interval=0.1)
    assert time.monotonic() - start <= 2 * 2 + 1  # within the 2 s sync period (plus one loop)
    answers = hits(lab, "client", f"http://{cluster_ip(lab, 'web')}/", 30)
    assert set(answers) <= web and len(set(answers)) >= 2, spread_report(answers)


def test_partial_syncs_metrics_and_stale_chains_in_the_lab(lab, web):
    """A pod going away is a partial sync (status and /metrics say so, upstream's nftables_*
    counters are there and no iptables_* ones); its endpoint chain is flushed at once and
    deleted after the grace; the Deployment is scaled back for the tests after this one."""
    before = programmed_endpoints(lab)
    lab.apply(WEB % {"replicas": 2})
    lab.wait_for(lambda: len(programmed_endpoints(lab)) == 2, timeout=15, interval=0.1)
    [gone] = before - programmed_endpoints(lab)
    lab.wait_for(lambda: f"__{gone}/" not in nft_list(lab), timeout=10, interval=0.2)  # deleted after the grace
    m = lab.exec("node/node-1", "curl", "-s", "http://127.0.0.1:10249/metrics", check=True).stdout
    assert int(re.search(r"^kubeproxy_sync_partial_proxy_rules_duration_seconds_count (\d+)", m, re.M).group(1)) >= 1
    assert re.search(r"^kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0$", m, re.M), m
    assert re.search(r"^kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total 0$", m, re.M)
    assert "kubeproxy_sync_proxy_rules_iptables" not in m
    status = lab.kproxy("status").stdout
    assert re.search(r"^last (rules|partial) sync: \S+ \((partial, )?\d+ Services written", status, re.M), status
    assert "partial" in status
    lab.apply(WEB % {"replicas": 3})
    lab.wait_for(lambda: len(lab.ready_pods("web")) == 3, timeout=60)
    lab.wait_for(lambda: len(programmed_endpoints(lab)) == 3, timeout=15)
