"""kproxy trace/explain parsing on real captured text (tests/unit/trace_corpus: xtables-monitor
--trace output, conntrack -L and iptables-save -c of a sandbox lab's node, kernel 6.x, iptables
1.8.9 nf_tables): a pod to a 3-endpoint ClusterIP, outside to a NodePort, a Service without
endpoints, an ETP Local NodePort without a local endpoint, and a pod reaching itself."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kproxy import explain as ex
from kproxy import trace as tr
from kproxy.traceparse import conntrack_line, parse_conntrack, parse_monitor, walk

CORPUS = Path(__file__).parent / "trace_corpus"
PODS = {"10.244.0.4": {"name": "web-5bc4bc5c44-95gl9", "namespace": "default", "node": "node-1"},
        "10.244.0.5": {"name": "web-5bc4bc5c44-75qkh", "namespace": "default", "node": "node-1"},
        "10.244.0.6": {"name": "web-5bc4bc5c44-7m72r", "namespace": "default", "node": "node-1"},
        "10.244.0.7": {"name": "solo-848c888b6c-xh79t", "namespace": "default", "node": "node-1"}}


def captured(name: str):
    text = (CORPUS / f"{name}.monitor").read_text()
    m = re.match(r"# port (\d+) chain (\S+) answer (.*)", text)
    return text, int(m.group(1)), m.group(2), m.group(3)


def saved() -> ex.Saved:
    return ex.parse_save((CORPUS / "node.save").read_text())


def first_request(name: str):
    text, port, chain, _ = captured(name)
    packets = parse_monitor(text, port, chain)
    request = next(p for p in packets if p.first["SPORT"] == str(port))
    return walk(request, saved(), PODS)


def chains_met(steps) -> list[str]:
    return [s["chain"] for s in steps if not s.get("not_met")]


def test_monitor_splits_packets_at_our_trace_rule():
    text, port, chain, _ = captured("clusterip")
    packets = parse_monitor(text, port, chain)
    assert len(packets) == 12  # SYN, SYN-ACK, ... of one HTTP exchange, each caught by the raw rule
    assert packets[0].first["SPORT"] == str(port) and "SYN" in packets[0].hops[0].flags
    assert packets[1].first["DPORT"] == str(port) and packets[1].hops[0].flags[-2:] == ["SYN", "ACK"]
    # the raw table (our own TRACE rule and raw's policy) is not part of the walk
    assert all(e.table != "raw" for p in packets for h in p.hops for e in h.events)


def test_another_flows_packets_are_left_out():
    text, port, chain, _ = captured("clusterip")
    assert parse_monitor(text, port + 1, chain) == []


def test_clusterip_walk_names_services_svc_sep_and_the_dnat_pod():
    steps, decided = first_request("clusterip")
    met = chains_met(steps)
    assert met[:4] == ["PREROUTING", "KUBE-SERVICES", "KUBE-SVC-CDGGSHYLG3RE2FKL", "KUBE-SEP-MQPSSF2DIKDEHI3U"]
    assert decided["dnat"] == "10.244.0.4:8080" and decided["pod"]["name"] == "web-5bc4bc5c44-95gl9"
    assert decided["choice"]["probability"] == pytest.approx(1 / 3) and decided["choice"]["rolled_no"] == []
    assert not decided["masquerade"] and decided["mark_reason"] is None
    dnat = next(s for s in steps if "DNAT" in s["rule"])
    assert "pod web-5bc4bc5c44-95gl9 on node-1" in dnat["explanation"]
    assert steps[0]["rule"] == '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'


def test_nodeport_walk_shows_ext_mark_masq_and_masquerade():
    steps, decided = first_request("nodeport")
    met = chains_met(steps)
    for chain in ("KUBE-NODEPORTS", "KUBE-EXT-CDGGSHYLG3RE2FKL", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"):
        assert chain in met
    assert decided["masquerade"] and "externalTrafficPolicy Cluster" in decided["mark_reason"]
    assert any(s["rule"].endswith("-j MASQUERADE") for s in steps)
    # rolls that said no come from iptables-save, marked as not met, before the one taken
    no = [s for s in steps if s.get("not_met") and s["rule"]]
    assert len(no) == len(decided["choice"]["rolled_no"])
    assert decided["pod"]["name"] == "web-5bc4bc5c44-7m72r"


def test_reject_walk_names_the_rule_and_why():
    steps, decided = first_request("reject")
    last = steps[-1]
    assert last["verdict"] == "REJECT" and "default/nobody has no endpoints" in last["rule"]
    assert decided["verdict"] == "REJECT" and "no endpoints" in decided["refusal"]
    assert decided["dnat"] is None


def test_etp_local_walk_shows_the_drop_and_why():
    steps, decided = first_request("etplocal")
    ext = next(s for s in steps if s["chain"] == "KUBE-EXT-7SRS2TG46TB2J32M")
    assert ext["verdict"] == "no match" and "not DNATed" in ext["explanation"]
    assert decided["verdict"] == "DROP" and "no endpoint on this node" in decided["refusal"]
    assert steps[-1]["chain"] == "KUBE-EXTERNAL-SERVICES"


def test_hairpin_walk_shows_the_masquerade_and_its_reason():
    steps, decided = first_request("hairpin")
    assert decided["masquerade"] and decided["mark_reason"].startswith("hairpin")
    assert decided["pod"]["name"] == "solo-848c888b6c-xh79t"


def test_trace_line_verdicts():
    assert tr.parse_monitor is parse_monitor
    from kproxy.traceparse import _trace_line
    assert _trace_line(" TRACE: 2 5 nat:KUBE-POSTROUTING:rule:0xa:0xfffffffb  -4 -t nat -A KUBE-POSTROUTING -j RETURN") \
        == ("nat", "KUBE-POSTROUTING", "rule", "RETURN", "-A KUBE-POSTROUTING -j RETURN")
    assert _trace_line(" TRACE: 2 5 filter:FORWARD:policy:ACCEPT ") == ("filter", "FORWARD", "policy", "ACCEPT", "")
    assert _trace_line(" TRACE: 2 5 nat:PREROUTING:rule:0x17:JUMP:KUBE-SERVICES  -4 -t nat -A PREROUTING -j "
                       "KUBE-SERVICES")[3] == "JUMP:KUBE-SERVICES"
    assert _trace_line("PACKET: 2 5 IN=x") is None


def test_conntrack_tuples_tcp_and_udp():
    tcp = parse_conntrack((CORPUS / "nodeport.conntrack").read_text())
    assert len(tcp) == 1
    e = tcp[0]
    assert e["state"] == "TIME_WAIT" and e["flags"] == ["ASSURED"]
    assert e["original"] == {"src": "192.168.49.100", "dst": "192.168.49.2", "sport": e["original"]["sport"],
                             "dport": "32248"}
    assert e["reply"]["src"] == "10.244.0.6" and e["reply"]["dst"] == "10.244.0.1"  # DNAT + masquerade
    assert "reply 10.244.0.6:8080 -> 10.244.0.1:" in conntrack_line(e)
    udp = parse_conntrack("udp      17 29 src=10.244.0.3 dst=10.96.0.10 sport=24001 dport=53 src=10.244.0.2 "
                          "dst=10.244.0.3 sport=53 dport=24001 mark=0 use=1\n"
                          "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n")
    assert len(udp) == 1 and udp[0]["state"] == "" and udp[0]["reply"]["src"] == "10.244.0.2"
    assert parse_conntrack((CORPUS / "reject.conntrack").read_text()) == []


def test_destinations():
    assert tr.parse_destination("svc/web") == ("svc", "web", None)
    assert tr.parse_destination("service/web:http") == ("svc", "web", "http")
    assert tr.parse_destination("node/node-1:30080") == ("node", "node-1", "30080")
    assert tr.parse_destination("10.96.0.10:53") == ("ip", "10.96.0.10", "53")
    for bad in ("node/node-1", "deploy/web", "web"):
        with pytest.raises(tr.TraceError):
            tr.parse_destination(bad)
    svc = {"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.5.5", "ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "http", "port": 80}]}}
    assert tr.service_destination(svc, None, "tcp") == ("10.96.5.5", 80)
    assert tr.service_destination(svc, None, "udp") == ("10.96.5.5", 53)
    with pytest.raises(tr.TraceError, match='no TCP port "8080"'):
        tr.service_destination(svc, "8080", "tcp")
    with pytest.raises(tr.TraceError, match="headless"):
        tr.service_destination({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}, None, "tcp")


def test_answered_pod():
    assert tr.answered_pod("pod web-1 namespace default ip 10.244.0.4 client 10.244.0.3:20000") == "web-1"
    assert tr.answered_pod("web-2") == "web-2"  # the UDP whoami answer
    assert tr.answered_pod("<html>") is None


def test_format_text_is_a_numbered_walk():
    text, port, chain, answer = captured("clusterip")
    report = tr.node_report("node-1", "kp0199-node", text, port, chain, saved(), PODS,
                            parse_conntrack((CORPUS / "clusterip.conntrack").read_text()))
    entry = report["request"]["decision"]
    doc = {"source": {"name": "pod/client"}, "destination": {"name": "svc/web", "ip": "10.107.207.74", "port": 80,
                                                             "protocol": "tcp"},
           "sourcePort": port, "nodes": [report], "result": "answered", "answer": answer.removeprefix("ANSWER "),
           "answeredBy": tr.answered_pod(answer.removeprefix("ANSWER ")), "dnat": entry["dnat"],
           "endpointPod": entry["pod"], "masquerade": False, "masqueradeReason": tr.masquerade_reason(entry),
           "refusal": None, "choice": entry["choice"], "conntrack": report["conntrack"]}
    out = tr.format_text(doc)
    assert re.search(r"^  1\. nat +-A PREROUTING", out, re.M)
    assert "DNAT: -> 10.244.0.4:8080 (pod default/web-5bc4bc5c44-95gl9 on node-1)" in out
    assert "answered by: pod web-5bc4bc5c44-95gl9" in out
    assert "masquerade: no" in out and "conntrack: tcp TIME_WAIT original 10.244.0.3:" in out


# -- explain ---------------------------------------------------------------------------------
def test_parse_save_reads_counters_and_rule_numbers():
    s = saved()
    rules = s.chain("nat", "KUBE-SVC-CDGGSHYLG3RE2FKL")
    assert [r.index for r in rules] == [1, 2, 3, 4]
    assert rules[1].text.startswith("-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment")
    assert all(isinstance(r.packets, int) for r in rules)
    plain = ex.parse_save("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n")
    assert plain.chain("nat", "KUBE-SERVICES")[0].packets == 0


COUNTED = """*filter
[0:0] -A KUBE-SERVICES -d 10.96.1.1/32 -p tcp -m comment --comment "default/other has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
[300:18000] -A KUBE-SERVICES -d 10.96.0.5/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-A
[7:420] -A KUBE-SERVICES -d 10.96.0.6/32 -p tcp -m comment --comment "default/webx cluster IP" -m tcp --dport 80 -j KUBE-SVC-B
[0:0] -A KUBE-SVC-A ! -s 10.244.0.0/16 -d 10.96.0.5/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[98:5880] -A KUBE-SVC-A -m comment --comment "default/web:http -> 10.244.0.4:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-X
[103:6180] -A KUBE-SVC-A -m comment --comment "default/web:http -> 10.244.0.5:8080" -j KUBE-SEP-Y
[0:0] -A KUBE-SEP-X -s 10.244.0.4/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
[98:5880] -A KUBE-SEP-X -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.0.4:8080
[1:60] -A KUBE-SEP-Y -s 10.244.0.5/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
[103:6180] -A KUBE-SEP-Y -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.0.5:8080
[0:0] -A KUBE-SVC-B -j KUBE-SEP-Z
COMMIT
"""


def test_explain_orders_the_services_rules_and_counts_connections():
    doc = ex.report("default/web", ex.parse_save(COUNTED), PODS)
    assert [r["chain"] for r in doc["rules"]] == ["KUBE-SERVICES", "KUBE-SVC-A", "KUBE-SVC-A", "KUBE-SVC-A",
                                                  "KUBE-SEP-X", "KUBE-SEP-X", "KUBE-SEP-Y", "KUBE-SEP-Y"]
    assert doc["rules"][0]["packets"] == 300 and "cluster IP 10.96.0.5:80" in doc["rules"][0]["explanation"]
    assert "probability 0.3333" in doc["rules"][2]["explanation"]
    assert doc["rules"][4]["explanation"].startswith("hairpin")
    eps = {e["ip"]: e for e in doc["endpoints"]}
    assert eps["10.244.0.4"]["connections"] == 98 and eps["10.244.0.4"]["pod"] == "web-5bc4bc5c44-95gl9"
    assert eps["10.244.0.5"]["connections"] == 103 and eps["10.244.0.5"]["bytes"] == 6180
    assert "(total 201)" in ex.format_report(doc)


def test_explain_of_a_service_without_endpoints_is_its_reject():
    doc = ex.report("default/other", ex.parse_save(COUNTED), {})
    assert len(doc["rules"]) == 1 and doc["rules"][0]["table"] == "filter"
    assert "connection refused" in doc["rules"][0]["explanation"] and doc["endpoints"] == []


def test_reset_zeroes_only_the_services_counters():
    cmds = ex.reset_commands(ex.parse_save(COUNTED), "default/web")
    assert ["iptables", "-w", "-t", "nat", "-Z", "KUBE-SVC-A"] in cmds
    assert ["iptables", "-w", "-t", "nat", "-Z", "KUBE-SEP-X"] in cmds
    assert ["iptables", "-w", "-t", "nat", "-Z", "KUBE-SERVICES", "1"] in cmds  # its rule only, by number
    assert not any("KUBE-SVC-B" in c or c[-1] == "2" for c in cmds)


def test_every_captured_rule_has_an_explanation():
    for (table, chain), rules in saved().rules.items():
        if chain.startswith("KUBE-") and chain not in ("KUBE-PROXY-CANARY",):
            for r in rules:
                assert ex.explain_rule(r), r.text


# -- session affinity: the choice was no roll at all ------------------------------------------
AFFINITY_SAVE = """*nat
:KUBE-SVC-S - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
-A KUBE-SVC-S -m comment --comment "default/sticky:http -> 10.244.0.4:8080" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A
-A KUBE-SVC-S -m comment --comment "default/sticky:http -> 10.244.0.5:8080" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-B --mask 255.255.255.255 --rsource -j KUBE-SEP-B
-A KUBE-SVC-S -m comment --comment "default/sticky:http -> 10.244.0.4:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-S -m comment --comment "default/sticky:http -> 10.244.0.5:8080" -j KUBE-SEP-B
-A KUBE-SEP-B -p tcp -m comment --comment "default/sticky:http" -m recent --set --name KUBE-SEP-B --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.0.5:8080
COMMIT
"""


def test_session_affinity_is_not_reported_as_a_single_endpoint():
    from kproxy.traceparse import Event, Hop, Packet
    s = ex.parse_save(AFFINITY_SAVE)
    rcheck = s.chain("nat", "KUBE-SVC-S")[1].text
    dnat = s.chain("nat", "KUBE-SEP-B")[0].text
    hop = Hop({"SRC": "10.244.0.3", "SPORT": "20001", "DST": "10.96.0.7", "DPORT": "80"}, ["SYN"],
              [Event("nat", "KUBE-SVC-S", "rule", "JUMP:KUBE-SEP-B", rcheck),
               Event("nat", "KUBE-SEP-B", "rule", "ACCEPT", dnat)])
    steps, decided = walk(Packet([hop]), s, PODS)
    assert decided["choice"]["affinity"] and decided["choice"]["rolled_no"] == []
    assert decided["dnat"] == "10.244.0.5:8080"
    line = tr.choice_text(decided["choice"])
    assert "session affinity" in line and "single endpoint" not in line
    # an ordinary roll keeps its wording
    plain = {"probability": None, "rolled_no": [{"probability": 0.5}], "affinity": False}
    assert tr.choice_text(plain) == "random choice: p=0.5 no, the last rule (no roll)"
