"""`kproxy graph`: pictures of a lab, drawn by Graphviz (Debian's `graphviz`, through the
`graphviz` Python binding, which writes the DOT source and runs `dot`).

Two pictures: the lab (nodes with their pods and IPs, Services with their ClusterIP, NodePorts
and load-balancer IPs and an arrow to each endpoint's pod, and `outside`), and one Service's
chain graph as the node's iptables has it (KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP -> pods, each
roll's probability and the share of new connections it gives on the edges). Building the graph is
pure (objects and iptables-save text in, a Digraph out), so it is unit-tested without root.
"""
from __future__ import annotations

import re

import graphviz

from kproxy.explain import Saved, service_rules
from kproxy.proxy import chains as ch

FORMATS = ("dot", "svg", "png")


def _id(*parts: str) -> str:
    return ":".join(parts).replace(":", "_").replace("/", "_").replace(".", "_").replace("-", "_")


def _ns_name(obj: dict) -> str:
    m = obj["metadata"]
    return m["name"] if m.get("namespace", "default") == "default" else f"{m['namespace']}/{m['name']}"


def _node_ip(node: dict) -> str:
    return next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"), "")


def lab_graph(nodes: list[dict], pods: list[dict], services: list[dict], slices: list[dict],
              outside_ip: str | None = None) -> graphviz.Digraph:
    """The lab: a box per node holding its pods, the Services and their endpoints, `outside`."""
    g = graphviz.Digraph("lab", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "compound": "true"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    pod_ids: dict[tuple[str, str], str] = {}
    by_ip: dict[str, str] = {_node_ip(n): _id("node", n["metadata"]["name"]) for n in nodes}  # the API server's
    for node in nodes:
        name = node["metadata"]["name"]
        cidr = (node.get("spec") or {}).get("podCIDR", "")
        with g.subgraph(name=f"cluster_{_id(name)}") as sub:
            sub.attr(label=f"node {name}  {_node_ip(node)}\\npods {cidr}", style="rounded", color="gray40")
            sub.node(_id("node", name), f"{name}\\n{_node_ip(node)}", shape="box3d")
            for pod in pods:
                if (pod.get("spec") or {}).get("nodeName") != name or pod["metadata"].get("deletionTimestamp"):
                    continue
                ip = (pod.get("status") or {}).get("podIP") or "no IP"
                pid = _id("pod", pod["metadata"].get("namespace", "default"), pod["metadata"]["name"])
                pod_ids[(pod["metadata"].get("namespace", "default"), pod["metadata"]["name"])] = pid
                by_ip[ip] = pid
                sub.node(pid, f"pod {_ns_name(pod)}\\n{ip}", shape="box", style="rounded,filled", fillcolor="#e8f0fe")
    if outside_ip:
        g.node("outside", f"outside\\n{outside_ip}", shape="house", style="filled", fillcolor="#fff4e0")
        for node in nodes:
            g.edge("outside", _id("node", node["metadata"]["name"]), style="dashed", arrowhead="none",
                   label="node network")
    for svc in services:
        spec, ns = svc.get("spec") or {}, svc["metadata"].get("namespace", "default")
        lines = [f"svc {_ns_name(svc)}  {spec.get('type', 'ClusterIP')}"]
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            lines.append(f"ClusterIP {spec['clusterIP']}")
        ports = []
        for p in spec.get("ports") or []:
            text = f"{p.get('port')}/{p.get('protocol', 'TCP')}"
            if p.get("nodePort"):
                text += f" NodePort {p['nodePort']}"
            ports.append(text)
        if ports:
            lines.append(", ".join(ports))
        lb = [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
              if i.get("ip")]
        if lb:
            lines.append("LB " + ", ".join(lb))
        if spec.get("externalIPs"):
            lines.append("external " + ", ".join(spec["externalIPs"]))
        sid = _id("svc", ns, svc["metadata"]["name"])
        g.node(sid, "\\n".join(lines), shape="component", style="filled", fillcolor="#e6f4ea")
        if outside_ip and (lb or any(p.get("nodePort") for p in spec.get("ports") or [])):
            g.edge("outside", sid, label="NodePort / LB", color="darkorange")
        seen = set()
        for sl in slices:
            labels = sl["metadata"].get("labels") or {}
            if sl["metadata"].get("namespace", "default") != ns \
                    or labels.get("kubernetes.io/service-name") != svc["metadata"]["name"]:
                continue
            port = ",".join(str(p.get("port")) for p in sl.get("ports") or [])
            for ep in sl.get("endpoints") or []:
                ref = ep.get("targetRef") or {}
                for ip in ep.get("addresses") or []:
                    target = pod_ids.get((ref.get("namespace", ns), ref.get("name", ""))) or by_ip.get(ip)
                    if target is None:  # an endpoint no pod of this lab has (a hand-written slice)
                        target = _id("ep", ip)
                        g.node(target, f"{ip}\\n(no pod here: node {ep.get('nodeName') or '?'})", shape="box",
                               style="dashed")
                    if (target, port) in seen:
                        continue
                    seen.add((target, port))
                    ready = (ep.get("conditions") or {}).get("ready", True)
                    g.edge(sid, target, label=f"{ip}:{port}", style="solid" if ready else "dotted",
                           color="darkgreen" if ready else "gray")
    return g


def _share_labels(rules) -> dict[str, str]:
    """For each KUBE-SVC/SVL -> KUBE-SEP rule text, `p=... -> NN%`: the roll's probability and
    the share of the chain's new connections it ends up with."""
    out, rest = {}, 1.0
    for r in rules:
        p = r.option("--probability")
        if p is not None:
            share = rest * float(p)
            out[r.text] = f"p={float(p):.4g} -> {100 * share:.1f}%"
            rest -= share
        else:
            out[r.text] = f"the rest -> {100 * rest:.1f}%"
            rest = 0.0
    return out


def service_graph(service: str, saved, pods_by_ip: dict[str, dict]) -> graphviz.Digraph:
    """One Service's chains as iptables has them on a node, each jump an edge (an nftables node,
    nftview.NftNode: map elements -> service chain -> numgen -> endpoint chains -> pods)."""
    if not isinstance(saved, Saved):
        return _nft_service_graph(service, saved, pods_by_ip)
    rules = service_rules(saved, service)
    g = graphviz.Digraph("service", graph_attr={"rankdir": "LR", "fontname": "Helvetica",
                                                "label": f"Service {service}", "labelloc": "t"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    by_chain: dict[str, list] = {}
    declared: set[str] = set()
    for r in rules:
        by_chain.setdefault(r.chain, []).append(r)
    for chain in by_chain:
        color = "#e6f4ea" if chain.startswith(ch.SEP_PREFIX) else "#e8f0fe"
        g.node(_id(chain), chain, style="filled", fillcolor=color)
    for chain, chain_rules in by_chain.items():
        shares = _share_labels([r for r in chain_rules if (r.target or "").startswith(ch.SEP_PREFIX)
                                and "--rcheck" not in r.words])
        for r in chain_rules:
            t = r.target
            if not t:
                continue
            if t == "DNAT":
                dest = r.option("--to-destination") or ""
                pod = pods_by_ip.get(dest.rpartition(":")[0])
                pid = _id("pod", dest)
                g.node(pid, f"pod {pod['name']}\\n{dest}" if pod else dest, shape="box",
                       style="rounded,filled", fillcolor="#fff4e0")
                g.edge(_id(chain), pid, label="DNAT")
            elif t in ("REJECT", "DROP"):
                g.node(_id(t, chain), f"{t}\\n{r.comment}", shape="octagon", style="filled", fillcolor="#fce8e6")
                g.edge(_id(chain), _id(t, chain), label=r.table)
            elif t == ch.KUBE_MARK_MASQ:
                if t not in declared:
                    declared.add(t)
                    g.node(_id(t), t, shape="box", style="dashed")
                src = r.option("-s")
                why = ("hairpin" if chain.startswith(ch.SEP_PREFIX)
                       else f"! -s {src}" if "!" in r.words and src else "external")
                g.edge(_id(chain), _id(t), label=why, style="dashed")
            else:
                if t not in by_chain and t not in declared:
                    declared.add(t)
                    g.node(_id(t), t)
                label = shares.get(r.text)
                if label is None and chain in (ch.KUBE_SERVICES, ch.KUBE_NODEPORTS):
                    dest = (r.option("-d") or "").removesuffix("/32")
                    label = f"{dest}:{r.option('--dport')}" if dest else f"port {r.option('--dport')}"
                if label is None and "--rcheck" in r.words:
                    label = f"affinity {r.option('--seconds')}s"
                g.edge(_id(chain), _id(t), label=label or "")
    return g


def render(g: graphviz.Digraph, fmt: str) -> bytes:
    """DOT source, or the picture `dot` draws of it."""
    if fmt == "dot":
        return g.source.encode()
    return g.pipe(format=fmt)


def _nft_service_graph(service: str, node, pods_by_ip: dict[str, dict]) -> graphviz.Digraph:
    """The nftables mode's picture: each map element the Service has (service-ips, service-nodeports,
    no-endpoint-*) an entry box, an edge per goto/jump, numgen's 1/N on the edges to endpoints."""
    from kproxy.nftview import service_path
    path = service_path(node.listing, service)
    g = graphviz.Digraph("service", graph_attr={"rankdir": "LR", "fontname": "Helvetica",
                                                "label": f"Service {service} (nftables)", "labelloc": "t"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "shape": "box"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    declared: set[str] = set()

    def box(name: str, **attrs) -> str:
        if name not in declared:
            declared.add(name)
            g.node(_id(name), name, **attrs)
        return _id(name)

    for step in path:
        e, chain, rule = step["element"], step["chain"], step["rule"]
        if e is not None:
            entry = box(f"{e.map}\n{e.key}", style="filled", fillcolor="#e8f0fe", shape="cds")
            if e.target and e.target != "reject-chain":
                g.edge(entry, box(e.target, style="filled", fillcolor="#e8f0fe"), label=e.verdict.split()[0])
            else:
                g.node(_id("stop", e.text), f"{e.verdict.upper()}\n{e.comment}", shape="octagon", style="filled",
                       fillcolor="#fce8e6")
                g.edge(entry, _id("stop", e.text), label=step["table"])
            continue
        src = box(chain, style="filled", fillcolor="#e6f4ea" if chain.startswith("endpoint-") else "#e8f0fe")
        if rule.startswith("numgen random mod "):
            mod = int(rule.split()[3])
            for target in re.findall(r"goto ([^\s,}]+)", rule):
                g.edge(src, box(target, style="filled", fillcolor="#e6f4ea"), label=f"1/{mod} -> {100 / mod:.1f}%")
        elif "dnat to " in rule:
            dest = rule.split("dnat to ", 1)[1].split()[0]
            pod = pods_by_ip.get(dest.rpartition(":")[0])
            pid = _id("pod", dest)
            g.node(pid, f"pod {pod['name']}\n{dest}" if pod else dest, shape="box", style="rounded,filled",
                   fillcolor="#fff4e0")
            g.edge(src, pid, label="DNAT")
        elif rule.endswith("drop"):
            g.node(_id("DROP", chain), "DROP", shape="octagon", style="filled", fillcolor="#fce8e6")
            g.edge(src, _id("DROP", chain))
        else:
            for target in re.findall(r"(?:goto|jump) ([^\s,}]+)", rule):
                style = "dashed" if target == "mark-for-masquerade" else "solid"
                label = "affinity" if rule.startswith("ip saddr @") else ("hairpin" if chain.startswith("endpoint-")
                                                                            and style == "dashed" else "")
                g.edge(src, box(target, style="dashed" if style == "dashed" else "filled",
                                fillcolor="#e8f0fe"), style=style, label=label)
    return g
