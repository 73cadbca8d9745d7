"""UDP/SCTP conntrack cleanup, checked against upstream's cleanup rules (pkg/proxy/conntrack,
cleanup.go/cleanup_test.go of v1.28-v1.30): exact `conntrack -D` commands."""

from __future__ import annotations

import subprocess

from kproxy.proxy.conntrack import Conntrack, PortState, cleanup_commands, port_states
from kproxy.proxy.render import ProxyConfig, digest

CONFIG = ProxyConfig(cluster_cidr="10.0.0.0/8", node_name="test-node", node_ips=["192.168.0.2"])
KEY = ("ns1", "dns", "udp", "UDP")


def state(*serving: str, node_port=0, external_ips=(), lb_ips=(), protocol="UDP", cluster_ip="10.96.0.20"):
    return PortState(protocol, cluster_ip, node_port, tuple(external_ips), tuple(lb_ips), frozenset(serving))


# ------------------------------------------------------------ stale endpoints


def test_endpoint_that_stops_serving_loses_its_nat_entries_on_every_address():
    """upstream: "DeletedUDPEndpoints clears conntrack entries for all IPs and NodePorts"."""
    kw = dict(node_port=30053, external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"])
    old = {KEY: state("10.244.0.5:53", "10.244.0.6:53", **kw)}
    new = {KEY: state("10.244.0.6:53", **kw)}
    assert cleanup_commands(old, new) == [
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.0.5"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "192.168.99.11", "--dst-nat", "10.244.0.5"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "1.2.3.4", "--dst-nat", "10.244.0.5"],
    ]


def test_endpoint_port_change_counts_as_a_new_endpoint():
    old = {KEY: state("10.244.0.5:53")}
    new = {KEY: state("10.244.0.5:5353")}
    assert cleanup_commands(old, new) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
    ]


def test_last_endpoint_gone_clears_its_entries():
    old = {KEY: state("10.244.0.5:53")}
    new = {KEY: state()}
    assert cleanup_commands(old, new) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
    ]


def test_unchanged_endpoints_need_nothing():
    old = {KEY: state("10.244.0.5:53", node_port=30053)}
    assert cleanup_commands(old, dict(old)) == []
    assert cleanup_commands({}, {}) == []


# ------------------------------------------------------------ newly active ports


def test_port_getting_its_first_endpoint_clears_every_address_and_node_port():
    """upstream: "NewlyActiveUDPServices clears entries for all IPs and NodePorts"."""
    kw = dict(node_port=30053, external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"])
    old = {KEY: state(**kw)}
    new = {KEY: state("10.244.0.5:53", **kw)}
    assert cleanup_commands(old, new) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "192.168.99.11"],
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "1.2.3.4"],
        ["conntrack", "-D", "-p", "udp", "--orig-port-dst", "30053"],
    ]


def test_new_port_with_endpoints_is_newly_active():
    assert cleanup_commands({}, {KEY: state("10.244.0.5:53")}) == [
        ["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"],
    ]


def test_new_port_without_endpoints_needs_nothing():
    assert cleanup_commands({}, {KEY: state()}) == []


# ------------------------------------------------------------ deleted ports


def test_deleted_port_clears_its_cluster_ip():
    """upstream: DeletedUDPClusterIPs."""
    old = {KEY: state("10.244.0.5:53", node_port=30053)}
    assert cleanup_commands(old, {}) == [["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"]]


def test_ports_sharing_an_address_clear_it_once():
    other = ("ns1", "dns", "udp2", "UDP")
    new = {KEY: state("10.244.0.5:53"), other: state("10.244.0.5:54")}
    assert cleanup_commands({}, new) == [["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"]]


def test_sctp_uses_its_own_protocol():
    key = ("ns1", "sig", "", "SCTP")
    old = {key: state("10.244.0.5:3868", protocol="SCTP", node_port=30868)}
    new = {key: state("10.244.0.6:3868", protocol="SCTP", node_port=30868)}
    assert cleanup_commands(old, new) == [
        ["conntrack", "-D", "-p", "sctp", "--orig-port-dst", "30868", "--dst-nat", "10.244.0.5"],
        ["conntrack", "-D", "-p", "sctp", "--orig-dst", "10.96.0.20", "--dst-nat", "10.244.0.5"],
    ]


# ------------------------------------------------------------ port states from objects


def _service(protocol="UDP", **spec):
    return {
        "kind": "Service",
        "metadata": {"name": "dns", "namespace": "ns1"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "udp", "port": 53, "protocol": protocol}], **spec},
    }


def _slice(*endpoints, protocol="UDP"):
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": "dns-1", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "udp", "port": 53, "protocol": protocol}],
        "endpoints": list(endpoints),
    }


def _ep(ip, **conditions):
    return {"addresses": [ip], "conditions": conditions}


def test_port_states_keep_serving_endpoints_whatever_the_policy():
    """Terminating but serving endpoints still count (upstream's IsServing), as do remote
    endpoints of an internalTrafficPolicy Local service."""
    svc = _service(type="NodePort", internalTrafficPolicy="Local", externalIPs=["192.168.99.11"])
    svc["spec"]["ports"][0]["nodePort"] = 30053
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    eps = _slice(
        _ep("10.244.0.5"),
        _ep("10.244.0.6", ready=False, serving=True, terminating=True),
        _ep("10.244.0.7", ready=False, serving=False, terminating=True),
        _ep("10.244.0.8", ready=False, serving=False),
    )
    assert port_states(digest([svc], [eps], CONFIG)) == {
        KEY: PortState("UDP", "10.96.0.20", 30053, ("192.168.99.11",), ("1.2.3.4",),
                       frozenset({"10.244.0.5:53", "10.244.0.6:53"})),
    }


def test_port_states_follow_publish_not_ready_addresses():
    svc = _service(publishNotReadyAddresses=True)
    states = port_states(digest([svc], [_slice(_ep("10.244.0.8", ready=False, serving=False))], CONFIG))
    assert states[KEY].serving == {"10.244.0.8:53"}


def test_port_states_ignore_tcp_and_unproxied_services():
    assert port_states(digest([_service("TCP")], [_slice(_ep("10.244.0.5"), protocol="TCP")], CONFIG)) == {}
    assert port_states(digest([_service(clusterIP="None")], [_slice(_ep("10.244.0.5"))], CONFIG)) == {}


# ------------------------------------------------------------ executor


class FakeRun:
    def __init__(self, results=None):
        self.calls: list[list[str]] = []
        self.results = results or {}

    def __call__(self, args):
        self.calls.append(args)
        rc, err = self.results.get(args[-1], (0, ""))
        return subprocess.CompletedProcess(args, rc, "", err)


def test_executor_runs_the_commands_and_reports_real_failures_only():
    miss = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"
    run = FakeRun({"10.0.0.1": (1, miss), "10.0.0.2": (1, "conntrack v1.4.7: Operation not permitted\n")})
    commands = [["conntrack", "-D", "-p", "udp", "--orig-dst", ip] for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3")]
    assert Conntrack(run=run).execute(commands) == [commands[1]]
    assert run.calls == commands


def test_executor_cleanup_returns_what_it_ran():
    run = FakeRun()
    commands = Conntrack(run=run).cleanup({}, {KEY: state("10.244.0.5:53")})
    assert commands == run.calls == [["conntrack", "-D", "-p", "udp", "--orig-dst", "10.96.0.20"]]


def test_executor_survives_a_missing_binary():
    def run(args):
        raise FileNotFoundError(args[0])

    assert Conntrack(run=run).execute([["conntrack", "-D"]]) == [["conntrack", "-D"]]
