"""`kproxy dashboard`: a small live page of the lab on the host's loopback.

The page shows the picture `kproxy graph` draws (kproxy/graph.py's SVG), the new connections
each Service's endpoints received as `kproxy explain` counts them (kproxy/explain.py: the packet
counter of each KUBE-SEP chain's DNAT rule, summed over the lab's nodes), refreshed every second
by the page's JavaScript from /api/counters, and a form that runs `kproxy trace` (kproxy/trace.py,
in a child process, so the trace's own cleanup on errors and Ctrl-C applies) and shows its text.

Why it is built this way:
- stdlib `http.server` (as kproxy/proxy/healthcheck.py), no web framework; the page is static
  HTML/CSS/JS below, served from its own paths so a strict Content-Security-Policy holds.
- The server runs in the host's root namespace on 127.0.0.1 unless `--address` asks otherwise;
  it reads the lab as `explain`/`graph` do (`ip netns exec <node netns> iptables-save -c` and the
  store) and sends no packets except the trace form's probe, which trace.py keeps in the lab.
- A trace runs as root in the lab, so a request must prove it comes from the page: the Host header
  must name this server (DNS rebinding) and a POST needs a JSON body and the X-Kproxy-Dashboard
  header (a cross-site form cannot send either without a CORS preflight, which is never answered).
- One sampler serves every open tab: the lab is read at most once per second whatever the number
  of pollers, and `dot` runs only when the picture's DOT source changes.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from kproxy import explain as ex

log = logging.getLogger(__name__)
TRACE_TIMEOUT = 60.0
SAMPLE_MAX_AGE = 0.9  # seconds a counters sample is served again
_ARG = re.compile(r"[A-Za-z0-9][A-Za-z0-9./:_-]{0,252}")  # a SRC/DST word: pod, node/NAME, svc/NAME:PORT, IP:PORT
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


# -- the data: pure, unit-tested ----------------------------------------------------------
def shown_services(services: list[dict]) -> list[dict]:
    """The Services whose traffic kproxy DNATs: those with a cluster IP (not headless, not
    ExternalName), sorted by namespace/name."""
    out = [s for s in services if (s.get("spec") or {}).get("clusterIP") not in (None, "", "None")
           and (s.get("spec") or {}).get("type") != "ExternalName"]
    return sorted(out, key=lambda s: (s["metadata"].get("namespace", "default"), s["metadata"]["name"]))


def edge_title(service: str, pod: dict | None, ip: str, node_by_ip: dict[str, str] | None = None) -> str:
    """The <title> Graphviz gives the lab picture's Service -> endpoint arrow (graph.py's ids: the
    pod, else the node with that address, else a bare endpoint), so the page can write the count on it."""
    try:
        from kproxy.graph import _id
    except ImportError:  # no graphviz package: no picture to mark either
        return ""
    ns, name = service.split("/", 1)
    if pod:
        target = _id("pod", pod.get("namespace") or ns, pod["name"])
    elif ip in (node_by_ip or {}):
        target = _id("node", node_by_ip[ip])
    else:
        target = _id("ep", ip)
    return f"{_id('svc', ns, name)}->{target}"


def counters(services: list[dict], saves: dict, pods_by_ip: dict[str, dict],
             node_by_ip: dict[str, str] | None = None) -> list[dict]:
    """Per Service: new connections per endpoint summed over the nodes' counters (a connection is
    DNATed on the node it enters by, so the sum is the lab's total), the nodes' shares, and the
    packets its REJECT/DROP rules stopped. `saves` is node name -> its iptables-save -c (nftables:
    nftview.NftNode);
    `node_by_ip` names the node behind an endpoint that is no pod (the API server's)."""
    out = []
    for svc in shown_services(services):
        meta, spec = svc["metadata"], svc.get("spec") or {}
        service = f"{meta.get('namespace', 'default')}/{meta['name']}"
        endpoints: dict[tuple[str, str], dict] = {}
        by_node: dict[str, int] = {}
        stopped = 0
        for node, saved in saves.items():
            doc = ex.report(service, saved, pods_by_ip)  # either mode: the same document
            stopped += sum(r["packets"] or 0 for r in doc["rules"] if r["stops"])
            for e in doc["endpoints"]:
                ep = endpoints.setdefault((e["ip"], e["port"]), {
                    "pod": e["pod"], "ip": e["ip"], "port": e["port"], "node": e["node"], "connections": 0,
                    "bytes": 0, "edge": edge_title(service, pods_by_ip.get(e["ip"]), e["ip"], node_by_ip)})
                ep["connections"] += e["connections"]
                ep["bytes"] += e["bytes"]
                by_node[node] = by_node.get(node, 0) + e["connections"]
        total = sum(e["connections"] for e in endpoints.values())
        eps = sorted(endpoints.values(), key=lambda e: (e["pod"] or "", e["ip"], e["port"]))
        for e in eps:
            e["share"] = round(e["connections"] / total, 4) if total else None
        out.append({"service": service, "type": spec.get("type", "ClusterIP"), "clusterIP": spec.get("clusterIP"),
                    "ports": [f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []],
                    "connections": total, "stopped": stopped, "by_node": by_node, "endpoints": eps})
    return out


def node_addresses(nodes: list[dict]) -> dict[str, str]:
    """Each node's InternalIP -> its name."""
    return {a["address"]: n["metadata"]["name"] for n in nodes for a in (n.get("status") or {}).get("addresses") or []
            if a.get("type") == "InternalIP" and a.get("address")}


# -- the lab side: reading it (root), with one sample per second for every poller ------------
class Sampler:
    """Reads the lab: the store's objects and each node's `iptables-save -c`; the picture's SVG
    is drawn again only when its DOT source changes."""

    def __init__(self, store, nodes: Callable[[], list[tuple[str, str | None]]], outside_ip: str | None,
                 mode: str = "iptables", prefix: str = "kproxy"):
        self.store, self.nodes, self.outside_ip, self.mode, self.prefix = store, nodes, outside_ip, mode, prefix
        self.lock = threading.Lock()
        self.doc: dict | None = None
        self.at = 0.0
        self.picture_key = ""
        self.svg = b""

    def _objects(self) -> dict[str, list[dict]]:
        from kproxy.store.base import kind_prefix
        return {k: self.store.values(kind_prefix(k)) for k in ("Node", "Pod", "Service", "EndpointSlice")}

    def _picture(self, objs: dict, errors: list[str]) -> None:
        try:
            from kproxy import graph as gr
            g = gr.lab_graph(objs["Node"], objs["Pod"], objs["Service"], objs["EndpointSlice"], self.outside_ip)
            key = hashlib.sha256(g.source.encode()).hexdigest()[:16]
            if key != self.picture_key:
                self.svg, self.picture_key = gr.render(g, "svg"), key
        except Exception as e:  # noqa: BLE001 - no graphviz, a dot that failed: the counters still work
            errors.append(f"the picture could not be drawn: {' '.join(str(e).split())[:200]} "
                          "(is Debian's graphviz installed? run scripts/setup)")

    def sample(self) -> dict:
        with self.lock:
            if self.doc is not None and time.monotonic() - self.at < SAMPLE_MAX_AGE:
                return self.doc
            from kproxy.trace import pods_by_ip
            errors: list[str] = []
            objs = self._objects()
            saves = {}
            for name, netns in self.nodes():
                if self.mode == "nftables":  # kube-proxy's table and kproxy's counters table (kproxy/nftcounters.py)
                    from kproxy import nftcounters
                    try:
                        saves[name] = nftcounters.node_view(netns, self.prefix, make=True)
                    except (RuntimeError, subprocess.SubprocessError) as e:
                        errors.append(f"node {name}: {str(e)[:200]}")
                    continue
                argv = ["ip", "netns", "exec", netns, "iptables-save", "-c"] if netns else ["iptables-save", "-c"]
                res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
                if res.returncode != 0:
                    errors.append(f"node {name}: iptables-save failed: {res.stderr.strip()[:200]}")
                    continue
                saves[name] = ex.parse_save(res.stdout)
            self._picture(objs, errors)
            for e in set(errors) - set((self.doc or {}).get("errors") or []):
                log.warning("%s", e)  # once, when it starts; the page shows it while it lasts
            self.doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nodes": list(saves),
                        "picture": self.picture_key, "errors": errors,
                        "services": counters(objs["Service"], saves, pods_by_ip(self.store),
                                             node_addresses(objs["Node"]))}
            self.at = time.monotonic()
            return self.doc


class Tracer:
    """`kproxy trace` in a child process, one at a time."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.lock = threading.Lock()

    @staticmethod
    def argv(form: dict) -> list[str]:
        """`kproxy trace`'s arguments for the form's fields (SRC and DST after `--`, so neither is
        read as an option); ValueError names the bad field."""
        src, dst = str(form.get("src", "")).strip(), str(form.get("dst", "")).strip()
        proto, ns = str(form.get("proto", "tcp")), str(form.get("namespace", "") or "default").strip()
        for field, value in (("src", src), ("dst", dst)):
            if not _ARG.fullmatch(value):
                raise ValueError(f'{field}: "{value[:60]}" is not a pod, node/NAME, outside, svc/NAME[:PORT] or '
                                 "IP[:PORT]")
        if proto not in ("tcp", "udp"):
            raise ValueError(f'proto: Unsupported value: "{proto[:20]}": supported values: "tcp", "udp"')
        if not _NAMESPACE.fullmatch(ns):
            raise ValueError(f'namespace: Invalid value: "{ns[:63]}": a lowercase RFC 1123 label')
        return ["trace", "--proto", proto, "-n", ns, "--", src, dst]

    def run(self, form: dict) -> tuple[int, dict]:
        try:
            args = self.argv(form)
        except ValueError as e:
            return 422, {"error": str(e)}
        if not self.lock.acquire(blocking=False):
            return 409, {"error": "a trace is already running: wait for it"}
        try:
            res = subprocess.run([sys.executable, "-m", "kproxy.cli", args[0], "--state-dir", self.state_dir,
                                  *args[1:]],
                                 capture_output=True, text=True, timeout=TRACE_TIMEOUT, stdin=subprocess.DEVNULL)
            return 200, {"command": "kproxy " + " ".join(args), "rc": res.returncode,
                         "output": res.stdout + res.stderr}
        except subprocess.TimeoutExpired:
            return 504, {"error": f"the trace did not finish within {TRACE_TIMEOUT:g}s"}
        finally:
            self.lock.release()


# -- the HTTP side -------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """One line, not socketserver's traceback (a browser that went away mid-answer)."""
        log.warning("dashboard: a request from %s failed: %s", client_address[0], sys.exc_info()[1])


def make_server(address: str, port: int, sampler, tracer) -> ThreadingHTTPServer:
    """The dashboard's server bound to address:port (not yet serving)."""
    hosts: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        server_version = "kproxy-dashboard"

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: dict) -> None:
            self._send(code, "application/json", json.dumps(doc).encode())

        def _host_ok(self) -> bool:
            if (self.headers.get("Host") or "").lower() in hosts:
                return True
            self._json(421, {"error": f"this dashboard answers only as {sorted(hosts)[0]}"})
            return False

        def do_GET(self):  # noqa: N802 - http.server's naming
            if not self._host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", PAGE.encode())
            elif path == "/app.js":
                self._send(200, "text/javascript; charset=utf-8", SCRIPT.encode())
            elif path == "/app.css":
                self._send(200, "text/css; charset=utf-8", STYLE.encode())
            elif path in ("/api/counters", "/lab.svg"):
                try:
                    doc = sampler.sample()
                except Exception as e:  # noqa: BLE001 - the store is away, a netns is gone: say so on the page
                    return self._json(503, {"error": f"the lab cannot be read: {' '.join(str(e).split())[:300]}"})
                if path == "/api/counters":
                    self._json(200, doc)
                elif sampler.svg:
                    self._send(200, "image/svg+xml", sampler.svg)
                else:
                    self._json(503, {"error": "no picture (see the errors in /api/counters)"})
            else:
                self._json(404, {"error": f"{path[:100]} not found"})

        def do_POST(self):  # noqa: N802
            if not self._host_ok():
                return
            if self.path != "/api/trace":
                return self._json(404, {"error": "not found"})
            if self.headers.get("X-Kproxy-Dashboard") != "trace" or \
                    not (self.headers.get("Content-Type") or "").startswith("application/json"):
                return self._json(403, {"error": "a trace is run from the dashboard's own page only"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                form = json.loads(self.rfile.read(min(length, 4096)) or b"{}")
                if not isinstance(form, dict):
                    raise ValueError
            except ValueError:
                return self._json(400, {"error": "the body is not a JSON object"})
            self._json(*tracer.run(form))

        def log_message(self, *args):  # quiet: the page polls every second
            pass

    srv = _Server((address, port), Handler)
    real_port = srv.server_address[1]
    names = {address, "localhost", "127.0.0.1", "[::1]"} if is_loopback(address) else {address}
    hosts.update(f"{h}:{real_port}" for h in names)
    return srv


def serve(srv: ThreadingHTTPServer, announce: Callable[[str], None]) -> None:
    """Serve until Ctrl-C (or SIGTERM), then close the socket."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    host, port = srv.server_address[:2]
    announce(f"kproxy dashboard on http://{host}:{port}/ (Ctrl-C to stop)")
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        srv.server_close()


# -- the page ------------------------------------------------------------------------------
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kproxy lab</title>
<link rel="stylesheet" href="/app.css"><script src="/app.js" defer></script></head>
<body>
<header><h1>kproxy lab</h1><span id="status">loading&hellip;</span></header>
<div id="errors"></div>
<main>
<section id="picture-box"><h2>The lab</h2><div id="picture">drawing&hellip;</div></section>
<section id="counters-box"><h2>New connections per endpoint</h2>
<p class="note">Counted by the DNAT rule of each endpoint's KUBE-SEP chain (the nat table sees a connection's
first packet only), summed over the nodes; as <code>kproxy explain svc/NAME</code>. Refreshed every second.</p>
<div id="counters"></div></section>
</main>
<section id="trace-box"><h2>Trace one connection</h2>
<form id="trace-form">
<label>from <input name="src" value="" placeholder="pod, node/NAME or outside" required></label>
<label>to <input name="dst" value="" placeholder="svc/NAME[:PORT], IP[:PORT], node/NAME:PORT" required></label>
<label>namespace <input name="namespace" value="default" size="10"></label>
<label>protocol <select name="proto"><option>tcp</option><option>udp</option></select></label>
<button type="submit" id="trace-run">Run kproxy trace</button>
</form>
<pre id="trace-output">A trace sends one real connection inside the lab and prints every rule it meets.</pre>
</section>
</body></html>
"""

STYLE = """
body { font: 14px/1.4 Helvetica, Arial, sans-serif; margin: 0 1.5em 2em; color: #202124; }
header { display: flex; align-items: baseline; gap: 1.5em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin: .6em 0 .3em; }
#status { color: #5f6368; } #errors { color: #b3261e; white-space: pre-wrap; }
main { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
#picture-box { flex: 3 1 560px; min-width: 0; } #counters-box { flex: 2 1 380px; }
#picture svg { max-width: 100%; height: auto; }
.note { color: #5f6368; font-size: .9em; margin: 0 0 .6em; }
.svc { border: 1px solid #dadce0; border-radius: 6px; margin-bottom: .8em; padding: .4em .7em; }
.svc h3 { margin: .1em 0 .3em; font-size: 1em; } .svc h3 .total { float: right; font-size: 1.3em; }
.svc.changed h3 .total { color: #188038; }
table { border-collapse: collapse; width: 100%; } td { padding: 1px 4px; font-size: .92em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; width: 4em; }
td.barcell { width: 30%; }
.bar { background: #e6f4ea; height: .8em; border-radius: 2px; } .bar > div { background: #34a853; height: 100%; }
.muted { color: #80868b; }
#trace-form { display: flex; flex-wrap: wrap; gap: .8em; align-items: center; }
#trace-output { background: #f8f9fa; border: 1px solid #dadce0; padding: .6em; overflow-x: auto; font-size: 12px; }
text.kp-count { fill: #188038; font-weight: bold; }
"""

SCRIPT = r"""
"use strict";
let picture = "", last = {};
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
};

async function loadPicture(key) {
  const r = await fetch("/lab.svg?v=" + encodeURIComponent(key));
  if (!r.ok) return;
  const doc = new DOMParser().parseFromString(await r.text(), "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg") return;
  $("picture").replaceChildren(document.importNode(svg, true));
  picture = key;
}

function markEdges(services) {
  // the count goes under the arrow near its head (graph.py's ip:port label sits over its middle)
  const counts = {};
  for (const s of services) for (const e of s.endpoints) counts[e.edge] = (counts[e.edge] || 0) + e.connections;
  for (const g of document.querySelectorAll("#picture g.edge")) {
    const title = g.querySelector("title"), path = g.querySelector("path");
    if (!title || !path || !(title.textContent in counts)) continue;
    let mark = g.querySelector("text.kp-count");
    if (!mark) {
      const len = path.getTotalLength(), at = path.getPointAtLength(Math.max(0, len - 30));
      mark = document.createElementNS("http://www.w3.org/2000/svg", "text");
      mark.setAttribute("class", "kp-count");
      mark.setAttribute("x", String(at.x));
      mark.setAttribute("y", String(at.y + 13));
      mark.setAttribute("text-anchor", "middle");
      mark.setAttribute("font-size", "10");
      g.append(mark);
    }
    mark.textContent = counts[title.textContent];
  }
}

function bar(share) {
  const inner = el("div");
  inner.style.width = Math.round(100 * (share || 0)) + "%";  // CSSOM: the CSP allows no style attributes
  return el("div", {"class": "bar"}, inner);
}

function render(doc) {
  const box = $("counters");
  const parts = [];
  for (const s of doc.services) {
    const changed = last[s.service] !== undefined && last[s.service] !== s.connections;
    last[s.service] = s.connections;
    const head = el("h3", {}, "svc " + s.service + " ",
      el("span", {"class": "muted"}, s.type + " " + s.clusterIP + " " + s.ports.join(", ")),
      el("span", {"class": "total", "data-service": s.service, "data-connections": String(s.connections),
                  "id": "total-" + s.service.replace("/", "-")}, String(s.connections)));
    const rows = s.endpoints.map((e) => el("tr", {"data-endpoint": e.ip + ":" + e.port},
      el("td", {}, e.pod ? "pod " + e.pod : e.ip),
      el("td", {"class": "muted"}, e.ip + ":" + e.port + (e.node ? " on " + e.node : "")),
      el("td", {"class": "n"}, String(e.connections)),
      el("td", {"class": "barcell"}, bar(e.share)),
      el("td", {"class": "n muted"}, e.share === null ? "-" : (100 * e.share).toFixed(1) + "%")));
    if (!rows.length) rows.push(el("tr", {}, el("td", {"class": "muted"},
      "no endpoints" + (s.stopped ? ": " + s.stopped + " packets rejected/dropped" : ""))));
    parts.push(el("div", {"class": "svc" + (changed ? " changed" : "")}, head, el("table", {}, ...rows)));
  }
  box.replaceChildren(...parts);
  $("status").textContent = "nodes " + doc.nodes.join(", ") + " \u00b7 updated " + doc.time;
  $("errors").textContent = doc.errors.join("\n");
  markEdges(doc.services);
}

async function poll() {
  try {
    const r = await fetch("/api/counters");
    const doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.status);
    if (doc.picture && doc.picture !== picture) await loadPicture(doc.picture);
    render(doc);
  } catch (err) {
    $("status").textContent = "the dashboard does not answer: " + err;
  }
  setTimeout(poll, 1000);
}

async function runTrace(ev) {
  ev.preventDefault();
  const form = Object.fromEntries(new FormData(ev.target).entries());
  $("trace-run").disabled = true;
  $("trace-output").textContent = "tracing " + form.src + " -> " + form.dst + " ...";
  try {
    const r = await fetch("/api/trace", {method: "POST", body: JSON.stringify(form),
      headers: {"Content-Type": "application/json", "X-Kproxy-Dashboard": "trace"}});
    const doc = await r.json();
    $("trace-output").textContent = doc.error ? "error: " + doc.error : "$ " + doc.command + "\n" + doc.output;
  } catch (err) {
    $("trace-output").textContent = "error: " + err;
  } finally {
    $("trace-run").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("trace-form").addEventListener("submit", runTrace);
  poll();
});
"""
