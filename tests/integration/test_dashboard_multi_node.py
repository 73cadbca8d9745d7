"""`kproxy dashboard` over a two-node lab: the counters the page polls add up every node's
KUBE-SEP counters (a connection is DNATed on the node it enters by), read in each node's netns."""
from __future__ import annotations

import json
import signal
import urllib.request

import pytest

from .conftest import hits, running_dashboard
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
    with running_dashboard(lab) as (url, proc):
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
        proc.send_signal(signal.SIGINT)  # Ctrl-C, by its pid: the dashboard exits 0
        assert proc.wait(timeout=10) == 0, proc.communicate()
