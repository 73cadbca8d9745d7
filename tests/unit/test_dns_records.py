"""ClusterRecords.resolve (kproxy/dns/records.py): the spec's records, answered as CoreDNS does."""

from __future__ import annotations

import pytest

from kproxy.dns.records import Answer, ClusterRecords, dashed, is_reverse_name

SOA = ("cluster.local.", 30, "SOA", "ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 30")
REV_SOA = ("in-addr.arpa.", 30, "SOA", "ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. 7 7200 1800 86400 30")


def svc(ns, name, **spec):
    return {"kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def eps(ns, name, svc_name, endpoints, ports):
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc_name}},
            "ports": ports, "endpoints": endpoints}


def ep(ip, ready=True, **extra):
    conditions = {} if ready is None else {"ready": ready}
    return {"addresses": [ip], "conditions": conditions, **extra}


def pod(ns, name, ip, **spec):
    return {"kind": "Pod", "metadata": {"namespace": ns, "name": name}, "spec": spec, "status": {"podIP": ip}}


SERVICES = [
    svc("default", "web", type="ClusterIP", clusterIP="10.96.0.20",
        ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
               {"name": "dns", "port": 53, "protocol": "UDP"}]),
    svc("default", "db", clusterIP="None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
    svc("default", "pub", clusterIP="None", publishNotReadyAddresses=True,
        ports=[{"name": "peer", "port": 2380, "protocol": "TCP"}]),
    svc("default", "empty", clusterIP="None", ports=[{"name": "x", "port": 1}]),
    svc("default", "ext", type="ExternalName", externalName="www.example.com"),
    svc("default", "alias", type="ExternalName", externalName="web.default.svc.cluster.local"),
    svc("default", "v6", clusterIP="fd00::10", clusterIPs=["fd00::10"], ports=[{"name": "http", "port": 80}]),
    svc("kube-system", "kube-dns", clusterIP="10.96.0.10",
        ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
               {"name": "metrics", "port": 9153, "protocol": "TCP"}]),
]
SLICES = [
    eps("default", "web-1", "web", [ep("10.244.2.3", targetRef={"kind": "Pod", "name": "web-a"})],
        [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
    eps("default", "db-1", "db", [
        ep("10.244.1.5", targetRef={"kind": "Pod", "namespace": "default", "name": "db-0"}),
        ep("10.244.1.6", hostname="db-1"),
        ep("10.244.1.7", ready=None),                  # no ready condition: counts as ready
        ep("10.244.1.8", ready=False),                 # not ready: not published
    ], [{"name": "pg", "port": 5432, "protocol": "TCP"}]),
    eps("default", "pub-1", "pub", [ep("10.244.3.1", ready=False), ep("10.244.3.2", ready=False)],
        [{"name": "peer", "port": 2380, "protocol": "TCP"}]),
    eps("default", "empty-1", "empty", [ep("10.244.4.1", ready=False)], [{"name": "x", "port": 1}]),
    eps("kube-system", "kube-dns-1", "kube-dns", [ep("10.244.0.2")],
        [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
         {"name": "metrics", "port": 9153, "protocol": "TCP"}]),
]
PODS = [
    pod("default", "db-0", "10.244.1.5", hostname="db-0", subdomain="db"),
    pod("default", "web-a", "10.244.2.3"),
    pod("default", "lonely", "10.244.9.9"),            # behind no Service
]
NAMESPACES = [{"kind": "Namespace", "metadata": {"name": "quiet"}}]


@pytest.fixture
def rec():
    return ClusterRecords(SERVICES, SLICES, PODS, namespaces=NAMESPACES, serial=7)


def A(name, *ips, ttl=30, rtype="A"):
    return [(name, ttl, rtype, ip) for ip in ips]


def nodata(zone_soa=SOA):
    return Answer("NOERROR", authority=[zone_soa])


def nxdomain(zone_soa=SOA):
    return Answer("NXDOMAIN", authority=[zone_soa])


# ================================================================== ClusterIP Services


def test_clusterip_a(rec):
    assert rec.resolve("web.default.svc.cluster.local.", "A") == Answer(
        answer=A("web.default.svc.cluster.local.", "10.96.0.20"))


def test_names_are_case_insensitive_and_the_trailing_dot_optional(rec):
    # the owner name echoes the question's spelling, as CoreDNS does
    assert rec.resolve("Web.DEFAULT.svc.cluster.local", "a") == Answer(
        answer=A("Web.DEFAULT.svc.cluster.local.", "10.96.0.20"))


def test_kube_dns_is_a_service_like_any_other(rec):
    assert rec.resolve("kube-dns.kube-system.svc.cluster.local", "A").answer == A(
        "kube-dns.kube-system.svc.cluster.local.", "10.96.0.10")


def test_aaaa_for_an_ipv4_service_is_nodata_with_soa(rec):
    assert rec.resolve("web.default.svc.cluster.local", "AAAA") == nodata()


def test_other_types_for_an_existing_service_are_nodata(rec):
    for qtype in ("TXT", "MX", "NS", "PTR", "ANY"):
        assert rec.resolve("web.default.svc.cluster.local", qtype) == nodata(), qtype


def test_ipv6_clusterip_aaaa_and_ip6_arpa_ptr(rec):
    assert rec.resolve("v6.default.svc.cluster.local", "AAAA").answer == A(
        "v6.default.svc.cluster.local.", "fd00::10", rtype="AAAA")
    assert rec.resolve("v6.default.svc.cluster.local", "A") == nodata()
    rev = ".".join(reversed("fd00" + "0" * 26 + "10")) + ".ip6.arpa."
    assert rec.resolve(rev, "PTR").answer == [(rev, 30, "PTR", "v6.default.svc.cluster.local.")]


# ================================================================== headless Services


def test_headless_a_lists_ready_endpoints_only(rec):
    # 10.244.1.7 has no ready condition (counts as ready); 10.244.1.8 is not ready
    assert rec.resolve("db.default.svc.cluster.local", "A").answer == A(
        "db.default.svc.cluster.local.", "10.244.1.5", "10.244.1.6", "10.244.1.7")


def test_headless_publish_not_ready_addresses_lists_all(rec):
    assert rec.resolve("pub.default.svc.cluster.local", "A").answer == A(
        "pub.default.svc.cluster.local.", "10.244.3.1", "10.244.3.2")


def test_headless_without_ready_endpoints_is_nxdomain(rec):
    assert rec.resolve("empty.default.svc.cluster.local", "A") == nxdomain()


def test_headless_aaaa_with_only_ipv4_endpoints_is_nodata(rec):
    assert rec.resolve("db.default.svc.cluster.local", "AAAA") == nodata()


def test_endpoint_hostname_from_the_endpoint(rec):
    assert rec.resolve("db-1.db.default.svc.cluster.local", "A").answer == A(
        "db-1.db.default.svc.cluster.local.", "10.244.1.6")


def test_endpoint_hostname_from_pod_hostname_and_subdomain(rec):
    assert rec.resolve("db-0.db.default.svc.cluster.local", "A").answer == A(
        "db-0.db.default.svc.cluster.local.", "10.244.1.5")


def test_endpoint_without_hostname_is_named_by_its_dashed_ip(rec):
    assert rec.resolve("10-244-1-7.db.default.svc.cluster.local", "A").answer == A(
        "10-244-1-7.db.default.svc.cluster.local.", "10.244.1.7")
    assert dashed("fd00::5") == "fd00--5"


def test_endpoint_names_of_unknown_or_unready_endpoints_are_nxdomain(rec):
    assert rec.resolve("nobody.db.default.svc.cluster.local", "A") == nxdomain()
    assert rec.resolve("10-244-1-8.db.default.svc.cluster.local", "A") == nxdomain()


def test_endpoint_names_of_a_clusterip_service_answer_too(rec):
    # CoreDNS serves endpoint.service names for any Service with endpoints, not only headless
    assert rec.resolve("10-244-2-3.web.default.svc.cluster.local", "A").answer == A(
        "10-244-2-3.web.default.svc.cluster.local.", "10.244.2.3")


def test_pod_subdomain_of_a_headless_service_without_endpoint_gets_no_name():
    pods = [pod("default", "p", "10.244.5.5", hostname="h", subdomain="db")]
    slices = [eps("default", "db-1", "db", [ep("10.244.5.5", ready=False)], [{"name": "pg", "port": 5432}])]
    rec = ClusterRecords(SERVICES, slices, pods, serial=7)
    assert rec.resolve("h.db.default.svc.cluster.local", "A").rcode == "NXDOMAIN"


# ================================================================== SRV


def test_srv_clusterip_named_port_targets_the_service(rec):
    assert rec.resolve("_http._tcp.web.default.svc.cluster.local", "SRV") == Answer(
        answer=[("_http._tcp.web.default.svc.cluster.local.", 30, "SRV", "0 100 80 web.default.svc.cluster.local.")],
        additional=A("web.default.svc.cluster.local.", "10.96.0.20"))


def test_srv_matches_protocol_and_port_case_insensitively(rec):
    assert rec.resolve("_DNS._UDP.web.default.svc.cluster.local", "SRV").answer == [
        ("_DNS._UDP.web.default.svc.cluster.local.", 30, "SRV", "0 100 53 web.default.svc.cluster.local.")]
    assert rec.resolve("_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV").answer == [
        ("_dns._udp.kube-dns.kube-system.svc.cluster.local.", 30, "SRV",
         "0 100 53 kube-dns.kube-system.svc.cluster.local.")]


def test_srv_unknown_port_or_wrong_protocol_is_nxdomain(rec):
    assert rec.resolve("_https._tcp.web.default.svc.cluster.local", "SRV") == nxdomain()
    assert rec.resolve("_http._udp.web.default.svc.cluster.local", "SRV") == nxdomain()


def test_srv_on_the_bare_service_name_lists_every_port(rec):
    # CoreDNS: one SRV per port, weights shared out (100 / number of records)
    assert rec.resolve("web.default.svc.cluster.local", "SRV").answer == [
        ("web.default.svc.cluster.local.", 30, "SRV", "0 50 80 web.default.svc.cluster.local."),
        ("web.default.svc.cluster.local.", 30, "SRV", "0 50 53 web.default.svc.cluster.local.")]


def test_srv_headless_one_per_ready_endpoint_with_endpoint_port(rec):
    got = rec.resolve("_pg._tcp.db.default.svc.cluster.local", "SRV")
    assert got.rcode == "NOERROR"
    assert got.answer == [
        ("_pg._tcp.db.default.svc.cluster.local.", 30, "SRV", "0 33 5432 db-0.db.default.svc.cluster.local."),
        ("_pg._tcp.db.default.svc.cluster.local.", 30, "SRV", "0 33 5432 db-1.db.default.svc.cluster.local."),
        ("_pg._tcp.db.default.svc.cluster.local.", 30, "SRV",
         "0 33 5432 10-244-1-7.db.default.svc.cluster.local.")]
    assert got.additional == [
        ("db-0.db.default.svc.cluster.local.", 30, "A", "10.244.1.5"),
        ("db-1.db.default.svc.cluster.local.", 30, "A", "10.244.1.6"),
        ("10-244-1-7.db.default.svc.cluster.local.", 30, "A", "10.244.1.7")]


def test_srv_headless_uses_the_endpoint_port_not_the_service_port():
    services = [svc("default", "h", clusterIP="None", ports=[{"name": "http", "port": 80, "targetPort": 8080}])]
    slices = [eps("default", "h-1", "h", [ep("10.0.0.1")], [{"name": "http", "port": 8080, "protocol": "TCP"}])]
    rec = ClusterRecords(services, slices, [], serial=7)
    assert rec.resolve("_http._tcp.h.default.svc.cluster.local", "SRV").answer == [
        ("_http._tcp.h.default.svc.cluster.local.", 30, "SRV", "0 100 8080 10-0-0-1.h.default.svc.cluster.local.")]


def test_a_query_on_an_srv_name_answers_the_address(rec):
    assert rec.resolve("_http._tcp.web.default.svc.cluster.local", "A").answer == A(
        "_http._tcp.web.default.svc.cluster.local.", "10.96.0.20")


# ================================================================== PTR


def test_ptr_for_a_cluster_ip(rec):
    assert rec.resolve("20.0.96.10.in-addr.arpa.", "PTR") == Answer(
        answer=[("20.0.96.10.in-addr.arpa.", 30, "PTR", "web.default.svc.cluster.local.")])


def test_ptr_for_a_headless_endpoint_with_hostname(rec):
    assert rec.resolve("5.1.244.10.in-addr.arpa", "PTR").answer == [
        ("5.1.244.10.in-addr.arpa.", 30, "PTR", "db-0.db.default.svc.cluster.local.")]
    assert rec.resolve("6.1.244.10.in-addr.arpa", "PTR").answer == [
        ("6.1.244.10.in-addr.arpa.", 30, "PTR", "db-1.db.default.svc.cluster.local.")]


def test_ptr_for_endpoints_without_hostname_uses_the_dashed_name(rec):
    # CoreDNS answers every published endpoint IP of any Service
    assert rec.resolve("7.1.244.10.in-addr.arpa", "PTR").answer == [
        ("7.1.244.10.in-addr.arpa.", 30, "PTR", "10-244-1-7.db.default.svc.cluster.local.")]
    assert rec.resolve("3.2.244.10.in-addr.arpa", "PTR").answer == [
        ("3.2.244.10.in-addr.arpa.", 30, "PTR", "10-244-2-3.web.default.svc.cluster.local.")]


def test_ptr_for_pods_behind_no_service_and_unready_endpoints_is_nxdomain(rec):
    assert rec.resolve("9.9.244.10.in-addr.arpa", "PTR") == nxdomain(REV_SOA)
    assert rec.resolve("8.1.244.10.in-addr.arpa", "PTR") == nxdomain(REV_SOA)


def test_reverse_names_that_are_not_addresses(rec):
    assert rec.resolve("in-addr.arpa", "PTR") == nodata(REV_SOA)
    assert rec.resolve("96.10.in-addr.arpa", "PTR") == nxdomain(REV_SOA)


def test_other_types_on_an_existing_reverse_name_are_nodata(rec):
    assert rec.resolve("20.0.96.10.in-addr.arpa", "A") == nodata(REV_SOA)


# ================================================================== ExternalName


@pytest.mark.parametrize("qtype", ["A", "AAAA", "CNAME", "TXT", "SRV", "MX"])
def test_externalname_is_a_cname_for_any_type(rec, qtype):
    assert rec.resolve("ext.default.svc.cluster.local", qtype) == Answer(
        answer=[("ext.default.svc.cluster.local.", 30, "CNAME", "www.example.com.")])


def test_externalname_inside_the_cluster_is_followed(rec):
    assert rec.resolve("alias.default.svc.cluster.local", "A").answer == [
        ("alias.default.svc.cluster.local.", 30, "CNAME", "web.default.svc.cluster.local."),
        ("web.default.svc.cluster.local.", 30, "A", "10.96.0.20")]


def test_externalname_inside_the_cluster_without_data_is_nodata(rec):
    assert rec.resolve("alias.default.svc.cluster.local", "AAAA") == nodata()


def test_externalname_has_no_endpoint_names(rec):
    assert rec.resolve("x.ext.default.svc.cluster.local", "A") == nxdomain()


def test_externalname_loops_end():
    services = [svc("default", "a", type="ExternalName", externalName="b.default.svc.cluster.local"),
                svc("default", "b", type="ExternalName", externalName="a.default.svc.cluster.local")]
    rec = ClusterRecords(services, [], [], serial=7)
    assert rec.resolve("a.default.svc.cluster.local", "A") == nodata()


# ================================================================== pods


def test_pod_a_record_for_any_well_formed_ip(rec):
    # `pods insecure` (kubeadm): no check that such a pod exists
    assert rec.resolve("1-2-3-4.default.pod.cluster.local", "A") == Answer(
        answer=A("1-2-3-4.default.pod.cluster.local.", "1.2.3.4"))
    assert rec.resolve("10-244-9-9.quiet.pod.cluster.local", "A").answer == A(
        "10-244-9-9.quiet.pod.cluster.local.", "10.244.9.9")


def test_pod_ipv6_name(rec):
    assert rec.resolve("fd00--5.default.pod.cluster.local", "AAAA").answer == A(
        "fd00--5.default.pod.cluster.local.", "fd00::5", rtype="AAAA")


def test_pod_names_that_are_not_ips_or_in_no_namespace_are_nxdomain(rec):
    assert rec.resolve("web-a.default.pod.cluster.local", "A") == nxdomain()
    assert rec.resolve("1-2-3-256.default.pod.cluster.local", "A") == nxdomain()
    assert rec.resolve("1-2-3-4.nowhere.pod.cluster.local", "A") == nxdomain()


def test_pod_aaaa_for_an_ipv4_name_is_nodata(rec):
    assert rec.resolve("1-2-3-4.default.pod.cluster.local", "AAAA") == nodata()


def test_pod_modes_verified_and_disabled():
    verified = ClusterRecords([], [], PODS, serial=7, pod_mode="verified")
    assert verified.resolve("10-244-9-9.default.pod.cluster.local", "A").answer == A(
        "10-244-9-9.default.pod.cluster.local.", "10.244.9.9")
    assert verified.resolve("1-2-3-4.default.pod.cluster.local", "A") == nxdomain()
    disabled = ClusterRecords([], [], PODS, serial=7, pod_mode="disabled")
    assert disabled.resolve("10-244-9-9.default.pod.cluster.local", "A") == nxdomain()


# ================================================================== schema version, SOA, negative answers


def test_dns_version_txt(rec):
    assert rec.resolve("dns-version.cluster.local", "TXT") == Answer(
        answer=[("dns-version.cluster.local.", 28800, "TXT", '"1.1.0"')])
    assert rec.resolve("dns-version.cluster.local", "A") == nodata()


def test_soa_at_the_apex(rec):
    assert rec.resolve("cluster.local", "SOA") == Answer(answer=[SOA])


@pytest.mark.parametrize("name", [
    "cluster.local",                    # the zone apex
    "svc.cluster.local",
    "pod.cluster.local",
    "default.svc.cluster.local",        # an existing namespace
    "quiet.svc.cluster.local",          # a Namespace object with nothing in it
    "kube-public.svc.cluster.local",    # built-in namespace
    "default.pod.cluster.local",
])
def test_existing_names_without_records_are_nodata(rec, name):
    assert rec.resolve(name, "A") == nodata()


@pytest.mark.parametrize("name", [
    "nope.default.svc.cluster.local",   # no such Service
    "nowhere.svc.cluster.local",        # no such namespace
    "web.nowhere.svc.cluster.local",
    "foo.cluster.local",                # neither svc nor pod
    "web.default.cluster.local",
    "a.b.c.web.default.svc.cluster.local",  # too long
])
def test_missing_names_are_nxdomain(rec, name):
    assert rec.resolve(name, "A") == nxdomain()
    assert rec.resolve(name, "AAAA") == nxdomain()


def test_soa_ttl_is_capped_at_300_and_minimum_is_the_ttl():
    rec = ClusterRecords([], [], [], ttl=3600, serial=9, domain="corp.internal")
    assert rec.resolve("x.corp.internal", "A").authority == [
        ("corp.internal.", 300, "SOA", "ns.dns.corp.internal. hostmaster.corp.internal. 9 7200 1800 86400 3600")]


def test_another_cluster_domain():
    rec = ClusterRecords(SERVICES, [], [], domain="corp.internal.", serial=7)
    assert rec.resolve("web.default.svc.corp.internal", "A").answer == A("web.default.svc.corp.internal.", "10.96.0.20")
    assert rec.resolve("web.default.svc.cluster.local", "A").rcode == "REFUSED"


def test_is_cluster_name(rec):
    assert rec.is_cluster_name("web.default.svc.cluster.local")
    assert rec.is_cluster_name("CLUSTER.LOCAL.")
    assert rec.is_cluster_name("1.0.96.10.in-addr.arpa.")
    assert not rec.is_cluster_name("example.com")
    assert not rec.is_cluster_name("notcluster.local")
    assert is_reverse_name("1.0.96.10.in-addr.arpa") and not is_reverse_name("cluster.local")
    assert rec.resolve("example.com", "A") == Answer("REFUSED")
