"""Discovery, /version and the health endpoints of the lab's API server.

kubectl learns what a server serves before it sends anything else: ``/api`` and ``/apis``
(legacy discovery, one request per group-version after them) or, when the server answers its
``Accept`` with the aggregated form (apidiscovery.k8s.io v2, or v2beta1 for older clients),
everything in those two requests. kubectl 1.32 asks::

    Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,
            application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,
            application/json

and tells the forms apart by the response's ``Content-Type`` alone, so every answer names its
form exactly. All bodies are built from :mod:`kproxy.apiserver.resources`, the one table.

``invalid_status(kind, name, field_errors)`` (defined in :mod:`.strict`) is the 422 Invalid
Status. ``add_routes(app)`` registers the GET routes here and OpenAPI's (:mod:`.openapi`); the core puts
authentication in front of them (these handlers never look at who asks). The health checks are
``app[HEALTH_CHECKS]``: name -> callable returning None when healthy or the reason it is not
(the core adds ``etcd``); they print as the API server prints them with ``?verbose``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any, Callable

from aiohttp import web

from kproxy.apiserver import resources as res
from kproxy.apiserver import status as st
from kproxy.apiserver.strict import invalid_status  # noqa: F401 - part of this module's interface

KUBERNETES_VERSION = (1, 32, 0)
GIT_VERSION = "v{}.{}.{}-kproxy".format(*KUBERNETES_VERSION)

JSON = "application/json"
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
_AGGREGATED = {"v2": AGGREGATED_V2, "v2beta1": AGGREGATED_V2BETA1}

HEALTH_CHECKS: web.AppKey[dict[str, Callable[[], str | None]]] = web.AppKey("kproxy_health_checks", dict)
ADVERTISE_ADDRESS: web.AppKey[str] = web.AppKey("kproxy_advertise_address", str)


# -- /version --------------------------------------------------------------------------------
def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def version_info() -> dict[str, str]:
    """The ``/version`` body (version.Info): kubectl's `version` prints gitVersion."""
    major, minor, _ = KUBERNETES_VERSION
    return {
        "major": str(major), "minor": str(minor), "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": f"python{platform.python_version()}",
        "compiler": "gc", "platform": f"linux/{_go_arch()}",
    }


# -- legacy discovery ------------------------------------------------------------------------
def api_versions(server_address: str) -> dict[str, Any]:
    """``/api``: APIVersions (no apiVersion field, as upstream writes it)."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> dict[str, Any]:
    """``/apis``: every served named group."""
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(g, vs) for g, vs in res.group_versions() if g]}


def api_group(group: str) -> dict[str, Any] | None:
    """``/apis/<group>``, or None for a group the lab does not serve."""
    for g, versions in res.group_versions():
        if g == group and g:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(g, versions)}
    return None


def _resource_entries(r: res.Resource) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                             "kind": r.kind, "verbs": list(r.verbs)}
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    out = [entry]
    for s in r.subresources:
        sub: dict[str, Any] = {"name": f"{r.plural}/{s.name}", "singularName": "", "namespaced": r.namespaced}
        if s.group is not None:
            sub["group"], sub["version"] = s.group, s.version
        sub["kind"], sub["verbs"] = s.kind, list(s.verbs)
        out.append(sub)
    return out


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``: APIResourceList, or None when not served."""
    served = res.resources_in(group, version)
    if not served:
        return None
    body: dict[str, Any] = {"kind": "APIResourceList"}
    if group:
        body["apiVersion"] = "v1"
    body["groupVersion"] = f"{group}/{version}" if group else version
    body["resources"] = [e for r in served for e in _resource_entries(r)]
    return body


# -- aggregated discovery (apidiscovery.k8s.io) ----------------------------------------------
def _gvk(group: str, version: str, kind: str) -> dict[str, str]:
    return {"group": group, "version": version, "kind": kind}


def _aggregated_resource(r: res.Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource": r.plural, "responseKind": _gvk(r.group, r.version, r.kind),
                             "scope": "Namespaced" if r.namespaced else "Cluster",
                             "singularResource": r.singular, "verbs": list(r.verbs)}
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    if r.subresources:
        entry["subresources"] = [
            {"subresource": s.name,
             "responseKind": _gvk(r.group if s.group is None else s.group,
                                  r.version if s.version is None else s.version, s.kind),
             "verbs": list(s.verbs)}
            for s in r.subresources]
    return entry


def aggregated(core: bool, version: str = "v2") -> dict[str, Any]:
    """The APIGroupDiscoveryList of ``/api`` (``core=True``) or ``/apis``."""
    items = []
    for group, versions in res.group_versions():
        if bool(group) == core:
            continue
        metadata: dict[str, Any] = {"creationTimestamp": None}
        if group:
            metadata["name"] = group
        items.append({"metadata": metadata, "versions": [
            {"version": v, "resources": [_aggregated_resource(r) for r in res.resources_in(group, v)],
             "freshness": "Current"} for v in versions]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str], float]]:
    """Parse an Accept header into (type, params, q), in the client's order."""
    out = []
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";") if p.strip()]
        if not pieces:
            continue
        params = {}
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        out.append((pieces[0].lower(), params, q))
    return out


def negotiate_discovery(accept: str | None) -> str | None:
    """Which form answers this Accept: "v2", "v2beta1", "legacy", or None (406).

    The first acceptable range wins, highest q first (Go's negotiation keeps the client's order
    among equal weights); protobuf is not spoken here, so its ranges are skipped.
    """
    if not accept:
        return "legacy"
    ranges = sorted(_media_ranges(accept), key=lambda t: -t[2])
    for mtype, params, q in ranges:
        if q <= 0:
            continue
        if mtype not in ("application/json", "application/*", "*/*"):
            continue
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if mtype == "application/json" and params.get("v") in _AGGREGATED:
                return params["v"]
            continue
        if not params.get("as"):
            return "legacy"
    return None


# -- handlers --------------------------------------------------------------------------------
def _json_response(body: Any, content_type: str = JSON, request: web.Request | None = None) -> web.Response:
    text = json.dumps(body, separators=(",", ":"))
    resp = web.Response(body=text.encode(), headers={"Content-Type": content_type})  # exactly, no charset
    if content_type != JSON:
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32].upper() + '"'
        resp.headers["ETag"] = etag
        resp.headers["Vary"] = "Accept"
    return resp


def _server_address(request: web.Request) -> str:
    configured = request.app.get(ADVERTISE_ADDRESS)
    if configured:
        return configured
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if sock:
        host, port = sock[0], sock[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return request.host


async def _version(request: web.Request) -> web.Response:
    return _json_response(version_info())


async def _discovery_root(request: web.Request, core: bool) -> web.Response:
    form = negotiate_discovery(request.headers.get("Accept"))
    if form is None:
        return st.status_response(406, "NotAcceptable", "only the following media types are accepted: "
                                  "application/json, " + AGGREGATED_V2 + ", " + AGGREGATED_V2BETA1, {})
    if form != "legacy":
        resp = _json_response(aggregated(core, form), _AGGREGATED[form])
        if request.headers.get("If-None-Match") == resp.headers["ETag"]:  # client-go's HTTP cache
            return web.Response(status=304, headers={"ETag": resp.headers["ETag"], "Vary": "Accept"})
        return resp
    return _json_response(api_versions(_server_address(request)) if core else api_group_list())


async def _api(request: web.Request) -> web.Response:
    return await _discovery_root(request, core=True)


async def _apis(request: web.Request) -> web.Response:
    return await _discovery_root(request, core=False)


async def _api_version(request: web.Request) -> web.Response:
    body = api_resource_list("", request.match_info["version"])
    return _json_response(body) if body else st.response(st.no_route())


async def _apis_group(request: web.Request) -> web.Response:
    body = api_group(request.match_info["group"])
    return _json_response(body) if body else st.response(st.no_route())


async def _apis_group_version(request: web.Request) -> web.Response:
    group, version = request.match_info["group"], request.match_info["version"]
    body = api_resource_list(group, version) if group else None
    return _json_response(body) if body else st.response(st.no_route())


# -- health ----------------------------------------------------------------------------------
_ENDPOINT_CHECKS = {  # upstream's names, in its order; the core adds "etcd" through HEALTH_CHECKS
    "healthz": ("ping", "log", "etcd", "poststarthook/start-kproxy-controllers"),
    "livez": ("ping", "log", "etcd", "poststarthook/start-kproxy-controllers"),
    "readyz": ("ping", "log", "etcd", "etcd-readiness", "informer-sync", "poststarthook/start-kproxy-controllers",
               "shutdown"),
}


def health_report(endpoint: str, checks: dict[str, Callable[[], str | None]], verbose: bool,
                  exclude: tuple[str, ...] = (), only: str | None = None) -> tuple[int, str]:
    """(status, text) of /healthz, /livez or /readyz as the API server writes them.

    A check the core did not register passes (ping/log always do). Failures say
    ``[-]name failed: reason withheld`` as upstream does (the reason goes to the log).
    """
    names = list(_ENDPOINT_CHECKS[endpoint]) + [n for n in checks if n not in _ENDPOINT_CHECKS[endpoint]]
    if only is not None:
        if only not in names:
            return 404, "404 page not found\n"
        problem = _run(checks.get(only))
        return (500, f"internal server error: {problem}\n") if problem else (200, "ok")
    lines, failed, unmatched = [], [], [e for e in exclude if e not in names]
    for name in names:
        if name in exclude:
            lines.append(f"[+]{name} excluded: ok")
            continue
        if _run(checks.get(name)):
            failed.append(name)
            lines.append(f"[-]{name} failed: reason withheld")
        else:
            lines.append(f"[+]{name} ok")
    if unmatched:
        quoted = ",".join(f'"{e}"' for e in sorted(unmatched))
        lines.append(f"warn: some health checks cannot be excluded: no matches for {quoted}")
    if failed:  # always verbose on failure
        return 500, "\n".join(lines) + f"\n{endpoint} check failed\n"
    if verbose:
        return 200, "\n".join(lines) + f"\n{endpoint} check passed\n"
    return 200, "ok"


def _run(check: Callable[[], str | None] | None) -> str | None:
    """None when healthy (or no such check registered), else the reason."""
    if check is None:
        return None
    try:
        return check() or None
    except Exception as exc:  # noqa: BLE001 - a broken check is a failed check
        return str(exc) or type(exc).__name__


def _health_handler(endpoint: str):
    async def handler(request: web.Request) -> web.Response:
        checks = request.app.get(HEALTH_CHECKS) or {}
        verbose = "verbose" in request.query and request.query.get("verbose") not in ("false", "0")
        exclude = tuple(request.query.getall("exclude", []))
        only = request.match_info.get("check")
        code, text = health_report(endpoint, checks, verbose, exclude, only)
        return web.Response(status=code, text=text, headers={"Content-Type": "text/plain; charset=utf-8",
                                                             "X-Content-Type-Options": "nosniff"})
    return handler


def add_routes(app: web.Application) -> None:
    """Register discovery, /version, health and OpenAPI GET routes on ``app``."""
    from kproxy.apiserver import openapi

    for path, handler in (("/version", _version), ("/api", _api), ("/api/{version}", _api_version),
                          ("/apis", _apis), ("/apis/{group}", _apis_group),
                          ("/apis/{group}/{version}", _apis_group_version)):
        app.router.add_get(path, handler)
        app.router.add_get(path + "/", handler)  # the API server answers both spellings
    for endpoint in _ENDPOINT_CHECKS:
        handler = _health_handler(endpoint)
        app.router.add_get(f"/{endpoint}", handler)
        app.router.add_get(f"/{endpoint}/{{check:.+}}", handler)
    openapi.add_routes(app)
