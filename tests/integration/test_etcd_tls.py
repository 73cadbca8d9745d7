"""Two emulated nodes whose etcd admits only the lab's certificates (issue 12, findings 8 and 9).

Before: etcd listened on node-1's address in plain HTTP without authentication, so one `put`
of a Pod from `outside` made an agent run a command as root. Now `up` makes a lab CA and every
etcd client (controller, agents, the DNS pods) presents its own certificate; a client without
one is refused, whether it speaks plain HTTP or HTTPS. All traffic stays in the lab's netns.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from .conftest import hits

LAB_UP_ARGS = ("--nodes", "2")

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: kproxy/podserver, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""

# Run in `outside` (the lab switch's client): three ways of asking etcd for every key.
PROBE = r"""
import json, sys, requests
url, ca, cert, key = sys.argv[1:5]
body = {"key": "AA==", "range_end": "AA==", "keys_only": True}
out = {}
for name, kw in (("plain", {"url": url.replace("https://", "http://")}),
                 ("no-cert", {"url": url, "verify": ca}),
                 ("no-cert-no-verify", {"url": url, "verify": False}),
                 ("controller-cert", {"url": url, "verify": ca, "cert": (cert, key)})):
    target = kw.pop("url")
    try:
        r = requests.post(target + "/v3/kv/range", json=body, timeout=5, **kw)
        out[name] = {"status": r.status_code, "keys": len(r.json().get("kvs", [])) if r.ok else None}
    except Exception as e:
        out[name] = {"error": type(e).__name__}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def app(lab):
    lab.apply(APP)
    return lab


def test_the_lab_works_over_tls(app):
    cfg = app.cfg
    assert cfg.store_url == "https://192.168.49.2:2379"
    assert cfg.store_cert.endswith("/pki/controller.crt")
    pods = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in app.ready_pods("web")}
    assert sorted(pods.values()) == ["node-1", "node-2"]
    client = next(name for name, node in sorted(pods.items()) if node == "node-2")
    ip = app.get("svc", "web")["spec"]["clusterIP"]
    answers = hits(app, client, f"http://{ip}/", 20)
    assert not [a for a in answers if a.startswith("ERR")], answers
    assert set(answers) == set(pods)
    # the DNS pods read etcd with their own certificate
    res = app.exec(client, sys.executable, "-c",
                   "import socket; print(socket.gethostbyname('web.default.svc.cluster.local'))", check=True)
    assert res.stdout.strip() == ip


def test_etcd_refuses_a_client_without_a_certificate(app):
    cfg = app.cfg
    res = subprocess.run(["ip", "netns", "exec", cfg.naming.outside_netns, sys.executable, "-c", PROBE,
                          cfg.store_url, cfg.store_ca, cfg.store_cert, cfg.store_key],
                         capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(res.stdout)
    print("etcd probe from outside:", out)
    assert out["controller-cert"]["status"] == 200 and out["controller-cert"]["keys"] > 0, out
    for refused in ("plain", "no-cert", "no-cert-no-verify"):
        assert "error" in out[refused] or out[refused]["status"] >= 400, out
        assert not out[refused].get("keys"), out
    # the peer port is on node-1's loopback only
    peer = subprocess.run(["ip", "netns", "exec", cfg.naming.outside_netns, sys.executable, "-c",
                           "import socket; socket.create_connection(('192.168.49.2', 2380), timeout=3)"],
                          capture_output=True, text=True, timeout=30)
    assert peer.returncode != 0


def test_the_state_is_root_only(app):
    state = app.state_dir
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(state) == 0o700
    for d in ("pki", "etcd", "nodes/node-2"):
        assert mode(state / d) == 0o700, d
    for f in ("config.json", "daemon.log", "etcd.log", "pki/ca.key", "pki/controller.key", "nodes/node-2/config.json"):
        assert mode(state / f) == 0o600, f
    assert not [p for p in state.rglob("*") if p.is_file() and mode(p) & 0o077 and "manifests" not in p.parts]
    # ... while a pod keeps a container runtime's umask and a world-readable /etc/resolv.conf
    pod = app.ready_pods("web")[0]["metadata"]["name"]
    netns = app.cfg.naming.pod_netns("default", pod)
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=True).stdout.split()
    assert pids
    for pid in pids:
        umask = next(li for li in open(f"/proc/{pid}/status") if li.startswith("Umask:")).split()[1]
        assert umask == "0022", (pid, umask)
    assert mode(f"/etc/netns/{netns}/resolv.conf") == 0o644
