"""kubectl's table output: the same columns, the same `<none>`s, the same ages."""
from __future__ import annotations

import calendar
import time

from kproxy.api.meta import pod_ready  # noqa: F401 - the one definition, read by printers as tables.pod_ready

# What `kubectl get nodes` shows as VERSION for a kproxy node (the Kubernetes version it follows).
NODE_VERSION = "v1.33.0-kproxy"


def age(ts: str | None) -> str:
    """kubectl's HumanDuration of the time since `ts`."""
    if not ts:
        return "<unknown>"
    secs = max(0, int(time.time() - calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))))
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        return f"{mins}m{secs % 60}s" if secs % 60 else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = mins // 60
    if hours < 8:
        return f"{hours}h{mins % 60}m" if mins % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 2 * 365:
        return f"{days}d"
    years, rest = days // 365, days % 365
    return (f"{years}y{rest}d" if rest else f"{years}y") if years < 8 else f"{years}y"


def node_ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def node_ip(node: dict) -> str:
    return next((x["address"] for x in node.get("status", {}).get("addresses", []) if x["type"] == "InternalIP"),
                "<none>")


def ready_containers(pod: dict) -> int:
    """READY's numerator, as kubectl counts it: containerStatuses[].ready. A pod turned NotReady
    over its kubelet's report (terminating, its node NotReady: the Ready condition False while
    every container still says ready) has none ready: `get pods` never says 1/1 with Ready False."""
    cs = pod.get("status", {}).get("containerStatuses", [])
    ready = sum(1 for c in cs if c.get("ready"))
    conds = {c.get("type"): c.get("status") for c in pod.get("status", {}).get("conditions", [])}
    if cs and ready == len(cs) and conds.get("Ready") == "False":
        return 0
    return ready


def pod_status(pod: dict) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    for cs in pod.get("status", {}).get("containerStatuses", []):
        waiting = cs.get("state", {}).get("waiting")
        if waiting and waiting.get("reason"):
            return waiting["reason"]
        term = cs.get("state", {}).get("terminated")
        if term and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            return term.get("reason", "Error")
    phase = pod.get("status", {}).get("phase", "Pending")
    return "Completed" if phase == "Succeeded" else "Error" if phase == "Failed" else phase


def _ports(svc: dict) -> str:
    out = []
    for p in svc["spec"].get("ports", []):
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p['port']}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _external(svc: dict) -> str:
    spec = svc["spec"]
    if spec.get("type") == "ExternalName":
        return spec.get("externalName", "<none>")
    ips = [i.get("ip") or i.get("hostname") for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress", [])]
    ips += spec.get("externalIPs", [])
    if ips:
        return ",".join(ips)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _selector(sel: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (sel or {}).items()) or "<none>"


def format_labels(labels: dict | None) -> str:
    """labels.FormatLabels: `k=v` pairs sorted by key, `<none>` when there are none."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels or {})) or "<none>"


def sorted_addresses(addresses: list[dict]) -> list[dict]:
    """A subset's addresses in the order the API server stores them (endpoints.SortSubsets:
    IPs compared as strings, byte by byte, so 10.244.0.10 comes before 10.244.0.9)."""
    return sorted(addresses or [], key=lambda a: (a.get("ip", "").encode(), str(a.get("targetRef", {}).get("uid", ""))))


def _endpoints(ep: dict) -> str:
    """kubectl's formatEndpoints: per subset, each port with every (sorted) address."""
    addrs = []
    for s in ep.get("subsets") or []:
        addresses = sorted_addresses(s.get("addresses"))
        ports = s.get("ports") or []
        if not ports:  # a headless Service without ports
            addrs += [a["ip"] for a in addresses]
        for p in ports:
            addrs += [f"{a['ip']}:{p['port']}" for a in addresses]
    if not addrs:
        return "<none>"
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


def node_roles(node: dict) -> str:
    """ROLES from the node-role.kubernetes.io/<role> labels; a kproxy node is the whole
    cluster, so without role labels it is the control plane."""
    labels = node.get("metadata", {}).get("labels") or {}
    roles = {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    roles.discard("")
    return ",".join(sorted(roles)) or "control-plane"


def _owner_rs(pod: dict) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "ReplicaSet" and ref.get("controller"):
            return ref["name"]
    return None


def replica_sets(deployments: list[dict], pods: list[dict]) -> list[dict]:
    """The ReplicaSets behind Deployments, derived from the pods' ReplicaSet owners.

    kproxy has no ReplicaSet objects: the current template's ReplicaSet (`<deploy>-<hash>`)
    always exists and wants `spec.replicas` pods; an older one exists while its pods do and
    wants 0 (the rollout is scaling it down)."""
    from kproxy.controllers.replicas import pod_template_hash
    out = []
    for d in deployments:
        dm, spec = d["metadata"], d.get("spec", {})
        ns, name = dm.get("namespace", "default"), dm["name"]
        template = spec.get("template") or {}
        current = f"{name}-{pod_template_hash(template)}"
        by_rs: dict[str, list[dict]] = {current: []}
        for p in pods:
            rs = _owner_rs(p)
            if p["metadata"].get("namespace", "default") == ns and rs and rs.rsplit("-", 1)[0] == name:
                by_rs.setdefault(rs, []).append(p)
        for rs_name, rs_pods in by_rs.items():
            h = rs_name[len(name) + 1:]
            active = [p for p in rs_pods if not p["metadata"].get("deletionTimestamp")]
            ready = sum(1 for p in active if pod_ready(p))
            if rs_name == current:
                tmpl = template
            else:
                sample = rs_pods[0]
                tmpl = {"metadata": {"labels": {k: v for k, v in (sample["metadata"].get("labels") or {}).items()
                                                if k != "pod-template-hash"}},
                        "spec": {k: v for k, v in sample.get("spec", {}).items() if k != "nodeName"}}
            labels = {**(tmpl.get("metadata", {}).get("labels") or {}), "pod-template-hash": h}
            match = {**((spec.get("selector") or {}).get("matchLabels") or {}), "pod-template-hash": h}
            created = min((p["metadata"].get("creationTimestamp") or "" for p in rs_pods), default="") \
                or dm.get("creationTimestamp")
            status = {"replicas": len(active), "fullyLabeledReplicas": len(active)}
            if ready:
                status.update(readyReplicas=ready, availableReplicas=ready)
            status["observedGeneration"] = 1
            out.append({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels, "creationTimestamp": created,
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                  "uid": dm.get("uid", ""), "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": {"replicas": spec.get("replicas", 1) if rs_name == current else 0,
                         "selector": {"matchLabels": match},
                         "template": {**tmpl, "metadata": {**(tmpl.get("metadata") or {}), "labels": labels}}},
                "status": status,
            })
    return out


def _slice_endpoints(sl: dict) -> str:
    addrs = [a for e in sl.get("endpoints", []) for a in e.get("addresses", [])]
    if not addrs:
        return "<unset>"
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


def _row(kind: str, o: dict, wide: bool) -> list[str]:
    m, spec, st = o["metadata"], o.get("spec", {}), o.get("status", {})
    a = age(m.get("creationTimestamp"))
    if kind == "Pod":
        cs = st.get("containerStatuses", [])
        total = len(spec.get("containers", []))
        ready = ready_containers(o)
        row = [m["name"], f"{ready}/{total}", pod_status(o), str(sum(c.get("restartCount", 0) for c in cs)), a]
        return row + ([st.get("podIP", "<none>"), spec.get("nodeName", "<none>"), "<none>", "<none>"] if wide else [])
    if kind == "Service":
        row = [m["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>") or "<none>",
               _external(o), _ports(o), a]
        return row + ([_selector(spec.get("selector"))] if wide else [])
    if kind == "Deployment":
        want = spec.get("replicas", 1)
        row = [m["name"], f"{st.get('readyReplicas', 0)}/{want}", str(st.get("updatedReplicas", 0)),
               str(st.get("availableReplicas", 0)), a]
        if wide:
            c = spec.get("template", {}).get("spec", {}).get("containers", [])
            row += [",".join(x["name"] for x in c), ",".join(x.get("image", "") for x in c),
                    _selector(spec.get("selector", {}).get("matchLabels"))]
        return row
    if kind == "Endpoints":
        return [m["name"], _endpoints(o), a]
    if kind == "EndpointSlice":
        ports = ",".join(str(p.get("port")) for p in o.get("ports", [])) or "<unset>"
        return [m["name"], o.get("addressType", "IPv4"), ports, _slice_endpoints(o), a]
    if kind == "Node":
        row = [m["name"], "Ready" if node_ready(o) else "NotReady", node_roles(o), a, NODE_VERSION]
        if wide:
            row += [node_ip(o), "<none>", spec.get("podCIDR", "<none>")]
        return row
    if kind == "ReplicaSet":
        row = [m["name"], str(spec.get("replicas", 1)), str(st.get("replicas", 0)), str(st.get("readyReplicas", 0)), a]
        if wide:
            c = spec.get("template", {}).get("spec", {}).get("containers", [])
            row += [",".join(x["name"] for x in c), ",".join(x.get("image", "") for x in c),
                    format_labels(spec.get("selector", {}).get("matchLabels"))]
        return row
    if kind == "Namespace":
        return [m["name"], st.get("phase", "Active"), a]
    if kind == "Lease":
        return [m["name"], spec.get("holderIdentity", ""), a]
    if kind == "Event":
        inv = o.get("involvedObject", {})
        return [age(o.get("lastTimestamp")), o.get("type", ""), o.get("reason", ""),
                f"{inv.get('kind', '').lower()}/{inv.get('name', '')}", o.get("message", "")]
    return [m["name"], a]


HEADERS = {
    "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
    "Service": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"]),
    "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"]),
    "ReplicaSet": (["NAME", "DESIRED", "CURRENT", "READY", "AGE"], ["CONTAINERS", "IMAGES", "SELECTOR"]),
    "Endpoints": (["NAME", "ENDPOINTS", "AGE"], []),
    "EndpointSlice": (["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], []),
    "Node": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "EXTERNAL-IP", "POD-CIDR"]),
    "Namespace": (["NAME", "STATUS", "AGE"], []),
    "Lease": (["NAME", "HOLDER", "AGE"], []),
    "Event": (["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], []),
}


def render(kind: str, items: list[dict], wide: bool = False, with_namespace: bool = False,
           show_labels: bool = False, name_prefix: str = "") -> str:
    """kubectl's table; `name_prefix` (`pod/`) as kubectl writes it when it lists several kinds,
    `show_labels` adds the LABELS column."""
    base, extra = HEADERS.get(kind, (["NAME", "AGE"], []))
    header = (["NAMESPACE"] if with_namespace else []) + base + (extra if wide else []) \
        + (["LABELS"] if show_labels else [])
    rows = [header]
    if kind == "Event":  # oldest first, newest last, as `kubectl get events --sort-by=.lastTimestamp`
        order = sorted(items, key=lambda o: (o.get("lastTimestamp", ""), o["metadata"]["name"]))
    else:
        order = sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    for o in order:
        row = _row(kind, o, wide)
        if name_prefix and kind != "Event":
            row[0] = name_prefix + row[0]
        if show_labels:
            row.append(format_labels(o["metadata"].get("labels")))
        rows.append(([o["metadata"].get("namespace", "")] if with_namespace else []) + row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
