"""LoadBalancer pools: MetalLB's address formats, allocation rules, events' wording, election."""
from __future__ import annotations

import os

import pytest

from kproxy.controllers import loadbalancer as lb
from kproxy.store.sqlite import SqliteStore


def svc(name, annotations=None, **spec):
    return {"metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", **spec}}


@pytest.fixture
def store(tmp_path):
    return SqliteStore(tmp_path / "s.db")


POOLS = [lb.Pool("a", (lb.parse_range("192.168.49.240-192.168.49.241"),)),
         lb.Pool("b", (lb.parse_range("10.0.0.0/31"),), auto_assign=False)]


def test_ranges_and_cidrs():
    assert list(lb.Pool("x", (lb.parse_range("10.0.0.0/30"),)).addresses()) == [
        "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert list(lb.Pool("x", (lb.parse_range("10.0.0.0/30"),), avoid_buggy_ips=True).addresses()) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    with pytest.raises(ValueError):
        lb.parse_range("10.0.0.9-10.0.0.1")
    with pytest.raises(ValueError):
        lb.pool_from_object({"metadata": {"name": "p"}, "spec": {}})


def test_first_free_ip_of_auto_assign_pools_then_exhausted(store):
    with store.transaction() as t:
        assert lb.allocate(t, svc("one"), POOLS, []) == ["192.168.49.240"]
        assert lb.allocate(t, svc("two"), POOLS, []) == ["192.168.49.241"]
        with pytest.raises(lb.PoolError, match=r'Failed to allocate IP for "default/three": no available IPs'):
            lb.allocate(t, svc("three"), POOLS, [])


def test_an_ip_is_kept_and_a_requested_one_is_checked(store):
    with store.transaction() as t:
        assert lb.allocate(t, svc("one"), POOLS, []) == ["192.168.49.240"]
        assert lb.allocate(t, svc("one"), POOLS, ["192.168.49.240"]) == ["192.168.49.240"]
        with pytest.raises(lb.PoolError, match="address also in use by default/one"):
            lb.allocate(t, svc("two", loadBalancerIP="192.168.49.240"), POOLS, [])
        with pytest.raises(lb.PoolError, match=r'\["1.2.3.4"\] is not allowed in config'):
            lb.allocate(t, svc("two", {"metallb.universe.tf/loadBalancerIPs": "1.2.3.4"}), POOLS, [])
        # a pool without autoAssign serves only when asked for by name
        assert lb.allocate(t, svc("three", {"metallb.universe.tf/address-pool": "b"}), POOLS, []) == ["10.0.0.0"]
        lb.release(t, "default/one")
        assert lb.allocate(t, svc("four"), POOLS, []) == ["192.168.49.240"]


def test_load_balancer_class_and_other_types_want_no_ip():
    assert lb.wants_ip(svc("x"))
    assert not lb.wants_ip(svc("x", loadBalancerClass="other.io/lb"))
    assert not lb.wants_ip({"metadata": {"name": "x"}, "spec": {"type": "NodePort"}})


def test_one_node_announces_each_ip_and_all_agree():
    nodes = ["node-1", "node-2", "node-3"]
    picks = {ip: lb.announcing_node(ip, nodes) for ip in (f"192.168.49.{i}" for i in range(200, 230))}
    assert set(picks.values()) == set(nodes)  # spread over the nodes
    assert all(lb.announcing_node(ip, list(reversed(nodes))) == n for ip, n in picks.items())
    assert lb.announcing_node("192.168.49.200", []) is None


def test_l2_advertisement_selects_pools():
    assert not lb.advertised("a", [])
    assert lb.advertised("a", [{"spec": {}}])
    assert lb.advertised("a", [{"spec": {"ipAddressPools": ["a"]}}])
    assert not lb.advertised("b", [{"spec": {"ipAddressPools": ["a"]}}])


# --------------------------------------------------------------- issue 12 #11: lab addresses
def test_lab_addresses_of_a_sandbox_lab():
    from kproxy.config import LabConfig
    one = lb.lab_addresses(LabConfig(state_dir="/tmp/x", sandbox=True))
    assert one == {"192.168.49.100": "the lab's outside host", "192.168.49.2": "node node-1"}
    three = lb.lab_addresses(LabConfig(state_dir="/tmp/x", sandbox=True, nodes=3))
    assert set(three) == {"192.168.49.100", "192.168.49.2", "192.168.49.3", "192.168.49.4"}
    real = lb.lab_addresses(LabConfig(state_dir="/tmp/x", node_ip="10.0.0.5", node_name="n1"),
                            [{"metadata": {"name": "n2"},
                              "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.6"},
                                                       {"type": "Hostname", "address": "n2"}]}}])
    assert real == {"10.0.0.5": "node n1", "10.0.0.6": "node n2"}


def test_pool_ranges_holding_node_or_outside_addresses_are_named():
    reserved = {"192.168.49.100": "the lab's outside host", "192.168.49.2": "node node-1"}
    assert lb.pool_conflicts(["192.168.49.240-192.168.49.250"], reserved) == []
    assert lb.pool_conflicts(["192.168.49.240/29", "192.168.49.96/28"], reserved) == [
        (1, "192.168.49.100", "the lab's outside host")]
    assert lb.pool_conflicts(["192.168.49.0/24"], reserved) == [
        (0, "192.168.49.2", "node node-1"), (0, "192.168.49.100", "the lab's outside host")]
    assert lb.conflict_message("192.168.49.100", "the lab's outside host") == (
        "holds 192.168.49.100, the address of the lab's outside host: "
        "a pool may not hand out a node's or the lab's own address")


@pytest.mark.skipif(os.geteuid() != 0, reason="kproxy up checks for root first")
def test_up_refuses_an_lb_pool_holding_the_outside_host(tmp_path):
    from click.testing import CliRunner

    from kproxy.cli import main
    res = CliRunner().invoke(main, ["up", "--sandbox", "--lb-pool", "192.168.49.96/28", "--state-dir",
                                    str(tmp_path / "state")])
    assert res.exit_code == 1
    assert res.output.strip() == ("error: --lb-pool 192.168.49.96/28: holds 192.168.49.100, the address of the "
                                  "lab's outside host: a pool may not hand out a node's or the lab's own address")
    assert not (tmp_path / "state" / "config.json").exists()  # refused before anything was made
