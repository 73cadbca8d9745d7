"""kproxy graph: the DOT Graphviz is given, and the pictures `dot` draws of it (Debian's graphviz,
installed by scripts/setup)."""
from __future__ import annotations

import re
import struct
from pathlib import Path

from kproxy import graph as gr
from kproxy.explain import parse_save

CORPUS = Path(__file__).parent / "trace_corpus"
PODS_BY_IP = {"10.244.0.4": {"name": "web-5bc4bc5c44-95gl9", "namespace": "default", "node": "node-1"}}

NODE = {"metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.49.2"}]}}


def pod(name: str, ip: str, ready: bool = True) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1"}, "status": {"podIP": ip}}


SVC = {"metadata": {"name": "web", "namespace": "default"},
       "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50",
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]},
       "status": {"loadBalancer": {"ingress": [{"ip": "192.168.49.240"}]}}}
SLICE = {"metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "ports": [{"port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.244.0.4"], "conditions": {"ready": True}, "nodeName": "node-1",
                        "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
                       {"addresses": ["10.244.7.7"], "conditions": {"ready": True}, "nodeName": "node-9"}]}


def lab_dot() -> str:
    g = gr.lab_graph([NODE], [pod("web-1", "10.244.0.4"), pod("client", "10.244.0.3")], [SVC], [SLICE],
                     "192.168.49.100")
    return g.source


def test_lab_graph_carries_nodes_pods_services_and_endpoints():
    dot = lab_dot()
    assert "subgraph cluster_node_1" in dot and "192.168.49.2" in dot
    assert 'label="pod web-1\\n10.244.0.4"' in dot and "pod client" in dot
    assert "ClusterIP 10.96.0.50" in dot and "NodePort 30080" in dot and "LB 192.168.49.240" in dot
    assert 'svc_default_web -> pod_default_web_1 [label="10.244.0.4:8080"' in dot
    assert "no pod here: node node-9" in dot  # an endpoint of a hand-written slice
    assert "outside -> svc_default_web" in dot


def test_service_graph_has_the_chain_walk_with_probabilities():
    dot = gr.service_graph("default/web", parse_save((CORPUS / "node.save").read_text()), PODS_BY_IP).source
    assert "KUBE_SERVICES -> KUBE_SVC_CDGGSHYLG3RE2FKL" in dot
    assert '[label="p=0.3333 -> 33.3%"]' in dot and '[label="p=0.5 -> 33.3%"]' in dot
    assert '[label="the rest -> 33.3%"]' in dot
    assert 'label="pod web-5bc4bc5c44-95gl9\\n10.244.0.4:8080"' in dot
    assert len(re.findall(r"^\tKUBE_MARK_MASQ \[", dot, re.M)) == 1 and "hairpin" in dot
    assert "KUBE_NODEPORTS -> KUBE_EXT_CDGGSHYLG3RE2FKL" in dot


def test_a_service_without_endpoints_draws_its_reject():
    dot = gr.service_graph("default/nobody", parse_save((CORPUS / "node.save").read_text()), {}).source
    assert "REJECT" in dot and "default/nobody has no endpoints" in dot


def test_shares_of_four_endpoints_are_even():
    rules = parse_save("*nat\n" + "".join(
        f"-A KUBE-SVC-X -m statistic --mode random --probability {p} -j KUBE-SEP-{i}\n"
        for i, p in enumerate(("0.25000000000", "0.33333333349", "0.50000000000"))) + "-A KUBE-SVC-X -j KUBE-SEP-3\n"
    ).chain("nat", "KUBE-SVC-X")
    labels = list(gr._share_labels(rules).values())
    assert [lbl.split("-> ")[1] for lbl in labels] == ["25.0%"] * 4


def test_png_and_svg_are_drawn_by_graphviz():
    g = gr.lab_graph([NODE], [pod("web-1", "10.244.0.4")], [SVC], [SLICE], None)
    png = gr.render(g, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 50
    svg = gr.render(g, "svg").decode()
    assert "<svg" in svg and "pod web&#45;1" in svg and ">10.244.0.4<" in svg  # dot escapes the hyphen
    assert gr.render(g, "dot").decode() == g.source
