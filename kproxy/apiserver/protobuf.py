"""Request bodies in Kubernetes' protobuf encoding, decoded to the JSON objects the rest of the
server handles.

Why: kubectl's typed clients (`kubectl create deployment`, `create service ...`, `create
namespace`) send `Content-Type: application/vnd.kubernetes.protobuf` whatever the server
advertises (they accept JSON answers, so answers stay JSON). There is no maintained Python
package with Kubernetes' generated protobuf schemas, so the wire format (varints, length-
delimited fields) is read here against a table of the messages those commands send: field
numbers from k8s.io/api's and k8s.io/apimachinery's generated.proto (stable across releases:
protobuf field numbers never change). A field not in the table is skipped, never guessed.

The envelope (runtime.Unknown after the 4-byte magic `k8s\\0`): typeMeta (apiVersion, kind),
raw (the object's own message), contentEncoding, contentType. gogo-protobuf writes every
non-pointer field, zero or not, so zero scalars ("" / 0 / false) are dropped as Go's JSON
`omitempty` drops them, except the pointer fields where a zero means something (`replicas: 0`).
"""
from __future__ import annotations

import datetime

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


class ProtobufError(ValueError):
    pass


S, I32, I64, B, BYTES = "string", "int32", "int64", "bool", "bytes"
MAP = "map"          # map<string, string>
QMAP = "qmap"        # map<string, Quantity>
KEEP_ZERO = {"replicas", "minReadySeconds", "terminationGracePeriodSeconds", "revisionHistoryLimit"}

# message -> {field number: (json name, type or message, repeated)}
SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", BYTES, False), 3: ("contentEncoding", S, False),
                4: ("contentType", S, False)},
    "TypeMeta": {1: ("apiVersion", S, False), 2: ("kind", S, False)},
    "ObjectMeta": {1: ("name", S, False), 2: ("generateName", S, False), 3: ("namespace", S, False),
                   5: ("uid", S, False), 6: ("resourceVersion", S, False), 7: ("generation", I64, False),
                   8: ("creationTimestamp", "Time", False), 11: ("labels", MAP, False),
                   12: ("annotations", MAP, False), 13: ("ownerReferences", "OwnerReference", True),
                   14: ("finalizers", S, True)},
    "OwnerReference": {1: ("kind", S, False), 3: ("name", S, False), 4: ("uid", S, False),
                       5: ("apiVersion", S, False), 6: ("controller", B, False),
                       7: ("blockOwnerDeletion", B, False)},
    "LabelSelector": {1: ("matchLabels", MAP, False), 2: ("matchExpressions", "LabelSelectorRequirement", True)},
    "LabelSelectorRequirement": {1: ("key", S, False), 2: ("operator", S, False), 3: ("values", S, True)},
    # core/v1
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False),
                  3: ("status", "NamespaceStatus", False)},
    "NamespaceSpec": {1: ("finalizers", S, True)},
    "NamespaceStatus": {1: ("phase", S, False)},
    "Service": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "ServiceSpec", False),
                3: ("status", "ServiceStatus", False)},
    "ServiceSpec": {1: ("ports", "ServicePort", True), 2: ("selector", MAP, False), 3: ("clusterIP", S, False),
                    4: ("type", S, False), 5: ("externalIPs", S, True), 7: ("sessionAffinity", S, False),
                    8: ("loadBalancerIP", S, False), 9: ("loadBalancerSourceRanges", S, True),
                    10: ("externalName", S, False), 11: ("externalTrafficPolicy", S, False),
                    12: ("healthCheckNodePort", I32, False), 13: ("publishNotReadyAddresses", B, False),
                    17: ("ipFamilyPolicy", S, False), 18: ("clusterIPs", S, True), 19: ("ipFamilies", S, True),
                    20: ("allocateLoadBalancerNodePorts", B, False), 21: ("loadBalancerClass", S, False),
                    22: ("internalTrafficPolicy", S, False)},
    "ServicePort": {1: ("name", S, False), 2: ("protocol", S, False), 3: ("port", I32, False),
                    4: ("targetPort", "IntOrString", False), 5: ("nodePort", I32, False),
                    6: ("appProtocol", S, False)},
    "ServiceStatus": {},
    "Pod": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "PodSpec", False)},
    "PodSpec": {2: ("containers", "Container", True), 3: ("restartPolicy", S, False),
                4: ("terminationGracePeriodSeconds", I64, False), 6: ("dnsPolicy", S, False),
                7: ("nodeSelector", MAP, False), 8: ("serviceAccountName", S, False), 10: ("nodeName", S, False),
                16: ("hostname", S, False), 17: ("subdomain", S, False), 19: ("schedulerName", S, False),
                20: ("initContainers", "Container", True)},
    "Container": {1: ("name", S, False), 2: ("image", S, False), 3: ("command", S, True), 4: ("args", S, True),
                  5: ("workingDir", S, False), 6: ("ports", "ContainerPort", True), 7: ("env", "EnvVar", True),
                  8: ("resources", "ResourceRequirements", False), 13: ("terminationMessagePath", S, False),
                  14: ("imagePullPolicy", S, False), 16: ("stdin", B, False), 17: ("stdinOnce", B, False),
                  18: ("tty", B, False), 20: ("terminationMessagePolicy", S, False)},
    "ContainerPort": {1: ("name", S, False), 2: ("hostPort", I32, False), 3: ("containerPort", I32, False),
                      4: ("protocol", S, False), 5: ("hostIP", S, False)},
    "EnvVar": {1: ("name", S, False), 2: ("value", S, False)},
    "ResourceRequirements": {1: ("limits", QMAP, False), 2: ("requests", QMAP, False)},
    # apps/v1
    "Deployment": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "DeploymentSpec", False),
                   3: ("status", "DeploymentStatus", False)},
    "DeploymentSpec": {1: ("replicas", I32, False), 2: ("selector", "LabelSelector", False),
                       3: ("template", "PodTemplateSpec", False), 4: ("strategy", "DeploymentStrategy", False),
                       5: ("minReadySeconds", I32, False), 6: ("revisionHistoryLimit", I32, False),
                       7: ("paused", B, False), 9: ("progressDeadlineSeconds", I32, False)},
    "DeploymentStrategy": {1: ("type", S, False), 2: ("rollingUpdate", "RollingUpdateDeployment", False)},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "IntOrString", False), 2: ("maxSurge", "IntOrString", False)},
    "DeploymentStatus": {},
    # autoscaling/v1
    "Scale": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "ScaleSpec", False)},
    "ScaleSpec": {1: ("replicas", I32, False)},
}
ROOTS = {"Namespace", "Service", "Pod", "Deployment", "Scale"}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProtobufError("a truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(data: bytes):
    """(field number, wire type, value) of one message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            if i + n > len(data):
                raise ProtobufError("a truncated field")
            value, i = data[i:i + n], i + n
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ProtobufError(f"an unsupported wire type {wire}")
        yield num, wire, value


def _scalar(kind: str, wire: int, value):
    if kind in (S,):
        return value.decode("utf-8")
    if kind == BYTES:
        return value
    if wire != 0:
        raise ProtobufError(f"a {kind} field that is not a varint")
    if kind == B:
        return bool(value)
    if kind == I32:
        return value - (1 << 64) if value >= 1 << 63 else value  # negative int32s are 10-byte varints
    return value - (1 << 64) if value >= 1 << 63 else value


def _special(kind: str, data: bytes):
    if kind == "Time":
        secs = next((v for n, w, v in fields(data) if n == 1 and w == 0), 0)
        if not secs:
            return None
        return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "IntOrString":
        parts = {n: v for n, _, v in fields(data)}
        return parts.get(3, b"").decode() if parts.get(1) == 1 else _scalar(I32, 0, parts.get(2, 0))
    if kind == "Quantity":
        return next((v.decode() for n, _, v in fields(data) if n == 1), "")
    raise KeyError(kind)


def message(name: str, data: bytes, depth: int = 0) -> dict:
    """One message of SCHEMA as a JSON-shaped dict."""
    if depth > 32:
        raise ProtobufError("nested too deeply")
    schema = SCHEMA[name]
    out: dict = {}
    for num, wire, value in fields(data):
        spec = schema.get(num)
        if spec is None:
            continue  # a field kubectl's create commands do not set: skipped
        key, kind, repeated = spec
        if kind in (MAP, QMAP):
            entry = {n: v for n, _, v in fields(value)}
            k = entry.get(1, b"").decode()
            v = entry.get(2, b"")
            out.setdefault(key, {})[k] = _special("Quantity", v) if kind == QMAP else v.decode()
            continue
        if kind in ("Time", "IntOrString", "Quantity"):
            item = _special(kind, value)
        elif kind in SCHEMA:
            item = message(kind, value, depth + 1)
        else:
            item = _scalar(kind, wire, value)
        if repeated:
            out.setdefault(key, []).append(item)
        elif item is None or (item in ("", 0, False) and not isinstance(item, dict) and key not in KEEP_ZERO):
            continue  # omitempty
        else:
            out[key] = item
    return out


def decode(body: bytes) -> dict:
    """A protobuf request body (the `k8s\\0` envelope) as the object's JSON form."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s magic)")
    env = message("Unknown", body[len(MAGIC):])
    tm = env.get("typeMeta") or {}
    kind = tm.get("kind", "")
    if kind not in ROOTS:
        raise ProtobufError(f"kind {kind!r} in protobuf is not decoded by this server; send JSON")
    obj = {"apiVersion": tm.get("apiVersion", ""), "kind": kind}
    obj.update(message(kind, env.get("raw", b"")))
    return obj
