"""`kproxy trace` and `kproxy explain` in a sandbox lab: real connections traced by netfilter
through the node's real rules, and live counters after real requests, in both proxy modes
(the module runs once per mode, one lab each: iptables chains and xtables-monitor, then
kube-proxy's nftables table and `nft monitor trace`; the same outcomes, each mode's names).

Each trace must leave nothing behind: no KPROXY-TRACE chain or hook in the node's raw table, no
trace table in its nftables, and no xtables-monitor or nft monitor in the node's netns
(`no_trace_left`, checked after every trace).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from kproxy.graph import _id

from .conftest import BY_PROXY_MODE, hits, running_dashboard
from .test_single_host import CLIENT, EMPTY, SOLO, WEB

# test_single_host's web (3 pods behind web and web-np), client pod, solo and nobody, plus:
APPS = "---".join([WEB % {"replicas": 3}, CLIENT, SOLO, EMPTY]) + """---
# externalTrafficPolicy Local with its only endpoint on another node: a selector-less Service
# and a hand-written EndpointSlice, so this one-node lab has no local endpoint for it.
apiVersion: v1
kind: Service
metadata: {name: elsewhere}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: elsewhere-1
  labels: {kubernetes.io/service-name: elsewhere}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.9.9]
  conditions: {ready: true}
  nodeName: node-other
---
# ClientIP affinity, and a load balancer whose source range lets in only `outside`: web's pods.
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  loadBalancerSourceRanges: [192.168.49.100/32]
  ports: [{port: 80, targetPort: 8080}]
status:
  loadBalancer:
    ingress: [{ip: 192.168.49.200}]   # on the node network, as a MetalLB layer-2 pool hands out
"""


pytestmark = BY_PROXY_MODE

# Each mode's names for the same places: the Service portals, a Service's chain, an endpoint's
# chain, the rule that DNATs, the masquerade mark and the masquerading chain.
NAMES = {
    "iptables": {"portals": "KUBE-SERVICES", "svc": "KUBE-SVC-", "ep": "KUBE-SEP-", "dnat": "-j DNAT",
                 "to": "--to-destination ", "mark": "KUBE-MARK-MASQ", "masq": "KUBE-POSTROUTING",
                 "ext": "KUBE-EXT-", "masquerade": "-j MASQUERADE"},
    "nftables": {"portals": "services", "svc": "service-", "ep": "endpoint-", "dnat": "dnat to ", "to": "dnat to ",
                 "mark": "mark-for-masquerade", "masq": "masquerading", "ext": "external-",
                 "masquerade": "masquerade fully-random"},
}


def names(lab) -> dict:
    return NAMES[lab.cfg.proxy_mode]


def node_rules(lab) -> str:
    """What the node holds: iptables-save, or `nft list table ip kube-proxy`."""
    if lab.cfg.proxy_mode == "iptables":
        return lab.node_save()
    return subprocess.run(["ip", "netns", "exec", lab.cfg.naming.node_netns, "nft", "list", "table", "ip",
                           "kube-proxy"], capture_output=True, text=True).stdout


def programmed(lab, service: str = "web", port: str = "http") -> set[str]:
    """The endpoints the node's rules send the Service port to."""
    if lab.cfg.proxy_mode == "iptables":
        name = f"default/{service}" + (f":{port}" if port else "")
        return set(re.findall(rf'--comment "{name} -> ([0-9.]+):\d+"', lab.node_save()))
    return set(re.findall(rf"goto endpoint-\w+-default/{service}/tcp/{port}__([0-9.]+)/", node_rules(lab)))


@pytest.fixture(scope="module")
def apps(lab):
    lab.apply(APPS)
    pods = lab.wait_for(lambda: len(lab.ready_pods("web")) == 3 and lab.ready_pods("web"))
    lab.wait_for(lambda: programmed(lab) == {p["status"]["podIP"] for p in pods}, timeout=10)
    lab.wait_for(lambda: lab.ready_pods("solo") and programmed(lab, "solo", ""), timeout=30)
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}


def trace_tables(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    return [t for t in out.split() if "-trace-" in t]


def no_trace_left(lab) -> None:
    """Neither mode's trace rules nor monitors, whatever the mode (each node of the lab)."""
    nodes = [lab.cfg.naming.for_node(i).node_netns for i in range(1, lab.cfg.nodes + 1)] \
        if lab.cfg.nodes > 1 else [lab.cfg.naming.node_netns]
    for netns in nodes:
        raw = subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-t", "raw"], capture_output=True,
                             text=True, check=True).stdout
        assert "KPROXY-TRACE" not in raw, raw
        assert not trace_tables(netns), trace_tables(netns)
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        monitors = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{pid}/cmdline") as f:
                    argv = f.read().split("\0")
            except OSError:
                continue
            if comm == "xtables-monitor" or (comm == "nft" and "monitor" in argv):
                monitors.append(pid)
        assert not monitors, f"a trace monitor left running in {netns}: {monitors}"


def trace(lab, *args: str) -> dict:
    res = lab.kproxy("trace", *args, "-o", "json", timeout=60)
    doc = json.loads(res.stdout)
    no_trace_left(lab)
    return doc


def steps_of(doc: dict) -> list[dict]:
    return doc["nodes"][0]["request"]["steps"]


def met(doc: dict) -> list[str]:
    return [s["chain"] for s in steps_of(doc) if not s.get("not_met")]


def test_pod_to_clusterip_walks_services_svc_one_sep_and_names_who_answered(lab, apps):
    doc = trace(lab, "client", "svc/web")
    chains, nm = met(doc), names(lab)
    svc = next(s for s in steps_of(doc) if s["chain"] == nm["portals"])
    if lab.cfg.proxy_mode == "iptables":
        assert 'default/web:http cluster IP' in svc["rule"] and svc["verdict"].startswith("JUMP:KUBE-SVC-")
    else:  # the element of service-ips the packet matched: ClusterIP . tcp . 80 -> the Service's chain
        ip = lab.get("svc", "web")["spec"]["clusterIP"]
        assert svc["rule"].endswith("vmap @service-ips") and svc["element"].startswith(f"{ip} . tcp . 80 : goto ")
        assert svc["verdict"].startswith("GOTO:service-") and svc["verdict"].endswith("-default/web/tcp/http")
        assert doc["choice"]["numgen"]["mod"] == 3
    svc_chain = svc["verdict"].split(":")[1]
    assert svc_chain in chains
    seps = {c for c in chains if c.startswith(nm["ep"])}
    assert len(seps) == 1, chains
    dnat = next(s for s in steps_of(doc) if nm["dnat"] in s["rule"])
    assert dnat["chain"] in seps
    assert chains.index(nm["portals"]) < chains.index(svc_chain) < chains.index(dnat["chain"])
    answered = doc["answeredBy"]
    assert answered in apps, doc["answer"]
    assert dnat["rule"].endswith(f"{nm['to']}{apps[answered]}:8080")
    assert doc["dnat"] == f"{apps[answered]}:8080" and doc["endpointPod"]["name"] == answered
    assert not doc["masquerade"]
    ct = doc["conntrack"][0]
    assert ct["original"]["dport"] == "80" and ct["reply"]["src"] == apps[answered]
    assert ct["original"]["sport"] == str(doc["sourcePort"])


def test_the_text_walk_is_numbered_and_names_the_pod(lab, apps):
    res = lab.kproxy("trace", "pod/client", "svc/web:http", timeout=60)
    no_trace_left(lab)
    out = res.stdout
    if lab.cfg.proxy_mode == "iptables":
        assert re.search(r"^  1\. nat +-A PREROUTING .*-j KUBE-SERVICES$", out, re.M), out
    else:
        assert re.search(r"^  \d\. nat +nat-prerouting: jump services$", out, re.M), out
        assert re.search(r"^       matched element: [0-9.]+ \. tcp \. 80 : goto service-\w+-default/web/tcp/http$",
                         out, re.M), out
    answered = re.search(r"^answered by: pod (\S+)$", out, re.M).group(1)
    assert f"DNAT: -> {apps[answered]}:8080 (pod default/{answered} on node-1)" in out
    assert re.search(r"^random choice: ", out, re.M) and re.search(r"^conntrack: tcp ", out, re.M)


def test_outside_to_nodeport_is_masqueraded(lab, apps):
    port = lab.get("svc", "web-np")["spec"]["ports"][0]["nodePort"]
    doc = trace(lab, "outside", f"node/node-1:{port}")
    chains, nm = met(doc), names(lab)
    entry = "KUBE-NODEPORTS" if lab.cfg.proxy_mode == "iptables" else "services"
    for want in (entry, nm["mark"], nm["masq"]):
        assert want in chains, chains
    if lab.cfg.proxy_mode == "nftables":
        lookup = next(s for s in steps_of(doc) if s.get("element"))
        assert lookup["element"].startswith(f"tcp . {port} : goto external-")
    assert any(c.startswith(nm["ext"]) for c in chains), chains
    assert any(s["rule"].endswith(nm["masquerade"]) for s in steps_of(doc))
    assert doc["masquerade"] and "externalTrafficPolicy Cluster" in doc["masqueradeReason"]
    assert doc["answeredBy"] in apps
    # the pod saw the node's bridge address, not outside's: the reply tuple says so
    assert doc["conntrack"][0]["reply"]["dst"] == "10.244.0.1"
    assert "client 10.244.0.1:" in doc["answer"]


def test_service_without_endpoints_shows_the_reject(lab, apps):
    doc = trace(lab, "client", "svc/nobody")
    last = steps_of(doc)[-1]
    assert last["verdict"] == "REJECT"
    if lab.cfg.proxy_mode == "iptables":
        assert '"default/nobody has no endpoints"' in last["rule"]
    else:  # the element of no-endpoint-services sent it to reject-chain
        assert last["chain"] == "reject-chain" and last["rule"] == "reject"
        lookup = next(s for s in steps_of(doc) if s.get("element"))
        assert lookup["chain"] == "service-endpoints-check" and 'comment "default/nobody" : goto reject-chain' \
            in lookup["element"]
    assert doc["result"] == "refused" and "no endpoints" in doc["refusal"]
    assert doc["conntrack"] == [] and doc["answeredBy"] is None


def test_etp_local_without_local_endpoint_shows_the_drop(lab, apps):
    port = lab.get("svc", "elsewhere")["spec"]["ports"][0]["nodePort"]
    doc = trace(lab, "outside", f"node/node-1:{port}", "--timeout", "1")
    drop = next(s for s in steps_of(doc) if s["verdict"] == "DROP")
    if lab.cfg.proxy_mode == "iptables":
        assert drop["chain"] == "KUBE-EXTERNAL-SERVICES" and "has no local endpoints" in drop["rule"]
    else:
        assert drop["chain"] == "nodeport-endpoints-check" and drop["element"] == \
            f'tcp . {port} comment "default/elsewhere" : drop'
    assert doc["result"] == "timeout" and "no endpoint on this node" in doc["refusal"]
    ext = next(s for s in steps_of(doc) if s["chain"].startswith(names(lab)["ext"]))
    assert ext["verdict"] == "no match"  # KUBE-EXT had nothing for a non-local client: not DNATed


def test_hairpin_is_masqueraded(lab, apps):
    doc = trace(lab, "deploy/solo", "svc/solo")
    solo = lab.ready_pods("solo")[0]
    assert doc["answeredBy"] == solo["metadata"]["name"]
    assert doc["masquerade"] and doc["masqueradeReason"].startswith("hairpin")
    ct = doc["conntrack"][0]
    assert ct["original"]["src"] == ct["reply"]["src"] == solo["status"]["podIP"]
    assert ct["reply"]["dst"] == "10.244.0.1"  # the pod answered the node, not itself


def test_client_ip_affinity_sends_the_second_trace_to_the_same_pod_without_a_roll(lab, apps):
    lab.wait_for(lambda: programmed(lab, "sticky", ""), timeout=10)
    first = trace(lab, "client", "svc/sticky")
    second = trace(lab, "client", "svc/sticky")
    assert first["answeredBy"] in apps and second["answeredBy"] == first["answeredBy"]
    assert second["dnat"] == first["dnat"] == f"{apps[first['answeredBy']]}:8080"
    assert not first["choice"]["affinity"] and second["choice"]["affinity"], second["choice"]
    assert "random choice: none: session affinity (ClientIP)" in tr_text(second)


def test_load_balancer_source_ranges_drop_a_pod_and_let_outside_in(lab, apps):
    lab.wait_for(lambda: programmed(lab, "lb", ""), timeout=10)
    doc = trace(lab, "client", "192.168.49.200:80", "--timeout", "1")
    assert doc["result"] == "timeout" and "loadBalancerSourceRanges" in doc["refusal"], doc["refusal"]
    assert doc["dnat"] is None
    ok = trace(lab, "outside", "192.168.49.200:80")
    assert ok["answeredBy"] in apps and ok["dnat"] == f"{apps[ok['answeredBy']]}:8080"


def tr_text(doc: dict) -> str:
    from kproxy.trace import format_text
    return format_text(doc)


def test_interrupted_trace_removes_its_rules(lab, apps):
    port = lab.get("svc", "elsewhere")["spec"]["ports"][0]["nodePort"]
    netns = lab.cfg.naming.node_netns
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-m", "kproxy.cli", "trace", "outside", f"node/node-1:{port}",
                                 "--timeout", "20"], env=lab.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            lab.wait_for(lambda: "KPROXY-TRACE" in subprocess.run(
                ["ip", "netns", "exec", netns, "iptables-save", "-t", "raw"], capture_output=True, text=True).stdout
                or trace_tables(netns), timeout=15, interval=0.05)
            time.sleep(0.5)  # the probe is waiting for its answer
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        no_trace_left(lab)


def test_bad_destinations_are_refused_plainly(lab, apps):
    res = lab.kproxy("trace", "client", "node/node-1", check=False)
    assert res.returncode == 1 and "node/NAME:NODEPORT" in res.stderr and "Traceback" not in res.stderr
    res = lab.kproxy("trace", "client", "svc/missing", check=False)
    assert res.returncode == 1 and 'services "missing" not found' in res.stderr
    res = lab.kproxy("trace", "ghost", "svc/web", check=False)
    assert res.returncode == 1 and 'pods "ghost" not found' in res.stderr
    no_trace_left(lab)


def test_explain_counts_300_new_connections_per_endpoint(lab, apps):
    lab.kproxy("explain", "svc/web", "--reset")
    zero = json.loads(lab.kproxy("explain", "svc/web", "-o", "json").stdout)
    assert sum(e["connections"] for e in zero["endpoints"]) == 0
    answers = hits(lab, "client", f"http://{lab.get('svc', 'web')['spec']['clusterIP']}/", 300)
    assert all(not a.startswith("ERR") for a in answers), answers
    doc = json.loads(lab.kproxy("explain", "svc/web", "-o", "json").stdout)
    eps = {e["pod"]: e for e in doc["endpoints"]}
    assert set(eps) == set(apps)
    counts = {name: e["connections"] for name, e in eps.items()}
    assert sum(counts.values()) == 300, counts  # readiness probes go to pod IPs, never the VIP
    assert all(60 <= c <= 140 for c in counts.values()), counts
    # what the pods said agrees with the counters: each answer was one DNATed connection
    assert counts == {name: answers.count(name) for name in apps}
    assert all(e["node"] == "node-1" and e["ip"] == apps[name] for name, e in eps.items())
    first = doc["rules"][0]
    assert first["chain"] == ("KUBE-SERVICES" if lab.cfg.proxy_mode == "iptables" else "service-ips")
    assert first["packets"] == 300 and "cluster IP" in first["explanation"]
    # --reset zeroes this Service's counters only
    other = json.loads(lab.kproxy("explain", "svc/web-np", "-o", "json").stdout)
    lab.kproxy("explain", "svc/web", "--reset")
    again = json.loads(lab.kproxy("explain", "svc/web", "-o", "json").stdout)
    assert all(r["packets"] in (0, None) for r in again["rules"])  # None: nft rules that pick no destination
    assert json.loads(lab.kproxy("explain", "svc/web-np", "-o", "json").stdout)["rules"][0]["packets"] \
        == other["rules"][0]["packets"]
    text = lab.kproxy("explain", "svc/web").stdout
    roll = "random roll: with probability 0.3333" if lab.cfg.proxy_mode == "iptables" \
        else "random choice: numgen picks one of 3 endpoint chains, each with probability 1/3"
    assert roll in text and "(total 0)" in text


def test_graph_draws_the_lab_and_a_services_chains(lab, apps, tmp_path):
    dot = lab.kproxy("graph", "-o", "dot").stdout
    assert dot.startswith("digraph lab {")
    for name, ip in apps.items():
        assert f'label="pod {name}\\n{ip}"' in dot
    web = lab.get("svc", "web")["spec"]["clusterIP"]
    assert f"ClusterIP {web}" in dot and "svc web" in dot and "outside" in dot
    png = tmp_path / "lab.png"
    lab.kproxy("graph", "-o", "png", "--output", str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    chains = lab.kproxy("graph", "--svc", "web", "-o", "dot").stdout
    listed = lab.kproxy("rules", "svc/web").stdout
    seps = set(re.findall(r"^:(KUBE-SEP-\S+)", listed, re.M) or re.findall(r"^\tchain (endpoint-\S+) \{", listed, re.M))
    assert len(seps) == 3 and all(_id(s) in chains for s in seps), (seps, chains)
    assert chains.count("-> 33.3%") == 3
    for name in apps:
        assert f"pod {name}" in chains
    svg = lab.kproxy("graph", "--svc", "nobody").stdout
    assert svg.lstrip().startswith("<?xml") and "REJECT" in svg


def test_the_dashboards_counters_and_trace_form_read_this_mode(lab, apps):
    """The dashboard's data (what its page polls, and its trace form) in either mode; the page in
    a browser is tests/integration/test_dashboard.py's (iptables: one Chromium module is enough)."""
    with running_dashboard(lab) as (page, _):
        url = page + "api/"

        def web() -> dict | None:
            try:
                with urllib.request.urlopen(url + "counters", timeout=5) as r:
                    doc = json.loads(r.read())
            except OSError:
                return None
            return next((s for s in doc["services"] if s["service"] == "default/web"), None)

        before = lab.wait_for(web, timeout=20)
        answers = hits(lab, "client", f"http://{lab.get('svc', 'web')['spec']['clusterIP']}/", 30)
        time.sleep(1.2)  # one sample a second
        after = web()
        assert after["connections"] - before["connections"] == 30, (before, after)
        grew = {e["pod"]: e["connections"] for e in after["endpoints"]}
        was = {e["pod"]: e["connections"] for e in before["endpoints"]}
        assert {pod: grew[pod] - was.get(pod, 0) for pod in grew} == {pod: answers.count(pod) for pod in apps}
        req = urllib.request.Request(url + "trace", data=json.dumps({"src": "client", "dst": "svc/web"}).encode(),
                                     headers={"Content-Type": "application/json", "X-Kproxy-Dashboard": "trace"})
        with urllib.request.urlopen(req, timeout=90) as r:
            doc = json.loads(r.read())
        assert "answered by: pod web-" in doc["output"], doc
        assert names(lab)["ep"] in doc["output"] and names(lab)["dnat"] in doc["output"]
        no_trace_left(lab)
