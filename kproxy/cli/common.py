"""What every `kproxy` command shares: failing as kubectl does, finding the lab (its settings,
its daemon, its store), the kinds and names as kubectl spells them, and reading `-f` paths.

The commands live in the modules next to this one, by what they do; they import these helpers
and never each other, so a command can be read (and changed) with this file beside it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kproxy import control as control_socket
from kproxy import tables
from kproxy.api import admission, manifest, meta
from kproxy.config import LabConfig, state_dir_from_env
from kproxy.store.base import RESOURCE, Store, object_key
from kproxy.store.open import open_store

MANIFEST_ERRORS = "/kproxy/manifest-errors"
PROXY_STATUS = "/kproxy/proxy-status"
CLUSTER_SCOPED = tuple(kind for kind, info in meta.KINDS.items() if not info.namespaced)  # the kind registry's

state_dir_option = click.option("--state-dir", envvar="KPROXY_STATE_DIR", default=None,
                                help="The lab instance (default /var/lib/kproxy; env KPROXY_STATE_DIR).")


# -- the lab --------------------------------------------------------------------------------
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
    """The lab's daemon pid when it really runs: not a zombie, not a reused pid (see control)."""
    return control_socket.pid_file_alive(Path(state_dir) / "daemon.pid", state_dir)


def not_running(state_dir: str) -> str:
    """With the lab's own `up` (issue 12 #13: a bare `kproxy up` would replace a 3-node lab)."""
    from kproxy.cli.lifecycle import up_command  # lifecycle imports this module
    cfg = LabConfig.load(state_dir)
    return f"the lab in {state_dir} is not running; start it with {up_command(cfg) if cfg else 'kproxy up'}"


def running_lab(state_dir: str | None) -> tuple[LabConfig, Store]:
    """The lab's settings and store, or a clear error when there is no running lab."""
    state_dir = state_dir_from_env(state_dir)
    cfg = lab(state_dir)
    store = open_store(cfg, client=True) if daemon_pid(state_dir) else None
    if store is None:
        fail(not_running(state_dir))
    return cfg, store


def control(state_dir: str, request: dict, timeout: float = 90) -> dict | None:
    """Ask the daemon; None when it does not run."""
    return control_socket.request(state_dir, request, timeout)


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


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}") or os.path.exists(f"/var/run/netns/{name}")


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


def kubectl_name(obj: dict) -> str:
    return f"{singular_name(obj['kind'])}/{obj['metadata']['name']}"


def list_objects(store: Store, kind: str, namespace: str | None) -> list[dict]:
    """Objects of a kind in a namespace (None: all namespaces); ReplicaSets are derived."""
    if kind == "ReplicaSet":
        return tables.replica_sets(list_objects(store, "Deployment", namespace), list_objects(store, "Pod", namespace))
    if kind in CLUSTER_SCOPED or namespace is None:
        return [o for _, o in store.list(f"/registry/{RESOURCE[kind]}/")]
    return [o for _, o in store.list(object_key(kind, namespace, ""))]


def parse_targets(args: tuple[str, ...], namespace: str, allow_all: bool = False) -> list[tuple[str, str, str]]:
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


# -- -f PATH ------------------------------------------------------------------------------
def _read_documents(paths: str | tuple[str, ...]) -> list:
    """Documents of each `-f` (a file, a folder, or `-` for standard input), in order."""
    docs = []
    for path in (paths,) if isinstance(paths, str) else paths:
        if path == "-":
            if sys.stdin is None:  # `apply -f - <&-`
                fail("error reading STDIN: standard input is closed")
            docs += manifest.read_stream(sys.stdin.buffer, "STDIN")
        elif not os.path.lexists(path):  # a broken symlink is refused by the reader, as a symlink
            fail(f'the path "{path}" does not exist')
        else:
            docs += manifest.read_path(Path(path))
    return docs


def served_documents(paths: str | tuple[str, ...]) -> tuple[list, int]:
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

