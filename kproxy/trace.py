"""`kproxy trace SRC DST`: one real connection through a lab's Service rules, with netfilter
tracing switched on for that flow only, printed as a numbered walk.

How: a chain kproxy owns (`KPROXY-TRACE-<random>`) in the raw table of every node netns of the
lab, hooked first from raw PREROUTING and OUTPUT, TRACEs packets whose source port is the
probe's (and the replies, whose destination port is); `xtables-monitor --trace` in each netns
prints every rule the packets meet in iptables-save syntax. The probe runs from SRC (a pod, a
node or the sandbox's `outside`) with that source port, then conntrack is read and the trace
rules and the monitors are removed in every case (errors, Ctrl-C), as `Tracing.__exit__` does.

In nftables mode the same happens with nftables' own tools: a table of our own per trace
(`<lab prefix>-trace-<random>`, in the node netns only) with base chains on prerouting and
output at priority -199 (just after conntrack at -200, before kube-proxy's first chains at -110)
whose one rule sets `meta nftrace set 1` on packets whose conntrack entry's original source port
is the probe's (both directions of the connection, masqueraded replies too), and `nft monitor
trace` prints every rule, verdict-map lookup and policy the marked packets meet. The table is
deleted afterwards in every case, as the iptables chain is.

The parsing (kproxy/traceparse.py) is pure, so it is unit-tested on
captured text without root.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from kproxy.explain import Saved
from kproxy.traceparse import conntrack_line, parse_conntrack, parse_monitor, parse_nft_monitor, walk

TRACE_PREFIX = "KPROXY-TRACE-"
# Source ports the probe picks from: below the NodePort range and the kernel's ephemeral range,
# so no other connection in the lab (probes, DNS) uses one by chance.
PORT_RANGE = (20000, 29999)
# -- running it --------------------------------------------------------------------------
PROBE = r"""
import socket, sys
proto, host, port, sport, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", sport))
except OSError as e:
    print("BIND " + str(e)); sys.exit(3)
s.settimeout(timeout)
try:
    s.connect((host, port))
    if proto == "tcp":
        s.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print("ANSWER " + data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip())
    else:
        s.send(b"whoami")
        print("ANSWER " + s.recv(65536).decode(errors="replace").strip())
except socket.timeout:
    print("TIMEOUT no answer within %gs" % timeout); sys.exit(2)
except OSError as e:
    print("ERROR " + (e.strerror or str(e))); sys.exit(1)
finally:
    s.close()
"""


def _ns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def _run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class TraceError(Exception):
    pass


class Tracing:
    """The TRACE chain and an xtables-monitor in each node netns (nftables mode: a trace table
    and `nft monitor trace`), for the lifetime of a `with`.

    __exit__ always removes the hooks and the chain (the table) and stops the monitors (by pid),
    whatever happened inside (an error, Ctrl-C); SIGTERM is turned into the same clean exit."""

    def __init__(self, netns_list: list[str], port: int, proto: str, mode: str = "iptables", prefix: str = "kproxy"):
        self.netns_list, self.port, self.proto, self.mode = netns_list, port, proto, mode
        token = secrets.token_hex(4)
        # the name the parser looks for: the iptables chain, or the nftables table
        self.chain = TRACE_PREFIX + token.upper() if mode == "iptables" else f"{prefix}-trace-{token}"
        self.monitors: dict[str, tuple[subprocess.Popen, str]] = {}
        self.installed: list[str] = []
        self._old_term = None

    def _ipt(self, netns: str, *args: str) -> subprocess.CompletedProcess:
        return _run(_ns(netns, ["iptables", "-w", "-t", "raw", *args]))

    def __enter__(self) -> "Tracing":
        self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for netns in self.netns_list:
                self._install(netns)
                self._monitor(netns)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _install(self, netns: str) -> None:
        if self.mode == "nftables":
            return self._install_nft(netns)
        res = self._ipt(netns, "-N", self.chain)
        if res.returncode != 0:
            raise TraceError(f"cannot create the trace chain in {netns}: {res.stderr.strip()}")
        self.installed.append(netns)
        p = self.proto
        for args in (["-A", self.chain, "-p", p, "--sport", str(self.port), "-j", "TRACE"],
                     ["-A", self.chain, "-p", p, "--dport", str(self.port), "-j", "TRACE"],
                     ["-I", "PREROUTING", "1", "-p", p, "-j", self.chain],
                     ["-I", "OUTPUT", "1", "-p", p, "-j", self.chain]):
            res = self._ipt(netns, *args)
            if res.returncode != 0:
                raise TraceError(f"cannot install the trace rule in {netns}: {res.stderr.strip()}")

    def _install_nft(self, netns: str) -> None:
        t, p = f"ip {self.chain}", self.proto
        lines = [f"add table {t}"]
        for chain, hook in (("pre", "prerouting"), ("out", "output")):
            lines.append(f"add chain {t} {chain} {{ type filter hook {hook} priority -199 ; }}")
            lines.append(f"add rule {t} {chain} meta l4proto {p} ct original proto-src {self.port} meta nftrace set 1")
        self.installed.append(netns)  # before: a half-made table is deleted too
        res = subprocess.run(_ns(netns, ["nft", "-f", "-"]), input="\n".join(lines) + "\n", capture_output=True,
                             text=True, timeout=20)
        if res.returncode != 0:
            raise TraceError(f"cannot install the trace table in {netns}: {res.stderr.strip()}")

    def _monitor(self, netns: str) -> None:
        fd, path = tempfile.mkstemp(prefix="kproxy-trace-", suffix=".txt")
        argv, comm = (["xtables-monitor", "--trace"], "xtables-monitor") if self.mode == "iptables" \
            else (["nft", "monitor", "trace"], "nft")
        try:
            proc = subprocess.Popen(_ns(netns, argv), stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            os.close(fd)
        self.monitors[netns] = (proc, path)
        deadline = time.monotonic() + 3
        while not _has_netlink_socket(proc.pid, comm):  # subscribed: from now on it sees every trace
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TraceError(f"{' '.join(argv)} did not start in {netns}: {self.output(netns)[-300:]}")
            time.sleep(0.02)
        time.sleep(0.1)

    def output(self, netns: str) -> str:
        try:
            with open(self.monitors[netns][1]) as f:
                return f.read()
        except (KeyError, OSError):
            return ""

    def stop_monitors(self) -> dict[str, str]:
        """Stop every monitor (by pid) and return what each printed."""
        out = {}
        for netns, (proc, path) in self.monitors.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            out[netns] = self.output(netns)
        return out

    def __exit__(self, *exc) -> None:
        try:
            self.stop_monitors()
            for netns in self.installed:
                if self.mode == "nftables":
                    _run(_ns(netns, ["nft", "delete", "table", "ip", self.chain]))
                    continue
                for hook in ("PREROUTING", "OUTPUT"):
                    while self._ipt(netns, "-D", hook, "-p", self.proto, "-j", self.chain).returncode == 0:
                        pass
                self._ipt(netns, "-F", self.chain)
                self._ipt(netns, "-X", self.chain)
            for _, path in self.monitors.values():
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self.installed, self.monitors = [], {}
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _has_netlink_socket(pid: int, comm: str = "xtables-monitor") -> bool:
    """Whether the monitor (which `ip netns exec` became) has its netlink socket open."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != comm:
                return False  # still `ip`, before its exec
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def probe(src_netns: str, proto: str, host: str, port: int, sport: int, timeout: float) -> tuple[int, str]:
    res = _run(_ns(src_netns, [sys.executable, "-S", "-I", "-c", PROBE, proto, host, str(port), str(sport),
                               str(timeout)]), timeout=timeout + 10)
    return res.returncode, (res.stdout.strip() or res.stderr.strip())


def conntrack_entries(netns: str, proto: str, sport: int) -> list[dict]:
    res = _run(_ns(netns, ["conntrack", "-L", "-p", proto, "--orig-port-src", str(sport)]))
    return parse_conntrack(res.stdout)


def save(netns: str, mode: str = "iptables"):
    """The node's rules as the walk reads them: iptables-save parsed, or (nftables) the listing."""
    if mode == "nftables":
        from kproxy.nftview import parse_listing
        return parse_listing(_run(_ns(netns, ["nft", "list", "table", "ip", "kube-proxy"])).stdout)
    from kproxy.explain import parse_save
    return parse_save(_run(_ns(netns, ["iptables-save"])).stdout)


# -- the lab side: what SRC and DST mean, and the whole run -------------------------------
@dataclass
class Endpoint:
    """Where the probe starts (netns) or goes (ip, port), and how to name it."""

    label: str
    netns: str | None = None
    ip: str | None = None
    port: int | None = None


def pods_by_ip(store) -> dict[str, dict]:
    """Every pod of the lab by its IP (not hostNetwork pods, which share their node's)."""
    from kproxy.store.base import kind_prefix
    out = {}
    for pod in store.values(kind_prefix("Pod")):
        st, spec = pod.get("status") or {}, pod.get("spec") or {}
        if st.get("podIP") and not spec.get("hostNetwork") and not pod["metadata"].get("deletionTimestamp"):
            out[st["podIP"]] = {"name": pod["metadata"]["name"], "namespace": pod["metadata"].get("namespace"),
                                "node": spec.get("nodeName")}
    return out


def lab_nodes(cfg, store) -> list[tuple[str, str]]:
    """(node name, its netns) of every node of a sandbox lab."""
    from kproxy.store.base import kind_prefix
    nodes = []
    for node in store.values(kind_prefix("Node")):
        netns = (node["metadata"].get("annotations") or {}).get("kproxy.io/netns")
        if netns:
            nodes.append((node["metadata"]["name"], netns))
    return nodes or [(cfg.node_name, cfg.naming.node_netns)]


def node_ip(store, name: str) -> str | None:
    from kproxy.store.base import object_key
    node = store.get(object_key("Node", None, name)) or {}
    return next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"), None)


def parse_destination(text: str) -> tuple[str, str, str | None]:
    """DST into (kind, name-or-ip, port-or-None): svc/NAME[:PORT], node/NAME:PORT, IP[:PORT]."""
    word, slash, rest = text.partition("/")
    name, _, port = (rest if slash else text).partition(":")
    if slash:
        kind = {"svc": "svc", "service": "svc", "services": "svc", "node": "node", "nodes": "node",
                "no": "node"}.get(word.lower())
        if kind is None:
            raise TraceError(f'DST "{text}": want svc/NAME[:PORT], node/NAME:NODEPORT or IP[:PORT]')
        if kind == "node" and not port:
            raise TraceError(f'DST "{text}": a node needs a port (node/NAME:NODEPORT)')
        return kind, name, port or None
    if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        raise TraceError(f'DST "{text}": want svc/NAME[:PORT], node/NAME:NODEPORT or IP[:PORT]')
    return "ip", name, port or None


def _port(text: str | None, default: int | None, what: str) -> int:
    if text is None:
        if default is None:
            raise TraceError(f"{what}: give a port")
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TraceError(f'{what}: port "{text}" is not a number in 1-65535')
    return int(text)


def service_destination(svc: dict, port: str | None, proto: str) -> tuple[str, int]:
    """A Service's ClusterIP and port (the first of `proto`, or the one named/numbered `port`)."""
    spec, name = svc.get("spec") or {}, svc["metadata"]["name"]
    ip = spec.get("clusterIP")
    if not ip or ip == "None":
        raise TraceError(f'Service "{name}" has no cluster IP (headless or ExternalName): trace a pod IP instead')
    ports = [p for p in spec.get("ports") or [] if (p.get("protocol") or "TCP").lower() == proto]
    if port is not None:
        ports = [p for p in ports if str(p.get("port")) == port or p.get("name") == port]
    if not ports:
        others = sorted({(p.get("protocol") or "TCP") for p in spec.get("ports") or []} - {proto.upper()})
        hint = f" (it has {'/'.join(others)}: pass --proto {others[0].lower()})" if others and not port else ""
        raise TraceError(f'Service "{name}" has no {proto.upper()} port' + (f' "{port}"' if port else "") + hint)
    return ip, int(ports[0]["port"])


def answered_pod(answer: str) -> str | None:
    """The pod named by the built-in server's answer (`pod NAME namespace ...`, or a UDP name)."""
    m = re.match(r"pod (\S+) namespace", answer)
    if m:
        return m.group(1)
    return answer.strip() if re.fullmatch(r"[a-z0-9][-a-z0-9.]*", answer.strip() or "-") else None


def node_report(node: str, netns: str, monitor_text: str, port: int, chain: str, saved,
                pods: dict[str, dict], conntrack: list[dict], mode: str = "iptables") -> dict:
    """What one node saw: the request's first packet walked, the reply's first packet walked
    (a reply may carry another port than the probe's: masqueraded with a random source port)."""
    packets = (parse_nft_monitor if mode == "nftables" else parse_monitor)(monitor_text, port, chain)
    request = next((p for p in packets if p.first.get("SPORT") == str(port)), None)
    reply = next((p for p in packets if p.first.get("SPORT") != str(port) and p is not request), None)
    doc = {"node": node, "netns": netns, "packets": len(packets), "conntrack": conntrack}
    for key, pkt in (("request", request), ("reply", reply)):
        if pkt is None:
            doc[key] = None
            continue
        steps, decided = walk(pkt, saved, pods)
        doc[key] = {"packet": pkt.summary(), "steps": steps, "decision": decided}
    return doc


def masquerade_reason(decision: dict, mode: str = "iptables") -> str:
    mark, post = ("KUBE-MARK-MASQ", "KUBE-POSTROUTING") if mode == "iptables" else ("mark-for-masquerade",
                                                                                    "masquerading")
    if decision.get("masquerade"):
        return decision.get("mark_reason") or f"{post} masqueraded the packet"
    if decision.get("mark_reason"):
        return decision["mark_reason"] + " (but the packet was not masqueraded on this node)"
    return f"no {mark} rule matched: the client's address is kept"


def run(src: Endpoint, dst: Endpoint, proto: str, nodes: list[tuple[str, str]], pods: dict[str, dict],
        timeout: float = 3.0, attempts: int = 3, mode: str = "iptables", prefix: str = "kproxy") -> dict:
    """Trace one connection from `src` (its netns) to `dst` (ip, port) on every node netns."""
    import random
    for attempt in range(attempts):
        sport = random.randint(*PORT_RANGE)
        with Tracing([netns for _, netns in nodes], sport, proto, mode, prefix) as tracing:
            rc, said = probe(src.netns, proto, dst.ip, dst.port, sport, timeout)
            if rc == 3 and attempt + 1 < attempts:  # the port was taken in SRC: another one
                continue
            time.sleep(0.2)  # the monitors print the last packets
            texts = tracing.stop_monitors()
            chain = tracing.chain
            saved = {netns: save(netns, mode) for _, netns in nodes}
            tracked = {netns: conntrack_entries(netns, proto, sport) for _, netns in nodes}
        break
    reports = [node_report(name, netns, texts.get(netns, ""), sport, chain, saved[netns], pods, tracked[netns], mode)
               for name, netns in nodes]
    met = [r for r in reports if r["packets"]]
    # The node the packet entered first: the one whose nat table DNATed it, else any that saw it.
    met.sort(key=lambda r: not (r["request"] and r["request"]["decision"].get("dnat")))
    kind, _, text = said.partition(" ")
    result = {"ANSWER": "answered", "TIMEOUT": "timeout", "ERROR": "refused" if "refused" in said.lower() else "error",
              "BIND": "error"}.get(kind, "error")
    entry = met[0]["request"]["decision"] if met and met[0]["request"] else {}
    return {
        "proxyMode": mode,
        "source": {"name": src.label, "netns": src.netns},
        "destination": {"name": dst.label, "ip": dst.ip, "port": dst.port, "protocol": proto},
        "sourcePort": sport,
        "traceChain": chain,
        "nodes": met,
        "result": result,
        "answer": text if kind == "ANSWER" else said,
        "answeredBy": answered_pod(text) if kind == "ANSWER" else None,
        "dnat": entry.get("dnat"),
        "endpointPod": entry.get("pod"),
        "masquerade": any(r["request"] and r["request"]["decision"]["masquerade"] for r in met),
        "masqueradeReason": masquerade_reason(entry, mode) if entry else None,
        "refusal": entry.get("refusal"),
        "choice": entry.get("choice"),
        "conntrack": next((r["conntrack"] for r in met if r["conntrack"]), []),
    }


def choice_text(choice: dict) -> str:
    """The summary line of the endpoint choice: the rolls, or the session-affinity rule that
    made them unnecessary (a rule without a probability is not always "the last rule")."""
    if choice.get("affinity"):
        how = "its affinity set" if "numgen" in choice or choice.get("endpoint") else "-m recent --rcheck"
        return ("random choice: none: session affinity (ClientIP): the client was seen before and goes back to "
                f"the same endpoint ({how})")
    if choice.get("numgen"):
        g = choice["numgen"]
        if g["mod"] == 1:
            return f"random choice: a single endpoint, {choice['endpoint']} (numgen random mod 1: no choice)"
        return (f"random choice: numgen random mod {g['mod']} gave {g['value']}: {choice['endpoint']} "
                f"(each of the {g['mod']} endpoints p=1/{g['mod']})")
    nos = ", ".join(f"p={c['probability']:.4g} no" for c in choice["rolled_no"])
    taken = (f"p={choice['probability']:.4g} yes" if choice["probability"]
             else "the last rule (no roll)" if nos else "a single endpoint (no roll)")
    return f"random choice: {nos + ', ' if nos else ''}{taken}"


def format_text(doc: dict) -> str:
    """The numbered walk: each rule met on each node, then what was decided."""
    d = doc["destination"]
    out = [f"trace {doc['source']['name']} -> {d['name']} ({d['ip']}:{d['port']}/{d['protocol']}), "
           f"source port {doc['sourcePort']}"]
    if not doc["nodes"]:
        out.append("no node saw the packet (it never reached a node: a pod on the same bridge answers "
                   "directly, or the address is not routed)")
    n, nft = 0, doc.get("proxyMode") == "nftables"
    # The request node by node from where it entered, then the reply back the other way.
    walks = [(node, "request", "the first packet") for node in doc["nodes"]]
    walks += [(node, "reply", "the first reply") for node in reversed(doc["nodes"])]
    for node, key, title in walks:
        part = node[key]
        if part is not None:
            out.append("")
            out.append(f"node {node['node']}, {title}: {part['packet']}")
            for s in part["steps"]:
                n += 1
                mark = "  (not met)" if s.get("not_met") and s["rule"] else ""
                rule = s["rule"] or (f"{s['chain']}: no rule matched" if s.get("not_met") else f"{s['chain']} policy")
                if nft and s["rule"]:
                    rule = f"{s['chain']}: {rule}"  # nft's rule text does not name its chain
                out.append(f"{n:3}. {s['table']:<6} {rule}{mark}")
                if s.get("element"):
                    out.append(f"       matched element: {s['element']}")
                out.append(f"       -> {s['verdict']}: {s['explanation']}" if s["explanation"]
                           else f"       -> {s['verdict']}")
    for node in doc["nodes"]:
        rest = node["packets"] - (node["request"] is not None) - (node["reply"] is not None)
        if rest > 0 and doc["result"] == "answered":
            out.append(f"     (node {node['node']}: {rest} more packets of the connection followed its conntrack "
                       "entry; they skip the nat table)")
        elif rest > 0:
            out.append(f"     (node {node['node']}: {rest} more packets, the client's retries, met the same rules)")
    out.append("")
    if doc.get("choice"):
        out.append(choice_text(doc["choice"]))
    if doc.get("dnat"):
        pod = doc.get("endpointPod")
        who = f"pod {pod['namespace']}/{pod['name']} on {pod['node']}" if pod else "no pod known by that IP"
        out.append(f"DNAT: -> {doc['dnat']} ({who})")
    if doc.get("refusal"):
        out.append(f"refused: {doc['refusal']}")
    if doc.get("masqueradeReason"):
        out.append(f"masquerade: {'yes' if doc['masquerade'] else 'no'} ({doc['masqueradeReason']})")
    for e in doc.get("conntrack") or []:
        out.append(f"conntrack: {conntrack_line(e)}")
    if doc["result"] == "answered":
        out.append(f"answer: {doc['answer']}")
        if doc.get("answeredBy"):
            out.append(f"answered by: pod {doc['answeredBy']}")
    else:
        out.append(f"no answer ({doc['result']}): {doc['answer']}")
    return "\n".join(out) + "\n"
