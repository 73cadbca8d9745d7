"""`kproxy dashboard` over a two-node lab: the counters the page polls add up every node's
KUBE-SEP counters (a connection is DNATed on the node it enters by), read in each node's netns."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from .conftest import answers, free_port, hits
from .test_trace_multi_node import SPREAD

LAB_UP_ARGS = ("--nodes", "2")


def web(url: str) -> dict:
    with urllib.request.urlopen(url + "api/counters", timeout=10) as r:
        doc = json.load(r)
    return next(s for s in doc["services"] if s["service"] == "default/web"), doc


@pytest.fixture(scope="module")
def pods(lab):
    lab.apply(SPREAD)
    return lab.wait_for(lambda: len(lab.ready_pods("web")) == 4 and lab.ready_pods("web"))


def test_the_counters_add_up_both_nodes(lab, pods):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kproxy.cli", "dashboard", "--port", str(port)], env=lab.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        lab.wait_for(lambda: proc.poll() is not None or answers(url + "api/counters"), timeout=20)
        assert proc.poll() is None, proc.communicate()
        before, doc = web(url)
        assert sorted(doc["nodes"]) == ["node-1", "node-2"] and not doc["errors"], doc
        client_node = lab.get("pods", "client")["spec"]["nodeName"]
        other = "node-2" if client_node == "node-1" else "node-1"
        ip = lab.get("svc", "web")["spec"]["clusterIP"]
        assert not [a for a in hits(lab, "client", f"http://{ip}/", 30) if a.startswith("ERR")]
        assert not [a for a in hits(lab, f"node/{other}", f"http://{ip}/", 20) if a.startswith("ERR")]
        lab.wait_for(lambda: web(url)[0]["connections"] >= before["connections"] + 50, timeout=5)
        after, _ = web(url)
        grown = {n: after["by_node"].get(n, 0) - before["by_node"].get(n, 0) for n in ("node-1", "node-2")}
        assert 30 <= grown[client_node] <= 31 and 20 <= grown[other] <= 21, grown
        assert sum(e["connections"] for e in after["endpoints"]) == after["connections"]
        assert {e["node"] for e in after["endpoints"]} == {p["spec"]["nodeName"] for p in pods}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
