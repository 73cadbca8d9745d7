"""kubectl's table output: the same columns, the same `<none>`s, the same ages."""
from __future__ import annotations

import calendar
import functools
import json
import time
from typing import NamedTuple

from kproxy.api.meta import pod_ready  # noqa: F401 - the one definition, read by printers as tables.pod_ready

# What `kubectl get nodes` shows as VERSION for a kproxy node (the Kubernetes version it follows).
NODE_VERSION = "v1.33.0-kproxy"


@functools.lru_cache(maxsize=65536)
def _epoch(ts: str) -> int:
    """Seconds since the epoch of an RFC 3339 `2024-05-01T12:00:00Z`; cached and parsed by hand
    because strptime was 90% of a 1,000-row Table (the API server's list answer)."""
    if len(ts) == 20 and ts[4] == "-" and ts[10] == "T" and ts[19] == "Z":
        return calendar.timegm((int(ts[0:4]), int(ts[5:7]), int(ts[8:10]), int(ts[11:13]), int(ts[14:16]),
                                int(ts[17:19]), 0, 0, 0))
    return calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))


def age(ts: str | None) -> str:
    """kubectl's HumanDuration of the time since `ts`."""
    if not ts:
        return "<unknown>"
    secs = max(0, int(time.time() - _epoch(ts)))
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
    """STATUS as upstream's pod printer derives it: the phase (or status.reason), overridden by
    the first container that is waiting or terminated with a reason; a Completed sidecar next
    to a running container reads Running (NotReady when the pod is not Ready); Terminating
    while deleted (Unknown when the node was lost). kproxy's choices where the printer would
    show the bare phase or exit code: Succeeded/Failed pods read Completed/Error, a container
    terminated without a reason Error."""
    st = pod.get("status") or {}
    reason = st.get("reason") or st.get("phase", "Pending")
    has_running = False
    for cs in reversed(st.get("containerStatuses") or []):
        state = cs.get("state") or {}
        waiting, term = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason"):
            reason = waiting["reason"]
        elif term is not None:
            reason = term.get("reason") or "Error"
        elif cs.get("ready") and "running" in state:
            has_running = True
    if reason == "Completed" and has_running:
        reason = "Running" if pod_ready(pod) else "NotReady"
    if pod["metadata"].get("deletionTimestamp"):
        return "Unknown" if st.get("reason") == "NodeLost" else "Terminating"
    return {"Succeeded": "Completed", "Failed": "Error"}.get(reason, reason)


def _ports(svc: dict) -> str:
    """makePortString: port[:nodePort]/protocol, comma-joined."""
    out = []
    for p in svc["spec"].get("ports", []):
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p['port']}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _external(svc: dict) -> str:
    """getServiceExternalIP (wide): ExternalName's name, LoadBalancer ingress + externalIPs
    (`<pending>` without either), externalIPs for the other types."""
    spec = svc["spec"]
    kind = spec.get("type", "ClusterIP")
    if kind == "ExternalName":
        return spec.get("externalName", "<none>")
    ips = list(spec.get("externalIPs") or [])
    if kind == "LoadBalancer":
        ingress = [i.get("ip") or i.get("hostname") or "" for i in
                   (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []]
        ips = [i for i in ingress if i] + ips
        return ",".join(ips) or "<pending>"
    return ",".join(ips) or "<none>"


def selector_string(sel: dict | None) -> str:
    """metav1.LabelSelectorAsSelector(sel).String(): requirements sorted by key, `k=v`,
    `k in (a,b)`, `k notin (a)`, `k`, `!k`; `<none>` for a nil selector."""
    if sel is None:
        return "<none>"
    reqs = [(k, f"{k}={v}") for k, v in (sel.get("matchLabels") or {}).items()]
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e.get("key", ""), e.get("operator"), ",".join(sorted(set(e.get("values") or [])))
        text = {"In": f"{k} in ({vals})", "NotIn": f"{k} notin ({vals})", "Exists": k,
                "DoesNotExist": f"!{k}"}.get(op, k)
        reqs.append((k, text))
    return ",".join(t for _, t in sorted(reqs, key=lambda r: r[0])) or "<none>"


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


def _more(items: list[str], empty: str) -> str:
    """listWithMoreString: the first 3, then `+ N more...`."""
    if not items:
        return empty
    return ",".join(items[:3]) + (f" + {len(items) - 3} more..." if len(items) > 3 else "")


def _slice_ports(sl: dict) -> str:
    """formatDiscoveryPorts: each port's number, else its name, else `*`."""
    return _more([str(p["port"]) if p.get("port") is not None else p.get("name") or "*"
                  for p in sl.get("ports") or []], "<unset>")


def _slice_endpoints(sl: dict) -> str:
    return _more([a for e in sl.get("endpoints") or [] for a in e.get("addresses") or []], "<unset>")


def _containers(template: dict) -> tuple[str, str]:
    """layoutContainerCells: names and images, comma-joined."""
    c = (template.get("spec") or {}).get("containers") or []
    return ",".join(x.get("name", "") for x in c), ",".join(x.get("image", "") for x in c)


def _event_times(ev: dict) -> tuple[str, str, int]:
    """printEvent's LAST SEEN, FIRST SEEN and COUNT (series first, eventTime as a fallback)."""
    first = age(ev.get("firstTimestamp")) if ev.get("firstTimestamp") else age(_micro(ev.get("eventTime")))
    last = age(ev.get("lastTimestamp")) if ev.get("lastTimestamp") else first
    count = ev.get("count") or 1
    series = ev.get("series")
    if series:
        last, count = age(_micro(series.get("lastObservedTime"))), series.get("count", count)
    return last, first, count


def _micro(ts: str | None) -> str | None:
    """A MicroTime (2024-05-01T12:00:00.123456Z) cut to the seconds age() reads."""
    return ts[:19] + "Z" if ts and len(ts) > 20 else ts


def core_event(ev: dict) -> dict:
    """An events.k8s.io/v1 Event in core/v1's shape (the conversion upstream's printer sees)."""
    src = {k: v for k, v in (("component", ev.get("reportingController")), ("host", ev.get("reportingInstance")))
           if v}
    return {"metadata": ev.get("metadata") or {}, "involvedObject": ev.get("regarding") or {},
            "reason": ev.get("reason", ""), "message": ev.get("note", ""), "type": ev.get("type", ""),
            "source": src, "firstTimestamp": ev.get("deprecatedFirstTimestamp"),
            "lastTimestamp": ev.get("deprecatedLastTimestamp"), "count": ev.get("deprecatedCount"),
            "eventTime": ev.get("eventTime"), "series": ev.get("series")}


def _event_object(ev: dict) -> str:
    inv = ev.get("involvedObject") or {}
    kind = (inv.get("kind") or "").lower()
    return f"{kind}/{inv['name']}" if inv.get("name") else kind


def _event_source(ev: dict) -> str:
    src = ev.get("source") or {}
    component = src.get("component") or ev.get("reportingComponent") or ""
    instance = src.get("host") or ev.get("reportingInstance") or ""
    return f"{component}, {instance}" if instance else component


def _node_status(node: dict) -> str:
    conds = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
    status = ["Unknown"] if "Ready" not in conds else ["Ready" if conds["Ready"] == "True" else "NotReady"]
    if (node.get("spec") or {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    return ",".join(status)


def _node_info(node: dict, key: str) -> str:
    return ((node.get("status") or {}).get("nodeInfo") or {}).get(key) or "<unknown>"


def _node_address(node: dict, kind: str) -> str:
    return next((a["address"] for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == kind),
                "<none>")


def _restarts(statuses: list[dict]) -> str:
    """RESTARTS: the count, and how long ago the last one ended when a container says
    (lastState.terminated.finishedAt), as `2 (5m ago)`."""
    count = sum(c.get("restartCount", 0) for c in statuses)
    ended = [((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt") for c in statuses]
    last = max((t for t in ended if t), default=None)
    return f"{count} ({age(last)} ago)" if last else str(count)


def _readiness_gates(pod: dict) -> str:
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    if not gates:
        return "<none>"
    conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return f"{sum(1 for g in gates if conds.get(g.get('conditionType')) == 'True')}/{len(gates)}"


def _pod_ip(pod: dict) -> str:
    st = pod.get("status") or {}
    ips = st.get("podIPs") or []
    return (ips[0].get("ip") if ips else st.get("podIP")) or "<none>"


def cells(kind: str, o: dict) -> list:
    """One row's cells for every column of COLUMNS[kind] (the wide ones included), typed as the
    API server's printers type them (integers where upstream puts int64). The API server's
    Table and `kproxy get` both come from here."""
    m, spec, st = o["metadata"], o.get("spec") or {}, o.get("status") or {}
    a = age(m.get("creationTimestamp"))
    if kind == "Pod":
        total = len(spec.get("containers", []))
        restarts = _restarts(st.get("containerStatuses", []))
        return [m["name"], f"{ready_containers(o)}/{total}", pod_status(o), restarts, a,
                _pod_ip(o), spec.get("nodeName") or "<none>", st.get("nominatedNodeName") or "<none>",
                _readiness_gates(o)]
    if kind == "Service":
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        return [m["name"], spec.get("type", "ClusterIP"), ips[0] if ips else "<none>", _external(o), _ports(o), a,
                format_labels(spec.get("selector"))]
    if kind == "Deployment":
        names, images = _containers(spec.get("template") or {})
        return [m["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}", st.get("updatedReplicas", 0),
                st.get("availableReplicas", 0), a, names, images, selector_string(spec.get("selector"))]
    if kind == "ReplicaSet":
        names, images = _containers(spec.get("template") or {})
        return [m["name"], spec.get("replicas", 1), st.get("replicas", 0), st.get("readyReplicas", 0), a,
                names, images, selector_string(spec.get("selector"))]
    if kind == "Endpoints":
        return [m["name"], _endpoints(o), a]
    if kind == "EndpointSlice":
        return [m["name"], o.get("addressType", "IPv4"), _slice_ports(o), _slice_endpoints(o), a]
    if kind == "Node":
        return [m["name"], _node_status(o), node_roles(o), a, NODE_VERSION, _node_address(o, "InternalIP"),
                _node_address(o, "ExternalIP"), _node_info(o, "osImage"), _node_info(o, "kernelVersion"),
                _node_info(o, "containerRuntimeVersion")]
    if kind == "Namespace":
        return [m["name"], st.get("phase", "Active"), a]
    if kind == "Lease":
        return [m["name"], spec.get("holderIdentity", ""), a]
    if kind == "Event":
        if o.get("apiVersion") == "events.k8s.io/v1":
            o = core_event(o)
        last, first, count = _event_times(o)
        inv = o.get("involvedObject") or {}
        return [last, o.get("type", ""), o.get("reason", ""), _event_object(o), inv.get("fieldPath", ""),
                _event_source(o), (o.get("message") or "").strip(), first, count, m["name"]]
    if kind in CUSTOM_COLUMNS:
        return [m["name"]] + [_jsonpath_cell(o, c) for c in CUSTOM_COLUMNS[kind]]
    return [m["name"], a]


class Column(NamedTuple):
    """A meta.k8s.io/v1 TableColumnDefinition as upstream's printers declare it; `doc` is the
    description (or the key of a long one in kproxy.apiserver.columndocs)."""

    name: str
    doc: str = ""
    priority: int = 0
    type: str = "string"
    format: str = ""
    path: str = ""  # custom resources: the additionalPrinterColumn's jsonPath


NAME = Column("Name", "name", format="name")
AGE = Column("Age", "creationTimestamp")
CONTAINERS = Column("Containers", "Names of each container in the template.", 1)
IMAGES = Column("Images", "Images referenced by each container in the template.", 1)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "Pod": (NAME, Column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            Column("Status", "The aggregate status of the containers in this pod."),
            Column("Restarts", "The number of times the containers in this pod have been restarted and when the "
                               "last container in this pod has restarted."),
            AGE, Column("IP", "podIP", 1), Column("Node", "nodeName", 1),
            Column("Nominated Node", "nominatedNodeName", 1), Column("Readiness Gates", "readinessGates", 1)),
    "Service": (NAME, Column("Type", "svc.type"), Column("Cluster-IP", "svc.clusterIP"),
                Column("External-IP", "svc.externalIPs"), Column("Port(s)", "svc.ports"), AGE,
                Column("Selector", "svc.selector", 1)),
    "Deployment": (NAME, Column("Ready", "Number of the pod with ready state"),
                   Column("Up-to-date", "deploy.updatedReplicas"), Column("Available", "deploy.availableReplicas"),
                   AGE, CONTAINERS, IMAGES, Column("Selector", "deploy.selector", 1)),
    "ReplicaSet": (NAME, Column("Desired", "rs.replicas", type="integer"),
                   Column("Current", "rs.status.replicas", type="integer"),
                   Column("Ready", "rs.readyReplicas", type="integer"), AGE, CONTAINERS, IMAGES,
                   Column("Selector", "rs.selector", 1)),
    "Endpoints": (NAME, Column("Endpoints", "ep.subsets"), AGE),
    "EndpointSlice": (NAME, Column("AddressType", "eps.addressType"), Column("Ports", "eps.ports"),
                      Column("Endpoints", "eps.endpoints"), AGE),
    "Node": (NAME, Column("Status", "The status of the node"), Column("Roles", "The roles of the node"), AGE,
             Column("Version", "node.kubeletVersion"), Column("Internal-IP", "node.addresses", 1),
             Column("External-IP", "node.addresses", 1), Column("OS-Image", "node.osImage", 1),
             Column("Kernel-Version", "node.kernelVersion", 1),
             Column("Container-Runtime", "node.containerRuntimeVersion", 1)),
    "Namespace": (NAME, Column("Status", "The status of the namespace"), AGE),
    "Lease": (NAME, Column("Holder", "lease.holderIdentity"), AGE),
    "Event": (Column("Last Seen", "ev.lastTimestamp"), Column("Type", "ev.type"), Column("Reason", "ev.reason"),
              Column("Object", "ev.involvedObject"), Column("Subobject", "ev.fieldPath", 1),
              Column("Source", "ev.source", 1), Column("Message", "ev.message"),
              Column("First Seen", "ev.firstTimestamp", 1), Column("Count", "ev.count", 1),
              Column("Name", "name", 1, format="name")),
}
# MetalLB's CRDs' additionalPrinterColumns (metallb v0.13 manifests); a CRD's table is NAME
# then these (no AGE: a CRD that lists columns gets only those).
_CRD_DOC = "Custom resource definition column (in JSONPath format): "
CUSTOM_COLUMNS: dict[str, tuple[Column, ...]] = {
    "IPAddressPool": (Column("Auto Assign", _CRD_DOC + ".spec.autoAssign", type="boolean", path=".spec.autoAssign"),
                      Column("Avoid Buggy IPs", _CRD_DOC + ".spec.avoidBuggyIPs", type="boolean",
                             path=".spec.avoidBuggyIPs"),
                      Column("Addresses", _CRD_DOC + ".spec.addresses", path=".spec.addresses")),
    "L2Advertisement": (Column("IPAddressPools", _CRD_DOC + ".spec.ipAddressPools", path=".spec.ipAddressPools"),
                        Column("IPAddressPool Selectors", _CRD_DOC + ".spec.ipAddressPoolSelectors",
                               path=".spec.ipAddressPoolSelectors"),
                        Column("Interfaces", _CRD_DOC + ".spec.interfaces", path=".spec.interfaces"),
                        Column("Node Selectors", _CRD_DOC + ".spec.nodeSelectors", 10, path=".spec.nodeSelectors")),
}
for _kind, _cols in CUSTOM_COLUMNS.items():
    COLUMNS[_kind] = (NAME,) + _cols


def columns(kind: str) -> tuple[Column, ...]:
    """The kind's columns; NAME and AGE for a kind without a printer."""
    return COLUMNS.get(kind, (NAME, AGE))


def _jsonpath_cell(o: dict, col: Column):
    """The CRD table convertor's cell: None when absent, a string column as kubectl's jsonpath
    prints the value (lists and maps as JSON), a boolean/integer/number column's JSON value."""
    v: object = o
    for part in col.path.strip(".").split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if v is None:
        return None
    if col.type == "string":
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else \
            ("true" if v is True else "false" if v is False else str(v))
    if col.type == "boolean":
        return v if isinstance(v, bool) else None
    if col.type in ("integer", "number"):
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return v


def cell_text(v) -> str:
    """How kubectl prints a cell: nothing for null, true/false for booleans."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _row(kind: str, o: dict, wide: bool) -> list[str]:
    """The printed row: every cell with -o wide, else the priority-0 ones (kubectl's rule)."""
    return [cell_text(c) for c, col in zip(cells(kind, o), columns(kind)) if wide or col.priority == 0]


# `kproxy get -o wide` only (the API server's Table stays kubectl's): a node's pod CIDR, which a
# lab's reader needs to follow pod addresses to nodes.
KPROXY_WIDE = {"Node": ("POD-CIDR", lambda n: (n.get("spec") or {}).get("podCIDR") or "<none>")}


def render(kind: str, items: list[dict], wide: bool = False, with_namespace: bool = False,
           show_labels: bool = False, name_prefix: str = "") -> str:
    """kubectl's table; `name_prefix` (`pod/`) as kubectl writes it when it lists several kinds,
    `show_labels` adds the LABELS column."""
    shown = [c.name.upper() for c in columns(kind) if wide or c.priority == 0]
    extra = KPROXY_WIDE.get(kind) if wide else None
    shown += [extra[0]] if extra else []
    header = (["NAMESPACE"] if with_namespace else []) + shown + (["LABELS"] if show_labels else [])
    rows = [header]
    if kind == "Event":  # oldest first, newest last, as `kubectl get events --sort-by=.lastTimestamp`
        order = sorted(items, key=lambda o: (o.get("lastTimestamp", ""), o["metadata"]["name"]))
    else:
        order = sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    for o in order:
        row = _row(kind, o, wide) + ([extra[1](o)] if extra else [])
        if name_prefix and kind != "Event":
            row[0] = name_prefix + row[0]
        if show_labels:
            row.append(format_labels(o["metadata"].get("labels")))
        rows.append(([o["metadata"].get("namespace", "")] if with_namespace else []) + row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
