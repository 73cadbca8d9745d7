"""`kproxy`: kubectl-like commands for a lab whose Services are real iptables rules."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from kproxy import tables
from kproxy.api import defaults, errors, manifest, meta, validation
from kproxy.config import LabConfig, state_dir_from_env
from kproxy.store import manifests as folder
from kproxy.store.base import object_key
from kproxy.store.sqlite import SqliteStore


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


def daemon_pid(state_dir: str) -> int | None:
    try:
        pid = int((Path(state_dir) / "daemon.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def control(state_dir: str, request: dict, timeout: float = 90) -> dict | None:
    """Ask the daemon; None when it does not run."""
    path = Path(state_dir) / "kproxy.sock"
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return None


def open_store(state_dir: str) -> SqliteStore | None:
    p = Path(state_dir) / "store.db"
    return SqliteStore(p) if p.exists() else None


state_dir_option = click.option("--state-dir", envvar="KPROXY_STATE_DIR", default=None,
                                help="The lab instance (default /var/lib/kproxy; env KPROXY_STATE_DIR).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--foreground", is_flag=True, help="Run the daemon in this process (for systemd).")
@click.option("--timeout", default=180, show_default=True, help="Seconds to wait for the initial reconcile.")
@state_dir_option
def up(manifests, sandbox, service_cidr, pod_cidr, service_node_port_range, node_name, iptables_sync_period,
       masquerade_all, healthz_bind_address, metrics_bind_address, foreground, timeout, state_dir):
    """Start the lab daemon; returns once the initial manifests are reconciled."""
    need_root()
    state_dir = state_dir_from_env(state_dir)
    if daemon_pid(state_dir):
        fail(f"a lab already runs in {state_dir} (pid {daemon_pid(state_dir)}); `kproxy down` first")
    cfg = LabConfig.load(state_dir) or LabConfig(state_dir=state_dir)
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
    Path(cfg.manifests).mkdir(parents=True, exist_ok=True)
    cfg.save()
    from kproxy import teardown
    teardown.remove_leftovers(cfg)  # a crashed earlier run of this instance
    if foreground:
        from kproxy.daemon import main as daemon_main
        daemon_main(["--state-dir", state_dir])
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
    _print_summary(cfg)


def _print_summary(cfg: LabConfig) -> None:
    store = open_store(cfg.state_dir)
    node = store.get(object_key("Node", None, cfg.node_name)) if store else None
    ip = next((a["address"] for a in (node or {}).get("status", {}).get("addresses", []) if a["type"] == "InternalIP"), "?")
    click.echo(f"kproxy is up: node {cfg.node_name} ({ip}), manifests in {cfg.manifests}")
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
    if purge:
        for name in ("store.db", "store.db-wal", "store.db-shm", "daemon.log", "config.json"):
            (Path(state_dir) / name).unlink(missing_ok=True)
        shutil.rmtree(Path(state_dir) / "logs", ignore_errors=True)
    click.echo("kproxy is down" + (f" (also removed: {', '.join(removed)})" if removed else "")
               + ("; allocations forgotten" if purge else ""))


# -- apply / delete -----------------------------------------------------------------------
def _read_objects(path: str) -> tuple[list[dict], list[str]]:
    objs, problems = [], []
    for doc in manifest.read_path(Path(path)):
        if doc.error:
            problems.append(doc.error)
        else:
            objs.append(doc.obj)
    return objs, problems


def _check(obj: dict, cfg: LabConfig | None) -> str | None:
    try:
        obj = defaults.apply_defaults(obj)
    except Exception as e:  # noqa: BLE001
        return f"error: {e}"
    kw = {}
    if cfg:
        kw = {"node_port_range": tuple(cfg.node_port_range), "service_cidr": cfg.service_cidr}
    errs = validation.validate(obj, **kw)
    if errs:
        return "The " + str(errors.InvalidError(obj["kind"], obj["metadata"].get("name", ""), errs))
    return None


@main.command()
@click.option("-f", "--filename", "path", required=True, type=click.Path(exists=True))
@click.option("--wait", is_flag=True, help="Return when pods are Ready and rules are programmed.")
@click.option("--timeout", default=120, show_default=True)
@state_dir_option
def apply(path, wait, timeout, state_dir):
    """Write objects into the lab's manifests folder (create or update)."""
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    objs, problems = _read_objects(path)
    rc = 0
    for p in problems:
        click.echo(f"error: {p}", err=True)
        rc = 1
    applied = []  # (object, what kubectl would say, the folder's version before)
    for obj in objs:
        msg = _check(obj, cfg)
        if msg:
            click.echo(msg, err=True)
            rc = 1
            continue
        scoped = obj["kind"] in ("Namespace", "Node")
        ident = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        before = folder.find(Path(cfg.manifests), ident, scoped)
        result = folder.upsert(Path(cfg.manifests), obj, cluster_scoped=scoped)
        applied.append((obj, result, before))
    if daemon_pid(state_dir):
        control(state_dir, {"op": "sync"})
        refused = _refused(state_dir, [o for o, _, _ in applied])
        for obj, result, before in applied:
            msg = refused.get(_ident(obj))
            if msg:  # the API server would not have stored it: neither does the folder
                _undo(cfg, obj, before)
                click.echo(f"The {msg}" if msg.startswith(obj["kind"]) else msg, err=True)
                rc = 1
            else:
                click.echo(f"{_kubectl_name(obj)} {result}")
        live = [defaults.apply_defaults(o) for o, _, _ in applied if _ident(o) not in refused]
        if wait and live:
            rc = max(rc, _wait_live(cfg, live, timeout))
    else:
        for obj, result, _ in applied:
            click.echo(f"{_kubectl_name(obj)} {result} (the lab is not running: it takes effect at `kproxy up`)")
        if wait:
            fail("the lab is not running: `kproxy up` first")
    sys.exit(rc)


def _ident(obj: dict) -> tuple[str, str, str]:
    ns = "" if obj["kind"] in ("Namespace", "Node") else obj["metadata"].get("namespace") or "default"
    return obj["kind"], ns, obj["metadata"]["name"]


def _refused(state_dir: str, objs: list[dict]) -> dict[tuple, str]:
    """Errors the daemon recorded for these objects on its last load (allocation conflicts...)."""
    store = open_store(state_dir)
    wanted = {_ident(o) for o in objs}
    out = {}
    for e in (store.get("/kproxy/manifest-errors") or []) if store else []:
        ident = (e.get("kind"), e.get("namespace") or "", e.get("name"))
        if ident in wanted:
            out[ident] = e["message"]
    return out


def _undo(cfg: LabConfig, obj: dict, before: dict | None) -> None:
    scoped = obj["kind"] in ("Namespace", "Node")
    kind, ns, name = _ident(obj)
    if before is None:
        folder.remove(Path(cfg.manifests), kind, ns, name, cluster_scoped=scoped)
    else:
        folder.upsert(Path(cfg.manifests), before, cluster_scoped=scoped)
    control(cfg.state_dir, {"op": "sync"})


def _kubectl_name(obj: dict) -> str:
    names = {"Service": "service", "Deployment": "deployment.apps", "Pod": "pod", "Namespace": "namespace",
             "Endpoints": "endpoints", "EndpointSlice": "endpointslice.discovery.k8s.io"}
    return f"{names.get(obj['kind'], obj['kind'].lower())}/{obj['metadata']['name']}"


def _wait_live(cfg: LabConfig, objs: list[dict], timeout: float) -> int:
    """Poll the store until each applied object is live; print why not on timeout."""
    store = open_store(cfg.state_dir)
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        pending = [why for obj in objs if (why := _not_live(store, obj))]
        if not pending:
            control(cfg.state_dir, {"op": "sync"})
            return 0
        if pending != shown:  # progress, for a person watching
            click.echo(f"waiting: {'; '.join(pending)}", err=True)
            shown = pending
        if time.monotonic() > deadline:
            for why in pending:
                click.echo(f"error: timed out waiting: {why}", err=True)
            return 1
        time.sleep(0.2)


def _not_live(store: SqliteStore, obj: dict) -> str | None:
    kind, m = obj["kind"], obj["metadata"]
    ns, name = m.get("namespace", "default"), m["name"]
    errs = [e for e in store.get("/kproxy/manifest-errors") or [] if e.get("name") == name and e.get("kind") == kind]
    if errs:
        return errs[-1]["message"]
    if kind == "Namespace":
        ns = None
    stored = store.get(object_key(kind, ns, name))
    if stored is None:
        return f"{_kubectl_name(obj)} is not admitted yet"
    if kind == "Deployment":
        want = stored["spec"].get("replicas", 1)
        pods = [p for _, p in store.list(object_key("Pod", ns, "")) if _owned_by(p, name)]
        ready = [p for p in pods if tables.pod_ready(p) and not p["metadata"].get("deletionTimestamp")]
        if len(ready) != want or len(pods) != want:
            return f"deployment {name}: {len(ready)}/{want} pods ready ({len(pods)} exist)"
    if kind == "Pod" and not tables.pod_ready(stored):
        return f"pod {name} is not Ready ({tables.pod_status(stored)})"
    return None


def _owned_by(pod: dict, deploy: str) -> bool:
    from kproxy.controllers.replicas import owner_deployment
    return owner_deployment(pod) == deploy


@main.command()
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "path", type=click.Path(exists=True))
@click.option("-n", "--namespace", default="default")
@state_dir_option
def delete(args, path, namespace, state_dir):
    """Delete objects: `delete -f PATH` or `delete KIND NAME...`."""
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    targets: list[tuple[str, str, str]] = []
    if path:
        objs, problems = _read_objects(path)
        for p in problems:
            click.echo(f"error: {p}", err=True)
        targets = [(o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"]) for o in objs]
    elif len(args) >= 2:
        kind = meta.resolve_kind(args[0])
        if kind is None:
            fail(f'the server doesn\'t have a resource type "{args[0]}"')
        targets = [(kind, namespace, n) for n in args[1:]]
    elif len(args) == 1 and "/" in args[0]:
        word, name = args[0].split("/", 1)
        kind = meta.resolve_kind(word)
        if kind is None:
            fail(f'the server doesn\'t have a resource type "{word}"')
        targets = [(kind, namespace, name)]
    else:
        fail("give -f PATH or KIND NAME")
    rc = 0
    store = open_store(state_dir)
    for kind, ns, name in targets:
        scoped = kind in ("Namespace", "Node")
        obj = {"kind": kind, "metadata": {"name": name, "namespace": ns}}
        if folder.remove(Path(cfg.manifests), kind, "" if scoped else ns, name, cluster_scoped=scoped):
            click.echo(f"{_kubectl_name(obj)} deleted")
        elif kind == "Pod" and store and store.get(object_key("Pod", ns, name)):
            control(state_dir, {"op": "delete-pod", "namespace": ns, "name": name})
            click.echo(f"pod \"{name}\" deleted")
        else:
            plural = {"Endpoints": "endpoints"}.get(kind, kind.lower() + "s")
            click.echo(f'Error from server (NotFound): {plural} "{name}" not found', err=True)
            rc = 1
    if daemon_pid(state_dir):
        control(state_dir, {"op": "sync"})
    sys.exit(rc)


# -- get ----------------------------------------------------------------------------------
@main.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default")
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["wide", "json", "yaml", "name"]), default=None)
@state_dir_option
def get(kind, name, namespace, all_namespaces, output, state_dir):
    """Show objects like kubectl: pods, deployments, services (svc), endpoints (ep),
    endpointslices, nodes, namespaces, events."""
    state_dir = state_dir_from_env(state_dir)
    if "/" in kind and name is None:
        kind, name = kind.split("/", 1)
    resolved = "Event" if kind in ("events", "event", "ev") else meta.resolve_kind(kind)
    if resolved is None:
        fail(f'the server doesn\'t have a resource type "{kind}"')
    store = open_store(state_dir)
    cluster_scoped = resolved in ("Node", "Namespace")
    ns = None if (all_namespaces or cluster_scoped) else namespace
    items = [o for _, o in store.list(object_key(resolved, ns, ""))] if store else []
    if ns is None and not cluster_scoped:
        items = [o for _, o in store.list(f"/registry/{_plural(resolved)}/")] if store else []
    if name:
        items = [o for o in items if o["metadata"]["name"] == name]
        if not items:
            fail(f'{_plural(resolved)} "{name}" not found')
    if output in ("json", "yaml"):
        doc = items[0] if name else {"apiVersion": "v1", "kind": "List", "items": items,
                                     "metadata": {"resourceVersion": ""}}
        click.echo(json.dumps(doc, indent=4) if output == "json" else yaml.safe_dump(doc, sort_keys=False), nl=output == "json")
        return
    if output == "name":
        for o in items:
            click.echo(_kubectl_name(o))
        return
    if not items:
        click.echo("No resources found" + (f" in {namespace} namespace." if ns else "."), err=True)
        return
    click.echo(tables.render(resolved, items, wide=output == "wide", with_namespace=all_namespaces and not cluster_scoped))


def _plural(kind: str) -> str:
    from kproxy.store.base import RESOURCE
    return RESOURCE[kind]


# -- exec, rules, logs --------------------------------------------------------------------
def _netns_of(cfg: LabConfig, target: str, namespace: str) -> str | None:
    n = cfg.naming
    if target == "outside":
        if not cfg.sandbox:
            fail("`outside` exists only in a --sandbox lab")
        return n.outside_netns
    if target.startswith(("node/", "nodes/", "no/")):
        return n.node_netns if cfg.sandbox else None
    name = target.split("/", 1)[1] if target.startswith(("pod/", "pods/", "po/")) else target
    store = open_store(cfg.state_dir)
    if not store or not store.get(object_key("Pod", namespace, name)):
        fail(f'pods "{name}" not found')
    return n.pod_netns(namespace, name)


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-n", "--namespace", default="default")
@state_dir_option
def exec_(target, command, namespace, state_dir):
    """Run a command in a pod, a node (node/NAME) or the sandbox client (outside)."""
    need_root()
    cfg = lab(state_dir_from_env(state_dir))
    netns = _netns_of(cfg, target, namespace)
    argv = list(command)
    if netns is None:
        os.execvp(argv[0], argv)
    os.execvp("ip", ["ip", "netns", "exec", netns, *argv])


def _node_save(cfg: LabConfig) -> str:
    prefix = ["ip", "netns", "exec", cfg.naming.node_netns] if cfg.sandbox else []
    res = subprocess.run([*prefix, "iptables-save"], capture_output=True, text=True)
    if res.returncode != 0:
        fail(f"iptables-save failed: {res.stderr.strip()} (is the lab up?)")
    return res.stdout


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
def rules(target, render_only, path, namespace, cluster_cidr, node_name, node_ip, service_node_port_range, state_dir):
    """Print the live rules kproxy owns (iptables-save form), or --render them offline."""
    from kproxy.proxy import applier, render
    if render_only:
        if not path:
            fail("--render needs -f PATH")
        objs, problems = _read_objects(path)
        for p in problems:
            click.echo(f"error: {p}", err=True)
        lo, _, hi = service_node_port_range.partition("-")
        services, slices, rc = [], [], 0
        for obj in objs:
            obj = defaults.apply_defaults(obj)
            errs = validation.validate(obj, node_port_range=(int(lo), int(hi)), service_cidr="0.0.0.0/0") \
                if obj["kind"] == "Service" else []
            if errs:
                click.echo("The " + str(errors.InvalidError(obj["kind"], obj["metadata"]["name"], errs)), err=True)
                rc = 1
                continue
            (services if obj["kind"] == "Service" else slices if obj["kind"] == "EndpointSlice" else []).append(obj)
        cfg = render.ProxyConfig(cluster_cidr=cluster_cidr or None, node_name=node_name, node_ips=[node_ip])
        click.echo(render.render(services, slices, cfg).text, nl=False)
        sys.exit(rc)
    need_root()
    cfg = lab(state_dir_from_env(state_dir))
    saved = _node_save(cfg)
    if not target:
        click.echo(applier.owned_lines(saved), nl=False)
        return
    word, _, name = target.partition("/")
    if meta.resolve_kind(word) != "Service" or not name:
        fail("TARGET is svc/NAME")
    store = open_store(cfg.state_dir)
    svc = store.get(object_key("Service", namespace, name)) if store else None
    if svc is None:
        fail(f'services "{name}" not found')
    slices = [s for _, s in store.list(object_key("EndpointSlice", namespace, ""))]
    pcfg = render.ProxyConfig(cluster_cidr=cfg.cluster_cidr, node_name=cfg.node_name, node_ips=["0.0.0.0"])
    chains = render.render([svc], slices, pcfg).service_chains.get(f"{namespace}/{name}", set())
    click.echo(applier.owned_lines(saved, chains, mention=f"{namespace}/{name}"), nl=False)


@main.command()
@click.argument("pod")
@click.option("-n", "--namespace", default="default")
@click.option("-c", "--container", default=None)
@state_dir_option
def logs(pod, namespace, container, state_dir):
    """Print a pod's container output."""
    cfg = lab(state_dir_from_env(state_dir))
    d = Path(cfg.state_dir) / "logs" / f"{namespace}_{pod}"
    files = sorted(d.glob("*.log")) if d.is_dir() else []
    if container:
        files = [f for f in files if f.stem == container]
    if not files:
        fail(f'pods "{pod}" has no logs')
    for f in files:
        click.echo(f.read_text(errors="replace"), nl=False)


@main.command()
@state_dir_option
def status(state_dir):
    """Is the daemon up, and what did the last manifests load report?"""
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    pid = daemon_pid(state_dir)
    click.echo(f"daemon: {'running, pid %d' % pid if pid else 'not running'}")
    click.echo(f"manifests: {cfg.manifests}")
    store = open_store(state_dir)
    if store:
        ps = store.get("/kproxy/proxy-status") or {}
        detail = ""
        if ps:
            detail = (f" ({'full' if ps.get('full') else 'partial'}, {ps.get('servicesWritten', 0)} Services "
                      f"written, {ps.get('durationSeconds', 0) * 1000:.1f} ms)")
        click.echo(f"last rules sync: {ps.get('lastSync', 'never')}{detail}")
        for e in store.get("/kproxy/manifest-errors") or []:
            click.echo(f"error: {e['message']}")


if __name__ == "__main__":
    main()
