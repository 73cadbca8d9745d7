"""Strategic merge patch metadata of the kinds kproxy serves: upstream's struct tags as data.

A strategic merge patch needs, for every list it meets, the list's patch strategy (merge or
replace) and its merge key; the API server reads them from the Go struct tags
(`patchStrategy:"merge" patchMergeKey:"name"`). These tables copy exactly those tags from
k8s.io/api core/v1, apps/v1 types.go and k8s.io/apimachinery meta/v1 types.go (read at
kubernetes/api 10b39a39, apimachinery HEAD of the same day), only for the fields of the kinds a
lab serves. A field that is not listed behaves as an untagged Go field: maps merge key by key,
lists are replaced whole — which is also what upstream does for every untagged list
(Service externalIPs, EndpointSlice endpoints, Pod tolerations, ...).

The lists are kept as nested dicts so strategicpatch.py can walk them like upstream's
LookupPatchMeta: `Field.sub` is the schema of the field's value (for a list: of its items).
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    """One struct field's patch metadata: `strategies` as in the tag ("merge", "retainKeys",
    "replace"), `merge_key` for lists of objects, `sub` the value's (or list item's) schema."""

    strategies: tuple[str, ...] = ()
    merge_key: str = ""
    sub: dict = {}
    list_map_keys: tuple[str, ...] = ()  # server-side apply's keys when they differ from merge_key


# ports are merged by port number alone, but server-side apply keys them with their protocol
# (+listMapKey=containerPort +listMapKey=protocol; Service: port, protocol), TCP by default.
PROTOCOL_DEFAULTS = {"protocol": "TCP"}


Schema = dict  # field name -> Field

UNKNOWN = Field()


def merge(key: str = "", sub: Schema | None = None, retain_keys: bool = False) -> Field:
    return Field(("merge", "retainKeys") if retain_keys else ("merge",), key, {} if sub is None else sub)


def struct(sub: Schema, *strategies: str) -> Field:
    return Field(tuple(strategies), "", sub)


# ------------------------------------------------------------------ meta/v1
OBJECT_META: Schema = {
    "ownerReferences": merge("uid"),      # patchStrategy:"merge" patchMergeKey:"uid"
    "finalizers": merge(),                # patchStrategy:"merge" (a list of strings)
}
CONDITIONS = merge("type")                # every status.conditions of the served kinds

# ------------------------------------------------------------------ core/v1
CONTAINER: Schema = {
    "ports": merge("containerPort")._replace(list_map_keys=("containerPort", "protocol")),
    "env": merge("name"),
    "volumeMounts": merge("mountPath"),
    "volumeDevices": merge("devicePath"),
}
CONTAINER_STATUS: Schema = {
    "volumeMounts": merge("mountPath"),
    "allocatedResourcesStatus": merge("name"),
}
POD_SPEC: Schema = {
    "volumes": merge("name", retain_keys=True),
    "initContainers": merge("name", CONTAINER),
    "containers": merge("name", CONTAINER),
    "ephemeralContainers": merge("name", CONTAINER),
    "imagePullSecrets": merge("name"),
    "hostAliases": merge("ip"),
    "topologySpreadConstraints": merge("topologyKey"),
    "schedulingGates": merge("name"),
    "resourceClaims": merge("name", retain_keys=True),
    "evictionResponders": merge("name"),
}
POD_STATUS: Schema = {
    "conditions": CONDITIONS,
    "hostIPs": merge("ip"),
    "podIPs": merge("ip"),
    "resourceClaimStatuses": merge("name", retain_keys=True),
    # untagged lists (replaced whole) whose items still carry tags; kept for completeness
    "containerStatuses": Field((), "", CONTAINER_STATUS),
    "initContainerStatuses": Field((), "", CONTAINER_STATUS),
}
POD_TEMPLATE: Schema = {"metadata": struct(OBJECT_META), "spec": struct(POD_SPEC)}


def _object(spec: Schema | None = None, status: Schema | None = None, **top: Field) -> Schema:
    out: Schema = {"metadata": struct(OBJECT_META)}
    if spec is not None:
        out["spec"] = struct(spec)
    if status is not None:
        out["status"] = struct(status)
    out.update(top)
    return out


KIND_SCHEMAS: dict[str, Schema] = {
    "Pod": _object(POD_SPEC, POD_STATUS),
    "Service": _object({"ports": merge("port")._replace(list_map_keys=("port", "protocol"))},
                       {"conditions": CONDITIONS}),
    "Endpoints": _object(),
    "Namespace": _object({}, {"conditions": CONDITIONS}),
    "Node": _object({"podCIDRs": merge()}, {"conditions": CONDITIONS, "addresses": merge("type")}),
    "Event": _object(),
    "PodTemplate": _object(template=struct(POD_TEMPLATE)),
    # ------------------------------------------------------------ apps/v1
    "Deployment": _object({"template": struct(POD_TEMPLATE), "strategy": struct({}, "retainKeys")},
                          {"conditions": CONDITIONS}),
    "ReplicaSet": _object({"template": struct(POD_TEMPLATE)}, {"conditions": CONDITIONS}),
    # ------------------------------------------------------------ no tagged lists at all
    "EndpointSlice": _object(),
    "Lease": _object(),
    "Scale": _object(),  # autoscaling/v1, the deployments/scale subresource
}

# Kinds the API server serves from CustomResourceDefinitions (MetalLB's): no Go struct, so no
# strategic merge patch (upstream answers 415 with the CRD handler's accepted types).
CUSTOM_KINDS = frozenset({"IPAddressPool", "L2Advertisement", "BGPAdvertisement", "BGPPeer", "Community",
                          "BFDProfile"})


def schema_for(kind: str) -> Schema | None:
    """The kind's schema, {} for a built-in kind without tagged lists we know of, None for a
    custom resource (strategic merge patch refused)."""
    if kind in CUSTOM_KINDS:
        return None
    return KIND_SCHEMAS.get(kind, {})
