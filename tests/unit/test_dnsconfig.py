"""A pod's resolv.conf and hosts, as the kubelet writes them."""
from __future__ import annotations

from kproxy.node.dnsconfig import hosts_file, resolv_conf

NODE = "nameserver 192.0.2.53\nsearch corp.example\noptions timeout:2\n"


def pod(**spec):
    return {"metadata": {"name": "web-1", "namespace": "shop"}, "spec": spec, "status": {"podIP": "10.244.0.7"}}


def test_cluster_first():
    assert resolv_conf(pod(), "10.96.0.10", "cluster.local", NODE) == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n")


def test_default_uses_the_nodes_and_none_uses_dns_config():
    assert resolv_conf(pod(dnsPolicy="Default"), "10.96.0.10", "cluster.local", NODE) == (
        "search corp.example\nnameserver 192.0.2.53\noptions timeout:2\n")
    cfg = {"nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"},
                                                                              {"name": "edns0"}]}
    assert resolv_conf(pod(dnsPolicy="None", dnsConfig=cfg), "10.96.0.10", "cluster.local", NODE) == (
        "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n")


def test_dns_config_merges_into_cluster_first():
    cfg = {"searches": ["extra.example"], "options": [{"name": "ndots", "value": "1"}]}
    assert resolv_conf(pod(dnsConfig=cfg), "10.96.0.10", "cluster.local", NODE) == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local extra.example\n"
        "nameserver 10.96.0.10\noptions ndots:1\n")


def test_hosts_file():
    text = hosts_file(pod(hostname="h", subdomain="sub", hostAliases=[{"ip": "10.1.1.1", "hostnames": ["x", "y"]}]),
                      "cluster.local")
    assert text.splitlines()[0] == "# Kubernetes-managed hosts file."
    assert "10.244.0.7\th.sub.shop.svc.cluster.local\th" in text.splitlines()
    assert text.splitlines()[-2:] == ["# Entries added by HostAliases.", "10.1.1.1\tx\ty"]
    assert hosts_file(pod(), "cluster.local").splitlines()[-1] == "10.244.0.7\tweb-1"
