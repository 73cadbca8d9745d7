"""The resource paths of the API (`/api/v1/...`, `/apis/GROUP/VERSION/...`): which resource a
path names, and the verbs on it — get, list, watch (reads, from the watch cache) and create,
update, patch, delete, deletecollection (through writes.Writer, the one write path).

Why one module per concern: the paths and their Kubernetes semantics (what a list's
resourceVersion is, what a watch sends first, which Status a delete answers) are here; how a
write reaches the manifests folder and the store is writes.py; the cache is watchcache.py.

Objects are read from the watch cache and presented as the API server does (`present`): with
metadata.resourceVersion (the key's mod revision), kind and apiVersion; an Event's
involvedObject.uid filled from the object it is about, so `kubectl describe` finds it.
ReplicaSets are derived from Deployments and their pods (kproxy stores none).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from kproxy.api import meta
from kproxy.apiserver import status as st
from kproxy.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from kproxy.apiserver.resources import Resource, find
from kproxy.apiserver.watchcache import Event, Expired, WatchCache, with_rv

log = logging.getLogger("kproxy")

BOOKMARK_SECONDS = 5.0
# A watcher that falls behind is closed, as the cacher closes one whose channel stays full
# ("Forcing watcher close due to unresponsiveness"): memory stays bounded per watch and the
# client re-watches from the last resourceVersion it got.
WATCH_TIMEOUT = 1800        # a watch without timeoutSeconds (the API server's default is 30-60 min)
WATCH_QUEUE = 1000          # change batches waiting for one watch
WATCH_WRITE_SECONDS = 30.0  # one write to a client that does not read


def store_key(res: Resource, ns: str | None, name: str = "") -> str:
    """The store key of an object (without name: its collection's prefix), as the API server
    lays out etcd: `/registry/services/NS/NAME`, `/registry/nodes/NAME`."""
    plural = meta.KINDS[res.kind].plural
    if res.namespaced and ns:
        return f"/registry/{plural}/{ns}/{name}"
    return f"/registry/{plural}/{name}"


WRITABLE = set(meta.ADMITTED_KINDS)   # kinds a client may create: they live in the manifests folder


@dataclass
class Target:
    """A request path resolved: the resource, the namespace (None: all or cluster-scoped), the
    name ("" for a collection) and the subresource ("" for the object itself)."""
    res: Resource
    namespace: str | None
    name: str
    sub: str


def resolve(group: str, version: str, parts: list[str]) -> Target:
    """`[namespaces/NS/]PLURAL[/NAME[/SUB]]` under one group-version; ApiError 404 otherwise."""
    ns = None
    if len(parts) >= 3 and parts[0] == "namespaces" and find(group, version, parts[2]):
        ns, parts = parts[1], parts[2:]
    res = find(group, version, parts[0]) if parts and len(parts) <= 3 else None
    if res is None:
        raise st.ApiError(st.no_route())
    if ns is not None and not res.namespaced:
        raise st.ApiError(st.no_route())
    name = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if len(parts) > 2 else ""
    return Target(res, ns if res.namespaced else None, name, sub)


# -- presenting objects --------------------------------------------------------------------
def present(res: Resource, key: str, obj: dict, rev: int, cache: WatchCache | None = None) -> dict:
    """The object as the API server returns it (a new dict; the cache's stays untouched)."""
    out = with_rv(obj, rev)
    m = out["metadata"]
    out["apiVersion"], out["kind"] = res.api_version, res.kind
    if not m.get("uid"):  # objects kproxy writes without one (Events): stable per key and creation
        m["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, key + str(obj.get("firstTimestamp") or "")))
    if not m.get("creationTimestamp"):
        m["creationTimestamp"] = obj.get("firstTimestamp") or obj.get("lastTimestamp") or \
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if res.kind == "Event":
        out = _event(res, out, cache)
    if res.kind == "Deployment" and not (out.get("status") or {}).get("conditions"):
        out["status"] = {**(out.get("status") or {}), "conditions": deployment_conditions(out)}
    return out


def deployment_conditions(dep: dict) -> list[dict]:
    """Available and Progressing, derived as the deployment controller sets them, for a
    Deployment whose status has none (kproxy's controllers count replicas only): `kubectl wait
    --for=condition=Available` and `describe` read them. Times: the object's creation (kproxy
    keeps no transition history)."""
    from kproxy.controllers.replicas import pod_template_hash
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    want = spec.get("replicas", 1)
    max_unavailable = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
        unavailable = want * int(max_unavailable[:-1] or 0) // 100
    else:
        unavailable = int(max_unavailable) if str(max_unavailable).isdigit() else 0
    available = status.get("availableReplicas", 0)
    stamp = dep["metadata"].get("creationTimestamp")
    rs = f'{dep["metadata"]["name"]}-{pod_template_hash(spec.get("template") or {})}'
    done = status.get("updatedReplicas", 0) == want and status.get("replicas", 0) == want and available >= want
    ok = available >= want - unavailable
    return [
        {"type": "Available", "status": "True" if ok else "False",
         "reason": "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
         "message": "Deployment has minimum availability." if ok else
         "Deployment does not have minimum availability.", "lastUpdateTime": stamp, "lastTransitionTime": stamp},
        {"type": "Progressing", "status": "True",
         "reason": "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
         "message": f'ReplicaSet "{rs}" has successfully progressed.' if done else f'ReplicaSet "{rs}" is progressing.',
         "lastUpdateTime": stamp, "lastTransitionTime": stamp},
    ]


def _event(res: Resource, ev: dict, cache: WatchCache | None) -> dict:
    inv = dict(ev.get("involvedObject") or {})
    if cache is not None and not inv.get("uid") and inv.get("kind") in meta.KINDS and inv.get("name"):
        info = meta.KINDS[inv["kind"]]
        key = f"/registry/{info.plural}/{inv['namespace']}/{inv['name']}" if info.namespaced and inv.get("namespace") \
            else f"/registry/{info.plural}/{inv['name']}"
        obj, _ = cache.get(key)
        if obj is not None:
            inv["uid"] = obj["metadata"].get("uid", "")
    if inv.get("kind") in meta.KINDS:
        inv.setdefault("apiVersion", meta.KINDS[inv["kind"]].api_versions[0])
    if not inv.get("namespace") and inv.get("kind") in meta.KINDS and not meta.KINDS[inv["kind"]].namespaced:
        inv.pop("namespace", None)
    ev["involvedObject"] = inv
    ev.setdefault("source", {"component": "kproxy"})
    ev.setdefault("reportingComponent", "kproxy")
    if res.group != "events.k8s.io":
        return ev
    # events.k8s.io/v1: the same Event, its fields renamed
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": ev["metadata"],
            "regarding": inv, "reason": ev.get("reason"), "note": ev.get("message"), "type": ev.get("type"),
            "eventTime": None, "reportingController": "kproxy", "reportingInstance": "kproxy",
            "deprecatedCount": ev.get("count"), "deprecatedFirstTimestamp": ev.get("firstTimestamp"),
            "deprecatedLastTimestamp": ev.get("lastTimestamp"), "deprecatedSource": ev.get("source")}


def strip_for_list(obj: dict) -> dict:
    """A typed list's items carry no kind/apiVersion (the API server's JSON)."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


# -- selectors -----------------------------------------------------------------------------
def label_matcher(text: str | None) -> Callable[[dict], bool]:
    """`labelSelector` (selectors.py: the API server's syntax and errors)."""
    if not text:
        return lambda labels: True
    try:
        return parse_label_selector(text)
    except SelectorError as e:
        raise st.ApiError(st.bad_request(str(e))) from None


def field_matcher(kind: str, text: str | None) -> Callable[[dict], bool]:
    """`fieldSelector`: the fields the API server supports for the kind, its errors."""
    if not text:
        return lambda obj: True
    try:
        return parse_field_selector(kind, text)
    except SelectorError as e:
        raise st.ApiError(st.bad_request(str(e))) from None


# -- reads ---------------------------------------------------------------------------------
class Reads:
    """get, list and watch over the watch cache."""

    def __init__(self, cache: WatchCache):
        self.cache = cache

    def get(self, t: Target) -> dict:
        if t.res.kind == "ReplicaSet":
            for rs in self._replica_sets(t.namespace)[0]:
                if rs["metadata"]["name"] == t.name:
                    return rs
            raise st.ApiError(st.not_found(t.res.plural, t.res.group, t.name))
        key = store_key(t.res, t.namespace, t.name)
        obj, rev = self.cache.get(key)
        if obj is None:
            raise st.ApiError(st.not_found(t.res.plural, t.res.group, t.name))
        return present(t.res, key, obj, rev, self.cache)

    def items(self, t: Target, query) -> tuple[list[dict], int]:
        """The presented objects of a collection that match the query's selectors, and the
        revision they were read at."""
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(t.res.kind, query.get("fieldSelector"))
        if t.res.kind == "ReplicaSet":
            objs, rev = self._replica_sets(t.namespace)
        else:
            raw, rev = self.cache.list(store_key(t.res, t.namespace))
            objs = [present(t.res, k, o, r, self.cache) for k, o, r in raw]
        return [o for o in objs if labels(o["metadata"].get("labels") or {}) and fields(o)], rev

    def list(self, t: Target, query) -> dict:
        objs, rev = self.items(t, query)
        return {"kind": f"{t.res.kind}List", "apiVersion": t.res.api_version,
                "metadata": {"resourceVersion": str(rev)}, "items": [strip_for_list(o) for o in objs]}

    def _replica_sets(self, ns: str | None) -> tuple[list[dict], int]:
        from kproxy import tables
        dep, pod = find("apps", "v1", "deployments"), find("", "v1", "pods")
        deps, rev = self.cache.list(store_key(dep, ns))
        pods, _ = self.cache.list(store_key(pod, ns))
        rss = tables.replica_sets([o for _, o, _ in deps], [o for _, o, _ in pods])
        res = find("apps", "v1", "replicasets")
        out = []
        for rs in rss:
            m = rs["metadata"]
            key = store_key(res, m["namespace"], m["name"])
            rs["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
            out.append(present(res, key, rs, rev))
        return out, rev

    # -- watch ------------------------------------------------------------------------------
    async def watch(self, request: web.Request, t: Target,
                    convert: Callable[[dict], dict] | None = None) -> web.StreamResponse:
        """A watch stream: JSON lines {type, object}, from the request's resourceVersion (none
        or "0": the current objects as ADDED first), BOOKMARKs when asked, an ERROR event with
        a 410 Status when the version is older than the cache's window. With selectors, an
        object that starts or stops matching is ADDED or DELETED, as the API server's cacher
        sends it. `convert`: each event's object as the client asked for it (a one-row Table
        for `kubectl get -w`). ReplicaSets (derived) are recomputed on their Deployment's and
        pods' changes."""
        q = request.query
        labels = label_matcher(q.get("labelSelector"))
        fields = field_matcher(t.res.kind, q.get("fieldSelector"))
        derived = t.res.kind == "ReplicaSet"
        if derived:
            prefixes = tuple(store_key(find(*gv), t.namespace) for gv in (("apps", "v1", "deployments"),
                                                                          ("", "v1", "pods")))
            matches = lambda key: key.startswith(prefixes)  # noqa: E731
        else:
            prefix = store_key(t.res, t.namespace, t.name) if t.name else store_key(t.res, t.namespace)
            matches = (lambda key: key == prefix) if t.name else (lambda key: key.startswith(prefix))  # noqa: E731
        rv_text = q.get("resourceVersion") or ""
        timeout_seconds(q)  # a bad value is a 400 before anything is subscribed
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(WATCH_QUEUE)
        overflow: list[bool] = []

        def offer(batch: list[Event]) -> None:  # (on the loop) a full queue ends the watch
            if queue.full():
                overflow.append(True)
            else:
                queue.put_nowait(batch)
        listener = lambda batch: loop.call_soon_threadsafe(offer, batch)  # noqa: E731
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        initial: list[Event] = []
        try:
            if rv_text in ("", "0"):
                items, rev, unsubscribe = self.cache.subscribe_now(listener)
                if not derived:
                    initial = [Event(r, "ADDED", k, with_rv(o, r)) for k, o, r in items]
            else:
                try:
                    rev = int(rv_text)
                except ValueError:
                    raise st.ApiError(st.bad_request(f'invalid resource version "{rv_text}"')) from None
                initial, unsubscribe = self.cache.watch(rev, listener)
        except Expired as e:
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": st.expired(str(e))}).encode() + b"\n")
            return resp
        selected = lambda o: labels(o["metadata"].get("labels") or {}) and fields(o)  # noqa: E731
        line = lambda kind, o: json.dumps({"type": kind, "object": convert(o) if convert else o}).encode() + b"\n"  # noqa: E731
        last_rev = rev
        seen: dict[str, dict] = {}  # ReplicaSets: name -> what was last sent
        if derived:
            seen = {o["metadata"]["name"]: o for o in self._replica_sets(t.namespace)[0] if selected(o)}

        def objects(batch: list[Event]) -> list[bytes]:
            out = []
            for ev in batch:
                if not matches(ev.key) or ev.rev <= rev:
                    continue  # (a version the client already has: it asked for what follows)
                obj = present(t.res, ev.key, ev.obj, ev.rev, self.cache)
                now = selected(obj)
                before = ev.type == "MODIFIED" and ev.prev is not None and \
                    selected(present(t.res, ev.key, ev.prev, ev.rev, self.cache))
                kind = ev.type
                if ev.type == "MODIFIED" and now != before:
                    kind = "ADDED" if now else "DELETED"  # moved into or out of the selection
                elif not now:
                    continue
                out.append(line(kind, obj))
            return out

        def replica_sets(batch: list[Event]) -> list[bytes]:
            if not any(matches(ev.key) for ev in batch):
                return []
            fresh = {o["metadata"]["name"]: o for o in self._replica_sets(t.namespace)[0] if selected(o)}
            out = []
            strip = lambda o: {k: v for k, v in o.items() if k != "metadata"}  # noqa: E731
            for name, o in fresh.items():
                if name not in seen:
                    out.append(line("ADDED", o))
                elif strip(o) != strip(seen[name]):
                    out.append(line("MODIFIED", o))
            out += [line("DELETED", o) for name, o in seen.items() if name not in fresh]
            seen.clear()
            seen.update(fresh)
            return out

        convert_batch = replica_sets if derived else objects
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        deadline = loop.time() + timeout_seconds(q)

        async def send(data: bytes) -> None:
            """A client that does not read for WATCH_WRITE_SECONDS is cut off (as the cacher
            closes an unresponsive watcher): it resumes from its last resourceVersion."""
            if data:
                await asyncio.wait_for(resp.write(data), WATCH_WRITE_SECONDS)

        try:  # from here on the listener is subscribed: every way out unsubscribes it
            await resp.prepare(request)
            if derived and rv_text in ("", "0"):
                await send(b"".join(line("ADDED", o) for o in seen.values()))
            if rv_text in ("", "0") and initial:
                await send(b"".join(line("ADDED", o) for o in
                                          (present(t.res, ev.key, ev.obj, ev.rev, self.cache) for ev in initial
                                           if matches(ev.key)) if selected(o)))
                initial = []
            if q.get("sendInitialEvents") in ("true", "1") and bookmarks:  # a streaming list (WatchList)
                end = {"kind": t.res.kind, "apiVersion": t.res.api_version,
                       "metadata": {"resourceVersion": str(rev),
                                    "annotations": {"k8s.io/initial-events-end": "true"}}}
                await send(json.dumps({"type": "BOOKMARK", "object": end}).encode() + b"\n")
            batch = initial
            while True:
                if batch:
                    last_rev = max([last_rev] + [ev.rev for ev in batch])
                    lines = convert_batch(batch)
                    if lines:
                        await send(b"".join(lines))
                left = deadline - loop.time()
                if left <= 0:
                    break
                if overflow:
                    log.info("watch of %s: %d batches behind; closing it", request.path, WATCH_QUEUE)
                    break
                try:
                    batch = await asyncio.wait_for(queue.get(), min(left, BOOKMARK_SECONDS))
                except asyncio.TimeoutError:
                    batch = []
                    if request.transport is None or request.transport.is_closing():
                        break  # the client went away while nothing was sent: unsubscribe now
                    if bookmarks:
                        mark = {"kind": t.res.kind, "apiVersion": t.res.api_version,
                                "metadata": {"resourceVersion": str(last_rev)}}
                        await send(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
        except asyncio.TimeoutError:
            log.info("watch of %s: the client read nothing for %.0f s; closing it", request.path, WATCH_WRITE_SECONDS)
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            unsubscribe()
        return resp


def timeout_seconds(q) -> float:
    """A watch's timeoutSeconds (an integer, as ListOptions has it); 400 in the decoder's words."""
    text = q.get("timeoutSeconds") or ""
    if not text:
        return WATCH_TIMEOUT
    try:
        return float(int(text))
    except ValueError:
        raise st.ApiError(st.bad_request(f'strconv.ParseInt: parsing "{text}": invalid syntax')) from None
