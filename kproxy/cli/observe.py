"""`trace`, `explain`, `graph`, `dashboard`: seeing the path a packet takes through a Service (the
logic is in kproxy/trace.py, traceparse.py, explain.py, graph.py, dashboard.py; these are the commands).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from kproxy.cli.access import pod_netns, resolve_pod
from kproxy.cli.common import (fail, need_root, netns_exists, node_netns, not_found, not_running, resolve_kind,
                               running_lab, state_dir_option)
from kproxy.cli.rules import _node_save
from kproxy.config import LabConfig
from kproxy.store.base import object_key


# -- trace, explain (kproxy/trace.py, kproxy/explain.py) -------------------------------------
def _finite(value: float, param) -> float:
    """FloatRange lets NaN through (every comparison with it is false); the probe cannot use it."""
    if value != value:  # noqa: PLR0124 - NaN is the one value not equal to itself
        raise click.BadParameter(f"{value} is not in the range 0.1<=x<=300.", param=param)
    return value


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option("-n", "--namespace", default="default")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(0.1, 300),
              callback=lambda ctx, param, v: _finite(v, param), help="Seconds the probe waits for an answer.")
@state_dir_option
def trace(src, dst, proto, namespace, output, timeout, state_dir):
    """Send one real connection from SRC (a pod, node/NAME or outside) to DST (svc/NAME[:PORT],
    IP[:PORT] or node/NAME:NODEPORT) and print each rule it met on each node, traced by netfilter."""
    from kproxy import trace as tr
    need_root()
    cfg, store = running_lab(state_dir)
    if not cfg.sandbox:
        fail("kproxy trace runs only in a --sandbox lab (it programs the lab's node namespaces, never the host's)")
    if cfg.proxy_mode == "nftables" and not shutil.which("nft"):
        fail("kproxy trace in an nftables lab needs nft (Debian's nftables): run scripts/setup")
    try:
        kind, name, port = tr.parse_destination(dst)
        if kind == "svc":
            svc = store.get(object_key("Service", namespace, name))
            if svc is None:
                click.echo(not_found("Service", name), err=True)
                sys.exit(1)
            ip, dport = tr.service_destination(svc, port, proto)
        elif kind == "node":
            ip, dport = tr.node_ip(store, name), tr._port(port, None, dst)
            if ip is None:
                fail(f'nodes "{name}" not found')
        else:
            ip, dport = name, tr._port(port, 80, dst)
        word, _, sname = src.rpartition("/")
        if src == "outside":
            source = tr.Endpoint("outside", cfg.naming.outside_netns)
        elif word and resolve_kind(word) == "Node":
            source = tr.Endpoint(f"node/{sname}", node_netns(cfg, store, sname))
        else:
            pod, _ = resolve_pod(store, src, namespace, "trace from")
            source = tr.Endpoint(f"pod/{pod['metadata']['name']}", pod_netns(cfg, namespace, pod["metadata"]["name"]))
        if not source.netns or not netns_exists(source.netns):
            fail(f"{src}: its network namespace {source.netns} does not exist (is the pod running?)")
        doc = tr.run(source, tr.Endpoint(dst, ip=ip, port=dport), proto, tr.lab_nodes(cfg, store),
                     tr.pods_by_ip(store), timeout=timeout, mode=cfg.proxy_mode, prefix=cfg.naming.prefix)
    except tr.TraceError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted: the trace rules and monitors were removed", 130)
    click.echo(json.dumps(doc, indent=2) if output == "json" else tr.format_text(doc), nl=output == "json")


@click.command()
@click.argument("target")
@click.option("-n", "--namespace", default="default")
@click.option("--node", default=None, help="Whose counters (a multi-node lab; default: the first node).")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--reset", is_flag=True, help="Zero this Service's counters first (kproxy's chains only).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@state_dir_option
def explain(target, namespace, node, watch, reset, output, state_dir):
    """A Service's rules in the order a packet meets them, each explained, with live counters, and
    the new connections each endpoint received (one node's counters: --node): `kproxy explain svc/NAME`."""
    from kproxy import explain as ex
    from kproxy.trace import pods_by_ip
    need_root()
    cfg, store = running_lab(state_dir)
    word, _, name = target.partition("/")
    if resolve_kind(word) != "Service" or not name:
        fail("TARGET is svc/NAME")
    netns = _service_node(cfg, store, namespace, name, node)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    service = f"{namespace}/{name}"

    def counters():
        if cfg.proxy_mode == "nftables":
            return _nft_node(cfg, netns)
        res = subprocess.run([*prefix, "iptables-save", "-c"], capture_output=True, text=True)
        if res.returncode != 0:
            fail(f"iptables-save failed: {res.stderr.strip()}")
        return ex.parse_save(res.stdout)

    if cfg.proxy_mode == "nftables" and netns:
        from kproxy import nftcounters
        try:
            if nftcounters.ensure(netns, cfg.naming.prefix) and not reset:
                click.echo(f"(counting starts now: kproxy's counters table {nftcounters.table_name(cfg.naming.prefix)} "
                           f"was just made in {netns})", err=True)
        except RuntimeError as e:
            fail(str(e))
    if reset and cfg.proxy_mode == "nftables":
        from kproxy import nftcounters
        from kproxy.nftview import reset_keys, service_path
        node_view = counters()
        if node_view.counters is None:
            fail("--reset: this lab keeps no counters in nftables mode (no node namespace of its own)")
        try:
            nftcounters.reset(netns, cfg.naming.prefix,
                              reset_keys(service_path(node_view.listing, service), node_view.listing,
                                         node_view.counters))
        except RuntimeError as e:
            fail(str(e))
    elif reset:
        for cmd in ex.reset_commands(counters(), service):
            res = subprocess.run([*prefix, *cmd], capture_output=True, text=True)
            if res.returncode != 0:
                fail(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    try:
        while True:
            doc = ex.report(service, counters(), pods_by_ip(store))
            text = json.dumps(doc, indent=2) if output == "json" else ex.format_report(doc)
            if watch and sys.stdout.isatty():
                click.clear()
            click.echo(text, nl=output == "json")
            if not watch:
                return
            time.sleep(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _nft_node(cfg: LabConfig, netns: str | None):
    """An nftables node as explain/graph read it: kube-proxy's table and kproxy's counters (none
    in a lab without node namespaces: kproxy never programs the host's nftables for counting)."""
    from kproxy import nftcounters
    try:
        return nftcounters.node_view(netns, cfg.naming.prefix)
    except RuntimeError as e:
        fail(str(e))


def _service_node(cfg: LabConfig, store, namespace: str, name: str, node: str | None) -> str | None:
    """The netns of the node whose rules show the Service (None: the host); exits with
    kubectl's NotFound when there is no such Service, or when the node's netns is gone."""
    if store.get(object_key("Service", namespace, name)) is None:
        click.echo(not_found("Service", name), err=True)
        sys.exit(1)
    netns = node_netns(cfg, store, node)
    if netns and not netns_exists(netns):
        fail(not_running(cfg.state_dir))
    return netns


def _outside_ip(cfg: LabConfig) -> str:
    from kproxy.node.network import NodeConfig
    return NodeConfig(lab_cidr=cfg.lab_cidr).outside_ip


@click.command()
@click.option("--svc", "svc_name", default=None, help="Draw this Service's chains instead of the lab.")
@click.option("-n", "--namespace", default="default")
@click.option("--node", default=None, help="Whose rules --svc draws (a multi-node lab; default: the first node).")
@click.option("-o", "fmt", type=click.Choice(["dot", "svg", "png"]), default="svg", show_default=True,
              help="The picture's format.")
@click.option("--output", "out_file", default=None, metavar="FILE", help="Write the picture here (default: stdout).")
@state_dir_option
def graph(svc_name, namespace, node, fmt, out_file, state_dir):
    """Draw the lab (nodes, pods, Services and their endpoints, outside) or one Service's chain graph
    (--svc NAME: KUBE-SERVICES -> SVC -> SEP -> pods with the probabilities), with Graphviz."""
    from kproxy.store.base import kind_prefix
    try:
        from kproxy import graph as gr
    except ImportError:
        fail("kproxy graph needs the graphviz Python package: run scripts/setup")
    cfg, store = running_lab(state_dir)
    if svc_name:
        need_root()
        from kproxy.explain import parse_save
        from kproxy.trace import pods_by_ip
        netns = _service_node(cfg, store, namespace, svc_name, node)
        saved = _nft_node(cfg, netns) if cfg.proxy_mode == "nftables" else parse_save(_node_save(cfg, netns))
        g = gr.service_graph(f"{namespace}/{svc_name}", saved, pods_by_ip(store))
    else:
        g = gr.lab_graph(store.values(kind_prefix("Node")), store.values(kind_prefix("Pod")),
                         store.values(kind_prefix("Service")), store.values(kind_prefix("EndpointSlice")),
                         _outside_ip(cfg) if cfg.sandbox else None)
    try:
        data = gr.render(g, fmt)
    except Exception as e:  # noqa: BLE001 - graphviz.ExecutableNotFound, a dot that failed
        fail(f"Graphviz could not draw the {fmt}: {' '.join(str(e).split())[:300]} (is Debian's graphviz installed? "
             "run scripts/setup)")
    if out_file:
        Path(out_file).write_bytes(data)
        click.echo(f"wrote {out_file}", err=True)
    elif fmt == "png" and sys.stdout.isatty():
        fail("a PNG is binary: give --output FILE (or pipe it)")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()



@click.command()
@click.option("--port", default=8099, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Where to listen; anything but loopback lets whoever reaches it see the lab and run traces.")
@state_dir_option
def dashboard(port, address, state_dir):
    """Serve a live page of the lab (the graph picture, new connections per endpoint refreshed every
    second, a form that runs kproxy trace) on the host's loopback until Ctrl-C (kproxy/dashboard.py)."""
    from kproxy import dashboard as db
    from kproxy.trace import lab_nodes
    need_root()
    cfg, store = running_lab(state_dir)
    nodes = (lambda: lab_nodes(cfg, store)) if cfg.sandbox else (lambda: [(cfg.node_name, None)])
    try:
        srv = db.make_server(address, port, db.Sampler(store, nodes, _outside_ip(cfg) if cfg.sandbox else None,
                                                       cfg.proxy_mode, cfg.naming.prefix),
                             db.Tracer(cfg.state_dir))
    except OSError as e:
        fail(f"cannot listen on {address}:{port}: {e.strerror or e}")
    if not db.is_loopback(address):
        click.echo(f"warning: {address} is not loopback: whoever reaches it sees the lab and can run traces", err=True)
    db.serve(srv, lambda line: click.echo(line, err=True))
