"""Cluster DNS with real clients (dig, getent, curl) in pods, as CoreDNS behind kube-proxy."""
from __future__ import annotations

import os
import re

import pytest

APPS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers:
      - name: b
        image: x
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          exec: {command: [sh, -c, 'test ! -e /tmp/%(flag)s-$(hostname)']}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-headless, namespace: shop}
spec:
  clusterIP: None
  selector: {app: backend}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: shop}
spec:
  type: ExternalName
  externalName: docs.example.com
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"""


def dig(lab, *args, namespace="default"):
    res = lab.kproxy("exec", "client", "-n", namespace, "--", "dig", "+time=2", "+tries=1", *args, check=False)
    return res.stdout


def short(lab, *args, namespace="default"):
    return sorted(dig(lab, "+short", *args, namespace=namespace).split())


@pytest.fixture(scope="module")
def apps(lab):
    flag = f"kpdns{lab.cfg.naming.prefix}"
    lab.apply(APPS % {"flag": flag})
    pods = lab.wait_for(lambda: (lambda ps: len(ps) == 2 and ps)(
        [p for p in lab.get("pods", namespace="shop")["items"]
         if p["metadata"]["name"].startswith("backend-")
         and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]))
    lab.wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                             for p in lab.get("pods", namespace="kube-system")["items"]
                             for c in p["status"].get("conditions", [])))
    return {"flag": flag, "pods": pods, "vip": lab.get("svc", "backend", namespace="shop")["spec"]["clusterIP"]}


def test_kube_dns_service_is_listed(lab, apps):
    out = lab.kproxy("get", "svc", "-A").stdout
    assert re.search(r"^kube-system\s+kube-dns\s+ClusterIP\s+10\.96\.0\.10\s", out, re.M), out


def test_names_resolve_from_two_namespaces(lab, apps):
    vip = apps["vip"]
    # from the shop namespace the short name works; from default the namespace must be given
    assert lab.kproxy("exec", "client", "-n", "shop", "--", "getent", "hosts", "backend").stdout.split()[0] == vip
    assert lab.kproxy("exec", "client", "--", "getent", "hosts", "backend.shop").stdout.split()[0] == vip
    assert lab.kproxy("exec", "client", "--", "getent", "hosts",
                      "backend.shop.svc.cluster.local").stdout.split()[0] == vip
    assert lab.kproxy("exec", "client", "--", "getent", "hosts", "backend", check=False).returncode == 2
    body = lab.kproxy("exec", "client", "--", "curl", "-s", "--max-time", "3", "http://backend.shop/").stdout
    assert body.split()[1] in {p["metadata"]["name"] for p in apps["pods"]}


def test_srv_and_ptr(lab, apps):
    srv = dig(lab, "+short", "SRV", "_http._tcp.backend.shop.svc.cluster.local")
    assert srv.split() == ["0", "100", "80", "backend.shop.svc.cluster.local."], srv
    ptr = short(lab, "-x", apps["vip"])
    assert ptr == ["backend.shop.svc.cluster.local."], ptr


def test_external_name_is_a_cname(lab, apps):
    out = dig(lab, "CNAME", "docs.shop.svc.cluster.local")
    assert re.search(r"docs\.shop\.svc\.cluster\.local\.\s+30\s+IN\s+CNAME\s+docs\.example\.com\.", out), out


def test_headless_lists_ready_pods_and_follows_readiness(lab, apps):
    ips = sorted(p["status"]["podIP"] for p in apps["pods"])
    assert short(lab, "backend-headless.shop.svc.cluster.local") == ips
    victim = apps["pods"][0]
    flag = f"/tmp/{apps['flag']}-{victim['metadata']['name']}"
    open(flag, "w").close()
    try:
        rest = sorted(set(ips) - {victim["status"]["podIP"]})
        lab.wait_for(lambda: short(lab, "backend-headless.shop.svc.cluster.local") == rest, timeout=10)
    finally:
        os.unlink(flag)
    lab.wait_for(lambda: short(lab, "backend-headless.shop.svc.cluster.local") == ips, timeout=10)


def test_unknown_name_is_nxdomain_fast(lab, apps):
    out = dig(lab, "nosuch.shop.svc.cluster.local")
    assert "status: NXDOMAIN" in out
    assert int(re.search(r"Query time: (\d+) msec", out).group(1)) < 100
    out = dig(lab, "example.org")  # outside the cluster, no upstream configured: refused at once
    assert "status: REFUSED" in out


def test_scaling_shows_in_dns_without_restart(lab, apps):
    lab.apply((APPS % {"flag": apps["flag"]}).replace("replicas: 2", "replicas: 3"))
    lab.wait_for(lambda: len(short(lab, "backend-headless.shop.svc.cluster.local")) == 3, timeout=15)


def test_dns_queries_are_counted(lab, apps):
    pod = lab.get("pods", namespace="kube-system")["items"][0]
    ip = pod["status"]["podIP"]
    metrics = lab.kproxy("exec", "node/node-1", "--", "curl", "-s", f"http://{ip}:9153/metrics").stdout
    total = sum(int(float(v)) for v in re.findall(r"^coredns_dns_requests_total\{.*\} (\S+)$", metrics, re.M))
    assert total >= 5, metrics[:500]
