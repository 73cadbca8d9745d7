"""`apply` and `delete`: the kubectl verbs that change the lab, by editing its manifests folder.

Every object is admitted (kproxy.api.admission, as the API server would) before anything is
written; the folder is then written under its lock (kproxy.store.manifests), and only then is
the running daemon asked to load it. What the daemon still refuses (an allocation conflict)
is taken out of the folder again, so the folder never holds what the lab does not serve.
`apply --wait` polls the store until what was applied is live (not_live says why not yet).
"""
from __future__ import annotations

import calendar
import re
import sys
import time

import click

from kproxy import tables
from kproxy.api import admission, meta
from kproxy.cli.common import (CLUSTER_SCOPED, MANIFEST_ERRORS, control, daemon_pid, fail, kubectl_name, lab,
                               need_root, not_running, parse_targets, proxy_status, resource_name,
                               served_documents, singular_name, state_dir_option)
from kproxy.config import LabConfig, state_dir_from_env
from kproxy.store import desired
from kproxy.store import manifests as folder
from kproxy.store.desired import error_key as _error_key
from kproxy.store.desired import gate
from kproxy.store.desired import refused as _refused
from kproxy.store.desired import session as folder_session
from kproxy.store.desired import undo as _undo
from kproxy.store.base import RESOURCE, Store, object_key
from kproxy.store.open import open_store

SYSTEM_NAMESPACES = meta.SYSTEM_NAMESPACES


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


def server_error(msg: str, source: str, verb: str = "creating") -> str:
    """A daemon refusal as kubectl prints the API server's answer."""
    if re.fullmatch(r'namespaces "[^"]*" not found', msg):
        return f'Error from server (NotFound): error when {verb} "{source}": {msg}'
    if re.match(r'[A-Za-z.]+ "[^"]*" is invalid', msg):
        return f"The {msg}"
    return f'Error from server: error when {verb} "{source}": {msg}'


def _writable_lab(state_dir: str | None) -> tuple[LabConfig, str, bool]:
    """The lab whose manifests folder apply and delete edit, its state dir, and whether its
    daemon runs; an agent-only node has no folder of its own."""
    need_root()
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    if cfg.extra.get("role") == "agent":
        fail("this node runs only an agent: apply and delete on the control-plane node, where the "
             "controller reads its manifests folder")
    return cfg, state_dir, daemon_pid(state_dir) is not None


@click.command()
@click.option("-f", "--filename", "path", required=True, multiple=True,
              help="A file, a folder or - (standard input); repeatable.")
@click.option("--wait", is_flag=True, help="Return when Deployments' pods are Ready and Services' rules programmed.")
@click.option("--timeout", default=120, show_default=True, help="Seconds --wait waits.")
@state_dir_option
def apply(path, wait, timeout, state_dir):
    """Write objects into the lab's manifests folder (create or update)."""
    started = time.time()
    cfg, state_dir, running = _writable_lab(state_dir)
    if wait and not running:
        fail(f"--wait needs a running lab: {not_running(state_dir)}")
    store = open_store(cfg, client=True) if running else None
    lab_gate = gate(cfg)
    candidates = []  # (object, source, the admitted version it updates), valid so far
    docs, rc = served_documents(path)
    if not docs and rc == 0:  # kubectl's words for a file, folder or stdin that holds no object
        fail("no objects passed to apply")
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
            exists = lambda ns: desired.namespace_exists(ns, f, store, batch_namespaces)  # noqa: E731
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
                before = f.find(meta.obj_key(obj), scoped)
                done[i] = (obj, source, f.upsert(obj, cluster_scoped=scoped), before)
                applied = [done[j] for j in sorted(done)]
                for dup in dict.fromkeys(f.dropped):
                    click.echo(f"warning: {kubectl_name(obj)} was also in {dup}: that copy was removed "
                               "(an object lives in one place)", err=True)
                f.dropped.clear()
    except folder.WriteError as e:  # a full disk: what was written is said, then why it stopped
        for obj, _, result, _ in applied:
            click.echo(f"{kubectl_name(obj)} {result}")
        fail(str(e))
    if not running or not applied:  # nothing written: nothing for the lab to load
        for obj, _, result, _ in applied:
            click.echo(f"{kubectl_name(obj)} {result}")
        if applied:
            click.echo(f"warning: the lab in {state_dir} is not running: the change takes effect at `kproxy up`",
                       err=True)
        sys.exit(rc)
    try:
        synced = control(state_dir, {"op": "sync"}) is not None
        refused = _refused(store, [o for o, _, _, _ in applied])
    except Exception as e:  # noqa: BLE001 - the objects are in the folder: say so, not "failed"
        for obj, _, result, _ in applied:
            click.echo(f"{kubectl_name(obj)} {result}")
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        fail(f"written to {cfg.manifests}, but the lab did not confirm it ({cause}); "
             "`kproxy status` shows whether it was loaded")
    if refused:  # the API server would not have stored them: neither does the folder
        with folder_session(cfg) as f:
            for obj, _, _, before in applied:
                if meta.obj_key(obj) in refused:
                    _undo(f, obj, before)
        control(state_dir, {"op": "sync"})
    live = []
    for obj, source, result, before in applied:
        msg = refused.get(meta.obj_key(obj))
        if msg:
            click.echo(server_error(msg, source, "creating" if before is None else "applying"), err=True)
            rc = 1
        else:
            click.echo(f"{kubectl_name(obj)} {result}")
            live.append(obj)
    if wait and live:
        rc = max(rc, _wait_live(cfg, store, live, started, timeout, synced))
    sys.exit(rc)


def _wait_live(cfg: LabConfig, store: Store, objs: list[dict], started: float, timeout: float,
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
    kind, ns, name = meta.obj_key(want)
    ref = kubectl_name(want)
    errs = [e for e in store.get(MANIFEST_ERRORS) or []
            if _error_key(e) == (kind, ns, name)]
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


@click.command()
@click.argument("args", nargs=-1)
@click.option("-f", "--filename", "path", multiple=True, help="A file, a folder or - (standard input); repeatable.")
@click.option("-n", "--namespace", default="default")
@state_dir_option
def delete(args, path, namespace, state_dir):
    """Delete objects: `delete -f PATH`, `delete KIND NAME...` or `delete KIND/NAME...`.

    Deleting a Namespace deletes the objects in it too."""
    cfg, state_dir, running = _writable_lab(state_dir)
    store = open_store(cfg, client=True) if running else None
    rc = 0
    targets: list[tuple[str, str, str, str | None]] = []  # kind, namespace, name, source file
    if path:
        docs, rc = served_documents(path)
        for doc in docs:
            o = doc.obj
            kind = o["kind"]
            ns = "" if kind in CLUSTER_SCOPED else (o.get("metadata") or {}).get("namespace") or namespace
            targets.append((kind, ns, o["metadata"]["name"], doc.source))
    elif len(args) >= 2 or (len(args) == 1 and "/" in args[0]):
        targets = [(k, ns, n, None) for k, ns, n in parse_targets(args, namespace)]
    elif args:
        fail("resource(s) were provided, but no name was specified")
    else:
        fail("You must provide one or more resources by argument or filename.")
    changed = False
    swept: set[tuple[str, str, str]] = set()  # removed along with their namespace
    try:
        with folder_session(cfg) as f:
            for kind, ns, name, source in targets:
                word = f'{singular_name(kind)} "{name}"'
                if kind == "Namespace" and name in desired.PROTECTED_NAMESPACES:
                    # the NamespaceLifecycle admission plugin's refusal
                    click.echo(f'Error from server (Forbidden): namespaces "{name}" is forbidden: '
                               "this namespace may not be deleted", err=True)
                    rc = 1
                    continue
                gone = desired.remove(f, kind, ns, name)  # a Namespace takes its objects with it
                if gone is not None:
                    changed = True
                    swept.update(gone)
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

def parse_time(ts: str | None) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None
