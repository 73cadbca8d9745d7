"""kproxy trace in nftables mode, parsed from real captured text (tests/unit/trace_corpus/nft:
`nft monitor trace` of a sandbox lab's node (nftables 1.0.6, kernel 6.x), its `nft list table ip
kube-proxy` and conntrack -L): a pod to a 3-endpoint ClusterIP, outside to a NodePort (with the
masqueraded reply), a Service without endpoints, an ETP Local NodePort without a local endpoint,
and a pod reaching itself. Same shapes as the iptables mode's (tests/unit/test_trace.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kproxy import nftview as nv
from kproxy import trace as tr
from kproxy.traceparse import parse_conntrack, parse_nft_monitor, walk

CORPUS = Path(__file__).parent / "trace_corpus" / "nft"
PODS = {"10.244.0.3": {"name": "client", "namespace": "default", "node": "node-1"},
        "10.244.0.4": {"name": "solo-848c888b6c-stjpg", "namespace": "default", "node": "node-1"},
        "10.244.0.5": {"name": "web-5bc4bc5c44-7bl9v", "namespace": "default", "node": "node-1"},
        "10.244.0.6": {"name": "web-5bc4bc5c44-j4qbs", "namespace": "default", "node": "node-1"},
        "10.244.0.7": {"name": "web-5bc4bc5c44-qqssh", "namespace": "default", "node": "node-1"}}
WEB = "service-SUSTUHLJ-default/web/tcp/http"


def captured(name: str):
    text = (CORPUS / f"{name}.monitor").read_text()
    m = re.match(r"# port (\d+) table (\S+) answer (.*)", text)
    return text, int(m.group(1)), m.group(2), m.group(3)


def listing() -> nv.Listing:
    return nv.parse_listing((CORPUS / "node.list").read_text())


def first_request(name: str):
    text, port, table, _ = captured(name)
    packets = parse_nft_monitor(text, port, table)
    request = next(p for p in packets if p.first["SPORT"] == str(port))
    return walk(request, listing(), PODS)


def chains_met(steps) -> list[str]:
    return [s["chain"] for s in steps if not s.get("not_met")]


def test_monitor_splits_packets_at_our_trace_table_and_keeps_to_the_flow():
    text, port, table, _ = captured("clusterip")
    packets = parse_nft_monitor(text, port, table)
    assert len(packets) == 12  # every packet of one HTTP exchange, each marked by our rule
    assert packets[0].first["SPORT"] == str(port) and packets[0].hops[0].flags == ["SYN"]
    assert packets[1].first["DPORT"] == str(port) and packets[1].hops[0].flags == ["SYN", "ACK"]
    # our own table is not part of the walk; every hop is kube-proxy's base chain
    assert all(h.fields.get("HOOK") in nv.BASE_TYPES for p in packets for h in p.hops[1:])
    assert parse_nft_monitor(text, port, "kpcc78-trace-other") == []  # another trace's table: not ours


def test_clusterip_walk_names_the_map_element_service_chain_numgen_endpoint_and_pod():
    steps, decided = first_request("clusterip")
    met = chains_met(steps)
    assert met[:4] == ["filter-prerouting-pre-dnat", "filter-prerouting-pre-dnat", "nat-prerouting", "services"]
    lookup = next(s for s in steps if s["chain"] == "services")
    assert lookup["element"] == f"10.111.63.65 . tcp . 80 : goto {WEB}"
    assert "cluster IP element [10.111.63.65 tcp 80] of map service-ips" in lookup["explanation"]
    assert lookup["verdict"] == f"GOTO:{WEB}" and lookup["table"] == "nat"
    numgen = next(s for s in steps if s["chain"] == WEB)
    assert numgen["rule"].startswith("numgen random mod 3 vmap")
    assert decided["choice"]["numgen"] == {"mod": 3, "value": 2} and decided["choice"]["probability"] == pytest.approx(1 / 3)
    dnat = next(s for s in steps if "dnat to" in s["rule"])
    assert dnat["chain"] == numgen["verdict"].partition(":")[2] and dnat["chain"].startswith("endpoint-")
    assert decided["dnat"] == "10.244.0.7:8080" and decided["pod"]["name"] == "web-5bc4bc5c44-qqssh"
    assert "pod web-5bc4bc5c44-qqssh on node-1" in dnat["explanation"]
    assert not decided["masquerade"] and decided["mark_reason"] is None
    assert met.index("services") < met.index(WEB) < met.index(dnat["chain"])


def test_nodeport_walk_shows_external_chain_mark_and_masquerade_and_the_reply():
    steps, decided = first_request("nodeport")
    met = chains_met(steps)
    ext = "external-KOAMWL4R-default/web-np/tcp/"
    for chain in ("services", ext, "mark-for-masquerade", "masquerading"):
        assert chain in met, met
    lookup = next(s for s in steps if s["chain"] == "services")
    assert lookup["element"] == f"tcp . 31301 : goto {ext}" and "NodePort element [tcp 31301]" in lookup["explanation"]
    assert decided["masquerade"] and "externalTrafficPolicy Cluster" in decided["mark_reason"]
    assert any(s["rule"] == "masquerade fully-random" for s in steps)
    assert decided["pod"]["name"] == "web-5bc4bc5c44-qqssh"
    text, port, table, _ = captured("nodeport")
    report = tr.node_report("node-1", "n", text, port, table, listing(), PODS, [], "nftables")
    # the reply goes to the masqueraded address and port: still traced (ct original proto-src)
    assert report["reply"]["packet"].startswith("10.244.0.7:8080 -> 10.244.0.1:")


def test_reject_walk_names_the_no_endpoint_element_and_the_reject():
    steps, decided = first_request("reject")
    last = steps[-1]
    assert last["chain"] == "reject-chain" and last["verdict"] == "REJECT"
    check = next(s for s in steps if s["chain"] == "service-endpoints-check")
    assert check["element"] == '10.104.152.124 . tcp . 80 comment "default/nobody" : goto reject-chain'
    assert decided["verdict"] == "REJECT" and "default/nobody has no endpoints" in decided["refusal"]
    assert decided["dnat"] is None


def test_etp_local_walk_shows_the_unmatched_external_chain_and_the_drop():
    steps, decided = first_request("etplocal")
    ext = next(s for s in steps if s["chain"] == "external-LTATU4J3-default/elsewhere/tcp/")
    assert ext["verdict"] == "no match" and "not DNATed" in ext["explanation"]
    assert steps[-1]["chain"] == "nodeport-endpoints-check" and steps[-1]["verdict"] == "DROP"
    assert decided["verdict"] == "DROP" and "no endpoint on this node" in decided["refusal"]


def test_hairpin_walk_shows_the_masquerade_and_its_reason():
    steps, decided = first_request("hairpin")
    assert decided["masquerade"] and decided["mark_reason"].startswith("hairpin")
    assert decided["pod"]["name"] == "solo-848c888b6c-stjpg"


def test_format_text_names_chains_and_the_matched_element():
    text, port, table, answer = captured("clusterip")
    report = tr.node_report("node-1", "kpcc78-node", text, port, table, listing(), PODS,
                            parse_conntrack((CORPUS / "clusterip.conntrack").read_text()), "nftables")
    entry = report["request"]["decision"]
    doc = {"proxyMode": "nftables", "source": {"name": "pod/client"},
           "destination": {"name": "svc/web", "ip": "10.111.63.65", "port": 80, "protocol": "tcp"},
           "sourcePort": port, "nodes": [report], "result": "answered", "answer": answer.removeprefix("ANSWER "),
           "answeredBy": tr.answered_pod(answer.removeprefix("ANSWER ")), "dnat": entry["dnat"],
           "endpointPod": entry["pod"], "masquerade": False,
           "masqueradeReason": tr.masquerade_reason(entry, "nftables"), "refusal": None, "choice": entry["choice"],
           "conntrack": report["conntrack"]}
    out = tr.format_text(doc)
    assert re.search(r"^  5\. nat +services: ip daddr \. meta l4proto \. th dport vmap @service-ips$", out, re.M), out
    assert f"matched element: 10.111.63.65 . tcp . 80 : goto {WEB}" in out
    assert "  2. filter firewall-check: no rule matched\n" in out and "no loadBalancerSourceRanges apply" in out
    assert "random choice: numgen random mod 3 gave 2: 10.244.0.7:8080" in out
    assert "DNAT: -> 10.244.0.7:8080 (pod default/web-5bc4bc5c44-qqssh on node-1)" in out
    assert "masquerade: no (no mark-for-masquerade rule matched" in out


def test_listing_maps_and_chain_names():
    lst = listing()
    assert lst.nodeport_ips == ["192.168.49.2"]
    e = lst.element("service-nodeports", "192.168.49.2", "tcp", "31301")
    assert e.target == "external-KOAMWL4R-default/web-np/tcp/"
    assert lst.element("service-ips", "10.1.1.1", "tcp", "80") is None
    assert nv.chain_service(WEB) == "default/web:http"
    assert nv.chain_service("external-KOAMWL4R-default/web-np/tcp/") == "default/web-np"
    assert nv.endpoint_of("endpoint-X-default/web/tcp/http__10.244.0.5/8080") == "10.244.0.5:8080"
    got = nv.numgen_choice("numgen random mod 2 vmap { 0 : goto a-x/y/tcp/, 1 : goto b-x/y/tcp/ }", "b-x/y/tcp/")
    assert got["numgen"] == {"mod": 2, "value": 1} and got["others"] == ["a-x/y/tcp/"]


# -- explain in nftables mode: the Service's elements and chains, counted --------------------
def counted_node() -> nv.NftNode:
    """The listing, and kproxy's counters set after 12 requests to web's ClusterIP from a pod
    (2/4/6 per endpoint), 3 to web-np's NodePort from outside, and refused ones to nobody."""
    return nv.NftNode(listing(), nv.parse_counters((CORPUS / "counters.list").read_text()))


def test_counters_parse_the_set_elements():
    counters = counted_node().counters
    assert counters[("10.111.63.65", "tcp", "10.244.0.7", "8080")] == (6, 360)
    assert counters[("192.168.49.2", "tcp", "10.244.0.5", "8080")] == (1, 60)
    assert len(counters) == 12


def test_explain_report_walks_element_service_chain_numgen_endpoints_with_counts():
    from kproxy import explain as ex
    doc = ex.report("default/web", counted_node(), PODS)  # the mode switch: an NftNode, not iptables-save
    assert doc["proxyMode"] == "nftables" and doc["counted"]
    first = doc["rules"][0]
    assert first["chain"] == "service-ips" and first["rule"] == f"10.111.63.65 . tcp . 80 : goto {WEB}"
    assert first["packets"] == 12 and "cluster IP element" in first["explanation"]
    chains = [r["chain"] for r in doc["rules"]]
    assert chains[1] == WEB and chains.index(WEB) < min(i for i, c in enumerate(chains) if c.startswith("endpoint-"))
    numgen = next(r for r in doc["rules"] if r["rule"].startswith("numgen"))
    assert numgen["packets"] == 12
    mark = next(r for r in doc["rules"] if r["rule"].endswith("jump mark-for-masquerade"))
    assert mark["packets"] is None  # a rule that picks no destination: not counted
    eps = {e["pod"]: e["connections"] for e in doc["endpoints"]}
    assert eps == {"web-5bc4bc5c44-7bl9v": 2, "web-5bc4bc5c44-j4qbs": 4, "web-5bc4bc5c44-qqssh": 6}
    text = ex.format_report(doc)
    assert "(total 12)" in text and "[-] nat service-SUSTUHLJ-default/web/tcp/http: ip daddr" in text


def test_explain_report_of_a_nodeport_and_of_a_service_without_endpoints():
    from kproxy import explain as ex
    np = ex.report("default/web-np", counted_node(), PODS)
    nodeport = next(r for r in np["rules"] if r["chain"] == "service-nodeports")
    assert nodeport["rule"].startswith("tcp . 31301 : goto external-") and nodeport["packets"] == 3
    assert sum(e["connections"] for e in np["endpoints"]) == 3  # the ClusterIP's 12 are web's, not web-np's
    nobody = ex.report("default/nobody", counted_node(), PODS)
    assert [r["chain"] for r in nobody["rules"]] == ["no-endpoint-services"]
    assert nobody["rules"][0]["stops"] and nobody["rules"][0]["packets"] == 2 and nobody["endpoints"] == []


def test_reset_keys_are_only_the_services_own():
    node = counted_node()
    keys = nv.reset_keys(nv.service_path(node.listing, "default/web"), node.listing, node.counters)
    assert sorted(keys) == [("10.111.63.65", "tcp", f"10.244.0.{i}", "8080") for i in (5, 6, 7)]
    keys = nv.reset_keys(nv.service_path(node.listing, "default/nobody"), node.listing, node.counters)
    assert keys == [("10.104.152.124", "tcp", "10.104.152.124", "80")]


def test_no_counters_table_means_rules_without_counts():
    from kproxy import explain as ex
    doc = ex.report("default/web", nv.NftNode(listing(), None), PODS)
    assert not doc["counted"] and all(r["packets"] is None for r in doc["rules"])
    assert "no counters" in ex.format_report(doc)


def test_graph_of_a_service_in_nftables_mode():
    from kproxy import graph as gr
    dot = gr.render(gr.service_graph("default/web", counted_node(), PODS), "dot").decode()
    assert 'label="Service default/web (nftables)"' in dot and dot.count("1/3 -> 33.3%") == 3
    for ip, pod in PODS.items():
        if pod["name"].startswith("web-"):
            assert f"pod {pod['name']}" in dot
