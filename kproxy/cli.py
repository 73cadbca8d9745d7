"""`kproxy`: kubectl-like commands for a lab whose Services are real iptables rules."""
from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from kproxy import tables
from kproxy import control as control_socket
from kproxy.api import admission, manifest, meta
from kproxy.config import LabConfig, state_dir_from_env
from kproxy.store import manifests as folder
from kproxy.store.base import RESOURCE, object_key
from kproxy.node.inpod import in_pod
from kproxy.node.naming import pod_hostname, pod_log_dir, pod_slug
from kproxy.store.sqlite import SqliteStore

SYSTEM_NAMESPACES = meta.SYSTEM_NAMESPACES
MANIFEST_ERRORS = "/kproxy/manifest-errors"
PROXY_STATUS = "/kproxy/proxy-status"
CLUSTER_SCOPED = tuple(kind for kind, info in meta.KINDS.items() if not info.namespaced)  # the kind registry's


# -- helpers ------------------------------------------------------------------------------
def fail(msg: str, code: int = 1) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def need_root() -> None:
    if os.geteuid() != 0:
        fail("this command needs root (network namespaces and iptables): run it with sudo")


def lab(state_dir: str, required: bool = True) -> LabConfig | None:
    cfg = LabConfig.load(state_dir)
    if cfg is None and required:
        fail(f"no lab in {state_dir}: start one with `kproxy up` (or pick one with --state-dir)")
    return cfg


def _stale_pid(state_dir: str) -> int | None:
    """The pid of a daemon.pid that names no live daemon of this lab (None: no such file)."""
    try:
        pid = int((Path(state_dir) / "daemon.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if control_socket.process_alive(pid, state_dir) else pid


def daemon_pid(state_dir: str) -> int | None:
    """The lab's daemon pid when it really runs: not a zombie, not a reused pid (see control)."""
    return control_socket.pid_file_alive(Path(state_dir) / "daemon.pid", state_dir)


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
    if not cfg.cluster_dns:
        parts.append("--no-cluster-dns")
    parts += [f"--lb-pool {r}" for r in cfg.lb_pools]
    parts += [f"--dns-upstream {u}" for u in cfg.dns_upstreams]
    return " ".join(parts)


def not_running(state_dir: str) -> str:
    return f"the lab in {state_dir} is not running; start it with kproxy up"


def running_lab(state_dir: str | None) -> tuple[LabConfig, SqliteStore]:
    """The lab's settings and store, or a clear error when there is no running lab."""
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    store = open_store(state_dir) if daemon_pid(state_dir) else None
    if store is None:
        fail(not_running(state_dir))
    return cfg, store


def control(state_dir: str, request: dict, timeout: float = 90) -> dict | None:
    """Ask the daemon; None when it does not run."""
    return control_socket.request(state_dir, request, timeout)


def open_store(state_dir: str) -> SqliteStore | None:
    """The lab's store: its SQLite file, or the etcd of a multi-node lab (read from its node)."""
    cfg = LabConfig.load(state_dir)
    if cfg is not None and cfg.store_url:
        from kproxy.cluster.lab import lab_store
        return lab_store(cfg)
    p = Path(state_dir) / "store.db"
    return SqliteStore(p) if p.exists() else None


def proxy_status(store) -> dict:
    """The last rules sync; in a multi-node lab the oldest of the nodes' (every node has it)."""
    one = store.get(PROXY_STATUS)
    if one:
        return one
    per_node = [v for k, v in store.list(PROXY_STATUS + "/")]
    if not per_node:
        return {}
    oldest = min(per_node, key=lambda v: v.get("lastSync", ""))
    services = set.intersection(*(set(v.get("services") or []) for v in per_node))
    return {**oldest, "services": sorted(services)}


def pod_netns(cfg: LabConfig, namespace: str, name: str) -> str:
    """A pod's netns on this machine. On a real node of a multi-node lab the agent's state dir
    (so its prefix) is not the CLI's: then the one `kp*-NS-NAME` namespace here is the pod's."""
    netns = cfg.naming.pod_netns(namespace, name)
    if cfg.store_url and not cfg.sandbox and not netns_exists(netns):
        from kproxy.node.network import list_netns
        found = [n for n in list_netns() if n.startswith("kp") and n.endswith(f"-{pod_slug(namespace, name)}")
                 and n[:n.index("-")].isalnum()]
        if len(found) == 1:
            return found[0]
    return netns


def node_netns(cfg: LabConfig, store, name: str | None) -> str | None:
    """Where node NAME's commands run: its sandbox netns (None on a real host)."""
    if not cfg.sandbox:
        if name and cfg.store_url and name != cfg.node_name:
            fail(f"node {name} is another machine: run this there (`vagrant ssh {name}`)")
        return None
    if name is None or (name == cfg.node_name and not cfg.store_url):
        return cfg.naming.node_netns
    node = store.get(object_key("Node", None, name))
    if node is None:
        fail(f'nodes "{name}" not found')
    return (node["metadata"].get("annotations") or {}).get("kproxy.io/netns") or cfg.naming.node_netns


def parse_time(ts: str | None) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


# -- kinds and names as kubectl spells them -------------------------------------------------
GET_ALL = ("Pod", "Service", "Deployment", "ReplicaSet")  # kubectl's `all` category, in its order
resolve_kind = meta.resolve_kind  # the kind registry (api/meta.KINDS) knows every word kubectl takes


def resolve_kinds(words: str, allow_all: bool = True) -> list[str]:
    """`pods,svc` -> [Pod, Service]; `all` -> kubectl's all category; unknown words fail."""
    out: list[str] = []
    for word in words.split(","):
        if word == "all" and allow_all:
            kinds = list(GET_ALL)
        else:
            kind = resolve_kind(word)
            if kind is None:
                fail(f'the server doesn\'t have a resource type "{word}"')
            kinds = [kind]
        out += [k for k in kinds if k not in out]
    return out


def resource_name(kind: str) -> str:
    """`deployments.apps`: how the API server names a kind in NotFound errors."""
    info = meta.kind_info(kind)
    if info is None:
        return kind.lower() + "s"
    return f"{info.plural}.{info.group}" if info.group else info.plural


def singular_name(kind: str) -> str:
    """`deployment.apps`: kubectl's word for a kind in `deleted`, `-o name` and `get all`."""
    info = meta.kind_info(kind)
    return f"{kind.lower()}.{info.group}" if info and info.group else kind.lower()


def not_found(kind: str, name: str) -> str:
    return f'Error from server (NotFound): {resource_name(kind)} "{name}" not found'


def _kubectl_name(obj: dict) -> str:
    return f"{singular_name(obj['kind'])}/{obj['metadata']['name']}"


# -- label selectors (kubectl -l) ---------------------------------------------------------
class SelectorError(ValueError):
    pass


_KEY = r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?"
_REQ = re.compile(rf"""^\s*(?:
      !\s*(?P<notkey>{_KEY})
    | (?P<setkey>{_KEY})\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
    | (?P<key>{_KEY})\s*(?:(?P<op>==|=|!=|>|<)\s*(?P<value>{_VALUE}))?
)\s*$""", re.X)


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_selector(text: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """kubectl's label selector syntax as (key, op, values) requirements: `k=v`, `k==v`, `k!=v`,
    `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist), `k>1`, `k<1`."""
    if text is None or not text.strip():
        return []
    reqs = []
    for part in _split_requirements(text):
        m = _REQ.match(part)
        if not m or not part.strip():
            raise SelectorError(f'unable to parse requirement: "{part.strip()}" in selector "{text}"')
        if m["notkey"]:
            reqs.append((m["notkey"], "!", ()))
        elif m["setkey"]:
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            if not values:
                raise SelectorError(f'unable to parse requirement: "{part.strip()}": for \'in\', \'notin\' '
                                    "operators, values set can't be empty")
            reqs.append((m["setkey"], m["setop"], values))
        elif m["op"]:
            op = "=" if m["op"] == "==" else m["op"]
            if op in "<>" and not re.fullmatch(r"-?\d+", m["value"] or ""):
                raise SelectorError(f'unable to parse requirement: "{part.strip()}": for \'Gt\', \'Lt\' '
                                    "operators, the value must be an integer")
            reqs.append((m["key"], op, (m["value"] or "",)))
        else:
            reqs.append((m["key"], "exists", ()))
    return reqs


def requirements_match(reqs: list[tuple[str, str, tuple[str, ...]]], labels: dict | None) -> bool:
    """Whether labels satisfy `-l` requirements from parse_selector (kubectl's selector syntax,
    with `!=`, `notin`, `>`...); a LabelSelector object is matched by meta.selector_matches."""
    labels = labels or {}
    for key, op, values in reqs:
        have = key in labels
        value = labels.get(key)
        ok = {"=": lambda: have and value == values[0],
              "!=": lambda: not have or value != values[0],
              "in": lambda: have and value in values,
              "notin": lambda: not have or value not in values,
              "exists": lambda: have,
              "!": lambda: not have,
              ">": lambda: have and re.fullmatch(r"-?\d+", value or "") is not None and int(value) > int(values[0]),
              "<": lambda: have and re.fullmatch(r"-?\d+", value or "") is not None and int(value) < int(values[0]),
              }[op]()
        if not ok:
            return False
    return True


# -- YAML as kubectl writes it ------------------------------------------------------------
class KubeDumper(yaml.SafeDumper):
    """go-yaml's choices, which `kubectl -o yaml` shows: a string that would read back as another
    type is double-quoted (`status: "True"`, `resourceVersion: ""`, `name: "80"`), one that
    only needs quoting for its characters single-quoted, and multi-line strings as blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif value == "" or dumper.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


KubeDumper.add_representer(str, _represent_str)


def to_yaml(doc) -> str:
    return yaml.dump(doc, Dumper=KubeDumper, sort_keys=True, allow_unicode=True, default_flow_style=False,
                     width=1 << 30)


state_dir_option = click.option("--state-dir", envvar="KPROXY_STATE_DIR", default=None,
                                help="The lab instance (default /var/lib/kproxy; env KPROXY_STATE_DIR).")


def unexpected_error(e: BaseException, command: str | None) -> str:
    """One line for a failure no command foresaw: what failed and why, never a traceback."""
    from kproxy.store.manifests import WriteError
    if isinstance(e, WriteError):
        return f"error: {e}"
    what = f"kproxy {command}" if command else "kproxy"
    if isinstance(e, OSError) and e.filename:
        cause = f"{e.filename}: {e.strerror or e}"
    else:
        detail = " ".join(str(e).split()) or " ".join(str(e.__cause__ or e.__context__ or "").split())
        cause = detail or type(e).__name__
        if type(e).__module__.split(".")[0] in ("etcd3gw", "requests", "urllib3"):
            cause = f"the lab's etcd does not answer ({type(e).__name__}{': ' + detail if detail else ''})"
        elif type(e).__module__ != "builtins" or isinstance(e, (KeyError, AttributeError, TypeError)):
            cause = f"{type(e).__name__}: {cause}"
    if len(cause) > 300:  # never a whole file (or anything secret) in a message
        cause = cause[:300] + "..."
    return f"error: {what} failed: {cause}"


PASS_THROUGH: tuple = ()  # exceptions a test wants to see raised (a fake exec)


class _Main(click.Group):
    """Every command's unexpected exception ends as one `error:` line and exit code 1; the
    traceback only with KPROXY_DEBUG=1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit, KeyboardInterrupt, *PASS_THROUGH):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
            command = ctx.invoked_subcommand
            # a daemon run in the foreground (systemd) writes its log to stderr: keep the whole story
            daemon = command in ("controller", "agent") or (command == "up" and "--foreground" in sys.argv)
            if os.environ.get("KPROXY_DEBUG") == "1" or daemon:
                import traceback
                traceback.print_exc()
            click.echo(unexpected_error(e, command), err=True)
            sys.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A real-network kube-proxy emulator: Kubernetes Services as real iptables rules."""


# -- up / down ----------------------------------------------------------------------------
@main.command()
@click.option("--manifests", type=click.Path(file_okay=False), help="Folder of Kubernetes YAML (the desired state).")
@click.option("--sandbox", is_flag=True, help="Build the node in its own network namespace, with a client `outside`.")
@click.option("--service-cidr", default=None, help="ClusterIP range (default 10.96.0.0/12).")
@click.option("--pod-cidr", default=None, help="Cluster pod CIDR (default 10.244.0.0/16); this node takes its first /24.")
@click.option("--service-node-port-range", default=None, help="NodePort range A-B (default 30000-32767).")
@click.option("--node-name", default=None)
@click.option("--iptables-sync-period", type=float, default=None,
              help="Seconds between full resyncs that restore rules changed by hand (default 30).")
@click.option("--masquerade-all", is_flag=True, default=None, help="SNAT all Service traffic, as kube-proxy's flag.")
@click.option("--healthz-bind-address", default=None, help="IP:PORT of /healthz and /livez (default 0.0.0.0:10256).")
@click.option("--metrics-bind-address", default=None, help="IP:PORT of /metrics (default 127.0.0.1:10249).")
@click.option("--lb-pool", "lb_pools", multiple=True,
              help="LoadBalancer IPs (CIDR or A-B range) for a pool named `default`; repeatable.")
@click.option("--cluster-dns/--no-cluster-dns", default=None, help="Run kube-system/kube-dns (default on).")
@click.option("--dns-upstream", "dns_upstreams", multiple=True,
              help="Where cluster DNS forwards other names (IP[:PORT]); none: it answers REFUSED.")
@click.option("--foreground", is_flag=True, help="Run the daemon in this process (for systemd).")
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 50),
              help="Emulated nodes (with --sandbox): etcd, a controller and one agent per node.")
@click.option("--overlay", type=click.Choice(["host-gw", "vxlan"]), default="host-gw", show_default=True,
              help="How nodes reach each other's pods: routes via the node (host-gw) or a VXLAN overlay.")
@click.option("--timeout", default=180, show_default=True, help="Seconds to wait for the initial reconcile.")
@state_dir_option
def up(manifests, sandbox, service_cidr, pod_cidr, service_node_port_range, node_name, iptables_sync_period,
       masquerade_all, healthz_bind_address, metrics_bind_address, lb_pools, cluster_dns, dns_upstreams,
       foreground, nodes, overlay, timeout, state_dir):
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
                        ("healthz_bind_address", healthz_bind_address),
                        ("metrics_bind_address", metrics_bind_address)):
        if value:
            setattr(cfg, attr, value)
    if service_node_port_range:
        lo, _, hi = service_node_port_range.partition("-")
        cfg.node_port_range = (int(lo), int(hi))
    if lb_pools:
        from kproxy.controllers.loadbalancer import parse_range
        for r in lb_pools:
            try:
                parse_range(r)
            except ValueError as e:
                fail(f"--lb-pool {r}: {e}")
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
    for problem in reply.get("errors", []):
        click.echo(f"warning: {problem['message']}", err=True)
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
    store, shown, reply = open_store(cfg.state_dir), None, None
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
    for problem in reply.get("errors", []):
        click.echo(f"warning: {problem['message']}", err=True)
    if cfg.cluster_dns:
        _wait_for_cluster_dns(cfg, deadline)
    _print_summary(cfg)


def _wait_for_cluster_dns(cfg: LabConfig, deadline: float) -> None:
    """Pods resolve names from their first moment: wait until kube-dns has a ready endpoint."""
    store = open_store(cfg.state_dir)
    click.echo("waiting for cluster DNS (kube-system/kube-dns) ...", err=True)
    while time.monotonic() < deadline:
        for _, sl in store.list(object_key("EndpointSlice", "kube-system", "")):
            if sl["metadata"].get("labels", {}).get(meta.LABEL_SERVICE_NAME) == "kube-dns" and any(
                    e.get("conditions", {}).get("ready") for e in sl.get("endpoints", [])):
                return
        time.sleep(0.1)
    click.echo("warning: cluster DNS is not ready yet; see `kproxy get pods -n kube-system`", err=True)


def _print_summary(cfg: LabConfig) -> None:
    store = open_store(cfg.state_dir)
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
    if cfg.cluster_dns:
        click.echo(f"  cluster DNS: kube-system/kube-dns, zone {cfg.cluster_domain}")
    if cfg.lb_pools:
        click.echo(f"  LoadBalancer pool: {', '.join(cfg.lb_pools)}")
    if cfg.sandbox:
        click.echo(f"  sandbox: node netns {cfg.naming.node_netns}, client netns {cfg.naming.outside_netns}")
        click.echo("  try: kproxy get svc -A;  kproxy exec node/%s -- curl -s http://CLUSTER-IP" % cfg.node_name)


@main.command()
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
        for name in ("store.db", "store.db-wal", "store.db-shm", "daemon.log", "config.json", "etcd.log", "etcd.pid"):
            (Path(state_dir) / name).unlink(missing_ok=True)
        for name in ("logs", "etcd", "nodes", "pki"):  # pki: a new lab gets a new CA
            shutil.rmtree(Path(state_dir) / name, ignore_errors=True)
    click.echo("kproxy is down" + (f" (also removed: {', '.join(removed)})" if removed else "")
               + ("; allocations forgotten" if purge else ""))



@main.command()
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


# -- apply / delete -----------------------------------------------------------------------
def _read_documents(paths: str | tuple[str, ...]) -> list:
    """Documents of each `-f` (a file, a folder, or `-` for standard input), in order."""
    docs = []
    for path in (paths,) if isinstance(paths, str) else paths:
        if path == "-":
            docs += manifest.read_text(sys.stdin.read(), "STDIN")
        elif not os.path.lexists(path):  # a broken symlink is refused by the reader, as a symlink
            fail(f'the path "{path}" does not exist')
        else:
            docs += manifest.read_path(Path(path))
    return docs


def _served_documents(paths: str | tuple[str, ...]) -> tuple[list, int]:
    """The documents of the -f paths that parse and are of a kind the lab serves; the others
    are reported on stderr as kubectl reports them, and make the exit code 1."""
    docs, rc = [], 0
    for doc in _read_documents(paths):
        msg = f"error: {doc.error}" if doc.error else admission.unserved_error(doc.obj, doc.source)
        if msg:
            click.echo(msg if msg.startswith("error: ") else f"error: {msg}", err=True)
            rc = 1
            continue
        docs.append(doc)
    return docs, rc


def gate(cfg: LabConfig | None) -> admission.Admission:
    """The admission gate with this lab's settings (the defaults without a lab)."""
    if cfg is None:
        return admission.Admission()
    from kproxy.controllers.loadbalancer import lab_addresses
    return admission.Admission(tuple(cfg.node_port_range), cfg.service_cidr, reserved=lab_addresses(cfg))


def admitted_version(store, obj: dict) -> dict | None:
    """The version of `obj` the lab admitted (the store's), which an apply updates; None when
    there is none or the store does not answer (the daemon then judges the update itself)."""
    if store is None:
        return None
    kind, ns, name = meta.obj_key(obj)
    try:
        return store.get(object_key(kind, ns or None, name)) if kind in RESOURCE and name else None
    except Exception:  # noqa: BLE001 - etcd away: the daemon still refuses it when it loads the folder
        return None


_ident = meta.obj_key  # (kind, namespace, name): the identity of an object in the store


def server_error(msg: str, source: str, verb: str = "creating") -> str:
    """A daemon refusal as kubectl prints the API server's answer."""
    if re.fullmatch(r'namespaces "[^"]*" not found', msg):
        return f'Error from server (NotFound): error when {verb} "{source}": {msg}'
    if re.match(r'[A-Za-z.]+ "[^"]*" is invalid', msg):
        return f"The {msg}"
    return f'Error from server: error when {verb} "{source}": {msg}'


def folder_session(cfg: LabConfig):
    """The manifests folder locked for a read-decide-write, with its index in the state dir."""
    return folder.session(Path(cfg.manifests), Path(cfg.state_dir) / "folder-index.json")


def _namespace_exists(ns: str, f: folder.Folder, store: SqliteStore | None, batch: set[str]) -> bool:
    """Whether namespace `ns` exists: a system one, in this apply, in the folder or in the store.
    A store that does not answer (etcd down) is not asked again: the folder is the desired state."""
    if ns in SYSTEM_NAMESPACES or ns in batch or f.find(("Namespace", "", ns), True) is not None:
        return True
    if store is None:
        return False
    try:
        return store.get(object_key("Namespace", None, ns)) is not None
    except Exception:  # noqa: BLE001 - the store is down: the folder answered already
        return False


@main.command()
@click.option("-f", "--filename", "path", required=True, multiple=True,
              help="A file, a folder or - (standard input); repeatable.")
@click.option("--wait", is_flag=True, help="Return when Deployments' pods are Ready and Services' rules programmed.")
@click.option("--timeout", default=120, show_default=True, help="Seconds --wait waits.")
@state_dir_option
def apply(path, wait, timeout, state_dir):
    """Write objects into the lab's manifests folder (create or update)."""
    need_root()
    started = time.time()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    if cfg.extra.get("role") == "agent":
        fail("this node runs only an agent: apply and delete on the control-plane node, where the "
             "controller reads its manifests folder")
    running = daemon_pid(state_dir) is not None
    if wait and not running:
        fail(f"--wait needs a running lab: {not_running(state_dir)}")
    store = open_store(state_dir) if running else None
    lab_gate = gate(cfg)
    candidates = []  # (object, source, the admitted version it updates), valid so far
    docs, rc = _served_documents(path)
    for doc in docs:  # the API server's answer to each object, before anything is written
        old = admitted_version(store, doc.obj)
        verdict = lab_gate.admit(doc.obj, doc.source, old=old)
        if not verdict.ok:
            click.echo(verdict.kubectl_message(doc.source), err=True)
            rc = 1
            continue
        candidates.append((doc.obj, doc.source, old))
    batch_namespaces = {o["metadata"]["name"] for o, _, _ in candidates if o["kind"] == "Namespace"}
    applied = []  # (object, source, result, the folder's version before), in the order given
    # Everything is checked before anything is written; the folder is written under its lock
    # (a concurrent apply waits, then sees this one's objects); only then is the lab asked.
    try:
        with folder_session(cfg) as f:
            accepted = []
            exists = lambda ns: _namespace_exists(ns, f, store, batch_namespaces)  # noqa: E731
            for obj, source, old in candidates:
                verdict = lab_gate.admit(obj, source, old=old, namespaces=exists)
                if not verdict.ok:
                    click.echo(verdict.kubectl_message(source), err=True)
                    rc = 1
                    continue
                accepted.append((obj, source))
            # Namespaces go in first, so the daemon never sees an object before its namespace.
            done = {}
            for i in sorted(range(len(accepted)), key=lambda i: accepted[i][0]["kind"] != "Namespace"):
                obj, source = accepted[i]
                scoped = obj["kind"] in CLUSTER_SCOPED
                before = f.find(_ident(obj), scoped)
                done[i] = (obj, source, f.upsert(obj, cluster_scoped=scoped), before)
                applied = [done[j] for j in sorted(done)]
                for dup in dict.fromkeys(f.dropped):
                    click.echo(f"warning: {_kubectl_name(obj)} was also in {dup}: that copy was removed "
                               "(an object lives in one place)", err=True)
                f.dropped.clear()
    except folder.WriteError as e:  # a full disk: what was written is said, then why it stopped
        for obj, _, result, _ in applied:
            click.echo(f"{_kubectl_name(obj)} {result}")
        fail(str(e))
    if not running or not applied:  # nothing written: nothing for the lab to load
        for obj, _, result, _ in applied:
            click.echo(f"{_kubectl_name(obj)} {result}")
        if applied:
            click.echo(f"warning: the lab in {state_dir} is not running: the change takes effect at `kproxy up`",
                       err=True)
        sys.exit(rc)
    try:
        synced = control(state_dir, {"op": "sync"}) is not None
        refused = _refused(store, [o for o, _, _, _ in applied])
    except Exception as e:  # noqa: BLE001 - the objects are in the folder: say so, not "failed"
        for obj, _, result, _ in applied:
            click.echo(f"{_kubectl_name(obj)} {result}")
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        fail(f"written to {cfg.manifests}, but the lab did not confirm it ({cause}); "
             "`kproxy status` shows whether it was loaded")
    if refused:  # the API server would not have stored them: neither does the folder
        with folder_session(cfg) as f:
            for obj, _, _, before in applied:
                if _ident(obj) in refused:
                    _undo(f, obj, before)
        control(state_dir, {"op": "sync"})
    live = []
    for obj, source, result, before in applied:
        msg = refused.get(_ident(obj))
        if msg:
            click.echo(server_error(msg, source, "creating" if before is None else "applying"), err=True)
            rc = 1
        else:
            click.echo(f"{_kubectl_name(obj)} {result}")
            live.append(obj)
    if wait and live:
        rc = max(rc, _wait_live(cfg, store, live, started, timeout, synced))
    sys.exit(rc)


def _refused(store: SqliteStore | None, objs: list[dict]) -> dict[tuple, str]:
    """Errors the daemon recorded for these objects on its last load (allocation conflicts...)."""
    wanted = {_ident(o) for o in objs}
    out = {}
    for e in (store.get(MANIFEST_ERRORS) or []) if store else []:
        ident = (e.get("kind"), e.get("namespace") or "", e.get("name"))
        if ident in wanted:
            out[ident] = e["message"]
    return out


def _undo(f: folder.Folder, obj: dict, before: dict | None) -> None:
    scoped = obj["kind"] in CLUSTER_SCOPED
    kind, ns, name = _ident(obj)
    if before is None:
        f.remove(kind, ns, name, cluster_scoped=scoped)
    else:
        f.upsert(before, cluster_scoped=scoped)


def _wait_live(cfg: LabConfig, store: SqliteStore, objs: list[dict], started: float, timeout: float,
               synced: bool = False) -> int:
    """Poll the store until every applied object is live; progress lines only when they change."""
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    while True:
        status = proxy_status(store)
        pending = sorted(why for obj in objs if (why := not_live(store, obj, started, status, synced)))
        if not pending:
            return 0
        for line in pending:
            if line not in shown:
                click.echo(f"waiting for {line}", err=True)
        shown = set(pending)
        if time.monotonic() > deadline:
            for why in pending:
                click.echo(f"error: timed out waiting for the condition on {why}", err=True)
            return 1
        time.sleep(0.25)


def _port_key(p: dict) -> tuple:
    return p.get("name", ""), p.get("port"), p.get("protocol", "TCP"), str(p.get("targetPort", p.get("port")))


def not_live(store, obj: dict, started: float, proxy_status: dict, synced: bool = False) -> str | None:
    """Why the applied `obj` is not live yet (`kind/name: reason`), or None when it is.

    Deployment: the store holds the applied spec (replicas, selector, template) and exactly
    `replicas` pods of that template exist, all Ready, none terminating. Pod: the applied
    containers, Ready. Service: the applied type, selector and ports, a clusterIP (unless
    headless or ExternalName), and a rules sync later than the apply (`lastSync` has whole
    seconds: not before the second the apply started in). `synced`: the daemon has finished a
    pass since the apply; a Service whose rules that pass did not need to change (an unchanged
    re-apply) is then live when the last sync programmed it."""
    from kproxy.controllers.replicas import owner_deployment, pod_template_hash
    want = admission.default(obj)
    kind, ns, name = _ident(want)
    ref = _kubectl_name(want)
    errs = [e for e in store.get(MANIFEST_ERRORS) or []
            if (e.get("kind"), e.get("namespace") or "", e.get("name")) == (kind, ns, name)]
    if errs:
        return f"{ref}: {errs[-1]['message']}"
    stored = store.get(object_key(kind, ns or None, name))
    if stored is None:
        return f"{ref}: not stored yet"
    spec, have = want.get("spec") or {}, stored.get("spec") or {}
    if kind == "Deployment":
        replicas = spec.get("replicas", 1)
        if (have.get("replicas", 1), have.get("selector"), pod_template_hash(have.get("template") or {})) != \
                (replicas, spec.get("selector"), pod_template_hash(spec.get("template") or {})):
            return f"{ref}: the stored spec does not show the apply yet"
        h = pod_template_hash(have.get("template") or {})
        pods = [p for _, p in store.list(object_key("Pod", ns, "")) if owner_deployment(p) == name]
        current = [p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == h
                   and not p["metadata"].get("deletionTimestamp")]
        others = len(pods) - len(current)
        ready = sum(1 for p in current if tables.pod_ready(p))
        if len(current) != replicas or ready != replicas or others:
            extra = f", {others} old or terminating" if others else ""
            return f"{ref}: {ready}/{replicas} pods Ready ({len(current)} exist{extra})"
        return None
    if kind == "Pod":
        if have.get("containers") != spec.get("containers"):
            return f"{ref}: the stored spec does not show the apply yet"
        if stored["metadata"].get("deletionTimestamp"):
            return f"{ref}: terminating"
        if not tables.pod_ready(stored):
            return f"{ref}: not Ready ({tables.pod_status(stored)})"
        return None
    if kind == "Service":
        if (have.get("type"), have.get("selector"), [_port_key(p) for p in have.get("ports") or []]) != \
                (spec.get("type"), spec.get("selector"), [_port_key(p) for p in spec.get("ports") or []]):
            return f"{ref}: the stored spec does not show the apply yet"
        if have.get("type") == "ExternalName" or have.get("clusterIP") == "None":
            return None
        if not have.get("clusterIP"):
            return f"{ref}: no clusterIP allocated yet"
        last = parse_time(proxy_status.get("lastSync"))
        programmed = synced and f"{ns}/{name}" in (proxy_status.get("services") or [])
        if (last is None or last < int(started)) and not programmed:
            return f"{ref}: rules not programmed yet"
        return None
    return None


def _targets(args: tuple[str, ...], namespace: str, allow_all: bool = False) -> list[tuple[str, str, str]]:
    """`KIND NAME...`, `KIND[,KIND] NAME`, or `KIND/NAME...` -> (kind, namespace, name)."""
    if any("/" in a for a in args):
        if not all("/" in a for a in args):
            fail("there is no need to specify a resource type as a separate argument when passing arguments in "
                 "resource/name form (e.g. 'kproxy get resource/<resource_name>' instead of "
                 "'kproxy get resource resource/<resource_name>'")
        out = []
        for a in args:
            word, name = a.split("/", 1)
            out += [(k, "" if k in CLUSTER_SCOPED else namespace, name) for k in resolve_kinds(word, allow_all)]
        return out
    kinds = resolve_kinds(args[0], allow_all)
    return [(k, "" if k in CLUSTER_SCOPED else namespace, n) for k in kinds for n in args[1:]]


@main.command()
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "path", multiple=True, help="A file, a folder or - (standard input); repeatable.")
@click.option("-n", "--namespace", default="default")
@state_dir_option
def delete(args, path, namespace, state_dir):
    """Delete objects: `delete -f PATH`, `delete KIND NAME...` or `delete KIND/NAME...`.

    Deleting a Namespace deletes the objects in it too."""
    need_root()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    if cfg.extra.get("role") == "agent":
        fail("this node runs only an agent: apply and delete on the control-plane node, where the "
             "controller reads its manifests folder")
    running = daemon_pid(state_dir) is not None
    store = open_store(state_dir) if running else None
    rc = 0
    targets: list[tuple[str, str, str, str | None]] = []  # kind, namespace, name, source file
    if path:
        docs, rc = _served_documents(path)
        for doc in docs:
            o = doc.obj
            kind = o["kind"]
            ns = "" if kind in CLUSTER_SCOPED else (o.get("metadata") or {}).get("namespace") or namespace
            targets.append((kind, ns, o["metadata"]["name"], doc.source))
    elif len(args) >= 2 or (len(args) == 1 and "/" in args[0]):
        targets = [(k, ns, n, None) for k, ns, n in _targets(args, namespace)]
    elif args:
        fail("resource(s) were provided, but no name was specified")
    else:
        fail("You must provide one or more resources by argument or filename.")
    changed = False
    swept: set[tuple[str, str, str]] = set()  # removed along with their namespace
    try:
        with folder_session(cfg) as f:
            for kind, ns, name, source in targets:
                scoped = kind in CLUSTER_SCOPED
                word = f'{singular_name(kind)} "{name}"'
                if f.remove(kind, ns, name, cluster_scoped=scoped):
                    changed = True
                    if kind == "Namespace":  # as the namespace controller does: everything in it goes too
                        for o_kind, o_ns, o_name in f.identities():
                            if o_kind not in CLUSTER_SCOPED and o_ns == name:
                                f.remove(o_kind, name, o_name)
                                swept.add((o_kind, name, o_name))
                    click.echo(f"{word} deleted")
                elif (kind, ns, name) in swept:
                    click.echo(f"{word} deleted")
                elif kind == "Pod" and store and store.get(object_key("Pod", ns, name)):
                    control(state_dir, {"op": "delete-pod", "namespace": ns, "name": name})
                    click.echo(f"{word} deleted")
                elif kind == "Pod" and not running and source is None:
                    click.echo(f"error: {not_running(state_dir)} (a pod that is not in the manifests folder is "
                               "deleted by the running lab)", err=True)
                    rc = 1
                else:
                    where = f'error when deleting "{source}": ' if source else ""
                    click.echo(f'Error from server (NotFound): {where}{resource_name(kind)} "{name}" not found',
                               err=True)
                    rc = 1
    except folder.WriteError as e:
        fail(str(e))
    if running:
        control(state_dir, {"op": "sync"})
    elif changed:
        click.echo(f"warning: the lab in {state_dir} is not running: the change takes effect at `kproxy up`",
                   err=True)
    sys.exit(rc)


# -- get ----------------------------------------------------------------------------------
def list_objects(store: SqliteStore, kind: str, namespace: str | None) -> list[dict]:
    """Objects of a kind in a namespace (None: all namespaces); ReplicaSets are derived."""
    if kind == "ReplicaSet":
        return tables.replica_sets(list_objects(store, "Deployment", namespace), list_objects(store, "Pod", namespace))
    if kind in CLUSTER_SCOPED or namespace is None:
        return [o for _, o in store.list(f"/registry/{RESOURCE[kind]}/")]
    return [o for _, o in store.list(object_key(kind, namespace, ""))]


@main.command()
@click.argument("args", nargs=-1)
@click.option("-n", "--namespace", default="default")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["wide", "json", "yaml", "name"]), default=None)
@click.option("-l", "--selector", default=None, help="Label selector: k=v, k!=v, k, !k, k in (a,b), comma-separated.")
@click.option("--show-labels", is_flag=True, help="Add a LABELS column.")
@state_dir_option
def get(args, namespace, all_namespaces, output, selector, show_labels, state_dir):
    """Show objects like kubectl: pods (po), deployments (deploy), replicasets (rs), services (svc),
    endpoints (ep), endpointslices, nodes (no), namespaces (ns), events (ev), leases (node
    heartbeats, multi-node), `all`; several
    kinds as `pods,svc`; names as `get pod NAME` or `get pod/NAME`."""
    need_root()
    cfg, store = running_lab(state_dir)
    if not args:
        fail('You must specify the type of resource to get. Use "kproxy get --help" for the supported types.')
    try:
        reqs = parse_selector(selector)
    except SelectorError as e:
        fail(str(e))
    if any("/" in a for a in args):
        named = _targets(args, namespace, allow_all=False)
        kinds = list(dict.fromkeys(k for k, _, _ in named))
        names = {k: [n for kk, _, n in named if kk == k] for k in kinds}
        multi = len(kinds) > 1
    else:
        kinds = resolve_kinds(args[0])
        names = {k: list(args[1:]) for k in kinds}
        multi = len(kinds) > 1 or "all" in args[0].split(",")
    named = any(names.values())
    if named and (selector or "all" in args[0].split(",")):
        fail("selectors and the all flag cannot be used when passing resource/name arguments")
    if named and all_namespaces:
        fail("a resource cannot be retrieved by name across all namespaces")
    ns = None if all_namespaces else namespace
    sections: list[tuple[str, list[dict]]] = []
    missing: list[str] = []
    for kind in kinds:
        items = [o for o in list_objects(store, kind, ns) if requirements_match(reqs, o["metadata"].get("labels"))]
        if names[kind]:
            by_name = {o["metadata"]["name"]: o for o in items}
            items = [by_name[n] for n in dict.fromkeys(names[kind]) if n in by_name]
            missing += [not_found(kind, n) for n in dict.fromkeys(names[kind]) if n not in by_name]
        for o in items:
            o.setdefault("kind", kind)
        sections.append((kind, items))
    everything = [o for _, items in sections for o in items]
    if output in ("json", "yaml"):
        single = len(everything) == 1 and len(kinds) == 1 and len(names[kinds[0]]) == 1
        if everything or not missing:
            doc = everything[0] if single else {"apiVersion": "v1", "items": everything, "kind": "List",
                                                 "metadata": {"resourceVersion": ""}}
            click.echo(json.dumps(doc, indent=4) if output == "json" else to_yaml(doc), nl=output == "json")
    elif output == "name":
        for o in everything:
            click.echo(_kubectl_name(o))
    elif everything:
        texts = []
        for kind, items in sections:
            if items:
                scoped = kind in CLUSTER_SCOPED
                texts.append(tables.render(kind, items, wide=output == "wide",
                                           with_namespace=all_namespaces and not scoped, show_labels=show_labels,
                                           name_prefix=f"{singular_name(kind)}/" if multi else ""))
        click.echo("\n\n".join(texts))
    elif not missing:
        scoped = all(k in CLUSTER_SCOPED for k in kinds)
        click.echo("No resources found" + (f" in {namespace} namespace." if ns and not scoped else "."), err=True)
    for line in missing:
        click.echo(line, err=True)
    sys.exit(1 if missing else 0)


# -- describe -----------------------------------------------------------------------------
@main.command()
@click.argument("args", nargs=-1, required=True)
@click.option("-n", "--namespace", default="default")
@click.option("-A", "--all-namespaces", is_flag=True)
@state_dir_option
def describe(args, namespace, all_namespaces, state_dir):
    """Show an object in detail, with its events: pods, services, deployments, nodes, namespaces.

    `describe KIND [NAME...]` or `describe KIND/NAME`; without a name, every object of the kind."""
    from kproxy import describe as d
    need_root()
    cfg, store = running_lab(state_dir)
    ns = None if all_namespaces else namespace
    if any("/" in a for a in args):
        wanted = _targets(args, namespace)
    else:
        kinds = resolve_kinds(args[0], allow_all=False)
        wanted = [(k, namespace, n) for k in kinds for n in args[1:]] or [(k, None, None) for k in kinds]
    supported = ("Pod", "Service", "Deployment", "Node", "Namespace")
    for kind, _, _ in wanted:
        if kind not in supported:
            fail(f"kproxy describe supports pods, services, deployments, nodes and namespaces, not {resource_name(kind)}"
                 f" (try: kproxy get {resource_name(kind).split('.')[0]} -o yaml)")
    events = [e for _, e in store.list("/registry/events/")]
    texts, rc = [], 0
    for kind, _, name in wanted:
        objs = list_objects(store, kind, ns)
        if name is not None:
            objs = [o for o in objs if o["metadata"]["name"] == name]
            if not objs:
                click.echo(not_found(kind, name), err=True)
                rc = 1
                continue
        for o in sorted(objs, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
            o_ns = o["metadata"].get("namespace", "")
            evs = d.events_for(events, kind, "" if kind in CLUSTER_SCOPED else o_ns, o["metadata"]["name"])
            if kind == "Pod":
                texts.append(d.describe_pod(o, evs))
            elif kind == "Service":
                slices = [s for s in list_objects(store, "EndpointSlice", o_ns)
                          if (s["metadata"].get("labels") or {}).get(meta.LABEL_SERVICE_NAME) == o["metadata"]["name"]]
                texts.append(d.describe_service(o, slices, evs))
            elif kind == "Deployment":
                rss = tables.replica_sets([o], list_objects(store, "Pod", o_ns))
                texts.append(d.describe_deployment(o, rss, evs))
            elif kind == "Node":
                pods = [p for p in list_objects(store, "Pod", None)
                        if p.get("spec", {}).get("nodeName") == o["metadata"]["name"]]
                texts.append(d.describe_node(o, pods, evs))
            else:
                texts.append(d.describe_namespace(o))
    if texts:
        click.echo("\n\n".join(t.rstrip("\n") for t in texts))
    elif rc == 0:
        click.echo("No resources found" + (f" in {namespace} namespace." if ns else "."), err=True)
    sys.exit(rc)


# -- exec, logs ---------------------------------------------------------------------------
def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}") or os.path.exists(f"/var/run/netns/{name}")


def detach_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _rank(pod: dict) -> tuple:
    """kubectl's pick among several pods: Ready and Running first, then the oldest."""
    st = pod.get("status", {})
    return (not tables.pod_ready(pod), st.get("phase") != "Running", pod["metadata"].get("creationTimestamp", ""),
            pod["metadata"]["name"])


def resolve_pod(store: SqliteStore, target: str, namespace: str, verb: str) -> tuple[dict, int]:
    """The pod that `exec`/`logs` TARGET means (NAME, pod/NAME, deploy/NAME, svc/NAME), and how
    many pods it chose from."""
    word, _, name = target.rpartition("/")
    kind = resolve_kind(word) if word else "Pod"
    if kind is None:
        fail(f'the server doesn\'t have a resource type "{word}"')
    if kind == "Pod":
        pod = store.get(object_key("Pod", namespace, name))
        if pod is None:
            click.echo(not_found("Pod", name), err=True)
            sys.exit(1)
        return pod, 1
    if kind not in ("Deployment", "Service", "ReplicaSet"):
        fail(f"cannot {verb} a {singular_name(kind)}: give a pod, deploy/NAME or svc/NAME")
    if kind == "ReplicaSet":
        owner = next((o for o in list_objects(store, "ReplicaSet", namespace) if o["metadata"]["name"] == name), None)
    else:
        owner = store.get(object_key(kind, namespace, name))
    if owner is None:
        click.echo(not_found(kind, name), err=True)
        sys.exit(1)
    selector = owner.get("spec", {}).get("selector") or {}
    pods = [p for p in list_objects(store, "Pod", namespace) if not p["metadata"].get("deletionTimestamp")
            and meta.selector_matches(selector, p["metadata"].get("labels") or {})]
    if not pods:
        fail(f'no pods found for {singular_name(kind)} "{name}" in namespace "{namespace}"')
    return sorted(pods, key=_rank)[0], len(pods)


def _container_of(pod: dict, container: str | None) -> str:
    names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
    if container is None:
        if len(names) > 1:
            click.echo(f'Defaulted container "{names[0]}" out of: {", ".join(names)}', err=True)
        return names[0] if names else ""
    if container not in names:
        fail(f"container {container} is not valid for pod {pod['metadata']['name']}")
    return container


def _exec_user(pod: dict, cname: str) -> str | None:
    """As kubectl exec: the command runs as the container does (its securityContext)."""
    from kproxy.node.security import CreateContainerConfigError, run_as
    spec = next((c for c in pod["spec"].get("containers", []) if c.get("name") == cname), {})
    try:
        who = run_as(pod, spec)
    except CreateContainerConfigError:
        return None  # never started: the exec is refused as not running
    return who.arg() if who else None


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-i", "--stdin", "stdin", is_flag=True, help="Pass stdin to the command.")
@click.option("-t", "--tty", "tty", is_flag=True, help="stdin is a terminal (with -i).")
@click.option("-c", "--container", default=None)
@click.option("-n", "--namespace", default="default")
@state_dir_option
def exec_(target, command, stdin, tty, container, namespace, state_dir):
    """Run a command in a pod (NAME, pod/NAME, deploy/NAME: its first pod, svc/NAME), the node
    (node/NAME) or the sandbox client (outside): `kproxy exec [-it] TARGET -- CMD...`."""
    need_root()
    cfg, store = running_lab(state_dir)
    argv = list(command)
    hostname, user = None, None
    if not argv:
        fail("you must specify at least one command for the container")
    word, _, name = target.rpartition("/")
    if target == "outside":
        if not cfg.sandbox:
            fail("`outside` exists only in a --sandbox lab")
        netns = cfg.naming.outside_netns
    elif word and resolve_kind(word) == "Node":
        if store.get(object_key("Node", None, name)) is None and name != cfg.node_name:
            fail(f'nodes "{name}" not found')
        netns = node_netns(cfg, store, name)
    else:
        pod, _ = resolve_pod(store, target, namespace, "exec into")
        pname = pod["metadata"]["name"]
        cname = _container_of(pod, container)
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            fail(f"cannot exec into a container in a completed pod; current phase is {phase}")
        netns = pod_netns(cfg, namespace, pname)
        hostname = pod_hostname(pod)
        user = _exec_user(pod, cname)
        running = any(cs.get("name") == cname and "running" in (cs.get("state") or {})
                      for cs in pod.get("status", {}).get("containerStatuses") or [])
        if not running or not netns_exists(netns):
            fail(f'unable to upgrade connection: container not found ("{cname}")')
    if stdin and tty and not sys.stdin.isatty():
        click.echo("Unable to use a TTY - input is not a terminal or the right kind of file", err=True)
    if not stdin:  # as kubectl: without -i the command gets no input
        detach_stdin()
    sys.stdout.flush()
    sys.stderr.flush()
    if netns is None:
        os.execvp(argv[0], argv)
    if hostname:  # as in its containers: the pod's network, hostname, resolv.conf and hosts
        argv = in_pod(netns, hostname, argv, user)
        os.execvp(argv[0], argv)
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])


@main.command(name="port-forward")
@click.argument("target")
@click.argument("ports", nargs=-1, required=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.option("-n", "--namespace", default="default")
@state_dir_option
def port_forward(target, ports, address, namespace, state_dir):
    """Forward local TCP ports into a pod: `port-forward svc/web 8080:80` (also pod/NAME, NAME,
    deploy/NAME), as kubectl does: a Service port maps to its pod's target port."""
    from kproxy import portforward
    need_root()
    cfg, store = running_lab(state_dir)
    pod, _ = resolve_pod(store, target, namespace, "forward to")
    word, _, name = target.rpartition("/")
    svc = store.get(object_key("Service", namespace, name)) if word and resolve_kind(word) == "Service" else None
    pod_ip = pod.get("status", {}).get("podIP")
    if not pod_ip or pod.get("status", {}).get("phase") != "Running":
        fail(f"unable to forward port because pod is not running. Current status={pod.get('status', {}).get('phase')}")
    listeners = []
    for spec in ports:
        try:
            local, remote = portforward.parse_ports(spec)
            port = portforward.target_port(pod, svc, remote)
            srv = portforward.listen(address, local)
        except (ValueError, OSError) as e:
            fail(str(e))
        click.echo(f"Forwarding from {address}:{srv.getsockname()[1]} -> {port}")
        listeners.append((srv, pod_ip, port))
    if cfg.sandbox:  # connections to the pod are made from the node, where pod IPs route
        from pyroute2 import netns as pr_netns
        pr_netns.setns(cfg.naming.node_netns, flags=0)
    portforward.serve(listeners, lambda msg: click.echo(msg, err=msg.startswith("E:")))


def _tail(data: bytes, n: int) -> bytes:
    if n < 0:
        return data
    if n == 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


@main.command()
@click.argument("target")
@click.argument("container_arg", required=False, metavar="[CONTAINER]")
@click.option("-n", "--namespace", default="default")
@click.option("-c", "--container", default=None)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C (or the pod ends).")
@click.option("--tail", default=-1, show_default=True, help="Lines of recent output to show; -1 for all.")
@state_dir_option
def logs(target, container_arg, namespace, container, follow, tail, state_dir):
    """Print a pod's container output: NAME, pod/NAME or deploy/NAME (its first pod)."""
    need_root()
    cfg, store = running_lab(state_dir)
    pod, count = resolve_pod(store, target, namespace, "get logs of")
    pname = pod["metadata"]["name"]
    if count > 1:
        click.echo(f"Found {count} pods, using pod/{pname}", err=True)
    cname = _container_of(pod, container or container_arg)
    path = cfg.logs / pod_log_dir(namespace, pname) / f"{cname}.log"
    if not path.exists() and cfg.store_url:  # a real node's agent keeps them in its own state dir
        path = next(Path(cfg.state_dir).glob(f"nodes/*/logs/{pod_log_dir(namespace, pname)}/{cname}.log"), path)
    if not path.exists():
        statuses = {cs.get("name"): cs for cs in pod.get("status", {}).get("containerStatuses") or []}
        reason = ((statuses.get(cname) or {}).get("state", {}).get("waiting") or {}).get("reason", "ContainerCreating")
        fail(f'container "{cname}" in pod "{pname}" is waiting to start: {reason}')
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        out.write(_tail(f.read(), tail))
        out.flush()
        if not follow:
            return
        uid = pod["metadata"].get("uid")
        try:
            while True:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                    continue
                now = store.get(object_key("Pod", namespace, pname))
                if now is None or now["metadata"].get("uid") != uid or not daemon_pid(cfg.state_dir):
                    return  # the pod (or the lab) is gone: so is its output
                time.sleep(0.2)
        except KeyboardInterrupt:
            out.flush()
            sys.exit(130)


# -- rules --------------------------------------------------------------------------------
def _node_save(cfg: LabConfig, netns: str | None) -> str:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run([*prefix, "iptables-save"], capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"iptables-save failed: {res.stderr.strip()}")
    return res.stdout


def render_warnings(svc: dict) -> list[str]:
    """What `rules --render` cannot know for a (valid, defaulted) Service."""
    spec, name = svc.get("spec", {}), svc["metadata"]["name"]
    out = []
    if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
        out.append(f'Service "{name}" has no spec.clusterIP: --render needs fixed clusterIPs '
                   "(a running lab allocates them)")
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        for p in spec.get("ports") or []:
            if not p.get("nodePort"):
                out.append(f'Service "{name}" port {p.get("port")} has no nodePort: --render needs fixed nodePorts '
                           "(a running lab allocates them)")
    return out


def _node_port_hint(obj: dict, node_port_range: tuple[int, int]) -> str | None:
    lo, hi = node_port_range
    outside = [p["nodePort"] for p in (obj.get("spec") or {}).get("ports") or []
               if isinstance(p, dict) and isinstance(p.get("nodePort"), int) and p["nodePort"]
               and not lo <= p["nodePort"] <= hi]
    if obj.get("kind") != "Service" or not outside:
        return None
    want_lo, want_hi = min(lo, *outside), max(hi, *outside)
    return (f'hint: Service "{obj["metadata"].get("name", "")}" uses nodePort {", ".join(map(str, outside))}, outside '
            f"{lo}-{hi}: pass --service-node-port-range {want_lo}-{want_hi} (and start the lab with the same "
            "--service-node-port-range to serve it)")


@main.command()
@click.argument("target", required=False)
@click.option("--render", "render_only", is_flag=True, help="Print the rules for -f PATH without root or daemon.")
@click.option("-f", "--filename", "path", type=click.Path(exists=True))
@click.option("-n", "--namespace", default="default")
@click.option("--cluster-cidr", default="10.244.0.0/16")
@click.option("--node-name", default="node-1")
@click.option("--node-ip", default="192.168.49.2")
@click.option("--service-node-port-range", default="30000-32767")
@state_dir_option
@click.option("--node", default=None, help="Whose rules (a multi-node lab; default: the first node).")
def rules(target, render_only, path, namespace, cluster_cidr, node_name, node_ip, service_node_port_range, node,
          state_dir):
    """Print the live rules kproxy owns (iptables-save form), or --render them offline."""
    from kproxy.proxy import applier, render
    if render_only:
        if not path:
            fail("--render needs -f PATH")
        try:
            lo, hi = (int(x) for x in service_node_port_range.split("-"))
        except ValueError:
            fail(f'--service-node-port-range "{service_node_port_range}": want A-B, e.g. 30000-32767')
        services, slices = [], []
        docs, rc = _served_documents(path)
        render_gate = admission.Admission((lo, hi), "0.0.0.0/0")  # no lab: any clusterIP, no namespaces
        for doc in docs:
            verdict = render_gate.admit(doc.obj, doc.source)
            obj = verdict.obj
            if not verdict.ok:
                click.echo(verdict.kubectl_message(doc.source), err=True)
                hint = _node_port_hint(obj, (lo, hi))
                if hint:
                    click.echo(hint, err=True)
                rc = 1
                continue
            if obj["kind"] == "Service":
                for w in render_warnings(obj):
                    click.echo(f"warning: {w}", err=True)
                services.append(obj)
            elif obj["kind"] == "EndpointSlice":
                slices.append(obj)
        cfg = render.ProxyConfig(cluster_cidr=cluster_cidr or None, node_name=node_name, node_ips=[node_ip])
        click.echo(render.render(services, slices, cfg).text, nl=False)
        sys.exit(rc)
    need_root()
    cfg, store = running_lab(state_dir)
    netns = node_netns(cfg, store, node)
    if netns and not netns_exists(netns):
        fail(not_running(cfg.state_dir))
    saved = _node_save(cfg, netns)
    if not target:
        click.echo(applier.owned_lines(saved), nl=False)
        return
    word, _, name = target.partition("/")
    if resolve_kind(word) != "Service" or not name:
        fail("TARGET is svc/NAME")
    svc = store.get(object_key("Service", namespace, name))
    if svc is None:
        click.echo(not_found("Service", name), err=True)
        sys.exit(1)
    slices = [s for _, s in store.list(object_key("EndpointSlice", namespace, ""))]
    pcfg = render.ProxyConfig(cluster_cidr=cfg.cluster_cidr, node_name=node or cfg.node_name, node_ips=["0.0.0.0"])
    chains = render.render([svc], slices, pcfg).service_chains.get(f"{namespace}/{name}", set())
    click.echo(applier.owned_lines(saved, chains, mention=f"{namespace}/{name}"), nl=False)


# -- trace, explain (kproxy/trace.py, kproxy/explain.py) -------------------------------------
@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--proto", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@click.option("-n", "--namespace", default="default")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", default=3.0, show_default=True, help="Seconds the probe waits for an answer.")
@state_dir_option
def trace(src, dst, proto, namespace, output, timeout, state_dir):
    """Send one real connection from SRC (a pod, node/NAME or outside) to DST (svc/NAME[:PORT],
    IP[:PORT] or node/NAME:NODEPORT) and print each rule it met on each node, traced by netfilter."""
    from kproxy import trace as tr
    need_root()
    cfg, store = running_lab(state_dir)
    if not cfg.sandbox:
        fail("kproxy trace runs only in a --sandbox lab (it programs the lab's node namespaces, never the host's)")
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
                     tr.pods_by_ip(store), timeout=timeout)
    except tr.TraceError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted: the trace rules and monitors were removed", 130)
    click.echo(json.dumps(doc, indent=2) if output == "json" else tr.format_text(doc), nl=output == "json")


@main.command()
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
    if store.get(object_key("Service", namespace, name)) is None:
        click.echo(not_found("Service", name), err=True)
        sys.exit(1)
    netns = node_netns(cfg, store, node)
    if netns and not netns_exists(netns):
        fail(not_running(cfg.state_dir))
    prefix = ["ip", "netns", "exec", netns] if netns else []
    service = f"{namespace}/{name}"

    def counters() -> "ex.Saved":
        res = subprocess.run([*prefix, "iptables-save", "-c"], capture_output=True, text=True)
        if res.returncode != 0:
            fail(f"iptables-save failed: {res.stderr.strip()}")
        return ex.parse_save(res.stdout)

    if reset:
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


def _outside_ip(cfg: LabConfig) -> str:
    from kproxy.node.network import NodeConfig
    return NodeConfig(lab_cidr=cfg.lab_cidr).outside_ip


@main.command()
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
        if store.get(object_key("Service", namespace, svc_name)) is None:
            click.echo(not_found("Service", svc_name), err=True)
            sys.exit(1)
        from kproxy.explain import parse_save
        from kproxy.trace import pods_by_ip
        netns = node_netns(cfg, store, node)
        if netns and not netns_exists(netns):
            fail(not_running(cfg.state_dir))
        g = gr.service_graph(f"{namespace}/{svc_name}", parse_save(_node_save(cfg, netns)), pods_by_ip(store))
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


@main.command()
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
        srv = db.make_server(address, port, db.Sampler(store, nodes, _outside_ip(cfg) if cfg.sandbox else None),
                             db.Tracer(cfg.state_dir))
    except OSError as e:
        fail(f"cannot listen on {address}:{port}: {e.strerror or e}")
    if not db.is_loopback(address):
        click.echo(f"warning: {address} is not loopback: whoever reaches it sees the lab and can run traces", err=True)
    db.serve(srv, lambda line: click.echo(line, err=True))


@main.command()
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
    if not pid:
        click.echo(f"start it with: {up_command(cfg)}")
        sys.exit(1)
    if cfg.store_url:
        from kproxy.cluster.lab import process_pids
        for role, p in process_pids(cfg).items():
            click.echo(f"{role}: running, pid {p}")
    store = open_store(state_dir)
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
    if failed:
        click.echo(f"a component failed: its traceback is in {state_dir}/daemon.log (or the process's own log)")
        sys.exit(1)


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


@main.command()
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


@main.command()
@click.option("--store", "store_url", required=True, help="The cluster's etcd, e.g. https://192.168.56.11:2379.")
@store_tls_options
@click.option("--node", "node_name", required=True, help="This node's name.")
@click.option("--node-ip", required=True, help="This node's address on the node network.")
@click.option("--pod-cidr", default=None, help="This node's pod CIDR (e.g. 10.244.2.0/24).")
@click.option("--sandbox", is_flag=True, default=None, help="An emulated node (its own netns), as `up --nodes` makes.")
@click.option("--overlay", type=click.Choice(["host-gw", "vxlan"]), default=None,
              help="How this node reaches the other nodes' pods (default host-gw; the same on every node).")
@state_dir_option
def agent(store_url, store_ca, store_cert, store_key, node_name, node_ip, pod_cidr, sandbox, overlay, state_dir):
    """Run one node of a multi-node lab in the foreground: its pods, iptables rules, layer-2
    announcements and routes to the other nodes' pods."""
    need_root()
    cfg = _process_config(state_dir, store_url, node_name=node_name, node_ip=node_ip, pod_cidr=pod_cidr,
                          sandbox=sandbox, overlay=overlay, extra={"role": "agent"}, store_ca=store_ca,
                          store_cert=store_cert, store_key=store_key)
    from kproxy.daemon import main as daemon_main
    daemon_main(["--state-dir", cfg.state_dir, "--role", "agent"])


from kproxy.cluster.units import units  # noqa: E402 - `kproxy units`, for the Vagrant lab's provisioning

main.add_command(units)

if __name__ == "__main__":
    main()
