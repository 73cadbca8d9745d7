"""Writing the desired state: what `kproxy apply`/`delete` and the API server's writes share.

The manifests folder is the lab's one source of truth: a client's create, update or delete
becomes a file edit (kproxy/store/manifests.py does the edit, under the folder's lock), then the
daemon's admission front loads it. Both writers need the same steps around the edit, so they
live here once:

- `gate(cfg)`: the admission gate with the lab's settings (kproxy/api/admission.py);
- `session(cfg)`: the folder locked for one read-decide-write, with its index;
- `namespace_exists`: a system namespace, one in this batch, the folder's or the store's;
- `remove`: an object out of the folder; a Namespace takes the objects in it (the namespace
  controller's job on a real cluster);
- `refused`: what the daemon recorded as refusing on its last load (an allocation conflict
  only the store can see), and `undo`, which takes such an object back out of the folder.
"""
from __future__ import annotations

from pathlib import Path

from kproxy.api import admission, meta
from kproxy.config import LabConfig
from kproxy.store import manifests as folder
from kproxy.store.base import Store, object_key

CLUSTER_SCOPED = tuple(kind for kind, info in meta.KINDS.items() if not info.namespaced)
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")


def gate(cfg: LabConfig | None) -> admission.Admission:
    """The admission gate with this lab's settings (the defaults without a lab)."""
    if cfg is None:
        return admission.Admission()
    from kproxy.controllers.loadbalancer import lab_addresses
    return admission.Admission(tuple(cfg.node_port_range), cfg.service_cidr, reserved=lab_addresses(cfg))


def session(cfg: LabConfig):
    """The manifests folder locked for a read-decide-write, with its index in the state dir."""
    return folder.session(Path(cfg.manifests), Path(cfg.state_dir) / "folder-index.json")


def namespace_exists(ns: str, f: folder.Folder, store: Store | None, batch: set[str] = frozenset()) -> bool:
    """Whether namespace `ns` exists: a system one, in this batch, in the folder or in the store.
    A store that does not answer (etcd down) is not asked again: the folder is the desired state."""
    if ns in meta.SYSTEM_NAMESPACES or ns in batch or f.find(("Namespace", "", ns), True) is not None:
        return True
    if store is None:
        return False
    try:
        return store.get(object_key("Namespace", None, ns)) is not None
    except Exception:  # noqa: BLE001 - the store is down: the folder answered already
        return False


def remove(f: folder.Folder, kind: str, ns: str, name: str) -> list[tuple[str, str, str]] | None:
    """Take an object out of the folder; None when the folder does not hold it. A Namespace
    takes the objects in it too: the list of (kind, namespace, name) swept with it."""
    if not f.remove(kind, ns, name, cluster_scoped=kind in CLUSTER_SCOPED):
        return None
    swept = []
    if kind == "Namespace":
        for o_kind, o_ns, o_name in f.identities():
            if o_kind not in CLUSTER_SCOPED and o_ns == name:
                f.remove(o_kind, name, o_name)
                swept.append((o_kind, name, o_name))
    return swept


def error_key(e: dict) -> tuple:
    """The (kind, namespace, name) of the object a recorded manifest error is about, as
    meta.obj_key spells an object's."""
    return e.get("kind"), e.get("namespace") or "", e.get("name")


def refused(store: Store | None, objs: list[dict]) -> dict[tuple, str]:
    """Errors the daemon recorded for these objects on its last load (allocation conflicts...)."""
    from kproxy.frontend import MANIFEST_ERRORS  # the front's problems of its last load
    wanted = {meta.obj_key(o) for o in objs}
    out = {}
    for e in (store.get(MANIFEST_ERRORS) or []) if store else []:
        ident = error_key(e)
        if ident in wanted:
            out[ident] = e["message"]
    return out


def undo(f: folder.Folder, obj: dict, before: dict | None) -> None:
    """Put the folder back as it was for `obj`: its version `before`, or without it."""
    scoped = obj["kind"] in CLUSTER_SCOPED
    kind, ns, name = meta.obj_key(obj)
    if before is None:
        f.remove(kind, ns, name, cluster_scoped=scoped)
    else:
        f.upsert(before, cluster_scoped=scoped)
