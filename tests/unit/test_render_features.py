"""Feature-by-feature checks of the renderer against upstream kube-proxy.

Two kinds of checks, both derived from upstream's pkg/proxy/iptables (proxier.go and
proxier_test.go), never from our own output:

* golden/*.yaml: whole expected restore texts transcribed from upstream tests (each file
  names its test), compared after upstream's sort;
* exact rule lines for features upstream only tests by packet tracing, written from
  proxier.go's rule templates. Chain hashes not printed by any upstream test are computed
  with `_hash` below, an independent copy of upstream's portProtoHash.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
from pathlib import Path

import pytest
import yaml

from kproxy.proxy import chains
from kproxy.proxy.render import ProxyConfig, RenderResult, render
from kproxy.proxy.servicerules import probability
from kproxy.proxy.sorting import parse, sort_restore_text

GOLDEN = Path(__file__).parent / "golden"
BASE_CONFIG = {"cluster_cidr": "10.0.0.0/8", "node_name": "test-node", "node_ips": ["192.168.0.2"]}
FIXED_NAT = ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]


# ------------------------------------------------------------------------ helpers


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(name: str, protocol: str = "tcp", prefix: str = "KUBE-SVC-") -> str:
    return prefix + _hash(name + protocol)


def sep_chain(name: str, endpoint: str, protocol: str = "tcp") -> str:
    return "KUBE-SEP-" + _hash(name + protocol + endpoint)


def service(name: str, namespace: str = "ns1", *, labels=None, status=None, **spec) -> dict:
    obj = {"kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    if labels:
        obj["metadata"]["labels"] = labels
    if status:
        obj["status"] = status
    return obj


def endpoint_slice(svc: str, endpoints, ports, namespace="ns1", name=None, labels=None, address_type="IPv4") -> dict:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{svc}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": svc, **(labels or {})},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }


P80 = [{"name": "p80", "port": 80, "protocol": "TCP"}]


def run(services, slices=(), **config) -> RenderResult:
    result = render(list(services), list(slices), ProxyConfig(**{**BASE_CONFIG, **config}))
    assert_consistent(result.text)
    return result


def lines(result: RenderResult) -> list[str]:
    return result.text.splitlines()


def assert_same_rules(expected: str, got: str) -> None:
    want, have = sort_restore_text(expected), sort_restore_text(got)
    if want != have:
        diff = "".join(difflib.unified_diff(want.splitlines(True), have.splitlines(True), "expected", "rendered"))
        pytest.fail(f"rendered rules differ from the expected text:\n{diff}")


def assert_consistent(text: str) -> None:
    """Like upstream's checkIPTablesRuleJumps: no dangling jumps, no unused service chains."""
    for table in parse(text):
        declared = {c.name: c for c in table.chains}
        jumped = {m for c in table.chains for r in c.rules for m in re.findall(r" -j (KUBE-\S+)", r)}
        assert jumped <= set(declared), f"{table.name}: jumps to undeclared {jumped - set(declared)}"
        for name, chain in declared.items():
            if chains.is_service_chain(name) and not chain.deleted:
                assert chain.rules, f"{table.name}: {name} is declared but empty"
                assert name in jumped, f"{table.name}: {name} is declared but never used"


# ------------------------------------------------------------ upstream golden texts


@pytest.mark.parametrize("case_file", sorted(GOLDEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_upstream_golden_case(case_file: Path):
    case = yaml.safe_load(case_file.read_text())
    objects = case["objects"]
    result = run(
        [o for o in objects if o["kind"] == "Service"],
        [o for o in objects if o["kind"] == "EndpointSlice"],
        **case["config"],
    )
    assert_same_rules(case["expected"], result.text)


# ------------------------------------------------------------------- chain names


def test_chain_names_pinned_by_upstream():
    assert chains.service_port_chain(chains.SVC_PREFIX, "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert chains.service_port_chain(chains.EXT_PREFIX, "ns2/svc2:p80", "TCP") == "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
    assert chains.service_port_chain(chains.SVC_PREFIX, "ns2/svc2:p8080", "tcp") == "KUBE-SVC-2VJB64SDSIJUP5T6"
    assert chains.service_port_chain(chains.SVL_PREFIX, "ns1/svc1", "tcp") == "KUBE-SVL-AQI2S6QIMU7PVVRP"
    assert chains.endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert chains.endpoint_chain("ns5/svc5:p80", "tcp", "10.180.0.3:80") == "KUBE-SEP-I77PXRDZVX7PMWMN"
    assert chains.endpoint_chain("ns3/svc3:p8081", "tcp", "203.0.113.4:8081") == "KUBE-SEP-RUVVH7YV3PHQBDOS"


# --------------------------------------------- multi-port, named ports, protocols


def _multi_port():
    """TestClusterIPGeneral's ns2/svc2: named ports, targetPorts, TCP/UDP/SCTP on port 53."""
    svc = service(
        "svc2", "ns2", clusterIP="172.30.0.42",
        ports=[
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 8443},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353},
            {"name": "dns-sctp", "port": 53, "protocol": "SCTP"},
        ],
    )
    slice_ = endpoint_slice(
        "svc2", namespace="ns2",
        endpoints=[
            {"addresses": ["10.180.0.1"], "nodeName": "test-node"},
            {"addresses": ["10.180.2.1"], "nodeName": "node2"},
        ],
        ports=[
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "https", "port": 8443, "protocol": "TCP"},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
            {"name": "dns-sctp", "port": 53, "protocol": "SCTP"},
        ],
    )
    return run([svc], [slice_])


def test_named_ports_get_their_own_chains_and_target_ports():
    out = lines(_multi_port())
    https, https_sep = svc_chain("ns2/svc2:https"), sep_chain("ns2/svc2:https", "10.180.0.1:8443")
    assert (f'-A KUBE-SERVICES -m comment --comment "ns2/svc2:https cluster IP" '
            f"-m tcp -p tcp -d 172.30.0.42 --dport 443 -j {https}") in out
    assert (f'-A {https} -m comment --comment "ns2/svc2:https -> 10.180.0.1:8443" '
            f"-m statistic --mode random --probability 0.5000000000 -j {https_sep}") in out
    assert (f"-A {https_sep} -m comment --comment ns2/svc2:https "
            f"-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:8443") in out
    dns_tcp_sep = sep_chain("ns2/svc2:dns-tcp", "10.180.2.1:5353")
    assert (f"-A {dns_tcp_sep} -m comment --comment ns2/svc2:dns-tcp "
            f"-m tcp -p tcp -j DNAT --to-destination 10.180.2.1:5353") in out


def test_udp_and_sctp_use_lowercase_protocol_matches():
    out = lines(_multi_port())
    udp = svc_chain("ns2/svc2:dns-udp", "udp")
    assert (f'-A KUBE-SERVICES -m comment --comment "ns2/svc2:dns-udp cluster IP" '
            f"-m udp -p udp -d 172.30.0.42 --dport 53 -j {udp}") in out
    assert (f'-A {udp} -m comment --comment "ns2/svc2:dns-udp cluster IP" '
            f"-m udp -p udp -d 172.30.0.42 --dport 53 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ") in out
    udp_sep = sep_chain("ns2/svc2:dns-udp", "10.180.2.1:53", "udp")
    assert (f"-A {udp_sep} -m comment --comment ns2/svc2:dns-udp "
            f"-m udp -p udp -j DNAT --to-destination 10.180.2.1:53") in out
    sctp = svc_chain("ns2/svc2:dns-sctp", "sctp")
    assert (f'-A KUBE-SERVICES -m comment --comment "ns2/svc2:dns-sctp cluster IP" '
            f"-m sctp -p sctp -d 172.30.0.42 --dport 53 -j {sctp}") in out


def test_multi_port_service_chain_index():
    result = _multi_port()
    # 5 ports x (1 KUBE-SVC + 2 KUBE-SEP); no KUBE-SVL since no Local policy is in use.
    assert len(result.service_chains["ns2/svc2"]) == 15
    assert svc_chain("ns2/svc2:dns-udp", "udp") in result.service_chains["ns2/svc2"]


@pytest.mark.parametrize(
    "slice_port",
    [
        {"name": "other", "port": 80, "protocol": "TCP"},  # ports match by name...
        {"name": "p80", "port": 80, "protocol": "UDP"},  # ...and protocol
        {"name": "p80", "protocol": "TCP"},  # a port without a number is ignored
    ],
    ids=["name-mismatch", "protocol-mismatch", "no-port-number"],
)
def test_endpoint_ports_match_by_name_and_protocol(slice_port):
    result = run(
        [service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])],
        [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], [slice_port])],
    )
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" '
            "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT") in lines(result)


def test_missing_protocol_defaults_to_tcp():
    result = run(
        [service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])],
        [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], [{"name": "p80", "port": 80}])],
    )
    assert ("-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 "
            "-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80") in lines(result)


# ------------------------------------------------------------ session affinity


@pytest.mark.parametrize("config,seconds", [({"clientIP": {"timeoutSeconds": 60}}, "60"), (None, "10800")])
def test_client_ip_affinity(config, seconds):
    spec = {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}], "sessionAffinity": "ClientIP"}
    if config:
        spec["sessionAffinityConfig"] = config
    out = lines(run([service("svc1", **spec)], [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)]))
    sep = "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert (f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
            f"-m recent --name {sep} --rcheck --seconds {seconds} --reap -j {sep}") in out
    assert (f"-A {sep} -m comment --comment ns1/svc1:p80 -m recent --name {sep} --set "
            "-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80") in out


# ------------------------------------------------------------- probabilities


def test_probability_formatting_matches_compute_probability():
    # TestComputeProbability's table, plus the 3-endpoint case.
    assert probability(1) == "1.0000000000"
    assert probability(2) == "0.5000000000"
    assert probability(3) == "0.3333333333"
    assert probability(100000) == "0.0000100000"
    assert probability(100001) == "0.0000099999"


def test_three_endpoints_spread():
    eps = [{"addresses": [ip]} for ip in ("10.0.3.3", "10.0.3.1", "10.0.3.2")]  # sorted on output
    out = lines(run([service("svc3", "ns3", clusterIP="172.30.0.43", ports=[{"name": "p80", "port": 80}])],
                    [endpoint_slice("svc3", eps, P80, namespace="ns3")]))
    svc = "KUBE-SVC-X27LE4BHSL4DOUIK"
    spread = [line for line in out if line.startswith(f"-A {svc} ") and "->" in line]
    assert spread == [
        f'-A {svc} -m comment --comment "ns3/svc3:p80 -> 10.0.3.1:80" -m statistic --mode random '
        "--probability 0.3333333333 -j KUBE-SEP-BSWRHOQ77KEXZLNL",
        f'-A {svc} -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -m statistic --mode random '
        "--probability 0.5000000000 -j KUBE-SEP-DKCFIS26GWF2WLWC",
        f'-A {svc} -m comment --comment "ns3/svc3:p80 -> 10.0.3.3:80" -j KUBE-SEP-JVVZVJ7BSEPPRNBS',
    ]


# ------------------------------------------------------- endpoint conditions


def test_publish_not_ready_addresses_counts_all_endpoints_as_ready():
    not_ready = [{"addresses": ["10.180.0.1"], "conditions": {"ready": False, "serving": False}}]
    spec = {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}
    plain = lines(run([service("svc1", **spec)], [endpoint_slice("svc1", not_ready, P80)]))
    assert ('-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" '
            "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT") in plain
    published = lines(run([service("svc1", publishNotReadyAddresses=True, **spec)],
                          [endpoint_slice("svc1", not_ready, P80)]))
    assert ('-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
            "-j KUBE-SEP-SXIVWICOYRO3J4NJ") in published


@pytest.mark.parametrize("terminating_first", [True, False])
def test_duplicate_endpoint_prefers_the_non_terminating_copy(terminating_first):
    terminating = endpoint_slice(
        "svc1", [{"addresses": ["10.0.1.1"], "conditions": {"ready": False, "serving": True, "terminating": True}}],
        P80, name="a" if terminating_first else "b")
    ready = endpoint_slice(
        "svc1", [{"addresses": ["10.0.1.1"]}, {"addresses": ["10.0.1.2"]}], P80, name="b" if terminating_first else "a")
    out = lines(run([service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])],
                    [terminating, ready]))
    # Both endpoints count as ready, so the spread has two entries.
    assert any('"ns1/svc1:p80 -> 10.0.1.1:80" -m statistic' in line for line in out)


def test_non_ipv4_slices_are_ignored():
    slices = [endpoint_slice("svc1", [{"addresses": ["fd00::1"]}], P80, address_type="IPv6"),
              endpoint_slice("svc1", [{"addresses": ["example.com"]}], P80, name="svc1-2", address_type="FQDN")]
    out = lines(run([service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])], slices))
    assert any('"ns1/svc1:p80 has no endpoints"' in line for line in out)


# ------------------------------------------------------------ skipped services


SKIPPED = {
    "proxy-name label": service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}],
                                labels={"service.kubernetes.io/service-proxy-name": "other-proxy"}),
    "headless label": service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}],
                              labels={"service.kubernetes.io/headless": ""}),
    "clusterIP None": service("svc1", clusterIP="None", ports=[{"name": "p80", "port": 80}]),
    "ExternalName": service("svc1", type="ExternalName", clusterIP="172.30.0.41", externalName="foo.bar.com",
                            ports=[{"name": "p80", "port": 80}]),
}


@pytest.mark.parametrize("name", SKIPPED)
def test_skipped_services_produce_no_rules(name):
    result = run([SKIPPED[name]], [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)])
    assert result.text == run([]).text
    assert "ns1/svc1" in result.skipped_services
    assert "ns1/svc1" not in result.service_chains


def test_slices_with_proxy_name_label_are_ignored():
    labelled = endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80,
                              labels={"service.kubernetes.io/service-proxy-name": "other-proxy"})
    out = lines(run([service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])], [labelled]))
    assert any('"ns1/svc1:p80 has no endpoints"' in line for line in out)


# --------------------------------------------------------- masquerading options


def _cluster_ip_svc1(**config) -> list[str]:
    return lines(run([service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])],
                     [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)], **config))


MASQ_ALL = ('-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" '
            "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ")
MASQ_OFF_CLUSTER = ('-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" '
                    "-m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", None])
def test_masquerade_all_marks_all_cluster_ip_traffic(cidr):
    out = _cluster_ip_svc1(masquerade_all=True, cluster_cidr=cidr)
    assert MASQ_ALL in out
    assert MASQ_OFF_CLUSTER not in out


def test_cluster_cidr_masquerades_off_cluster_sources():
    out = _cluster_ip_svc1()
    assert MASQ_OFF_CLUSTER in out
    assert MASQ_ALL not in out


def test_no_cluster_cidr_means_no_local_traffic_masquerade():
    out = _cluster_ip_svc1(cluster_cidr=None)
    assert [line for line in out if line.startswith("-A KUBE-SVC-XPGD46QRK7WJZT7O ")] == [
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
        "-j KUBE-SEP-SXIVWICOYRO3J4NJ"
    ]


def test_random_fully():
    out = _cluster_ip_svc1(random_fully=True)
    assert ('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully") in out


def test_masquerade_bit_sets_the_mark():
    out = _cluster_ip_svc1(masquerade_bit=15)
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x8000" in out
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x8000/0x8000 -j RETURN" in out
    assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x8000" in out
    assert ('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
            "-m mark --mark 0x8000/0x8000 -j ACCEPT") in out


# --------------------------------------------------------------- no endpoints


def test_no_endpoints_rejects_every_destination():
    """TestNoEndpointsReject's service: ClusterIP, external IP, LB IP and NodePort all REJECT."""
    svc = service(
        "svc1", type="LoadBalancer", clusterIP="172.30.0.41", externalIPs=["192.168.99.11"],
        loadBalancerSourceRanges=["203.0.113.0/25"],
        ports=[{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
        status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
    )
    result = run([svc])
    comment = '-m comment --comment "ns1/svc1:p80 has no endpoints"'
    out = lines(result)
    assert f"-A KUBE-SERVICES {comment} -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT" in out
    assert f"-A KUBE-EXTERNAL-SERVICES {comment} -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT" in out
    assert f"-A KUBE-EXTERNAL-SERVICES {comment} -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT" in out
    assert (f"-A KUBE-EXTERNAL-SERVICES {comment} -m addrtype --dst-type LOCAL "
            "-m tcp -p tcp --dport 3001 -j REJECT") in out
    assert result.nat_chains == FIXED_NAT
    assert result.service_chains == {"ns1/svc1": set()}
    assert not any(line.startswith("-A KUBE-PROXY-FIREWALL") for line in out)


# ----------------------------------------------------- health check node ports


def test_health_check_node_port_accepted_only_for_local_load_balancers():
    spec = {"clusterIP": "172.30.0.42", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000,
            "ports": [{"name": "p80", "port": 80, "nodePort": 3001}]}
    accept = ('-A KUBE-NODEPORTS -m comment --comment "ns1/svc1:p80 health check node port" '
              "-m tcp -p tcp --dport 30000 -j ACCEPT")
    assert accept in lines(run([service("svc1", type="LoadBalancer", **spec)]))  # even without endpoints
    assert accept not in lines(run([service("svc1", type="NodePort", **spec)]))
    cluster = {**spec, "externalTrafficPolicy": "Cluster"}
    assert accept not in lines(run([service("svc1", type="LoadBalancer", **cluster)]))


def test_localhost_nodeport_nfacct_rule():
    svc = service("svc1", type="NodePort", clusterIP="172.30.0.41",
                  ports=[{"name": "p80", "port": 80, "nodePort": 3001}])
    slices = [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)]
    rule = ("-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 "
            "-m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-XPGD46QRK7WJZT7O")
    assert rule in lines(run([svc], slices, nfacct=True))
    assert rule not in lines(run([svc], slices, nfacct=True, localhost_nodeports=False))
    assert rule not in lines(run([svc], slices))


# ------------------------------------------------------------- load balancers


def test_ip_mode_proxy_ingress_is_left_to_the_load_balancer():
    """TestLoadBalancerIngressRouteTypeProxy with the LoadBalancerIPMode feature on."""
    ingress = [{"ip": "1.2.3.4", "ipMode": "Proxy"}, {"ip": "1.2.3.5", "ipMode": "VIP"}, {"ip": "1.2.3.6"}]
    svc = service("svc1", type="LoadBalancer", clusterIP="10.20.30.41",
                  ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
                  status={"loadBalancer": {"ingress": ingress}})
    out = lines(run([svc], [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)]))
    lb_rules = [line for line in out if '"ns1/svc1:p80 loadbalancer IP"' in line and line.startswith("-A KUBE-SERVICES")]
    assert [re.search(r"-d (\S+)", line).group(1) for line in lb_rules] == ["1.2.3.5", "1.2.3.6"]


def test_source_range_without_node_ip_adds_no_lb_ip_sources():
    svc = service("svc1", type="LoadBalancer", clusterIP="172.30.0.41",
                  ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
                  loadBalancerSourceRanges=["203.0.113.0/25"],
                  status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})
    out = lines(run([svc], [endpoint_slice("svc1", [{"addresses": ["10.180.0.1"]}], P80)]))
    fw = [line for line in out if line.startswith("-A KUBE-FW-XPGD46QRK7WJZT7O")]
    assert fw == [
        '-A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 loadbalancer IP" '
        "-s 203.0.113.0/25 -j KUBE-EXT-XPGD46QRK7WJZT7O",
        '-A KUBE-FW-XPGD46QRK7WJZT7O -m comment --comment '
        '"other traffic to ns1/svc1:p80 will be dropped by KUBE-PROXY-FIREWALL"',
    ]


# -------------------------------------------------------- large cluster mode


def _many(prefix: str, count: int) -> list[dict]:
    return [{"addresses": [f"{prefix}.{i % 256}.{i // 256}"]} for i in range(count)]


def test_large_cluster_mode_drops_endpoint_comments():
    """TestSyncProxyRulesLargeClusterMode: over 1000 endpoints, SEP rules lose their comments."""
    services = [
        service("svc1", "ns1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}]),
        service("svc2", "ns2", clusterIP="172.30.0.42", ports=[{"name": "p8080", "port": 8080}]),
        service("svc3", "ns3", clusterIP="172.30.0.43", ports=[{"name": "p8081", "port": 8081}]),
    ]
    slices = [
        endpoint_slice("svc1", _many("10.0", 499), P80, namespace="ns1"),
        endpoint_slice("svc2", _many("10.1", 499), [{"name": "p8080", "port": 8080}], namespace="ns2"),
    ]
    below = lines(run(services, slices, masquerade_all=True))
    assert ("-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 "
            "-m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80") in below

    slices.append(endpoint_slice(
        "svc3", [{"addresses": [ip]} for ip in ("203.0.113.4", "203.0.113.8", "203.0.113.12")],
        [{"name": "p8081", "port": 8081}], namespace="ns3"))
    above = lines(run(services, slices, masquerade_all=True))
    assert "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80" in above
    assert "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081" in above
    assert not any(line.startswith("-A KUBE-SEP-") and "--comment" in line for line in above)


# -------------------------------------------------------------- stale chains


def test_stale_service_chains_are_flushed_and_deleted():
    """TestSyncProxyRulesRepeated: after svc2 is deleted its SVC and SEP chains go."""
    existing = ["KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SNQ3ZNILQDEJNDQO", "KUBE-SVC-2VJB64SDSIJUP5T6",
                "KUBE-SEP-UHEGFW77JX3KXTOV", "KUBE-MARK-MASQ", "KUBE-KUBELET-CANARY", "DOCKER"]
    result = render(
        [service("svc1", clusterIP="172.30.0.41", ports=[{"name": "p80", "port": 80}])],
        [endpoint_slice("svc1", [{"addresses": ["10.0.1.1"]}], P80)],
        ProxyConfig(**BASE_CONFIG),
        existing_nat_chains=existing,
    )
    assert result.deleted_chains == ["KUBE-SEP-UHEGFW77JX3KXTOV", "KUBE-SVC-2VJB64SDSIJUP5T6"]
    out = lines(result)
    for chain in result.deleted_chains:
        assert f":{chain} - [0:0]" in out and f"-X {chain}" in out
    assert not any(line.startswith("-X ") and "UHEG" not in line and "2VJB" not in line for line in out)
    nat = next(t for t in parse(result.text) if t.name == "nat")
    assert {c.name for c in nat.chains if c.deleted} == set(result.deleted_chains)


# --------------------------------------------------------------------- sorting


def test_sort_matches_same_service_in_different_comment_styles():
    """TestSortIPTablesRules: "correctly match same service name in different styles of comments"."""
    given = """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2
-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3
-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2
-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1
-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2
-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3
COMMIT
"""
    assert sort_restore_text(given) == """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2
-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1
-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2
-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3
-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2
-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3
COMMIT
"""


def test_sort_preserves_unexpected_lines():
    """TestSortIPTablesRules: "unexpected junk lines are preserved"."""
    given = """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-AAAAA - [0:0]
:KUBE-ZZZZZ - [0:0]
:WHY-IS-THIS-CHAIN-HERE - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-AAAAA -m comment --comment "mystery chain number 2"
COMMIT
"""
    assert sort_restore_text(given) == """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-AAAAA - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-ZZZZZ - [0:0]
:WHY-IS-THIS-CHAIN-HERE - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-AAAAA -m comment --comment "mystery chain number 2"
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"
-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT
COMMIT
"""


def test_sort_rejects_rules_for_undeclared_chains():
    with pytest.raises(ValueError):
        sort_restore_text("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SVC-X -j ACCEPT\nCOMMIT\n")
