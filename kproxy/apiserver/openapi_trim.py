"""Make ``openapi_v1_32.json.gz``: upstream's OpenAPI v2 document trimmed to what the lab serves.

Run once by a developer, not at start-up::

    python -m kproxy.apiserver.openapi_trim SWAGGER.json [OUT.json.gz]

SWAGGER.json is Kubernetes v1.32's own ``api/openapi-spec/swagger.json`` as the official Python
client ships it for that release (kubernetes-client/python tag v32.0.1,
``kubernetes/swagger.json.unprocessed``, generated from kubernetes release-1.32). Keeping
upstream's text means `kubectl explain` prints upstream's descriptions and kubectl's
strategic-merge patches see upstream's ``x-kubernetes-patch-merge-key``/``-strategy`` markers,
instead of a hand-written approximation drifting from them.

What is kept: the paths of the resources and subresources in :mod:`.resources` (with only the
operations their verbs allow), every definition and shared parameter those paths reach, and
MetalLB's two CRD kinds (not upstream's: written here after MetalLB v0.14's CRDs, as the API
server publishes a CRD's schema: inline, ``metadata`` referring to ObjectMeta).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kproxy.apiserver import datafile
from kproxy.apiserver import resources as res

DATA_FILE = Path(__file__).with_name("openapi_v1_32.json.gz")
SOURCE = ("kubernetes v1.32 api/openapi-spec/swagger.json, via kubernetes-client/python v32.0.1 "
          "kubernetes/swagger.json.unprocessed (KUBERNETES_BRANCH release-1.32)")

_METHOD_VERB = {"get": "get", "put": "update", "patch": "patch", "post": "create", "delete": "delete",
                "head": "get", "options": "get"}
_ACTION_VERB = {"get": "get", "list": "list", "watch": "watch", "watchlist": "watch", "post": "create",
                "put": "update", "patch": "patch", "delete": "delete", "deletecollection": "deletecollection"}


def _route(path: str) -> tuple[res.Resource, str | None] | None:
    """(resource, subresource) an upstream path template belongs to, or None when not served."""
    for group, versions in res.group_versions():
        for version in versions:
            prefix = f"/apis/{group}/{version}/" if group else f"/api/{version}/"
            if not path.startswith(prefix):
                continue
            segs = path[len(prefix):].split("/")
            if segs[0] == "watch":
                segs = segs[1:]
            if len(segs) >= 3 and segs[0] == "namespaces" and segs[1] == "{namespace}":
                segs = segs[2:]
            r = res.find(group, version, segs[0])
            if r is None:
                return None
            if len(segs) <= 2:
                return r, None
            sub = r.subresource(segs[2])
            return (r, sub.name) if sub else None
    return None


def _keep_operation(r: res.Resource, sub: str | None, method: str, op: dict) -> bool:
    if sub is not None:
        return _METHOD_VERB.get(method) in r.subresource(sub).verbs
    verb = _ACTION_VERB.get(op.get("x-kubernetes-action", ""))
    return verb in r.verbs


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def trim(swagger: dict) -> dict:
    """The lab's v2 document: served paths, their definitions and parameters, MetalLB's kinds."""
    paths: dict[str, dict] = {}
    for path, item in swagger["paths"].items():
        route = _route(path)
        if route is None:
            continue
        r, sub = route
        kept = {m: op for m, op in item.items() if m == "parameters" or _keep_operation(r, sub, m, op)}
        if set(kept) - {"parameters"}:
            paths[path] = kept
    definitions: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    todo: set[str] = set()
    _refs(paths, todo)
    while todo:
        ref = todo.pop()
        section, name = ref.split("/")[1:3]
        target = definitions if section == "definitions" else parameters
        if name in target:
            continue
        target[name] = swagger[section][name]
        _refs(target[name], todo)
    paths.update(metallb_paths())
    definitions.update(metallb_definitions())
    return {"source": SOURCE, "paths": dict(sorted(paths.items())),
            "definitions": dict(sorted(definitions.items())), "parameters": dict(sorted(parameters.items()))}


# -- MetalLB (metallb.io/v1beta1 CRDs, after MetalLB v0.14's config/crd) ---------------------
def _selector_list(description: str) -> dict:
    return {"description": description, "type": "array",
            "items": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"}}


_STRINGS = {"type": "array", "items": {"type": "string"}}


def metallb_definitions() -> dict[str, Any]:
    def kind_schema(kind: str, description: str, spec: dict, status: dict) -> dict:
        return {
            "description": description, "type": "object",
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this "
                               "representation of an object."},
                "kind": {"type": "string", "description": "Kind is a string value representing the REST resource "
                         "this object represents."},
                "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                "spec": spec, "status": status},
            "required": ["spec"],
            "x-kubernetes-group-version-kind": [{"group": "metallb.io", "kind": kind, "version": "v1beta1"}],
        }

    pool_spec = {
        "description": "IPAddressPoolSpec defines the desired state of IPAddressPool.", "type": "object",
        "required": ["addresses"],
        "properties": {
            "addresses": dict(_STRINGS, description="A list of IP address ranges over which MetalLB has "
                              "authority. You can list multiple ranges in a single pool, they will all share "
                              "the same settings. Each range can be either a CIDR prefix, or an explicit "
                              "start-end range of IPs."),
            "autoAssign": {"type": "boolean", "default": True, "description": "AutoAssign flag used to "
                           "prevent MetallB from automatic allocation for a pool."},
            "avoidBuggyIPs": {"type": "boolean", "default": False, "description": "AvoidBuggyIPs prevents "
                              "addresses ending with .0 and .255 to be used by a pool."},
            "serviceAllocation": {
                "description": "AllocateTo makes ip pool allocation to specific namespace and/or service. "
                "The controller will use the pool with lowest value of priority in case of multiple "
                "matches. A pool with no priority set will be used only if the pools with priority can't "
                "be used.", "type": "object",
                "properties": {
                    "namespaces": dict(_STRINGS, description="Namespaces list of namespace(s) on which ip "
                                       "pool can be attached."),
                    "namespaceSelectors": _selector_list("NamespaceSelectors list of label selectors to "
                                                         "select namespace(s) for ip pool, an alternative to "
                                                         "using namespace list."),
                    "priority": {"type": "integer", "description": "Priority priority given for ip pool while "
                                 "ip allocation on a service."},
                    "serviceSelectors": _selector_list("ServiceSelectors list of label selector to select "
                                                       "service(s) for which ip pool can be used for ip "
                                                       "allocation."),
                }},
        }}
    pool_status = {"description": "IPAddressPoolStatus defines the observed state of IPAddressPool.",
                   "type": "object", "properties": {
                       k: {"type": "integer", "format": "int64"}
                       for k in ("assignedIPv4", "assignedIPv6", "availableIPv4", "availableIPv6")}}
    l2_spec = {
        "description": "L2AdvertisementSpec defines the desired state of L2Advertisement.", "type": "object",
        "properties": {
            "interfaces": dict(_STRINGS, description="A list of interfaces to announce from. The LB IP will "
                               "be announced only from these interfaces. If the field is not set, we "
                               "advertise from all the interfaces on the host."),
            "ipAddressPoolSelectors": _selector_list("A selector for the IPAddressPools which would get "
                                                     "advertised via this advertisement. If no IPAddressPool "
                                                     "is selected by this or by the list, the advertisement "
                                                     "is applied to all the IPAddressPools."),
            "ipAddressPools": dict(_STRINGS, description="The list of IPAddressPools to advertise via this "
                                   "advertisement, selected by name."),
            "nodeSelectors": _selector_list("NodeSelectors allows to limit the nodes to announce as next "
                                            "hops for the LoadBalancer IP. When empty, all the nodes having "
                                            " are announced."),
        }}
    l2_status = {"description": "L2AdvertisementStatus defines the observed state of L2Advertisement.",
                 "type": "object"}
    out = {
        "io.metallb.v1beta1.IPAddressPool": kind_schema(
            "IPAddressPool", "IPAddressPool represents a pool of IP addresses that can be allocated to "
            "LoadBalancer services.", pool_spec, pool_status),
        "io.metallb.v1beta1.L2Advertisement": kind_schema(
            "L2Advertisement", "L2Advertisement allows to advertise the LoadBalancer IPs provided by the "
            "selected pools via L2.", l2_spec, l2_status),
    }
    for kind in ("IPAddressPool", "L2Advertisement"):
        out[f"io.metallb.v1beta1.{kind}List"] = {
            "description": f"{kind}List is a list of {kind}", "type": "object", "required": ["items"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "items": {"type": "array", "items": {"$ref": f"#/definitions/io.metallb.v1beta1.{kind}"}},
                           "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}},
            "x-kubernetes-group-version-kind": [{"group": "metallb.io", "kind": f"{kind}List", "version": "v1beta1"}],
        }
    return out


def metallb_paths() -> dict[str, Any]:
    """The CRD's operations as the API server publishes them (no strategic merge patch)."""
    out: dict[str, Any] = {}
    for kind, plural in (("IPAddressPool", "ipaddresspools"), ("L2Advertisement", "l2advertisements")):
        gvk = {"group": "metallb.io", "kind": kind, "version": "v1beta1"}
        ref = {"$ref": f"#/definitions/io.metallb.v1beta1.{kind}"}
        ok = {"200": {"description": "OK", "schema": ref}, "401": {"description": "Unauthorized"}}
        body = {"in": "body", "name": "body", "required": True, "schema": ref}
        fv = {"in": "query", "name": "fieldValidation", "type": "string", "uniqueItems": True,
              "description": "fieldValidation instructs the server on how to handle objects in the request "
              "(POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict."}
        dry = {"in": "query", "name": "dryRun", "type": "string", "uniqueItems": True,
               "description": "When present, indicates that modifications should not be persisted."}

        def op(action: str, verb: str, params: list, responses: dict, consumes: list | None = None) -> dict:
            o = {"operationId": f"{verb}MetallbIoV1beta1Namespaced{kind}", "description": f"{verb} {kind}",
                 "parameters": params, "produces": ["application/json", "application/yaml"],
                 "responses": responses, "schemes": ["https"], "tags": ["metallbIo_v1beta1"],
                 "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
            if consumes:
                o["consumes"] = consumes
            return o
        list_ref = {"$ref": f"#/definitions/io.metallb.v1beta1.{kind}List"}
        out[f"/apis/metallb.io/v1beta1/namespaces/{{namespace}}/{plural}"] = {
            "get": op("list", "list", [], {"200": {"description": "OK", "schema": list_ref}}),
            "post": op("post", "create", [body, dry, fv], dict(ok, **{"201": ok["200"]}), ["*/*"]),
            "delete": op("deletecollection", "deletecollection", [], ok),
            "parameters": [{"$ref": "#/parameters/namespace-vgWSWtn3"}],
        }
        out[f"/apis/metallb.io/v1beta1/namespaces/{{namespace}}/{plural}/{{name}}"] = {
            "get": op("get", "read", [], ok),
            "put": op("put", "replace", [body, dry, fv], dict(ok, **{"201": ok["200"]}), ["*/*"]),
            "patch": op("patch", "patch", [{"in": "body", "name": "body", "required": True,
                                             "schema": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}},
                                            dry, fv],
                        ok, ["application/json-patch+json", "application/merge-patch+json",
                             "application/apply-patch+yaml"]),
            "delete": op("delete", "delete", [], ok),
            "parameters": [{"in": "path", "name": "name", "required": True, "type": "string",
                            "uniqueItems": True, "description": f"name of the {kind}"},
                           {"$ref": "#/parameters/namespace-vgWSWtn3"}],
        }
        out[f"/apis/metallb.io/v1beta1/{plural}"] = {
            "get": op("list", "list", [], {"200": {"description": "OK", "schema": list_ref}})}
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    swagger = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1]) if len(argv) > 1 else DATA_FILE
    trimmed = trim(swagger)
    if "namespace-vgWSWtn3" not in trimmed["parameters"]:  # MetalLB's paths share upstream's
        raise SystemExit("upstream's parameters have no namespace-vgWSWtn3")
    size = datafile.write(out, trimmed)
    print(f"{out}: {len(trimmed['paths'])} paths, {len(trimmed['definitions'])} definitions, "
          f"{size} bytes JSON, {out.stat().st_size} gzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
