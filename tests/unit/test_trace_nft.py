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
