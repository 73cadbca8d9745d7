"""Three emulated nodes in nftables mode (`kproxy up --sandbox --nodes 3 --proxy-mode nftables`).

The packet checks of test_multi_node.py run here unchanged against this module's lab (imported,
as test_nft_mode does with the single-host ones): pods on node-1 reach pods on every node through
a ClusterIP, `outside` reaches the NodePort through every node, internalTrafficPolicy and
externalTrafficPolicy Local keep to the node. The failure drills (a killed agent, etcd restart,
racing controllers, the LB IP moving) are about the control plane, the same in both modes, and
stay in test_multi_node.py alone: they would add a minute here and test nothing of nftables.
Below, what is nftables' own: every node holds kube-proxy's table (and no iptables rules), and
`kproxy trace` follows a connection across two nodes with `nft monitor trace`.
"""
from __future__ import annotations

import json
import re
import subprocess

from .test_multi_node import APP, NODES, app  # noqa: F401 - the fixture, used by the imported tests
from .test_multi_node import pod_nodes
from .test_multi_node import test_a_deployment_spreads_over_the_nodes  # noqa: F401
from .test_multi_node import test_a_pod_reaches_pods_on_every_node_through_a_cluster_ip  # noqa: F401
from .test_multi_node import test_external_traffic_policy_local_answers_only_where_an_endpoint_lives  # noqa: F401
from .test_multi_node import test_internal_traffic_policy_local_keeps_traffic_on_the_node  # noqa: F401
from .test_multi_node import test_outside_reaches_the_node_port_through_every_node  # noqa: F401
from .test_trace import no_trace_left

LAB_UP_ARGS = ("--nodes", "3", "--proxy-mode", "nftables")
assert "nodePort: 30080" in APP  # the imported tests' Service


def node_nft(lab, index: int) -> str:
    netns = lab.cfg.naming.for_node(index).node_netns
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "kube-proxy"],
                          capture_output=True, text=True).stdout


def test_every_node_holds_kube_proxys_table_and_no_iptables_rules(app):  # noqa: F811 - the imported fixture
    web = app.get("svc", "web")["spec"]["clusterIP"]
    for index in (1, 2, 3):
        listed = node_nft(app, index)
        # the same Service everywhere: its ClusterIP element, its NodePort element, six endpoints
        assert re.search(rf"{re.escape(web)} \. tcp \. 80 : goto service-\w+-default/web/tcp/", listed), index
        assert re.search(r"tcp \. 30080 : goto external-\w+-default/web/tcp/", listed), index
        assert len(set(re.findall(r"chain endpoint-\w+-default/web/tcp/__", listed))) == 6, index
        netns = app.cfg.naming.for_node(index).node_netns
        saved = subprocess.run(["ip", "netns", "exec", netns, "iptables-save"], capture_output=True, text=True).stdout
        assert "KUBE-SERVICES" not in saved, index


def test_a_trace_across_two_nodes_shows_each_nodes_hops(app):  # noqa: F811
    nodes = pod_nodes(app, "web")
    ips = {p["status"]["podIP"]: p["spec"]["nodeName"] for p in app.ready_pods("web")}
    client = next(name for name, node in sorted(nodes.items()) if node == "node-1")
    for _ in range(30):  # until the dice send it to another node (4 of the 6 endpoints are elsewhere)
        doc = json.loads(app.kproxy("trace", client, "svc/web", "-o", "json", timeout=60).stdout)
        no_trace_left(app)
        if ips.get(doc["dnat"].split(":")[0]) != "node-1":
            break
    else:
        raise AssertionError("30 traces never left node-1")
    assert doc["proxyMode"] == "nftables" and doc["answeredBy"] == doc["endpointPod"]["name"]
    entry, other = doc["nodes"]
    assert entry["node"] == "node-1" and other["node"] == ips[doc["dnat"].split(":")[0]]
    lookup = next(s for s in entry["request"]["steps"] if s.get("element"))
    assert lookup["chain"] == "services" and lookup["element"].startswith(app.get("svc", "web")["spec"]["clusterIP"])
    assert any(s["chain"].startswith("endpoint-") and s["rule"].endswith(f"dnat to {doc['dnat']}")
               for s in entry["request"]["steps"])
    # the other node sees the pod's address already: its service-ips has nothing for it
    assert other["request"]["packet"].split()[2] == doc["dnat"]
    assert not any("dnat to" in s["rule"] for s in other["request"]["steps"])
    assert any(s["chain"] == "services" and s["verdict"] == "no match" for s in other["request"]["steps"])
    # the answer came back the same way: the endpoint's node saw the reply first
    assert other["reply"] is not None and other["reply"]["packet"].startswith(doc["dnat"])
