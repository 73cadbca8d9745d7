"""OpenAPI v2 and v3 documents of the served kinds, from upstream's own v1.32 document.

kubectl 1.32 reads OpenAPI **v3** for everything it uses it for:

- `kubectl explain` walks ``/openapi/v3`` -> ``/openapi/v3/api/v1?hash=...`` and finds the kind by
  its ``x-kubernetes-group-version-kind``;
- `kubectl apply` (client-side) computes its strategic-merge patch from the v3 schema's
  ``x-kubernetes-patch-merge-key``/``-strategy`` when the PATCH operation's requestBody accepts
  ``application/strategic-merge-patch+json``;
- `--validate` (default strict) sends ``fieldValidation=Strict`` when the PATCH operation of the
  kind's path lists that query parameter; the server then refuses unknown fields
  (:mod:`.strict`), so the v3 documents must list it and the server must honour it.

OpenAPI v2 is served as JSON and, as client-go asks for it, in gnostic's protobuf
(:mod:`.openapi_pb`): kubectl 1.32 uses v2 only when v3 is missing, but kubectl 1.20 (Debian's)
validates every apply against it and fails without it.

The schemas come from ``openapi_v1_32.json.gz``, made by :mod:`.openapi_trim` from Kubernetes
v1.32's ``api/openapi-spec/swagger.json`` (see there for the exact source); the v3 form is
converted from it here the way kube-openapi writes v3 (``#/components/schemas``, a ``$ref`` with
siblings wrapped in ``allOf``, body parameters as ``requestBody``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from aiohttp import web

from kproxy.apiserver import datafile, openapi_pb
from kproxy.apiserver import resources as res
from kproxy.apiserver.openapi_trim import DATA_FILE

JSON = "application/json"
_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2"
_SECURITY_V2 = {"BearerToken": {"description": "Bearer Token authentication", "in": "header",
                                "name": "authorization", "type": "apiKey"}}
_SECURITY_V3 = {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                                "name": "authorization", "in": "header"}}


@functools.lru_cache(maxsize=1)
def data() -> dict[str, Any]:
    """The trimmed upstream v2 document (paths, definitions, parameters)."""
    return datafile.read(DATA_FILE)


def definitions() -> dict[str, Any]:
    return data()["definitions"]


@functools.lru_cache(maxsize=None)
def definition_for(group: str, version: str, kind: str) -> str | None:
    """The definition name carrying this group-version-kind (``io.k8s.api.core.v1.Service``)."""
    want = {"group": group, "version": version, "kind": kind}
    for name, schema in definitions().items():
        if want in schema.get("x-kubernetes-group-version-kind", []):
            return name
    return None


# -- v2 ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def v2_document() -> bytes:
    from kproxy.apiserver.discovery import GIT_VERSION
    d = data()
    doc = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
           "paths": d["paths"], "definitions": d["definitions"], "parameters": d["parameters"],
           "securityDefinitions": _SECURITY_V2, "security": [{"BearerToken": []}]}
    return json.dumps(doc, separators=(",", ":")).encode()


# -- v2 -> v3 ---------------------------------------------------------------------------------
def _schema_v3(node: Any) -> Any:
    """A v2 schema in v3 form: refs into components, a ref with siblings wrapped in allOf."""
    if isinstance(node, list):
        return [_schema_v3(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _schema_v3(v) for k, v in node.items() if k != "$ref"}
    ref = node.get("$ref")
    if isinstance(ref, str):
        ref = ref.replace("#/definitions/", "#/components/schemas/")
        if not out:
            return {"$ref": ref}
        out["allOf"] = [{"$ref": ref}]
    return out


def _parameter_v3(param: dict, shared: dict) -> dict:
    ref = param.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/parameters/"):
        param = shared[ref.split("/", 2)[2]]
    out = {k: param[k] for k in ("name", "in", "description", "required") if k in param}
    schema = {k: param[k] for k in ("type", "uniqueItems", "format", "items", "enum", "default") if k in param}
    out["schema"] = schema
    return out


def _operation_v3(op: dict, shared: dict) -> dict:
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in op.items()
                           if k not in ("parameters", "responses", "consumes", "produces", "schemes")}
    params, body = [], None
    for p in op.get("parameters", []):
        resolved = shared[p["$ref"].split("/", 2)[2]] if "$ref" in p else p
        if resolved.get("in") == "body":
            body = resolved
        else:
            params.append(_parameter_v3(p, shared))
    if params:
        out["parameters"] = params
    if body is not None:
        schema = _schema_v3(body["schema"])
        out["requestBody"] = {"content": {mt: {"schema": schema} for mt in op.get("consumes", ["*/*"])},
                              "required": bool(body.get("required"))}
    responses = {}
    for code, resp in op.get("responses", {}).items():
        r = {"description": resp.get("description", "")}
        if "schema" in resp:
            schema = _schema_v3(resp["schema"])
            r["content"] = {mt: {"schema": schema} for mt in op.get("produces", [JSON])}
        responses[code] = r
    out["responses"] = responses
    return out


_V3_ONE_OF = {"io.k8s.apimachinery.pkg.util.intstr.IntOrString": ("integer", "string"),
              "io.k8s.apimachinery.pkg.api.resource.Quantity": ("string", "number")}


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def gv_key(group: str, version: str) -> str:
    """The v3 index key of a group-version: ``api/v1``, ``apis/apps/v1``."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


@functools.lru_cache(maxsize=None)
def v3_document(group: str, version: str) -> bytes | None:
    """The v3 document of one served group-version (its paths and the schemas they reach)."""
    from kproxy.apiserver.discovery import GIT_VERSION
    if not res.resources_in(group, version):
        return None
    d = data()
    prefix = "/" + gv_key(group, version) + "/"
    paths: dict[str, Any] = {}
    for path, item in d["paths"].items():
        if not path.startswith(prefix):
            continue
        entry: dict[str, Any] = {}
        for method, op in item.items():
            if method == "parameters":
                entry["parameters"] = [_parameter_v3(p, d["parameters"]) for p in op]
            else:
                entry[method] = _operation_v3(op, d["parameters"])
        paths[path] = entry
    names: set[str] = set()
    _refs(paths, names)
    schemas: dict[str, Any] = {}
    while names:
        name = names.pop()
        if name in schemas:
            continue
        schemas[name] = _schema_v3(d["definitions"][name])
        if name in _V3_ONE_OF:  # kube-openapi's OpenAPIV3OneOfTypes: explain prints <IntOrString>
            schemas[name].pop("type", None)
            schemas[name]["oneOf"] = [{"type": t} for t in _V3_ONE_OF[name]]
        _refs(schemas[name], names)
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
           "paths": paths,
           "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": _SECURITY_V3},
           "security": [{"BearerToken": []}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def v3_hash(body: bytes) -> str:
    """kube-openapi's hash of a v3 document: SHA-512, upper-case hex."""
    return hashlib.sha512(body).hexdigest().upper()


def v3_index() -> dict[str, Any]:
    """``/openapi/v3``: one serverRelativeURL per served group-version, its hash in the URL."""
    paths = {}
    for group, versions in res.group_versions():
        for version in versions:
            key = gv_key(group, version)
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={v3_hash(v3_document(group, version))}"}
    return {"paths": paths}


# -- handlers ---------------------------------------------------------------------------------
def _accepts_json(accept: str | None) -> bool:
    if not accept:
        return True
    for part in accept.split(","):
        mtype = part.split(";", 1)[0].strip().lower()
        if mtype in (JSON, "application/*", "*/*"):
            return True
    return False


def _not_acceptable(offered: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"only the following media types are accepted: {offered}", "reason": "NotAcceptable",
            "details": {}, "code": 406}
    return web.Response(status=406, body=json.dumps(body).encode(), headers={"Content-Type": JSON})


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha512(body).hexdigest()[:64].upper() + '"'


@functools.lru_cache(maxsize=1)
def v2_protobuf() -> bytes:
    """The v2 document in gnostic's protobuf (what client-go asks for): :mod:`.openapi_pb`."""
    from kproxy.apiserver.discovery import GIT_VERSION
    return openapi_pb.document("Kubernetes", GIT_VERSION, definitions())


def _v2_form(accept: str | None) -> str | None:
    """"json", "protobuf" or None: the first of the client's media ranges we can answer."""
    if not accept:
        return "json"
    for part in accept.split(","):
        mtype = part.split(";", 1)[0].strip().lower()
        if mtype.startswith(_V2_PROTOBUF):
            return "protobuf"
        if mtype in (JSON, "application/*", "*/*"):
            return "json"
    return None


async def _v2(request: web.Request) -> web.Response:
    form = _v2_form(request.headers.get("Accept"))
    if form is None:
        return _not_acceptable(f"{JSON}, {openapi_pb.ACCEPT}")
    body, ctype = (v2_protobuf(), openapi_pb.CONTENT_TYPE) if form == "protobuf" else (v2_document(), JSON)
    etag = _etag(body)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, headers={"Content-Type": ctype, "ETag": etag, "Vary": "Accept"})


async def _v3_index(request: web.Request) -> web.Response:
    if not _accepts_json(request.headers.get("Accept")):
        return _not_acceptable(JSON)
    return web.Response(body=json.dumps(v3_index(), separators=(",", ":")).encode(),
                        headers={"Content-Type": JSON, "Cache-Control": "no-cache, private"})


async def _v3_group_version(request: web.Request) -> web.Response:
    parts = request.match_info["gv"].strip("/").split("/")
    if len(parts) == 2 and parts[0] == "api":
        group, version = "", parts[1]
    elif len(parts) == 3 and parts[0] == "apis":
        group, version = parts[1], parts[2]
    else:
        group = version = None
    body = v3_document(group, version) if version else None
    if body is None:
        return web.Response(status=404, text="404 page not found\n", content_type="text/plain")
    if not _accepts_json(request.headers.get("Accept")):
        return _not_acceptable(JSON)
    digest = v3_hash(body)
    asked = request.query.get("hash")
    if asked and asked != digest:  # an old hash: send the client to the current document
        raise web.HTTPMovedPermanently(location=f"/openapi/v3/{gv_key(group, version)}?hash={digest}")
    headers = {"Content-Type": JSON, "ETag": f'"{digest}"', "Vary": "Accept"}
    headers["Cache-Control"] = "public, immutable" if asked else "no-cache, private"
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


def warm() -> None:
    """Build every document once (about 0.25 s): the first `kubectl apply` should not wait for it."""
    v3_index()
    v2_document()
    v2_protobuf()


async def _warm_in_background(app: web.Application) -> None:
    import asyncio
    asyncio.get_running_loop().run_in_executor(None, warm)


def add_routes(app: web.Application) -> None:
    """The OpenAPI GET routes (``discovery.add_routes`` calls this); the documents are built in a
    worker thread when the app starts, never on the event loop."""
    app.on_startup.append(_warm_in_background)
    app.router.add_get("/openapi/v2", _v2)
    app.router.add_get("/openapi/v3", _v3_index)
    app.router.add_get("/openapi/v3/", _v3_index)
    app.router.add_get("/openapi/v3/{gv:.+}", _v3_group_version)
