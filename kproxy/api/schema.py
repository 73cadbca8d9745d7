"""The types of the fields kproxy reads, checked before defaulting and validation.

The API server decodes JSON into Go structs before it defaults or validates
anything, so a wrong type (``port: "80"``, ``port: [80]``, ``replicas: "3"``,
a list where a map belongs) is refused first and alone, at its field path.
kproxy keeps objects as plain dicts, so this module plays the decoder: every
later step (defaults, validation, the controllers, the proxier) may then rely
on the types below, and ``type_errors`` is a total function over any
JSON-compatible value (see :mod:`kproxy.api.safeload`).

Unknown fields are ignored, as the decoder drops them. ``None`` (JSON null)
is accepted everywhere, as Go decodes it to the zero value.
"""

from __future__ import annotations

from typing import Any

from kproxy.api.errors import FieldError, type_invalid

MAX_ERRORS = 20  # a hostile object gets this many type errors, not one per bad node

# Leaf types.
STR, BOOL, I32, I64, INT_OR_STR, QUANTITY, OBJECT, LIST = (
    "string", "boolean", "int32", "int64", "intorstring", "quantity", "object", "array")
_RANGES = {I32: (-(2 ** 31), 2 ** 31 - 1), I64: (-(2 ** 63), 2 ** 63 - 1)}


class MapOf:
    """map[string]T."""

    def __init__(self, item: Any):
        self.item = item


class ListOf:
    """[]T."""

    def __init__(self, item: Any):
        self.item = item


STRINGS = ListOf(STR)
STRING_MAP = MapOf(STR)

OBJECT_META = {
    "name": STR, "generateName": STR, "namespace": STR, "uid": STR, "resourceVersion": STR,
    "generation": I64, "creationTimestamp": STR, "deletionTimestamp": STR, "labels": STRING_MAP,
    "annotations": STRING_MAP, "finalizers": STRINGS, "ownerReferences": ListOf(OBJECT),
    "managedFields": ListOf(OBJECT),
}
LABEL_SELECTOR = {
    "matchLabels": STRING_MAP,
    "matchExpressions": ListOf({"key": STR, "operator": STR, "values": STRINGS}),
}
_HANDLER = {
    "exec": {"command": STRINGS},
    "httpGet": {"path": STR, "port": INT_OR_STR, "host": STR, "scheme": STR,
                "httpHeaders": ListOf({"name": STR, "value": STR})},
    "tcpSocket": {"port": INT_OR_STR, "host": STR},
    "sleep": {"seconds": I64},
}
PROBE = dict(_HANDLER, grpc={"port": I32, "service": STR}, initialDelaySeconds=I32, timeoutSeconds=I32,
             periodSeconds=I32, successThreshold=I32, failureThreshold=I32, terminationGracePeriodSeconds=I64)
SECURITY_CONTEXT = {"runAsUser": I64, "runAsGroup": I64, "runAsNonRoot": BOOL, "privileged": BOOL,
                    "readOnlyRootFilesystem": BOOL, "allowPrivilegeEscalation": BOOL, "fsGroup": I64,
                    "supplementalGroups": ListOf(I64), "capabilities": {"add": STRINGS, "drop": STRINGS}}
CONTAINER = {
    "name": STR, "image": STR, "command": STRINGS, "args": STRINGS, "workingDir": STR,
    "ports": ListOf({"name": STR, "hostPort": I32, "containerPort": I32, "protocol": STR, "hostIP": STR}),
    "env": ListOf({"name": STR, "value": STR, "valueFrom": OBJECT}),
    "envFrom": ListOf(OBJECT),
    "resources": {"limits": MapOf(QUANTITY), "requests": MapOf(QUANTITY)},
    "livenessProbe": PROBE, "readinessProbe": PROBE, "startupProbe": PROBE,
    "lifecycle": {"postStart": _HANDLER, "preStop": _HANDLER},
    "terminationMessagePath": STR, "terminationMessagePolicy": STR, "imagePullPolicy": STR,
    "securityContext": SECURITY_CONTEXT, "stdin": BOOL, "stdinOnce": BOOL, "tty": BOOL, "restartPolicy": STR,
    "volumeMounts": ListOf({"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR}),
}
POD_SPEC = {
    "containers": ListOf(CONTAINER), "initContainers": ListOf(CONTAINER), "restartPolicy": STR,
    "terminationGracePeriodSeconds": I64, "activeDeadlineSeconds": I64, "dnsPolicy": STR,
    "nodeSelector": STRING_MAP, "serviceAccountName": STR, "serviceAccount": STR, "nodeName": STR,
    "hostNetwork": BOOL, "hostPID": BOOL, "hostIPC": BOOL, "hostname": STR, "subdomain": STR,
    "schedulerName": STR, "securityContext": SECURITY_CONTEXT, "enableServiceLinks": BOOL,
    "priority": I32, "priorityClassName": STR, "setHostnameAsFQDN": BOOL,
    "dnsConfig": {"nameservers": STRINGS, "searches": STRINGS, "options": ListOf({"name": STR, "value": STR})},
    "readinessGates": ListOf({"conditionType": STR}), "tolerations": ListOf(OBJECT), "affinity": OBJECT,
    "volumes": ListOf(OBJECT), "hostAliases": ListOf({"ip": STR, "hostnames": STRINGS}),
}
POD_TEMPLATE = {"metadata": OBJECT_META, "spec": POD_SPEC}
SERVICE_SPEC = {
    "ports": ListOf({"name": STR, "protocol": STR, "appProtocol": STR, "port": I32, "targetPort": INT_OR_STR,
                     "nodePort": I32}),
    "selector": STRING_MAP, "clusterIP": STR, "clusterIPs": STRINGS, "type": STR, "externalIPs": STRINGS,
    "sessionAffinity": STR, "loadBalancerIP": STR, "loadBalancerSourceRanges": STRINGS, "externalName": STR,
    "externalTrafficPolicy": STR, "healthCheckNodePort": I32, "publishNotReadyAddresses": BOOL,
    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": I32}}, "ipFamilies": STRINGS,
    "ipFamilyPolicy": STR, "allocateLoadBalancerNodePorts": BOOL, "loadBalancerClass": STR,
    "internalTrafficPolicy": STR, "trafficDistribution": STR,
}
LOAD_BALANCER_STATUS = {"ingress": ListOf({"ip": STR, "hostname": STR, "ipMode": STR, "ports": ListOf(OBJECT)})}
OBJECT_REFERENCE = {"kind": STR, "namespace": STR, "name": STR, "uid": STR, "apiVersion": STR,
                    "resourceVersion": STR, "fieldPath": STR}
ENDPOINT_ADDRESS = {"ip": STR, "hostname": STR, "nodeName": STR, "targetRef": OBJECT_REFERENCE}

_COMMON = {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META}
KIND_SCHEMAS: dict[str, dict] = {
    "Service": dict(_COMMON, spec=SERVICE_SPEC, status={"loadBalancer": LOAD_BALANCER_STATUS}),
    "Pod": dict(_COMMON, spec=POD_SPEC, status=OBJECT),
    "Deployment": dict(_COMMON, spec={
        "replicas": I32, "selector": LABEL_SELECTOR, "template": POD_TEMPLATE,
        "strategy": {"type": STR, "rollingUpdate": {"maxUnavailable": INT_OR_STR, "maxSurge": INT_OR_STR}},
        "minReadySeconds": I32, "revisionHistoryLimit": I32, "paused": BOOL, "progressDeadlineSeconds": I32,
    }, status=OBJECT),
    "Endpoints": dict(_COMMON, subsets=ListOf({
        "addresses": ListOf(ENDPOINT_ADDRESS), "notReadyAddresses": ListOf(ENDPOINT_ADDRESS),
        "ports": ListOf({"name": STR, "port": I32, "protocol": STR, "appProtocol": STR}),
    })),
    "EndpointSlice": dict(_COMMON, addressType=STR, endpoints=ListOf({
        "addresses": STRINGS, "conditions": {"ready": BOOL, "serving": BOOL, "terminating": BOOL},
        "hostname": STR, "targetRef": OBJECT_REFERENCE, "nodeName": STR, "zone": STR, "hints": OBJECT,
    }), ports=ListOf({"name": STR, "protocol": STR, "port": I32, "appProtocol": STR})),
    "Namespace": dict(_COMMON, spec={"finalizers": STRINGS}, status={"phase": STR}),
    "Node": dict(_COMMON, spec=OBJECT, status=OBJECT),
    "IPAddressPool": dict(_COMMON, spec={"addresses": STRINGS, "autoAssign": BOOL, "avoidBuggyIPs": BOOL,
                                         "serviceAllocation": OBJECT}),
    "L2Advertisement": dict(_COMMON, spec={"ipAddressPools": STRINGS, "ipAddressPoolSelectors": ListOf(LABEL_SELECTOR),
                                           "nodeSelectors": ListOf(LABEL_SELECTOR), "interfaces": STRINGS}),
}


def type_errors(obj: Any) -> list[FieldError]:
    """Fields of ``obj`` whose JSON type does not decode into the API type, as field errors.

    ``spec.ports[0].port: Invalid value: "80": must be of type integer``. Kinds
    without a schema only get their apiVersion, kind and metadata checked.
    """
    if not isinstance(obj, dict):
        return [type_invalid("", obj, "must be of type object")]
    schema = KIND_SCHEMAS.get(obj.get("kind") if isinstance(obj.get("kind"), str) else "", _COMMON)
    errs: list[FieldError] = []
    _check(obj, schema, "", errs)
    return errs[:MAX_ERRORS]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(value: Any, schema: Any, path: str, errs: list[FieldError]) -> None:
    """Iterative walk: ``errs`` gets one error per badly typed field (bounded)."""
    stack = [(value, schema, path, True)]
    while stack and len(errs) < MAX_ERRORS:
        value, schema, path, nullable = stack.pop()
        if value is None and nullable:
            continue
        if value is None:  # a null list item or map value: refused rather than decoded to a zero value
            errs.append(type_invalid(path, value, f"must be of type {_type_name(schema)}"))
            continue
        if isinstance(schema, dict):
            if not isinstance(value, dict):
                errs.append(type_invalid(path, value, "must be of type object"))
                continue
            stack.extend((value[key], sub, _join(path, key), True) for key, sub in reversed(schema.items())
                         if key in value)
        elif isinstance(schema, ListOf):
            if not isinstance(value, list):
                errs.append(type_invalid(path, value, "must be of type array"))
                continue
            stack.extend((item, schema.item, f"{path}[{i}]", False) for i, item in reversed(list(enumerate(value))))
        elif isinstance(schema, MapOf):
            if not isinstance(value, dict):
                errs.append(type_invalid(path, value, "must be of type object"))
                continue
            stack.extend((item, schema.item, f"{path}[{key}]", False) for key, item in value.items())
        else:
            message = _leaf_error(value, schema)
            if message:
                errs.append(type_invalid(path, value, message))


def _type_name(schema: Any) -> str:
    if isinstance(schema, (dict, MapOf)):
        return "object"
    if isinstance(schema, ListOf):
        return "array"
    return {INT_OR_STR: "integer or string", I32: "integer", I64: "integer"}.get(schema, schema)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _leaf_error(value: Any, kind: str) -> str | None:
    if kind == STR:
        return None if isinstance(value, str) else "must be of type string"
    if kind == BOOL:
        return None if isinstance(value, bool) else "must be of type boolean"
    if kind in _RANGES:
        if not _is_int(value):
            return "must be of type integer"
        lo, hi = _RANGES[kind]
        return None if lo <= value <= hi else f"must fit in type {kind} ({lo} to {hi})"
    if kind == INT_OR_STR:
        if isinstance(value, str):
            return None
        if not _is_int(value):
            return "must be an integer or a string"
        lo, hi = _RANGES[I32]
        return None if lo <= value <= hi else f"must fit in type int32 ({lo} to {hi})"
    if kind == QUANTITY:
        ok = isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))
        return None if ok else "must be a quantity (a number or a string such as 100m or 1Gi)"
    if kind == OBJECT:
        return None if isinstance(value, dict) else "must be of type object"
    if kind == LIST:
        return None if isinstance(value, list) else "must be of type array"
    return None
