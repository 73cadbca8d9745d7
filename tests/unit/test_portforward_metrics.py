"""port-forward's port mapping and the Prometheus text of kube-proxy's metrics."""
from __future__ import annotations

import pytest

from kproxy.portforward import parse_ports, target_port
from kproxy.proxy.metrics import ProxyMetrics, count_rules

POD = {"metadata": {"name": "web-1"},
       "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}
SVC = {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}


def test_ports():
    assert parse_ports("8080:80") == (8080, "80")
    assert parse_ports(":80") == (0, "80")
    assert parse_ports("80") == (80, "80")
    assert target_port(POD, SVC, "80") == 8080      # service port -> named target port
    assert target_port(POD, None, "http") == 8080
    assert target_port(POD, None, "9000") == 9000
    with pytest.raises(ValueError, match="does not have a service port 81"):
        target_port(POD, SVC, "81")


def test_metrics_exposition():
    m = ProxyMetrics()
    m.sync_duration.observe(0.003)
    m.rules.set(12, "nat")
    m.restore_failures.inc()
    text = m.registry.exposition()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.002"} 0' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 1' in text
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1" in text
    assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 12' in text
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1" in text
    assert count_rules("*filter\n:A - [0:0]\n-A A -j B\nCOMMIT\n*nat\n-A X\n-A Y\nCOMMIT\n") == {"filter": 1, "nat": 2}
