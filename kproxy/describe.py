"""`kproxy describe`: kubectl's describe output for pods, services, deployments, nodes and namespaces.

The text is built the way kubectl's describers build it (k8s.io/kubectl/pkg/describe): lines
with tab-separated cells, indented by level, then aligned by a port of Go's text/tabwriter
(minwidth 0, tabwidth 8, padding 2, padded with spaces), so columns line up exactly where
kubectl's do. Everything here is pure: objects in, text out.
"""
from __future__ import annotations

import calendar
import time

from kproxy import tables
from kproxy.controllers.replicas import pod_template_hash

LEVEL = "  "  # kubectl's PrefixWriter indents each level by two spaces


# -- Go's text/tabwriter ------------------------------------------------------------------
def tabwrite(text: str, minwidth: int = 0, padding: int = 2) -> str:
    """Align tab-terminated cells as Go's tabwriter does (flags 0, padchar ' ').

    A column block is a run of consecutive lines that have a cell in that column; its width
    is its widest cell plus `padding`. The last cell of a line is never part of a column."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    widths: list[int] = []

    def write(line0: int, line1: int) -> None:
        for cells in lines[line0:line1]:
            parts = []
            for j, cell in enumerate(cells):
                if j < len(widths) and j < len(cells) - 1:
                    parts.append(cell.ljust(widths[j]))
                else:
                    parts.append(cell)
            out.append("".join(parts))

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write(line0, line1)

    fmt(0, len(lines))
    return "\n".join(out)


class _Writer:
    """kubectl's PrefixWriter: `write(level, text)` with tabs between cells."""

    def __init__(self) -> None:
        self.blocks: list[list[str]] = [[]]

    def write(self, level: int, text: str) -> None:
        self.blocks[-1].append(LEVEL * level + text)

    def flush(self) -> None:
        """Later lines align on their own (kubectl flushes before the Events table)."""
        self.blocks.append([])

    def text(self) -> str:
        return "".join(tabwrite("".join(b)) for b in self.blocks if b)


# -- shared helpers -----------------------------------------------------------------------
def rfc1123z(ts: str | None) -> str:
    """Go's time.RFC1123Z of an API timestamp (in UTC)."""
    if not ts:
        return "<unknown>"
    t = time.gmtime(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", t)


def _labels_multiline(w: _Writer, title: str, labels: dict | None, level: int = 0) -> None:
    if not labels:
        w.write(level, f"{title}:\t<none>\n")
        return
    for i, k in enumerate(sorted(labels)):
        w.write(level if i == 0 else 0, (f"{title}:\t" if i == 0 else "\t") + f"{k}={labels[k]}\n")


def _annotations_multiline(w: _Writer, title: str, annotations: dict | None, level: int = 0) -> None:
    _labels_multiline(w, title, annotations, level)


def selector_string(selector: dict | None) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): requirements sorted by key."""
    sel = selector or {}
    if "matchLabels" not in sel and "matchExpressions" not in sel:
        reqs = [(k, f"{k}={v}") for k, v in sel.items()]
    else:
        reqs = [(k, f"{k}={v}") for k, v in (sel.get("matchLabels") or {}).items()]
        for e in sel.get("matchExpressions") or []:
            key, op, values = e.get("key", ""), e.get("operator"), sorted(e.get("values") or [])
            text = {"In": f"{key} in ({','.join(values)})", "NotIn": f"{key} notin ({','.join(values)})",
                    "Exists": key, "DoesNotExist": f"!{key}"}.get(op, key)
            reqs.append((key, text))
    return ",".join(t for _, t in sorted(reqs)) or "<none>"


def event_source(ev: dict) -> str:
    """The component that reported an event (kproxy's events carry no source: derive it)."""
    src = (ev.get("source") or {}).get("component") or ev.get("reportingComponent")
    if src:
        return src
    kind, reason = (ev.get("involvedObject") or {}).get("kind"), ev.get("reason")
    if kind == "Pod":
        return "default-scheduler" if reason in ("Scheduled", "FailedScheduling") else "kubelet"
    if kind == "Deployment":
        return "deployment-controller"
    if kind == "Node":
        return "kube-proxy"
    return "kproxy"


def events_for(events: list[dict], kind: str, namespace: str, name: str) -> list[dict]:
    """The events whose involvedObject is this object."""
    out = []
    for ev in events:
        inv = ev.get("involvedObject") or {}
        if inv.get("kind") == kind and inv.get("name") == name and (inv.get("namespace") or "") == (namespace or ""):
            out.append(ev)
    return out


# Within one second, a pod's events happen in this order (timestamps have whole seconds).
_LIFECYCLE = {r: i for i, r in enumerate(("Scheduled", "Pulling", "Pulled", "Created", "Started", "Killing"))}


def _events(w: _Writer, events: list[dict]) -> None:
    """DescribeEvents: `<none>`, or a table sorted by last seen."""
    if not events:
        w.write(0, "Events:\t<none>\n")
        return
    w.flush()
    w.write(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n")
    w.write(1, "----\t------\t----\t----\t-------\n")
    for ev in sorted(events, key=lambda e: (e.get("lastTimestamp") or e.get("firstTimestamp") or "",
                                            _LIFECYCLE.get(e.get("reason"), len(_LIFECYCLE)))):
        first = tables.age(ev.get("firstTimestamp") or ev.get("lastTimestamp"))
        count = ev.get("count", 1) or 1
        interval = f"{tables.age(ev.get('lastTimestamp'))} (x{count} over {first})" if count > 1 else first
        w.write(1, f"{ev.get('type', '')}\t{ev.get('reason', '')}\t{interval}\t{event_source(ev)}\t"
                   f"{(ev.get('message') or '').strip()}\n")


def _controller(obj: dict) -> str:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')}/{ref.get('name')}"
    return ""


# -- containers (pods and pod templates) --------------------------------------------------
def _port_of(value) -> str:
    return str(value) if value is not None else ""


def describe_probe(probe: dict) -> str:
    """kubectl's DescribeProbe."""
    attrs = (f"delay={probe.get('initialDelaySeconds', 0)}s timeout={probe.get('timeoutSeconds', 1)}s "
             f"period={probe.get('periodSeconds', 10)}s #success={probe.get('successThreshold', 1)} "
             f"#failure={probe.get('failureThreshold', 3)}")
    if "exec" in probe:
        return f"exec [{' '.join(str(c) for c in (probe['exec'].get('command') or []))}] {attrs}"
    if "httpGet" in probe:
        h = probe["httpGet"]
        port = _port_of(h.get("port"))
        host = f"{h.get('host', '')}:{port}" if port else h.get("host", "")
        return f"http-get {str(h.get('scheme', 'HTTP')).lower()}://{host}{h.get('path', '')} {attrs}"
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return f"tcp-socket {t.get('host', '')}:{_port_of(t.get('port'))} {attrs}"
    if "grpc" in probe:
        return f"grpc <pod>:{probe['grpc'].get('port')} {probe['grpc'].get('service', '')} {attrs}"
    return f"unknown {attrs}"


def _container_state(w: _Writer, title: str, state: dict) -> None:
    if "running" in state:
        w.write(2, f"{title}:\tRunning\n")
        w.write(3, f"Started:\t{rfc1123z(state['running'].get('startedAt'))}\n")
    elif "terminated" in state:
        t = state["terminated"]
        w.write(2, f"{title}:\tTerminated\n")
        if t.get("reason"):
            w.write(3, f"Reason:\t{t['reason']}\n")
        if t.get("message"):
            w.write(3, f"Message:\t{t['message']}\n")
        w.write(3, f"Exit Code:\t{t.get('exitCode', 0)}\n")
        if t.get("startedAt"):
            w.write(3, f"Started:\t{rfc1123z(t['startedAt'])}\n")
        if t.get("finishedAt"):
            w.write(3, f"Finished:\t{rfc1123z(t['finishedAt'])}\n")
    else:
        w.write(2, f"{title}:\tWaiting\n")
        reason = (state.get("waiting") or {}).get("reason")
        if reason:
            w.write(3, f"Reason:\t{reason}\n")


def _env_value(pod: dict | None, path: str) -> str:
    if pod is None:
        return ""
    m, st, spec = pod["metadata"], pod.get("status", {}), pod.get("spec", {})
    return {"metadata.name": m.get("name", ""), "metadata.namespace": m.get("namespace", ""),
            "status.podIP": st.get("podIP", ""), "status.hostIP": st.get("hostIP", ""),
            "spec.nodeName": spec.get("nodeName", "")}.get(path, "")


def _containers(w: _Writer, containers: list[dict], statuses: list[dict] | None, pod: dict | None,
                space: str = "") -> None:
    """describeContainers, for a pod (with statuses) or a pod template (`space` = two spaces)."""
    by_name = {s.get("name"): s for s in statuses or []}
    if not containers:
        w.write(0, f"{space}Containers: <none>\n")
        return
    w.write(0, f"{space}Containers:\n")
    for c in containers:
        status = by_name.get(c.get("name"))
        w.write(1, f"{' ' if space else ''}{c.get('name')}:\n")
        if status is not None:
            w.write(2, f"Container ID:\t{status.get('containerID', '')}\n")
        w.write(2, f"Image:\t{c.get('image', '')}\n")
        if status is not None:
            w.write(2, f"Image ID:\t{status.get('imageID', '')}\n")
        ports = [f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}" for p in c.get("ports") or []]
        host_ports = [f"{p.get('hostPort', 0)}/{p.get('protocol', 'TCP')}" for p in c.get("ports") or []]
        w.write(2, f"Ports:\t{', '.join(ports)}\n" if len(ports) > 1 else f"Port:\t{', '.join(ports) or '<none>'}\n")
        w.write(2, f"Host Ports:\t{', '.join(host_ports)}\n" if len(host_ports) > 1
                else f"Host Port:\t{', '.join(host_ports) or '<none>'}\n")
        for title, key in (("Command", "command"), ("Args", "args")):
            if c.get(key):
                w.write(2, f"{title}:\n")
                for part in c[key]:
                    for line in str(part).split("\n"):
                        w.write(3, f"{line}\n")
        if status is not None:
            _container_state(w, "State", status.get("state") or {})
            last = status.get("lastState") or {}
            if "terminated" in last:
                _container_state(w, "Last State", last)
            w.write(2, f"Ready:\t{'True' if status.get('ready') else 'False'}\n")
            w.write(2, f"Restart Count:\t{status.get('restartCount', 0)}\n")
        res = c.get("resources") or {}
        for title, key in (("Limits", "limits"), ("Requests", "requests")):
            if res.get(key):
                w.write(2, f"{title}:\n")
                for name in sorted(res[key]):
                    w.write(3, f"{name}:\t{res[key][name]}\n")
        for title, key in (("Liveness", "livenessProbe"), ("Readiness", "readinessProbe"), ("Startup", "startupProbe")):
            if c.get(key):
                w.write(2, f"{title}:\t{describe_probe(c[key])}\n")
        env = c.get("env") or []
        if not env:
            w.write(2, "Environment:\t<none>\n")
        else:
            w.write(2, "Environment:\n")
            for e in env:
                ref = (e.get("valueFrom") or {}).get("fieldRef")
                if ref:
                    value = _env_value(pod, ref.get("fieldPath", ""))
                    w.write(3, f"{e['name']}:\t{value} ({ref.get('apiVersion', 'v1')}:{ref.get('fieldPath', '')})\n")
                elif "valueFrom" in e:
                    w.write(3, f"{e['name']}:\t<set to a reference>\n")
                else:
                    w.write(3, f"{e['name']}:\t{e.get('value', '')}\n")
        mounts = c.get("volumeMounts") or []
        if not mounts:
            w.write(2, "Mounts:\t<none>\n")
        else:
            w.write(2, "Mounts:\n")
            for m in mounts:
                w.write(3, f"{m.get('mountPath')} from {m.get('name')} ({'ro' if m.get('readOnly') else 'rw'})\n")


def _volumes(w: _Writer, volumes: list[dict] | None, space: str = "") -> None:
    if not volumes:
        w.write(0, f"{space}Volumes:\t<none>\n")
        return
    w.write(0, f"{space}Volumes:\n")
    for v in volumes:
        w.write(1, f"{' ' if space else ''}{v.get('name')}:\n")
        kind = next((k for k in v if k != "name"), "<unknown>")
        w.write(2, f"Type:\t{kind}\n")


def _tolerations(w: _Writer, title: str, tolerations: list[dict] | None, level: int = 0) -> None:
    if not tolerations:
        w.write(level, f"{title}:\t<none>\n")
        return
    for i, t in enumerate(tolerations):
        text = t.get("key", "")
        if t.get("value"):
            text += f"={t['value']}"
        if t.get("effect"):
            text += f":{t['effect']}"
        if t.get("operator") == "Exists" and not t.get("value"):
            text += " op=Exists"
        if t.get("tolerationSeconds") is not None:
            text += f" for {t['tolerationSeconds']}s"
        w.write(level if i == 0 else 0, (f"{title}:\t" if i == 0 else "\t") + text + "\n")


def qos_class(pod: dict) -> str:
    """BestEffort without requests or limits, Guaranteed when every container's cpu and memory
    limits equal its requests, Burstable otherwise."""
    containers = pod.get("spec", {}).get("containers") or []
    res = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in res):
        return "BestEffort"
    for r in res:
        limits = r.get("limits") or {}
        requests = r.get("requests") or limits  # requests default to limits
        if any(limits.get(k) is None or str(limits.get(k)) != str(requests.get(k)) for k in ("cpu", "memory")):
            return "Burstable"
    return "Guaranteed"


# -- the describers -----------------------------------------------------------------------
def describe_pod(pod: dict, events: list[dict]) -> str:
    m, spec, st = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    w = _Writer()
    w.write(0, f"Name:\t{m['name']}\n")
    w.write(0, f"Namespace:\t{m.get('namespace', 'default')}\n")
    # the API server's admission sets these on every pod: show what it would have
    w.write(0, f"Priority:\t{spec.get('priority', 0)}\n")
    w.write(0, f"Service Account:\t{spec.get('serviceAccountName') or 'default'}\n")
    if spec.get("nodeName"):
        w.write(0, f"Node:\t{spec['nodeName']}/{st.get('hostIP', '')}\n")
    else:
        w.write(0, "Node:\t<none>\n")
    if st.get("startTime"):
        w.write(0, f"Start Time:\t{rfc1123z(st['startTime'])}\n")
    _labels_multiline(w, "Labels", m.get("labels"))
    _annotations_multiline(w, "Annotations", m.get("annotations"))
    if m.get("deletionTimestamp") and st.get("phase") not in ("Failed", "Succeeded"):
        w.write(0, f"Status:\tTerminating (lasts {tables.age(m['deletionTimestamp'])})\n")
        w.write(0, f"Termination Grace Period:\t{spec.get('terminationGracePeriodSeconds', 30)}s\n")
    else:
        w.write(0, f"Status:\t{st.get('phase', 'Pending')}\n")
    for key, title in (("reason", "Reason"), ("message", "Message")):
        if st.get(key):
            w.write(0, f"{title}:\t{st[key]}\n")
    w.write(0, f"IP:\t{st.get('podIP', '')}\n")
    ips = st.get("podIPs") or ([{"ip": st["podIP"]}] if st.get("podIP") else [])
    if not ips:
        w.write(0, "IPs:\t<none>\n")
    else:
        w.write(0, "IPs:\n")
        for ip in ips:
            w.write(1, f"IP:\t{ip.get('ip')}\n")
    if _controller(pod):
        w.write(0, f"Controlled By:\t{_controller(pod)}\n")
    _containers(w, spec.get("containers") or [], st.get("containerStatuses") or [], pod)
    if st.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\n")
        for c in st["conditions"]:
            w.write(1, f"{c.get('type')} \t{c.get('status')} \n")
    _volumes(w, spec.get("volumes"))
    w.write(0, f"QoS Class:\t{qos_class(pod)}\n")
    _labels_multiline(w, "Node-Selectors", spec.get("nodeSelector"))
    _tolerations(w, "Tolerations", spec.get("tolerations"))
    _events(w, events)
    return w.text()


def _slice_endpoints(slices: list[dict], port_name: str) -> str:
    """formatEndpointSlices for one Service port: ready addresses, three and `+ N more...`."""
    addrs = []
    for sl in slices:
        ready = [e for e in sl.get("endpoints") or []
                 if (e.get("conditions") or {}).get("ready", True) is not False and e.get("addresses")]
        ports = sl.get("ports") or []
        if not ports:
            addrs += [e["addresses"][0] for e in ready]
        for p in ports:
            if (p.get("name") or "") == (port_name or ""):
                addrs += [f"{e['addresses'][0]}:{p.get('port')}" for e in ready]
    if not addrs:
        return "<none>"
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


def describe_service(svc: dict, slices: list[dict], events: list[dict]) -> str:
    m, spec = svc["metadata"], svc.get("spec", {})
    w = _Writer()
    w.write(0, f"Name:\t{m['name']}\n")
    w.write(0, f"Namespace:\t{m.get('namespace', 'default')}\n")
    _labels_multiline(w, "Labels", m.get("labels"))
    _annotations_multiline(w, "Annotations", m.get("annotations"))
    w.write(0, f"Selector:\t{tables.format_labels(spec.get('selector'))}\n")
    w.write(0, f"Type:\t{spec.get('type', 'ClusterIP')}\n")
    if spec.get("ipFamilyPolicy"):
        w.write(0, f"IP Family Policy:\t{spec['ipFamilyPolicy']}\n")
    w.write(0, f"IP Families:\t{','.join(spec.get('ipFamilies') or []) or '<none>'}\n")
    w.write(0, f"IP:\t{spec.get('clusterIP', '')}\n")
    if spec.get("clusterIPs"):
        w.write(0, f"IPs:\t{','.join(spec['clusterIPs'])}\n")
    if spec.get("externalIPs"):
        w.write(0, f"External IPs:\t{','.join(spec['externalIPs'])}\n")
    if spec.get("loadBalancerIP"):
        w.write(0, f"IP:\t{spec['loadBalancerIP']}\n")
    if spec.get("externalName"):
        w.write(0, f"External Name:\t{spec['externalName']}\n")
    ingress = [i.get("ip") or i.get("hostname") for i in (svc.get("status", {}).get("loadBalancer") or {}).get("ingress") or []]
    if ingress:
        w.write(0, f"LoadBalancer Ingress:\t{', '.join(ingress)}\n")
    for p in spec.get("ports") or []:
        name = p.get("name") or "<unset>"
        proto = p.get("protocol", "TCP")
        w.write(0, f"Port:\t{name}\t{p.get('port')}/{proto}\n")
        w.write(0, f"TargetPort:\t{p.get('targetPort', p.get('port'))}/{proto}\n")
        if p.get("nodePort"):
            w.write(0, f"NodePort:\t{name}\t{p['nodePort']}/{proto}\n")
        w.write(0, f"Endpoints:\t{_slice_endpoints(slices, p.get('name') or '')}\n")
    w.write(0, f"Session Affinity:\t{spec.get('sessionAffinity', 'None')}\n")
    if spec.get("externalTrafficPolicy"):
        w.write(0, f"External Traffic Policy:\t{spec['externalTrafficPolicy']}\n")
    if spec.get("internalTrafficPolicy"):
        w.write(0, f"Internal Traffic Policy:\t{spec['internalTrafficPolicy']}\n")
    if spec.get("healthCheckNodePort"):
        w.write(0, f"HealthCheck NodePort:\t{spec['healthCheckNodePort']}\n")
    if spec.get("loadBalancerSourceRanges"):
        w.write(0, f"LoadBalancer Source Ranges:\t{','.join(spec['loadBalancerSourceRanges'])}\n")
    _events(w, events)
    return w.text()


def _pod_template(w: _Writer, template: dict) -> None:
    """DescribePodTemplate."""
    w.write(0, "Pod Template:\n")
    tm, ts = template.get("metadata") or {}, template.get("spec") or {}
    _labels_multiline(w, "  Labels", tm.get("labels"))
    if tm.get("annotations"):
        _annotations_multiline(w, "  Annotations", tm["annotations"])
    if ts.get("serviceAccountName"):
        w.write(1, f"Service Account:\t{ts['serviceAccountName']}\n")
    _containers(w, ts.get("containers") or [], None, None, space="  ")
    _volumes(w, ts.get("volumes"), space="  ")
    _labels_multiline(w, "  Node-Selectors", ts.get("nodeSelector"))
    _tolerations(w, "  Tolerations", ts.get("tolerations"))


def _rs_list(rss: list[dict]) -> str:
    return ", ".join(f"{rs['metadata']['name']} ({rs['status'].get('replicas', 0)}/{rs['spec'].get('replicas', 0)} "
                     "replicas created)" for rs in rss) or "<none>"


def describe_deployment(deploy: dict, replica_sets: list[dict], events: list[dict]) -> str:
    """`replica_sets`: this Deployment's (tables.replica_sets)."""
    m, spec, st = deploy["metadata"], deploy.get("spec", {}), deploy.get("status", {})
    want = spec.get("replicas", 1)
    available = st.get("availableReplicas", 0)
    w = _Writer()
    w.write(0, f"Name:\t{m['name']}\n")
    w.write(0, f"Namespace:\t{m.get('namespace', 'default')}\n")
    w.write(0, f"CreationTimestamp:\t{rfc1123z(m.get('creationTimestamp'))}\n")
    _labels_multiline(w, "Labels", m.get("labels"))
    _annotations_multiline(w, "Annotations", m.get("annotations"))
    w.write(0, f"Selector:\t{selector_string(spec.get('selector'))}\n")
    w.write(0, f"Replicas:\t{want} desired | {st.get('updatedReplicas', 0)} updated | {st.get('replicas', 0)} total | "
               f"{available} available | {max(0, want - available)} unavailable\n")
    strategy = spec.get("strategy") or {}
    w.write(0, f"StrategyType:\t{strategy.get('type', 'RollingUpdate')}\n")
    w.write(0, f"MinReadySeconds:\t{spec.get('minReadySeconds', 0)}\n")
    if strategy.get("rollingUpdate"):
        ru = strategy["rollingUpdate"]
        w.write(0, f"RollingUpdateStrategy:\t{ru.get('maxUnavailable', '25%')} max unavailable, "
                   f"{ru.get('maxSurge', '25%')} max surge\n")
    _pod_template(w, spec.get("template") or {})
    if st.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\tReason\n")
        w.write(1, "----\t------\t------\n")
        for c in st["conditions"]:
            w.write(1, f"{c.get('type')} \t{c.get('status')}\t{c.get('reason', '')}\n")
    current = f"{m['name']}-{pod_template_hash(spec.get('template') or {})}"
    new = [rs for rs in replica_sets if rs["metadata"]["name"] == current]
    old = [rs for rs in replica_sets if rs["metadata"]["name"] != current]
    w.write(0, f"OldReplicaSets:\t{_rs_list(old)}\n")
    w.write(0, f"NewReplicaSet:\t{_rs_list(new)}\n")
    _events(w, events)
    return w.text()


def describe_node(node: dict, pods: list[dict], events: list[dict]) -> str:
    """`pods`: the pods bound to this node."""
    m, spec, st = node["metadata"], node.get("spec", {}), node.get("status", {})
    w = _Writer()
    w.write(0, f"Name:\t{m['name']}\n")
    w.write(0, f"Roles:\t{tables.node_roles(node)}\n")
    _labels_multiline(w, "Labels", m.get("labels"))
    _annotations_multiline(w, "Annotations", m.get("annotations"))
    w.write(0, f"CreationTimestamp:\t{rfc1123z(m.get('creationTimestamp'))}\n")
    taints = [f"{t.get('key')}{'=' + t['value'] if t.get('value') else ''}:{t.get('effect')}"
              for t in spec.get("taints") or []]
    w.write(0, f"Taints:\t{taints[0] if taints else '<none>'}\n")
    for t in taints[1:]:
        w.write(0, f"\t{t}\n")
    w.write(0, f"Unschedulable:\t{'true' if spec.get('unschedulable') else 'false'}\n")
    if st.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\tReason\tMessage\n")
        w.write(1, "----\t------\t------\t-------\n")
        for c in st["conditions"]:
            w.write(1, f"{c.get('type')} \t{c.get('status')} \t{c.get('reason', '')} \t{c.get('message', '')}\n")
    w.write(0, "Addresses:\n")
    for a in st.get("addresses") or []:
        w.write(1, f"{a.get('type')}:\t{a.get('address')}\n")
    info = st.get("nodeInfo") or {}
    w.write(0, "System Info:\n")
    w.write(1, f"Kubelet Version:\t{tables.NODE_VERSION}\n")
    w.write(1, f"Kube-Proxy Version:\t{tables.NODE_VERSION if info.get('kubeProxyVersion', 'kproxy') == 'kproxy' else info['kubeProxyVersion']}\n")
    w.write(1, "Operating System:\tlinux\n")
    if spec.get("podCIDR"):
        w.write(0, f"PodCIDR:\t{spec['podCIDR']}\n")
    if spec.get("podCIDRs"):
        w.write(0, f"PodCIDRs:\t{','.join(spec['podCIDRs'])}\n")
    active = sorted((p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")),
                    key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"]))
    w.write(0, f"Non-terminated Pods:\t({len(active)} in total)\n")
    w.write(1, "Namespace\tName\tAge\n")
    w.write(1, "---------\t----\t---\n")
    for p in active:
        w.write(1, f"{p['metadata'].get('namespace', 'default')}\t{p['metadata']['name']}\t"
                   f"{tables.age(p['metadata'].get('creationTimestamp'))}\n")
    _events(w, events)
    return w.text()


def describe_namespace(ns: dict) -> str:
    m = ns["metadata"]
    labels = {"kubernetes.io/metadata.name": m["name"], **(m.get("labels") or {})}
    w = _Writer()
    w.write(0, f"Name:\t{m['name']}\n")
    _labels_multiline(w, "Labels", labels)
    _annotations_multiline(w, "Annotations", m.get("annotations"))
    w.write(0, f"Status:\t{ns.get('status', {}).get('phase', 'Active')}\n")
    w.write(0, "\nNo resource quota.\n")
    w.write(0, "\nNo LimitRange resource.\n")
    return w.text()
