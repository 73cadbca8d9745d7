"""Lab lifecycle: `up`, `down`, `status`, `cleanup`, and the processes of a multi-node lab
(`controller`, `agent`; `units` renders their systemd units, in kproxy/cluster/units.py).

`up` writes the lab's settings and starts the daemon (or etcd, a controller and agents), and
returns only once the first reconcile is done, so the next command sees the lab as written.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from kproxy import control as control_socket
from kproxy import tables
from kproxy.api import meta
from kproxy.cli.common import (MANIFEST_ERRORS, control, daemon_pid, fail, lab, need_root, proxy_status,
                               state_dir_option)
from kproxy.config import LabConfig, state_dir_from_env
from kproxy.store.base import object_key
from kproxy.store.open import open_store


def _stale_pid(state_dir: str) -> int | None:
    """The pid of a daemon.pid that names no live daemon of this lab (None: no such file)."""
    try:
        pid = int((Path(state_dir) / "daemon.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if control_socket.process_alive(pid, state_dir) else pid


def up_command(cfg: LabConfig) -> str:
    """The `kproxy up` that starts this lab again as it was: its node count, overlay and other
    settings (a bare `up --sandbox` would replace a 3-node lab with one node)."""
    parts = ["kproxy up", f"--state-dir {cfg.state_dir}"]
    if cfg.sandbox:
        parts.append("--sandbox")
    if cfg.nodes > 1:
        parts.append(f"--nodes {cfg.nodes}")
    if cfg.overlay and cfg.overlay != "host-gw" and cfg.nodes > 1:
        parts.append(f"--overlay {cfg.overlay}")
    base = LabConfig(state_dir=cfg.state_dir)
    if cfg.manifests != base.manifests:
        parts.append(f"--manifests {cfg.manifests}")
    for flag, attr in (("--service-cidr", "service_cidr"), ("--pod-cidr", "cluster_cidr")):
        if getattr(cfg, attr) != getattr(base, attr):
            parts.append(f"{flag} {getattr(cfg, attr)}")
    if tuple(cfg.node_port_range) != tuple(base.node_port_range):
        parts.append("--service-node-port-range %d-%d" % tuple(cfg.node_port_range))
    if cfg.masquerade_all:
        parts.append("--masquerade-all")
    if cfg.proxy_mode != base.proxy_mode:
        parts.append(f"--proxy-mode {cfg.proxy_mode}")
    if not cfg.cluster_dns:
        parts.append("--no-cluster-dns")
    parts += [f"--lb-pool {r}" for r in cfg.lb_pools]
    parts += [f"--dns-upstream {u}" for u in cfg.dns_upstreams]
    return " ".join(parts)



# -- up / down ----------------------------------------------------------------------------
@click.command()
@click.option("--manifests", type=click.Path(file_okay=False), help="Folder of Kubernetes YAML (the desired state).")
@click.option("--sandbox", is_flag=True, help="Build the node in its own network namespace, with a client `outside`.")
@click.option("--service-cidr", default=None, help="ClusterIP range (default 10.96.0.0/12).")
@click.option("--pod-cidr", default=None, help="Cluster pod CIDR (default 10.244.0.0/16); this node takes its first /24.")
@click.option("--service-node-port-range", default=None, help="NodePort range A-B (default 30000-32767).")
@click.option("--node-name", default=None)
@click.option("--iptables-sync-period", type=float, default=None,
              help="Seconds between full resyncs that restore rules changed by hand (default 30).")
@click.option("--masquerade-all", is_flag=True, default=None, help="SNAT all Service traffic, as kube-proxy's flag.")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default=None,
              help="kube-proxy's mode: iptables rules or the `ip kube-proxy` nftables table (default iptables; kept).")
@click.option("--healthz-bind-address", default=None, help="IP:PORT of /healthz and /livez (default 0.0.0.0:10256).")
@click.option("--metrics-bind-address", default=None, help="IP:PORT of /metrics (default 127.0.0.1:10249).")
@click.option("--lb-pool", "lb_pools", multiple=True,
              help="LoadBalancer IPs (CIDR or A-B range) for a pool named `default`; repeatable.")
@click.option("--cluster-dns/--no-cluster-dns", default=None, help="Run kube-system/kube-dns (default on).")
@click.option("--dns-upstream", "dns_upstreams", multiple=True,
              help="Where cluster DNS forwards other names (IP[:PORT]); none: it answers REFUSED.")
@click.option("--api-port", type=click.IntRange(1, 65535), default=None,
              help="The Kubernetes API's port on 127.0.0.1 (default: a free one; see `kproxy kubeconfig`).")
@click.option("--foreground", is_flag=True, help="Run the daemon in this process (for systemd).")
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 50),
              help="Emulated nodes (with --sandbox): etcd, a controller and one agent per node.")
@click.option("--overlay", type=click.Choice(["host-gw", "vxlan"]), default="host-gw", show_default=True,
              help="How nodes reach each other's pods: routes via the node (host-gw) or a VXLAN overlay.")
@click.option("--timeout", default=180, show_default=True, help="Seconds to wait for the initial reconcile.")
@state_dir_option
def up(manifests, sandbox, service_cidr, pod_cidr, service_node_port_range, node_name, iptables_sync_period,
       masquerade_all, proxy_mode, healthz_bind_address, metrics_bind_address, lb_pools, cluster_dns, dns_upstreams,
       api_port, foreground, nodes, overlay, timeout, state_dir):
    """Start the lab daemon; returns once the initial manifests are reconciled."""
    need_root()
    os.umask(0o077)  # the state, logs and keys it writes, and its daemons' (pods get 022 back): root's only
    state_dir = state_dir_from_env(state_dir)
    if daemon_pid(state_dir):
        fail(f"a lab already runs in {state_dir} (pid {daemon_pid(state_dir)}); `kproxy down` first")
    stale = _stale_pid(state_dir)
    if stale:  # killed with -9 (maybe a zombie nobody reaped): what it left goes below, as `down` would
        click.echo(f"the lab's daemon (pid {stale}) is gone; removing what it left behind", err=True)
    if nodes > 1 and not sandbox:
        fail("--nodes emulates nodes on this host and needs --sandbox; for real machines see vagrant/README.md")
    if nodes > 1 and foreground:
        fail("--foreground runs one node; a multi-node lab runs `kproxy controller` and `kproxy agent`")
    cfg = LabConfig.load(state_dir) or LabConfig(state_dir=state_dir)
    # a multi-node lab's settings are its own: `up` starts from the lab-wide ones
    cfg.nodes, cfg.store_url, cfg.node_index, cfg.node_ip, cfg.pod_cidr = nodes, "", 0, "", ""
    cfg.store_ca, cfg.store_cert, cfg.store_key = "", "", ""
    cfg.lab_prefix, cfg.logs_dir, cfg.overlay = "", "", overlay
    if nodes > 1 and not node_name:
        cfg.node_name = "node-1"
    if manifests:
        cfg.manifests = os.path.abspath(manifests)
    cfg.sandbox = sandbox
    for attr, value in (("service_cidr", service_cidr), ("cluster_cidr", pod_cidr), ("node_name", node_name),
                        ("iptables_sync_period", iptables_sync_period), ("masquerade_all", masquerade_all),
                        ("proxy_mode", proxy_mode),
                        ("healthz_bind_address", healthz_bind_address),
                        ("metrics_bind_address", metrics_bind_address), ("api_port", api_port)):
        if value:
            setattr(cfg, attr, value)
    if service_node_port_range:
        lo, _, hi = service_node_port_range.partition("-")
        cfg.node_port_range = (int(lo), int(hi))
    if lb_pools:
        from kproxy.controllers.loadbalancer import parse_range
        for r in lb_pools:
            try:
                lo, hi = parse_range(r)
            except ValueError as e:
                fail(f"--lb-pool {r}: {e}")
            from kproxy.api.validation.pools import special_address_errors  # as a pool manifest is refused
            for err in special_address_errors("--lb-pool", r, lo, hi):
                fail(f"--lb-pool {r}: {err.detail}")
        cfg.lb_pools = list(lb_pools)
        from kproxy.controllers.loadbalancer import conflict_message, lab_addresses, pool_conflicts
        for i, ip, what in pool_conflicts(cfg.lb_pools, lab_addresses(cfg)):
            fail(f"--lb-pool {cfg.lb_pools[i]}: {conflict_message(ip, what)}")
    if dns_upstreams:
        cfg.dns_upstreams = list(dns_upstreams)
    if cluster_dns is not None:
        cfg.cluster_dns = cluster_dns
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    cfg.save()
    from kproxy import teardown
    teardown.remove_leftovers(cfg)  # a crashed earlier run of this instance
    for name in ("daemon.pid", "kproxy.sock"):  # no daemon answers them now
        (Path(state_dir) / name).unlink(missing_ok=True)
    control_socket.register(cfg.naming.prefix, state_dir)  # for `kproxy cleanup`
    if foreground:
        from kproxy.daemon import main as daemon_main
        daemon_main(["--state-dir", state_dir])
        return
    if nodes > 1:
        _up_cluster(cfg, timeout)
        return
    log = open(Path(state_dir) / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "kproxy.daemon", "--state-dir", state_dir],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    click.echo(f"starting kproxy (pid {proc.pid}, state {state_dir}) ...", err=True)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (Path(state_dir) / "daemon.log").read_text().splitlines()[-20:]
            fail("the daemon exited:\n  " + "\n  ".join(tail))
        reply = control(state_dir, {"op": "sync"}, timeout=timeout)
        if reply and reply.get("ready"):
            break
        time.sleep(0.2)
    else:
        fail(f"the daemon did not finish its first reconcile in {timeout}s; see {state_dir}/daemon.log")
    _finish_up(cfg, reply, deadline)


def _finish_up(cfg: LabConfig, reply: dict, deadline: float) -> None:
    """What `up` says once the lab answered (one node or many): the first reconcile's problems,
    the API server's, cluster DNS ready, the summary."""
    for problem in reply.get("errors", []):
        click.echo(f"warning: {problem['message']}", err=True)
    _api_warning(reply)
    if cfg.cluster_dns:
        _wait_for_cluster_dns(cfg, deadline)
    _print_summary(cfg)


def _up_cluster(cfg: LabConfig, timeout: float) -> None:
    """`up --sandbox --nodes N`: the lab network, etcd, the controller and N agents."""
    from kproxy.cluster import lab as cluster
    deadline = time.monotonic() + timeout
    click.echo(f"building {cfg.nodes} nodes on the lab network {cfg.lab_cidr} ...", err=True)
    cluster.build_network(cfg)
    click.echo("starting etcd on node-1 ...", err=True)
    cluster.start_etcd(cfg)
    ctl_cfg = cluster.controller_config(cfg)
    try:
        cluster.wait_for_etcd(ctl_cfg)
    except RuntimeError as e:
        fail(str(e))
    procs = {"controller": (cluster.start_controller(cfg), Path(cfg.state_dir) / "daemon.log")}
    for i in range(1, cfg.nodes + 1):
        procs[f"agent node-{i}"] = (cluster.start_agent(cfg, i),
                                    Path(cfg.state_dir) / "nodes" / f"node-{i}" / "agent.log")
    click.echo(f"started the controller and {cfg.nodes} agents "
               f"({', '.join(f'{k} pid {p.pid}' for k, (p, _) in procs.items())})", err=True)
    cfg = ctl_cfg
    store, shown, reply = open_store(cfg, client=True), None, None
    while True:
        for role, (proc, log_path) in procs.items():
            if proc.poll() is not None:
                tail = log_path.read_text().splitlines()[-20:] if log_path.exists() else []
                fail(f"the {role} exited:\n  " + "\n  ".join(tail))
        try:
            ready = [n["metadata"]["name"] for n in store.values(object_key("Node", None, ""))
                     if tables.node_ready(n)]
        except Exception:  # noqa: BLE001 - etcd busy starting
            ready = []
        reply = reply if reply and reply.get("ready") else control(cfg.state_dir, {"op": "sync"}, timeout=5)
        line = f"nodes Ready: {len(ready)}/{cfg.nodes}"
        if line != shown:
            click.echo(line, err=True)
            shown = line
        if len(ready) == cfg.nodes and reply and reply.get("ready"):
            break
        if time.monotonic() > deadline:
            fail(f"the lab did not come up in {timeout}s; see {cfg.state_dir}/daemon.log and nodes/*/agent.log")
        time.sleep(0.3)
    _finish_up(cfg, reply, deadline)


def _wait_for_cluster_dns(cfg: LabConfig, deadline: float) -> None:
    """Pods resolve names from their first moment: wait until kube-dns has a ready endpoint."""
    store = open_store(cfg, client=True)
    click.echo("waiting for cluster DNS (kube-system/kube-dns) ...", err=True)
    while time.monotonic() < deadline:
        for _, sl in store.list(object_key("EndpointSlice", "kube-system", "")):
            if sl["metadata"].get("labels", {}).get(meta.LABEL_SERVICE_NAME) == "kube-dns" and any(
                    e.get("conditions", {}).get("ready") for e in sl.get("endpoints", [])):
                return
        time.sleep(0.1)
    click.echo("warning: cluster DNS is not ready yet; see `kproxy get pods -n kube-system`", err=True)


def _print_summary(cfg: LabConfig) -> None:
    store = open_store(cfg, client=True)
    node = store.get(object_key("Node", None, cfg.node_name)) if store else None
    ip = next((a["address"] for a in (node or {}).get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), "?")
    if cfg.store_url:
        nodes = [(n["metadata"]["name"], tables.node_ip(n), n["spec"].get("podCIDR"))
                 for n in store.values(object_key("Node", None, ""))]
        click.echo(f"kproxy is up: {len(nodes)} nodes, etcd at {cfg.store_url}, manifests in {cfg.manifests}")
        for name, nip, cidr in nodes:
            click.echo(f"  {name}: {nip}, pods {cidr}")
    else:
        click.echo(f"kproxy is up: node {cfg.node_name} ({ip}), manifests in {cfg.manifests}")
    click.echo("  kubectl: export KUBECONFIG=$(kproxy kubeconfig --path)")
    if cfg.cluster_dns:
        click.echo(f"  cluster DNS: kube-system/kube-dns, zone {cfg.cluster_domain}")
    if cfg.lb_pools:
        click.echo(f"  LoadBalancer pool: {', '.join(cfg.lb_pools)}")
    if cfg.sandbox:
        click.echo(f"  sandbox: node netns {cfg.naming.node_netns}, client netns {cfg.naming.outside_netns}")
        click.echo("  try: kproxy get svc -A;  kproxy exec node/%s -- curl -s http://CLUSTER-IP" % cfg.node_name)


@click.command()
@click.option("--purge", is_flag=True, help="Also forget allocations, status and settings (the manifests folder is kept).")
@state_dir_option
def down(purge, state_dir):
    """Stop the daemon and remove every namespace, link, route, rule and process it made.

    --purge also forgets allocations, status and settings; the manifests folder is kept."""
    need_root()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    pid = daemon_pid(state_dir)
    if cfg.store_url and not cfg.sandbox:
        fail("this is a node of a multi-node lab run by systemd: "
             "`systemctl stop kproxy-agent kproxy-controller kproxy-etcd` (see vagrant/README.md)")
    if cfg.store_url:  # a multi-node lab: agents, then the controller, then etcd
        from kproxy.cluster.lab import process_pids
        from kproxy.teardown import kill_pids
        pids = process_pids(cfg)
        kill_pids([p for role, p in pids.items() if role.startswith("agent")], grace=10)
        kill_pids([p for role, p in pids.items() if role == "controller"])
        kill_pids([p for role, p in pids.items() if role == "etcd"])
        pid = None
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not daemon_pid(state_dir):
                break
            time.sleep(0.1)
        else:
            click.echo(f"the daemon (pid {pid}) did not stop in 30s; killing it", err=True)
            os.kill(pid, signal.SIGKILL)
    from kproxy import teardown
    removed = teardown.remove_leftovers(cfg)
    control_socket.unregister(cfg.naming.prefix)
    if purge:
        for name in ("store.db", "store.db-wal", "store.db-shm", "daemon.log", "config.json", "etcd.log", "etcd.pid",
                     "folder-index.json"):
            (Path(state_dir) / name).unlink(missing_ok=True)
        for name in ("logs", "etcd", "nodes", "pki"):  # pki: a new lab gets a new CA
            shutil.rmtree(Path(state_dir) / name, ignore_errors=True)
    click.echo("kproxy is down" + (f" (also removed: {', '.join(removed)})" if removed else "")
               + ("; allocations forgotten" if purge else ""))



@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--prefix", "prefixes", multiple=True, metavar="kpXXXX",
              help="Only the leftovers of this instance prefix (repeatable; default: every lab's).")
def cleanup(dry_run, prefixes):
    """Remove every kproxy leftover that no live lab owns, as Mininet's `mn -c`: network
    namespaces named kpXXXX-*, their /etc/netns folders and processes, kpXXXX links in the root
    namespace, stale pid files and sockets. Never the root namespace's iptables."""
    from kproxy import cleanup as c
    need_root()
    for p in prefixes:
        if not re.fullmatch(r"kp[0-9a-f]{4}", p):
            fail(f'--prefix "{p}": an instance prefix is kp and 4 hex digits (e.g. kp1a2b)')
    found, live = c.find(set(prefixes) or None)
    for line in c.lines(found, dry_run):
        click.echo(line)
    for state_dir in found.host_mode:
        click.echo(f"warning: the lab in {state_dir} ran on the host: its iptables rules stay until "
                   f"`kproxy down --state-dir {state_dir}`", err=True)
    if found.empty():
        click.echo("nothing to clean up" + (f" ({len(live)} live labs left alone)" if live else ""))
        return
    if dry_run:
        return
    problems = c.remove(found)
    for p in problems:
        click.echo(f"error: {p}", err=True)
    sys.exit(1 if problems else 0)


@click.command()
@state_dir_option
def status(state_dir):
    """Is the daemon up, are its components healthy, and what problems do the manifests have?
    Exits 1 when it is not up or while a component (a background thread, the reconcile pass,
    the disk) is failed; problems of single objects are listed with exit 0."""
    need_root()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    pid = daemon_pid(state_dir)
    click.echo(f"daemon: {'running, pid %d' % pid if pid else 'not running'}")
    click.echo(f"manifests: {cfg.manifests}")
    click.echo(f"proxy mode: {cfg.proxy_mode}")
    if not pid:
        click.echo(f"start it with: {up_command(cfg)}")
        sys.exit(1)
    _api_line(state_dir)
    stopped = []
    if cfg.store_url:
        from kproxy.cluster.lab import process_pids
        alive = process_pids(cfg)
        for role, p in alive.items():
            click.echo(f"{role}: running, pid {p}")
        stopped = _stopped_processes(cfg, alive)
        for role in stopped:
            click.echo(f"{role}: not running")
    store = open_store(cfg, client=True)
    if store:
        ps = proxy_status(store)
        detail = ""
        if ps:
            detail = (f" ({'full' if ps.get('full') else 'partial'}, {ps.get('servicesWritten', 0)} Services "
                      f"written, {ps.get('durationSeconds', 0) * 1000:.1f} ms)")
        click.echo(f"last rules sync: {ps.get('lastSync', 'never')}{detail}")
        lp = ps.get("lastPartial") if ps and ps.get("full") else None
        if lp:
            click.echo(f"last partial sync: {lp['lastSync']} ({lp.get('servicesWritten', 0)} Services written, "
                       f"{lp.get('durationSeconds', 0) * 1000:.1f} ms)")
    # component health (exit 1 while one is failed) and problems: the daemon's own answer on its
    # socket first (it works when the store cannot be written: a full disk), then the store's
    reply = control(state_dir, {}, timeout=5) or {}
    try:
        records = dict(store.list("/kproxy/health")) if store else {}
        stored_errors = store.get(MANIFEST_ERRORS) if store else None
    except Exception as e:  # noqa: BLE001 - the store is away (etcd down): say so, without a traceback
        click.echo(f"store: unreachable: {type(e).__name__}: {e}")
        records, stored_errors = {}, None
    records.update(reply.get("health") or {})
    failed = False
    for key, rec in sorted(records.items()):
        who = "" if key == "/kproxy/health" else f"{rec.get('role', '')} {rec.get('node', '')}: "
        comps = rec.get("components") or {}
        healthy = [name for name, c in comps.items() if c.get("state") != "failed"]
        if healthy:
            click.echo(f"{who}components ok: {', '.join(healthy)}")
        for name, c in comps.items():
            if c.get("state") != "failed":
                continue
            failed = True
            if name == "disk":
                click.echo(f"{who}{c.get('message', 'disk full')} (since {c.get('since', '?')})")
                continue
            again = f", restarted {c['restarts']} times" if c.get("restarts") else ""
            click.echo(f"{who}component {name}: failed since {c.get('since', '?')}{again}: {c.get('message', '')}")
        for e in rec.get("problems") or []:
            click.echo(f"{who}error: {_problem_line(e)}")
    errs = reply.get("errors") if reply.get("errors") is not None else stored_errors
    for e in errs or []:
        click.echo(f"error: {_problem_line(e)}")
    if stopped:
        click.echo(f"a process of the lab is gone ({', '.join(stopped)}): start the lab again with "
                   f"`kproxy down --state-dir {state_dir}` then `{up_command(cfg)}` (objects and IPs are kept)")
    if failed:
        click.echo(f"a component failed: its traceback is in {state_dir}/daemon.log (or the process's own log)")
    if failed or stopped:
        sys.exit(1)


def _api_warning(reply: dict) -> None:
    """The lab runs without its Kubernetes API (the --api-port taken...): say so at `up`."""
    for record in (reply.get("health") or {}).values():
        c = (record.get("components") or {}).get("apiserver") or {}
        if c.get("state") == "failed":
            click.echo(f"warning: the Kubernetes API server did not start: {c.get('message', '')}", err=True)


def _api_line(state_dir: str) -> None:
    """Where the lab's Kubernetes API answers (its kubeconfig names it), when it does."""
    from kproxy.apiserver.server import kubeconfig_path
    try:
        server = next(line.split("server:", 1)[1].strip() for line in kubeconfig_path(state_dir).read_text().splitlines()
                      if "server:" in line)
    except (OSError, StopIteration):
        return
    click.echo(f"API server: {server} (export KUBECONFIG=$(kproxy kubeconfig --path))")


def _stopped_processes(cfg: LabConfig, alive: dict[str, int]) -> list[str]:
    """The processes `up` started (an agent per node dir, etcd) that are gone: an agent killed
    left status at exit 0, naming only the live ones, while its node went NotReady."""
    state = Path(cfg.state_dir)
    started = [f"agent {d.parent.name}" for d in sorted(state.glob("nodes/*/daemon.pid"))]
    if (state / "etcd.pid").exists():
        started.append("etcd")
    return [role for role in started if role not in alive]


def _problem_line(e: dict) -> str:
    """One problem of `kproxy status`: the file (when one declares it), then the API's message."""
    msg, source = e.get("message", ""), e.get("source")
    return f"{source}: {msg}" if source and source not in msg else msg


# -- multi-node processes ------------------------------------------------------------------
def _process_config(state_dir: str | None, store_url: str, **settings) -> LabConfig:
    """The settings of one cluster process: saved ones (an emulated lab wrote them) + flags."""
    state_dir = state_dir_from_env(state_dir)
    cfg = LabConfig.load(state_dir) or LabConfig(state_dir=state_dir)
    cfg.store_url = store_url
    for attr, value in settings.items():
        if value not in (None, (), ""):
            setattr(cfg, attr, list(value) if isinstance(value, tuple) else value)
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    cfg.save()
    return cfg


def store_tls_options(fn):
    """--store-ca/--store-cert/--store-key: etcd admits only clients with a lab certificate."""
    for opt, dest, what in (("--store-key", "store_key", "This process's etcd client key."),
                            ("--store-cert", "store_cert", "This process's etcd client certificate (STATE/pki)."),
                            ("--store-ca", "store_ca", "The lab CA etcd's certificate chains to (STATE/pki/ca.crt).")):
        fn = click.option(opt, dest, default=None, help=what,
                          type=click.Path(exists=True, dir_okay=False, resolve_path=True))(fn)
    return fn


@click.command()
@click.option("--store", "store_url", required=True, help="The cluster's etcd, e.g. https://192.168.56.11:2379.")
@store_tls_options
@click.option("--manifests", default=None, type=click.Path(file_okay=False), help="Folder of Kubernetes YAML.")
@click.option("--name", default=None, help="This controller's name (default: the node name, node-1).")
@click.option("--node-ip", default=None, help="This machine's address: the `kubernetes` Service's endpoint.")
@click.option("--lb-pool", "lb_pools", multiple=True, help="LoadBalancer IPs for a pool named `default`.")
@state_dir_option
def controller(store_url, store_ca, store_cert, store_key, manifests, name, node_ip, lb_pools, state_dir):
    """Run the control plane of a multi-node lab in the foreground: admission of the manifests,
    allocation, Deployments -> pods, scheduling, endpoints, LoadBalancer IPs, node lifecycle."""
    cfg = _process_config(state_dir, store_url, manifests=manifests and os.path.abspath(manifests),
                          node_name=name, node_ip=node_ip, lb_pools=lb_pools, store_ca=store_ca,
                          store_cert=store_cert, store_key=store_key)
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    from kproxy.daemon import main as daemon_main
    daemon_main(["--state-dir", cfg.state_dir, "--role", "controller"])


@click.command()
@click.option("--store", "store_url", required=True, help="The cluster's etcd, e.g. https://192.168.56.11:2379.")
@store_tls_options
@click.option("--node", "node_name", required=True, help="This node's name.")
@click.option("--node-ip", required=True, help="This node's address on the node network.")
@click.option("--pod-cidr", default=None, help="This node's pod CIDR (e.g. 10.244.2.0/24).")
@click.option("--sandbox", is_flag=True, default=None, help="An emulated node (its own netns), as `up --nodes` makes.")
@click.option("--overlay", type=click.Choice(["host-gw", "vxlan"]), default=None,
              help="How this node reaches the other nodes' pods (default host-gw; the same on every node).")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default=None,
              help="kube-proxy's mode on this node (default iptables).")
@state_dir_option
def agent(store_url, store_ca, store_cert, store_key, node_name, node_ip, pod_cidr, sandbox, overlay, proxy_mode,
          state_dir):
    """Run one node of a multi-node lab in the foreground: its pods, iptables rules, layer-2
    announcements and routes to the other nodes' pods."""
    need_root()
    cfg = _process_config(state_dir, store_url, node_name=node_name, node_ip=node_ip, pod_cidr=pod_cidr,
                          sandbox=sandbox, overlay=overlay, proxy_mode=proxy_mode, extra={"role": "agent"},
                          store_ca=store_ca, store_cert=store_cert, store_key=store_key)
    from kproxy.daemon import main as daemon_main
    daemon_main(["--state-dir", cfg.state_dir, "--role", "agent"])
