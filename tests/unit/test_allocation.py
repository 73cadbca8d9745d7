"""ClusterIP, NodePort and pod IP allocation kept in the SQLite store (controllers/allocation.py).

Small ranges (a /28 service CIDR, five node ports) let the tests exhaust them and check the
exact set of values handed out instead of sampling a few random ones.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from kproxy.controllers.allocation import (
    CLUSTER_IPS,
    NODE_PORTS,
    POD_IPS,
    AllocationError,
    ServiceRanges,
    allocate_cluster_ip,
    allocate_node_port,
    allocate_pod_ip,
    allocate_service,
    release_owner,
    release_pod_ip,
)
from kproxy.store.sqlite import SqliteStore

SMALL = ServiceRanges(service_cidr="10.96.0.0/28", node_ports=(30000, 30004))
DEFAULT = ServiceRanges()


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "s.db")
    yield s
    s.close()


@pytest.fixture
def rng():
    return random.Random(1234)


def held(store, prefix):
    """{value: owner} of one allocation table."""
    return {k[len(prefix):]: v for k, v in store.list(prefix)}


def service(name="web", ns="default", **spec):
    spec.setdefault("ports", [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


# ------------------------------------------------------------------ cluster IPs


def test_service_range_nth_ip():
    assert SMALL.nth_ip(1) == "10.96.0.1"
    assert SMALL.nth_ip(10) == "10.96.0.10"
    assert DEFAULT.network == ipaddress.ip_network("10.96.0.0/12")
    assert DEFAULT.node_ports == (30000, 32767)


def test_random_cluster_ips_fill_the_range_except_network_broadcast_and_reserved(store, rng):
    got = []
    with store.transaction() as txn:
        for i in range(12):  # a /28 has 14 hosts; .1 and .10 are reserved
            got.append(allocate_cluster_ip(txn, SMALL, f"default/s{i}", None, rng))
    expected = {f"10.96.0.{n}" for n in range(2, 15)} - {"10.96.0.10"}
    assert len(got) == 12
    assert set(got) == expected
    assert held(store, CLUSTER_IPS) == {ip: f"default/s{i}" for i, ip in enumerate(got)}


def test_full_cluster_ip_range_raises(store, rng):
    with store.transaction() as txn:
        for i in range(12):
            allocate_cluster_ip(txn, SMALL, f"default/s{i}", None, rng)
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_cluster_ip(txn, SMALL, "default/late", None, rng)
    assert e.value.field == "spec.clusterIPs"
    assert e.value.detail == "failed to allocate a serviceIP: range is full"


def test_random_cluster_ip_in_default_range(store, rng):
    with store.transaction() as txn:
        ips = [allocate_cluster_ip(txn, DEFAULT, f"default/s{i}", None, rng) for i in range(50)]
    net = ipaddress.ip_network("10.96.0.0/12")
    assert len(set(ips)) == 50
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        assert addr in net
        assert addr not in (net.network_address, net.broadcast_address)
        assert ip not in ("10.96.0.1", "10.96.0.10")


def test_reserved_ips_are_given_when_requested(store, rng):
    with store.transaction() as txn:
        assert allocate_cluster_ip(txn, DEFAULT, "default/kubernetes", "10.96.0.1", rng) == "10.96.0.1"
        assert allocate_cluster_ip(txn, DEFAULT, "kube-system/kube-dns", "10.96.0.10", rng) == "10.96.0.10"
    assert held(store, CLUSTER_IPS) == {"10.96.0.1": "default/kubernetes", "10.96.0.10": "kube-system/kube-dns"}


def test_requested_cluster_ip_is_honoured_and_idempotent_for_its_owner(store, rng):
    with store.transaction() as txn:
        assert allocate_cluster_ip(txn, DEFAULT, "default/web", "10.96.5.5", rng) == "10.96.5.5"
    with store.transaction() as txn:  # asking again for the same owner is fine
        assert allocate_cluster_ip(txn, DEFAULT, "default/web", "10.96.5.5", rng) == "10.96.5.5"
    assert held(store, CLUSTER_IPS) == {"10.96.5.5": "default/web"}


def test_cluster_ip_taken_by_another_owner(store, rng):
    with store.transaction() as txn:
        allocate_cluster_ip(txn, DEFAULT, "default/web", "10.96.5.5", rng)
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_cluster_ip(txn, DEFAULT, "default/other", "10.96.5.5", rng)
    assert e.value.field == "spec.clusterIPs"
    assert e.value.value == ["10.96.5.5"]
    assert e.value.detail == "failed to allocate IP 10.96.5.5: provided IP is already allocated"
    assert str(e.value) == e.value.detail
    assert held(store, CLUSTER_IPS) == {"10.96.5.5": "default/web"}


@pytest.mark.parametrize("ip", ["10.112.0.1", "192.168.1.1", "10.96.0.0", "10.111.255.255"])
def test_cluster_ip_outside_range(store, rng, ip):
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_cluster_ip(txn, DEFAULT, "default/web", ip, rng)
    assert e.value.field == "spec.clusterIPs"
    assert e.value.detail == (f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                              "The range of valid IPs is 10.96.0.0/12")
    assert held(store, CLUSTER_IPS) == {}


# ------------------------------------------------------------------ node ports


def test_random_node_ports_fill_the_range(store, rng):
    with store.transaction() as txn:
        ports = [allocate_node_port(txn, SMALL, f"default/s{i}", None, rng, "spec.ports[0].nodePort")
                 for i in range(5)]
    assert sorted(ports) == [30000, 30001, 30002, 30003, 30004]
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_node_port(txn, SMALL, "default/late", None, rng, "spec.ports[0].nodePort")
    assert e.value.detail == "failed to allocate a nodePort: range is full"


def test_random_node_ports_in_default_range(store, rng):
    with store.transaction() as txn:
        ports = [allocate_node_port(txn, DEFAULT, f"default/s{i}", None, rng, "f") for i in range(100)]
    assert len(set(ports)) == 100
    assert all(30000 <= p <= 32767 for p in ports)


def test_requested_node_port_is_honoured(store, rng):
    with store.transaction() as txn:
        assert allocate_node_port(txn, DEFAULT, "default/web", 30080, rng, "spec.ports[0].nodePort") == 30080
    assert held(store, NODE_PORTS) == {"30080": "default/web"}


def test_node_port_taken_by_another_owner(store, rng):
    with store.transaction() as txn:
        allocate_node_port(txn, DEFAULT, "default/web", 30080, rng, "spec.ports[0].nodePort")
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_node_port(txn, DEFAULT, "default/other", 30080, rng, "spec.ports[0].nodePort")
    assert e.value.field == "spec.ports[0].nodePort"
    assert e.value.value == 30080
    assert e.value.detail == "provided port is already allocated"


def test_allocate_service_reports_the_index_of_the_clashing_port(store, rng):
    with store.transaction() as txn:
        allocate_service(txn, service("a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]),
                         None, DEFAULT, rng)
    svc = service("b", type="NodePort", ports=[{"name": "x", "port": 81, "nodePort": 30081},
                                               {"name": "y", "port": 82, "nodePort": 30080}])
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    assert e.value.field == "spec.ports[1].nodePort"
    assert e.value.detail == "provided port is already allocated"
    # the transaction rolled back: 30081 was not kept for b
    assert held(store, NODE_PORTS) == {"30080": "default/a"}


# ------------------------------------------------------------------ allocate_service


def test_cluster_ip_service_gets_an_ip_and_no_node_ports(store, rng):
    with store.transaction() as txn:
        svc = allocate_service(txn, service(type="ClusterIP"), None, DEFAULT, rng)
    ip = svc["spec"]["clusterIP"]
    assert svc["spec"]["clusterIPs"] == [ip]
    assert "nodePort" not in svc["spec"]["ports"][0]
    assert "healthCheckNodePort" not in svc["spec"]
    assert held(store, CLUSTER_IPS) == {ip: "default/web"}
    assert held(store, NODE_PORTS) == {}


def test_requested_cluster_ip_in_spec(store, rng):
    with store.transaction() as txn:
        svc = allocate_service(txn, service(clusterIP="10.96.100.100"), None, DEFAULT, rng)
    assert svc["spec"]["clusterIP"] == "10.96.100.100"
    assert svc["spec"]["clusterIPs"] == ["10.96.100.100"]


def test_node_port_service_allocates_one_port_per_service_port(store, rng):
    svc = service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080},
                                          {"name": "https", "port": 443}])
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    p0, p1 = svc["spec"]["ports"]
    assert p0["nodePort"] == 30080
    assert 30000 <= p1["nodePort"] <= 32767 and p1["nodePort"] != 30080
    assert held(store, NODE_PORTS) == {"30080": "default/web", str(p1["nodePort"]): "default/web"}


def test_ports_with_the_same_number_share_one_node_port(store, rng):
    svc = service("dns", type="NodePort", ports=[{"name": "dns-tcp", "protocol": "TCP", "port": 53},
                                                 {"name": "dns", "protocol": "UDP", "port": 53}])
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    tcp, udp = svc["spec"]["ports"]
    assert tcp["nodePort"] == udp["nodePort"]


def test_update_keeps_cluster_ip_and_node_ports(store, rng):
    with store.transaction() as txn:
        old = allocate_service(txn, service(type="NodePort"), None, DEFAULT, rng)
    ip, node_port = old["spec"]["clusterIP"], old["spec"]["ports"][0]["nodePort"]
    new = service(type="NodePort")  # as re-applied from the manifest: no clusterIP, no nodePort
    new["spec"]["ports"][0]["targetPort"] = 9090
    with store.transaction() as txn:
        allocate_service(txn, new, old, DEFAULT, rng)
    assert new["spec"]["clusterIP"] == ip
    assert new["spec"]["clusterIPs"] == [ip]
    assert new["spec"]["ports"][0]["nodePort"] == node_port
    assert held(store, CLUSTER_IPS) == {ip: "default/web"}
    assert held(store, NODE_PORTS) == {str(node_port): "default/web"}


def test_update_with_another_node_port_releases_the_old_one(store, rng):
    with store.transaction() as txn:
        old = allocate_service(txn, service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]),
                               None, DEFAULT, rng)
    new = service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30090}])
    with store.transaction() as txn:
        allocate_service(txn, new, old, DEFAULT, rng)
    assert held(store, NODE_PORTS) == {"30090": "default/web"}


def test_node_port_to_cluster_ip_releases_node_ports(store, rng):
    with store.transaction() as txn:
        old = allocate_service(txn, service(type="NodePort"), None, DEFAULT, rng)
    ip = old["spec"]["clusterIP"]
    new = service(type="ClusterIP")
    with store.transaction() as txn:
        allocate_service(txn, new, old, DEFAULT, rng)
    assert "nodePort" not in new["spec"]["ports"][0]
    assert new["spec"]["clusterIP"] == ip
    assert held(store, NODE_PORTS) == {}
    assert held(store, CLUSTER_IPS) == {ip: "default/web"}


def test_load_balancer_local_gets_health_check_node_port(store, rng):
    svc = service(type="LoadBalancer", externalTrafficPolicy="Local")
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    hc, np = svc["spec"]["healthCheckNodePort"], svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= hc <= 32767 and hc != np
    assert held(store, NODE_PORTS) == {str(np): "default/web", str(hc): "default/web"}

    # an update keeps it; switching to Cluster drops and frees it
    again = service(type="LoadBalancer", externalTrafficPolicy="Local")
    with store.transaction() as txn:
        allocate_service(txn, again, svc, DEFAULT, rng)
    assert again["spec"]["healthCheckNodePort"] == hc
    cluster = service(type="LoadBalancer", externalTrafficPolicy="Cluster")
    with store.transaction() as txn:
        allocate_service(txn, cluster, again, DEFAULT, rng)
    assert "healthCheckNodePort" not in cluster["spec"]
    assert held(store, NODE_PORTS) == {str(np): "default/web"}


def test_load_balancer_cluster_policy_has_no_health_check_node_port(store, rng):
    svc = service(type="LoadBalancer", externalTrafficPolicy="Cluster", healthCheckNodePort=31000)
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    assert "healthCheckNodePort" not in svc["spec"]
    assert "31000" not in held(store, NODE_PORTS)


def test_load_balancer_without_node_ports(store, rng):
    svc = service(type="LoadBalancer", allocateLoadBalancerNodePorts=False)
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    assert "nodePort" not in svc["spec"]["ports"][0]
    assert held(store, NODE_PORTS) == {}


def test_headless_service_gets_no_allocation(store, rng):
    svc = service(clusterIP="None")
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["clusterIPs"] == ["None"]
    assert held(store, CLUSTER_IPS) == {}
    assert held(store, NODE_PORTS) == {}


def test_external_name_service_gets_no_cluster_ip(store, rng):
    svc = service(type="ExternalName", externalName="example.com", clusterIP="10.96.1.1",
                  clusterIPs=["10.96.1.1"])
    with store.transaction() as txn:
        allocate_service(txn, svc, None, DEFAULT, rng)
    assert "clusterIP" not in svc["spec"]
    assert "clusterIPs" not in svc["spec"]
    assert held(store, CLUSTER_IPS) == {}


def test_release_owner_frees_only_that_owner(store, rng):
    with store.transaction() as txn:
        a = allocate_service(txn, service("a", type="NodePort"), None, DEFAULT, rng)
        b = allocate_service(txn, service("b", type="NodePort"), None, DEFAULT, rng)
    with store.transaction() as txn:
        release_owner(txn, "default/a")
    assert held(store, CLUSTER_IPS) == {b["spec"]["clusterIP"]: "default/b"}
    assert held(store, NODE_PORTS) == {str(b["spec"]["ports"][0]["nodePort"]): "default/b"}
    # a's values can now be requested by somebody else
    with store.transaction() as txn:
        assert allocate_cluster_ip(txn, DEFAULT, "default/c", a["spec"]["clusterIP"], rng) == a["spec"]["clusterIP"]


def test_release_owner_keeps_values(store, rng):
    with store.transaction() as txn:
        allocate_cluster_ip(txn, DEFAULT, "default/a", "10.96.0.50", rng)
        allocate_node_port(txn, DEFAULT, "default/a", 30001, rng, "f")
        allocate_node_port(txn, DEFAULT, "default/a", 30002, rng, "f")
    with store.transaction() as txn:
        release_owner(txn, "default/a", keep_ips={"10.96.0.50"}, keep_ports={30002})
    assert held(store, CLUSTER_IPS) == {"10.96.0.50": "default/a"}
    assert held(store, NODE_PORTS) == {"30002": "default/a"}


def test_failed_transaction_keeps_nothing(store, rng):
    with pytest.raises(RuntimeError), store.transaction() as txn:
        allocate_service(txn, service(type="NodePort"), None, DEFAULT, rng)
        allocate_pod_ip(txn, "10.244.0.0/24", "default/p")
        raise RuntimeError("boom")
    assert held(store, CLUSTER_IPS) == {}
    assert held(store, NODE_PORTS) == {}
    assert held(store, POD_IPS) == {}


# ------------------------------------------------------------------ pod IPs


def test_pod_ips_lowest_first_from_dot_two(store):
    with store.transaction() as txn:
        ips = [allocate_pod_ip(txn, "10.244.0.0/24", f"/registry/pods/default/p{i}") for i in range(3)]
    assert ips == ["10.244.0.2", "10.244.0.3", "10.244.0.4"]
    assert held(store, POD_IPS) == {"10.244.0.2": "/registry/pods/default/p0",
                                    "10.244.0.3": "/registry/pods/default/p1",
                                    "10.244.0.4": "/registry/pods/default/p2"}


def test_released_pod_ip_is_reused_first(store):
    with store.transaction() as txn:
        for i in range(3):
            allocate_pod_ip(txn, "10.244.0.0/24", f"p{i}")
    with store.transaction() as txn:
        release_pod_ip(txn, "10.244.0.3")
        release_pod_ip(txn, None)  # a pod that never got an IP
    assert sorted(held(store, POD_IPS)) == ["10.244.0.2", "10.244.0.4"]
    with store.transaction() as txn:
        assert allocate_pod_ip(txn, "10.244.0.0/24", "p9") == "10.244.0.3"
        assert allocate_pod_ip(txn, "10.244.0.0/24", "p10") == "10.244.0.5"


def test_pod_cidr_full(store):
    with store.transaction() as txn:
        # a /29 has hosts .1-.6; .1 is the bridge
        assert [allocate_pod_ip(txn, "10.244.0.0/29", f"p{i}") for i in range(5)] == [
            "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6"]
    with pytest.raises(AllocationError) as e, store.transaction() as txn:
        allocate_pod_ip(txn, "10.244.0.0/29", "p5")
    assert e.value.field == "status.podIP"
    assert e.value.detail == "no free address in pod CIDR 10.244.0.0/29"
