"""The API's write path: create, update, patch, delete and deletecollection become edits of the
manifests folder, judged first by the one admission gate, then loaded by the daemon's front.

Why through the folder (issue 14, "one source of truth"): the folder is the lab's desired
state; `kproxy apply`, an editor and kubectl must all land there, so an object created with
kubectl survives a restart and shows in the folder, and a file edited by hand shows through the
API. The steps of one write (under `lock`: the API's writes are serialised, as one etcd key's):

1. the object as stored now, with its resourceVersion (the store's mod revision): 404, 409
   AlreadyExists, or 409 Conflict when the client's resourceVersion is stale;
2. the admission gate (kproxy/api/admission.py, the same as `kproxy apply` and the folder's):
   its refusal becomes the API server's Status (422 Invalid with causes, 404 namespace);
3. `dryRun=All` stops here and answers the defaulted object;
4. the folder edit (kproxy/store/desired.py, shared with `kproxy apply/delete`), then a
   daemon pass (`sync`: the front loads the folder now, not at its next poll);
5. what the front refused then (an allocation conflict) is undone in the folder and answered;
   else the stored object is answered, with its allocated fields and new resourceVersion.

Objects the folder does not declare (a Deployment's pods, Endpoints and EndpointSlices the
controllers keep, Events, Nodes, the lab's own `kubernetes` Service) are read-only, except that
deleting a pod makes the same deletion mark as `kproxy delete pod` (its Deployment replaces it).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time

import yaml

from kproxy.api import admission, errors, meta
from kproxy.apiserver import rest
from kproxy.apiserver import status as st
from kproxy.store import desired

log = logging.getLogger("kproxy")

# managedFields stay: server-side apply's field ownership must survive into the next apply
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "selfLink",
                 "deletionTimestamp", "deletionGracePeriodSeconds")
ANSWERED_WITH_OBJECT = ("Service", "Pod", "Namespace")  # registries with ReturnDeletedObject (or graceful)
STORED_WAIT = 10.0  # seconds a write waits for the front to store what it admitted
# request body media types (empty: JSON, as the API server takes a body without Content-Type)
BODY_TYPES = ("", "application/json", "application/yaml", "application/vnd.kubernetes.protobuf", "*/*")
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's utilrand alphabet (generateName)


def decode(body: bytes, content_type: str = "") -> dict:
    """A request body: JSON (kubectl, the Python client), YAML, or protobuf (kubectl's typed
    clients: `create deployment/service/namespace`); 400 when none of them."""
    from kproxy.apiserver import protobuf
    media = content_type.split(";")[0].strip().lower()
    if media not in BODY_TYPES:  # the API server's serializers: anything else is 415, as upstream
        raise st.ApiError(st.unsupported_media(content_type))
    if media == protobuf.CONTENT_TYPE or body.startswith(protobuf.MAGIC):
        try:
            return protobuf.decode(body)
        except (protobuf.ProtobufError, UnicodeDecodeError) as e:
            raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: {e}")) from None
    try:
        if body.strip()[:1] in (b"{", b"["):
            obj = json.loads(body)  # duplicate keys: the last wins, as Go's; strict.py reports them
            bounded(obj)
        else:  # YAML through the bounded loader the folder uses (no alias bombs, JSON types only)
            from kproxy.api import safeload
            obj, why = next(safeload.yaml_documents(body.decode("utf-8")), (None, "no document"))
            if why:
                raise ValueError(why)
    except (ValueError, RecursionError) as e:
        raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: {e}")) from None
    if not isinstance(obj, dict):
        raise st.ApiError(st.bad_request("the body of the request must be an object"))
    return obj


def bounded(obj) -> None:
    """JSON nested deeper than the folder's YAML loader accepts (safeload.MAX_DEPTH) is refused
    here, in the loader's words: before anything recurses over it (a RecursionError would be a
    500) or writes a file the folder would then refuse (a write that never lands)."""
    from kproxy.api import safeload
    stack = [(obj, 1, None)]
    while stack:
        o, depth, at = stack.pop()
        if not isinstance(o, (dict, list)):
            continue
        if depth > safeload.MAX_DEPTH:
            parts = []
            while at is not None:
                at, key = at
                parts.append(key)
            path = ".".join(str(k) for k in reversed(parts))
            raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: "
                                             f"{path[:100]}...: nesting deeper than {safeload.MAX_DEPTH} levels "
                                             "is not accepted"))
        items = o.items() if isinstance(o, dict) else enumerate(o)
        stack += [(v, depth + 1, (at, k)) for k, v in items]


def loadable(obj: dict) -> None:
    """The object as the folder will write it must load back through the folder's loader
    (safeload): else the file would be refused there and the write never land (a 504 after
    STORED_WAIT, the file left behind). Python's JSON takes what that loader and Go's decoder
    refuse: NaN, 1e400, integers outside int64, lone UTF-16 surrogates. 400 in the loader's words."""
    from kproxy.api import safeload
    from kproxy.store.manifests import _dump  # the folder's own YAML writer
    try:
        text = _dump(obj)
        text.encode("utf-8")
    except (ValueError, RecursionError, yaml.YAMLError) as e:  # UnicodeEncodeError is a ValueError
        raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: {e}")) from None
    _, why = next(safeload.yaml_documents(text), (None, "no document"))
    if why:
        raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: {why}"))


def bounded_patch(body: bytes, content_type: str) -> None:
    """A patch body under the same bounds as an object (server-side apply's YAML through the
    folder's bounded loader: no alias bombs, no deep nesting); a body that does not parse is
    left to the patch's own decoder and its words."""
    from kproxy.api import safeload
    if content_type.split(";")[0].strip() == "application/apply-patch+yaml":
        try:
            _, why = next(safeload.yaml_documents(body.decode("utf-8")), (None, ""))
        except UnicodeDecodeError:
            return
        if why and ("nesting" in why or "alias" in why):
            raise st.ApiError(st.bad_request(f"error decoding YAML: {why}"))
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return
    except RecursionError:
        raise st.ApiError(st.bad_request(f"the body of the request could not be decoded: nesting deeper than "
                                         f"{safeload.MAX_DEPTH} levels is not accepted")) from None
    bounded(parsed)


def clean(obj: dict) -> dict:
    """The object as the folder keeps it: what a user declares, without the fields the server
    sets (uid, resourceVersion, timestamps, status)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    m = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_FIELDS and v not in (None, {}, [])}
    m.pop("generateName", None)
    out["metadata"] = m
    return out


def scale_of(dep: dict) -> dict:
    """A Deployment's autoscaling/v1 Scale, as deployments/scale answers."""
    m = dep["metadata"]
    sel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m.get("namespace"), "uid": m.get("uid"),
                         "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
            "spec": {"replicas": (dep.get("spec") or {}).get("replicas", 1)},
            "status": {"replicas": (dep.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(sel.items()))}}


def apply_patch(kind: str, obj: dict, body: bytes, content_type: str) -> dict:
    """patch.py's apply_patch (strategic merge, merge, JSON patch), its errors as Statuses."""
    from kproxy.apiserver.patch import PatchError
    from kproxy.apiserver.patch import apply_patch as patched
    try:
        return patched(kind, obj, body, content_type)
    except PatchError as e:
        raise st.ApiError(e.status()) from None


def server_side_apply(kind: str, obj: dict | None, body: bytes, manager: str, force: bool = False) -> dict:
    """`application/apply-patch+yaml`: patchsel's ssa.py (field managers in managedFields, 409
    on another manager's fields unless forced)."""
    from kproxy.apiserver.patch import PatchError
    from kproxy.apiserver.ssa import server_side_apply as ssa
    try:
        return ssa(kind, obj, body, manager, force)
    except PatchError as e:
        raise st.ApiError(e.status()) from None


class Writer:
    """The write verbs of the API, for one controller process (its front and its loop)."""

    def __init__(self, ctx, frontend, sync, admission=None):
        self.ctx, self.cfg, self.front, self.sync = ctx, ctx.cfg, frontend, sync
        self.admission = admission or sync  # waits for the front's step alone (Daemon.admission)
        self.gate = desired.gate(ctx.cfg)
        self.lock = threading.Lock()
        self.validation = "Warn"          # this request's fieldValidation (writes are serialised)
        self.force = False                # this apply's force (server-side apply)
        self.manager = "unknown"          # this write's field manager (managedFields)
        self.warnings: list[str] = []

    # -- entry ------------------------------------------------------------------------------
    def handle(self, verb: str, t: rest.Target, body: bytes, content_type: str, query,
               user_agent: str = "") -> tuple[int, dict, list]:
        """(HTTP code, answer, Warning header values) of one write; ApiError for a refusal."""
        dry = "All" in query.getall("dryRun", []) if hasattr(query, "getall") else query.get("dryRun") == "All"
        _check_options(verb, query)
        with self.lock:
            self.validation = query.get("fieldValidation") or "Warn"
            self.warnings = []
            # who writes, for managedFields: fieldManager, else the client's program (as upstream)
            self.manager = query.get("fieldManager") or (user_agent.split("/")[0] if user_agent else "unknown")
            if verb == "create":
                obj = decode(body, content_type)
                self._strict(t, obj, body, True)
                code, out = self.create(t, obj, dry)
            elif verb == "update":
                obj = decode(body, content_type)
                self._strict(t, obj, body, True)
                code, out = self.update(t, obj, dry)
            elif verb == "patch":
                self.force = query.get("force") in ("true", "1")
                code, out = self.patch(t, body, content_type, dry, query.get("fieldManager") or "")
            elif verb == "delete":
                code, out = self.delete(t, _options(body, content_type), dry)
            else:
                code, out = self.delete_collection(t, query, dry)
            return code, out, self.warnings

    def _strict(self, t: rest.Target, obj: dict, body: bytes | None, create: bool) -> None:
        """kubectl's validation path (discovery's strict.py): with fieldValidation=Strict an
        unknown or duplicate field is a 400 in the decoder's words; Warn (the default) makes
        them Warning headers; Ignore says nothing."""
        if self.validation == "Ignore" or t.sub == "scale":
            return
        from kproxy.apiserver import strict
        found = strict.problems(t.res.kind, obj, body)
        if not found:
            return
        if self.validation == "Strict":
            raise st.ApiError(strict.strict_status(t.res.kind, t.res.version, found, create))
        self.warnings += strict.warning_headers(found)

    # -- reading the truth --------------------------------------------------------------------
    def current(self, t: rest.Target, name: str | None = None) -> tuple[dict | None, int]:
        key = rest.store_key(t.res, t.namespace, name or t.name)
        return self.ctx.store.get_with_revision(key)

    def presented(self, t: rest.Target, name: str) -> dict | None:
        key = rest.store_key(t.res, t.namespace, name)
        obj, rev = self.ctx.store.get_with_revision(key)
        return rest.present(t.res, key, obj, rev) if obj is not None else None

    def _declared(self, t: rest.Target, name: str, ns: str | None = None) -> bool:
        """Whether the manifests folder declares the object (else kproxy made it: read-only)."""
        ns = t.namespace if ns is None else ns
        return self.front is not None and self.front.source_of(t.res.kind, ns or "", name) is not None

    def _read_only(self, t: rest.Target, name: str) -> st.ApiError:
        return st.ApiError(st.status(405, "MethodNotAllowed",
                                     f'{st.qualified(t.res.plural, t.res.group)} "{name}" is made by the lab itself, '
                                     "not declared in its manifests folder: it cannot be changed through the API",
                                     {"name": name, **({"group": t.res.group} if t.res.group else {}),
                                      "kind": t.res.plural}))

    # -- the verbs ----------------------------------------------------------------------------
    def create(self, t: rest.Target, obj: dict, dry: bool) -> tuple[int, dict]:
        obj = self._shape(t, obj)
        m = obj["metadata"]
        if not m.get("name") and m.get("generateName"):
            m["name"] = self._generate(t, m["generateName"])
        if not m.get("name"):
            err = errors.required("metadata.name", "name or generateName is required")
            raise st.ApiError(st.invalid(t.res.kind, "", [err]))
        name = m["name"]
        if t.res.kind not in rest.WRITABLE:
            raise st.ApiError(st.method_not_allowed())
        if self.current(t, name)[0] is not None:
            raise st.ApiError(st.already_exists(t.res.plural, t.res.group, name))
        return self._write(t, clean(obj), None, dry, 201)

    def update(self, t: rest.Target, obj: dict, dry: bool) -> tuple[int, dict]:
        cur, rev = self.current(t)
        if cur is None:
            raise st.ApiError(st.not_found(t.res.plural, t.res.group, t.name))
        if t.sub == "scale":
            replicas = (obj.get("spec") or {}).get("replicas")
            self._precondition(t, obj, rev)
            new = rest.present(t.res, "", cur, rev)
            new["spec"] = {**(new.get("spec") or {}), "replicas": replicas}
            code, out = self._write(t, clean(new), cur, dry, 200)
            return code, scale_of(out)
        if t.sub:
            raise st.ApiError(st.method_not_allowed())
        obj = self._shape(t, obj)
        _check_name(obj, t.name)
        self._precondition(t, obj, rev)
        uid, stored_uid = obj["metadata"].get("uid"), rest.present(t.res, rest.store_key(
            t.res, t.namespace, t.name), cur, rev)["metadata"].get("uid")
        if uid and uid != stored_uid:  # DefaultUpdatedObjectInfo's UID precondition
            raise st.ApiError(st.conflict(t.res.plural, t.res.group, t.name,
                                          f"Precondition failed: UID in precondition: {uid}, "
                                          f"UID in object meta: {stored_uid}"))
        return self._write(t, clean(obj), cur, dry, 200)

    def patch(self, t: rest.Target, body: bytes, content_type: str, dry: bool, manager: str = "") -> tuple[int, dict]:
        bounded_patch(body, content_type)
        cur, rev = self.current(t)
        if content_type.split(";")[0].strip() == "application/apply-patch+yaml" and not t.sub:
            return self.apply(t, cur, rev, body, dry, manager)
        if cur is None:
            raise st.ApiError(st.not_found(t.res.plural, t.res.group, t.name))
        if t.sub not in ("", "scale"):
            raise st.ApiError(st.method_not_allowed())
        shown = rest.present(t.res, "", cur, rev)
        if t.sub == "scale":
            new_scale = apply_patch("Scale", scale_of(shown), body, content_type)
            self._precondition(t, new_scale, rev)
            shown["spec"] = {**(shown.get("spec") or {}), "replicas": (new_scale.get("spec") or {}).get("replicas")}
            code, out = self._write(t, clean(shown), cur, dry, 200)
            return code, scale_of(out)
        new = apply_patch(t.res.kind, shown, body, content_type)
        if not isinstance(new, dict):
            raise st.ApiError(st.bad_request("the patch did not leave an object"))
        self._strict(t, new, None, False)
        self._precondition(t, new, rev)
        new = self._shape(t, new)
        _check_name(new, t.name)
        uid = new["metadata"].get("uid")
        if uid and uid != shown["metadata"].get("uid"):  # ValidateObjectMetaUpdate
            raise st.ApiError(st.invalid(t.res.kind, t.name, [errors.invalid(
                "metadata.uid", uid, "field is immutable")]))
        return self._write(t, clean(new), cur, dry, 200)

    def apply(self, t: rest.Target, cur: dict | None, rev: int, body: bytes, dry: bool,
              manager: str) -> tuple[int, dict]:
        """Server-side apply (`kubectl apply --server-side`): creates the object when absent."""
        shown = rest.present(t.res, "", cur, rev) if cur is not None else None
        new = server_side_apply(t.res.kind, shown, body, manager, self.force)
        self._strict(t, new, None, False)
        self._precondition(t, new, rev)
        new = self._shape(t, new)
        _check_name(new, t.name)
        if cur is None:
            if t.res.kind not in rest.WRITABLE:
                raise st.ApiError(st.method_not_allowed())
            return self._write(t, clean(new), None, dry, 201, applied=True)
        return self._write(t, clean(new), cur, dry, 200, applied=True)

    def delete(self, t: rest.Target, options: dict, dry: bool) -> tuple[int, dict]:
        cur, rev = self.current(t)
        if cur is None:
            raise st.ApiError(st.not_found(t.res.plural, t.res.group, t.name))
        if t.sub:
            raise st.ApiError(st.method_not_allowed())
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != cur["metadata"].get("uid"):
            raise st.ApiError(st.conflict(t.res.plural, t.res.group, t.name,
                                          f'Precondition failed: UID in precondition: {pre["uid"]}, '
                                          f'UID in object meta: {cur["metadata"].get("uid")}'))
        if pre.get("resourceVersion") and pre["resourceVersion"] != str(rev):
            raise st.ApiError(st.conflict(t.res.plural, t.res.group, t.name))
        if t.res.kind == "Namespace" and t.name in desired.PROTECTED_NAMESPACES:
            raise st.ApiError(st.forbidden("namespaces", "", t.name, "this namespace may not be deleted"))
        shown = rest.present(t.res, rest.store_key(t.res, t.namespace, t.name), cur, rev)
        declared = self._declared(t, t.name)
        if not declared and t.res.kind != "Pod":
            raise self._read_only(t, t.name)
        if dry:
            return 200, self._deleted_answer(t, shown)
        if declared:
            with desired.session(self.cfg) as f:
                desired.remove(f, t.res.kind, t.namespace or "", t.name)
        else:  # a Deployment's pod: the deletion mark `kproxy delete pod` makes
            self.front.requests.append({"op": "delete-pod", "namespace": t.namespace, "name": t.name})
        self.sync()
        after = self.presented(t, t.name)
        if t.res.kind == "Pod" and after is not None and after["metadata"].get("uid") == shown["metadata"].get("uid"):
            return 200, after  # graceful: the pod with its deletionTimestamp
        if t.res.kind == "Namespace":
            shown.setdefault("status", {})["phase"] = "Terminating"
        return 200, self._deleted_answer(t, shown)

    def delete_collection(self, t: rest.Target, query, dry: bool) -> tuple[int, dict]:
        """The selected objects the folder declares (and pods, marked), in one folder edit and
        one pass; across namespaces too (`DELETE /api/v1/services?labelSelector=...`)."""
        items, rev = rest.Reads(_StoreView(self.ctx.store)).items(t, query)
        gone = []
        for obj in items:
            ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            declared = self._declared(t, name, ns)
            if declared or t.res.kind == "Pod":
                gone.append((obj, ns, name, declared))
        if not dry and gone:
            with desired.session(self.cfg) as f:
                for obj, ns, name, declared in gone:
                    if declared:
                        desired.remove(f, t.res.kind, ns, name)
                    else:
                        self.front.requests.append({"op": "delete-pod", "namespace": ns, "name": name})
            self.sync()
        return 200, {"kind": f"{t.res.kind}List", "apiVersion": t.res.api_version,
                     "metadata": {"resourceVersion": str(rev)},
                     "items": [rest.strip_for_list(o) for o, _, _, _ in gone]}

    # -- helpers ------------------------------------------------------------------------------
    def _shape(self, t: rest.Target, obj: dict) -> dict:
        """kind, apiVersion and namespace from the URL where the body leaves them out; a body
        naming another namespace is refused, as the API server does."""
        obj = dict(obj)
        obj.setdefault("kind", t.res.kind)
        obj.setdefault("apiVersion", t.res.api_version)
        if obj["kind"] != t.res.kind:
            raise st.ApiError(st.bad_request(f'the kind of the object ({obj["kind"]}) does not match the '
                                             f"resource ({t.res.plural})"))
        if obj["apiVersion"] != t.res.api_version:
            raise st.ApiError(st.bad_request(f'the API version in the data ({obj["apiVersion"]}) does not match the '
                                             f"expected API version ({t.res.api_version})"))
        m = dict(obj.get("metadata") or {})
        if t.res.namespaced:
            if m.get("namespace") and m["namespace"] != t.namespace:
                raise st.ApiError(st.bad_request("the namespace of the provided object does not match the namespace "
                                                 "sent on the request"))
            m["namespace"] = t.namespace
        obj["metadata"] = m
        return obj

    def _generate(self, t: rest.Target, base: str) -> str:
        for _ in range(10):
            name = base[:58] + "".join(random.choice(_ALNUM) for _ in range(5))
            if self.current(t, name)[0] is None:
                return name
        raise st.ApiError(st.already_exists(t.res.plural, t.res.group, base))

    def _precondition(self, t: rest.Target, obj: dict, rev: int) -> None:
        """409 Conflict when the client's resourceVersion is not the stored one (optimistic
        concurrency: it changed since the client read it)."""
        want = (obj.get("metadata") or {}).get("resourceVersion")
        if want and want != str(rev):
            raise st.ApiError(st.conflict(t.res.plural, t.res.group, t.name))

    def _deleted_answer(self, t: rest.Target, shown: dict) -> dict:
        if t.res.kind in ANSWERED_WITH_OBJECT:
            return shown
        return st.success(t.name, t.res.group, t.res.plural, shown["metadata"].get("uid", ""))

    def _write(self, t: rest.Target, obj: dict, cur: dict | None, dry: bool, code: int,
               applied: bool = False) -> tuple[int, dict]:
        """Steps 2-5 of the module docstring for a create (`cur` None) or an update; `applied`:
        a server-side apply (it kept managedFields itself), else an Update takes ownership of
        what it changed (ssa.record_update), as the API server records it."""
        loadable(obj)
        name = obj["metadata"]["name"]
        if not applied:
            from kproxy.apiserver.ssa import record_update
            obj = record_update(t.res.kind, cur, obj, self.manager)
        if cur is not None and not self._declared(t, name):
            raise self._read_only(t, name)
        source = f"{t.res.plural}/{name}"
        with desired.session(self.cfg) as f:
            exists = lambda ns: desired.namespace_exists(ns, f, self.ctx.store)  # noqa: E731
            verdict = self.gate.admit(obj, source, old=cur, namespaces=exists)
            if not verdict.ok:
                raise st.ApiError(self._refusal(t, name, verdict))
            if dry:
                out = dict(verdict.obj)
                if cur is not None:  # what an update would store: the server's fields and status kept
                    out["metadata"] = {**cur["metadata"], **out["metadata"]}
                    if "status" in cur:
                        out["status"] = cur["status"]
                shown = rest.present(t.res, rest.store_key(t.res, t.namespace, name), out, self.current(t, name)[1])
                if cur is None:  # nothing was stored: no resourceVersion yet
                    shown["metadata"].pop("resourceVersion", None)
                return code, shown
            scoped = t.res.kind in desired.CLUSTER_SCOPED
            before = f.find(meta.obj_key(obj), scoped)
            _, old_rev = self.current(t, name)
            f.upsert(obj, cluster_scoped=scoped)
        # settled=False: a create or update removes nothing, so objects missing from a file an
        # editor is saving right now keep their grace period (only a delete says "settled").
        # The answer needs what the front stored (allocations, resourceVersion, a refusal), not
        # the rest of the pass: only a Deployment's status (its controller) and a LoadBalancer
        # Service's IP (the pool's controller) come later in the pass, and those answers carry them
        whole_pass = obj.get("kind") == "Deployment" or (obj.get("kind") == "Service" and "LoadBalancer" in (
            (obj.get("spec") or {}).get("type"), ((cur or {}).get("spec") or {}).get("type")))
        (self.sync if whole_pass else self.admission)(settled=False)
        problem = desired.refused(self.ctx.store, [obj]).get(meta.obj_key(obj))
        if problem:
            with desired.session(self.cfg) as f:
                desired.undo(f, obj, before)
            self.sync(settled=False)
            raise st.ApiError(self._refused_status(t, name, problem))
        deadline = time.monotonic() + STORED_WAIT
        while True:  # the front stores it in the pass `sync` waited for; a busy store may take longer
            stored, rev = self.current(t, name)
            if stored is not None and (rev != old_rev or cur is not None):
                break
            if time.monotonic() > deadline:
                raise st.ApiError(st.timeout(f"the lab did not store {source} in {STORED_WAIT:.0f} s; "
                                             "`kproxy status` shows why"))
            time.sleep(0.05)
        return code, rest.present(t.res, rest.store_key(t.res, t.namespace, name), stored, rev)

    def _refusal(self, t: rest.Target, name: str, verdict: admission.Verdict) -> dict:
        if verdict.reason == admission.INVALID:
            return st.invalid(t.res.kind, name, verdict.field_errors)
        if verdict.reason == admission.NOT_FOUND:
            ns = (verdict.obj.get("metadata") or {}).get("namespace", "")
            return st.not_found("namespaces", "", ns)
        if verdict.reason == admission.TOO_LARGE:
            return st.status(413, "RequestEntityTooLarge", verdict.message)
        return st.bad_request(verdict.message)

    def _refused_status(self, t: rest.Target, name: str, message: str) -> dict:
        """A refusal the front recorded (already worded as the API server's message)."""
        if " is invalid" in message:
            return st.status(422, "Invalid", message, {"name": name, **({"group": t.res.group} if t.res.group else {}),
                                                        "kind": t.res.kind})
        if message.startswith("namespaces "):
            return st.status(404, "NotFound", message)
        return st.internal(message)


OPTIONS_KIND = {"create": "CreateOptions", "update": "UpdateOptions", "patch": "PatchOptions",
                "delete": "DeleteOptions", "deletecollection": "DeleteOptions"}


def _check_options(verb: str, query) -> None:
    """ValidateDryRun (apimachinery's Validate{Create,Update,Patch,Delete}Options): a dryRun other
    than "All" is refused with the API server's 422, not taken as a real write (a typo must not write)."""
    dry_run = query.getall("dryRun", []) if hasattr(query, "getall") else \
        ([query["dryRun"]] if query.get("dryRun") is not None else [])
    errs = []
    if any(v != "All" for v in dry_run):
        errs.append(errors.not_supported("dryRun", errors.go_string_slice(dry_run), ["All"]))
    if errs:
        raise st.ApiError(errors.InvalidError(OPTIONS_KIND[verb], "", errs, group="meta.k8s.io").to_status())


def _check_name(obj: dict, name: str) -> None:
    """checkName (handlers/rest.go): an update, patch or apply does not rename an object."""
    got = obj["metadata"].get("name")
    if got != name:
        raise st.ApiError(st.bad_request(f"the name of the object ({got}) does not match the name on the URL "
                                         f"({name})"))


def _options(body: bytes, content_type: str) -> dict:
    """A delete's DeleteOptions (JSON); any other body (protobuf) is taken as no options."""
    if not body.strip() or body.startswith(b"k8s\x00"):
        return {}
    return decode(body, content_type)


class _StoreView:
    """The store as rest.Reads reads a cache (deletecollection decides on the truth)."""

    def __init__(self, store):
        self.store = store

    def get(self, key):
        return self.store.get_with_revision(key)

    def list(self, prefix):
        return self.store.list_with_revisions(prefix)
