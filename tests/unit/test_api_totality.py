"""Defaulting and validation are total: any JSON-compatible object gives errors, never an exception.

A fuzz-ish sweep: every field of a full object of each kind is replaced by a
value of every JSON type (and removed), then defaulted and validated as the
daemon does (apply_defaults, then validate). No exception may escape, and no
"Internal error" (the safety net in validate) may be needed.
"""

import copy

import pytest

from kproxy.api import errors
from kproxy.api.defaults import apply_defaults
from kproxy.api.admission import INTERNAL, Admission
from kproxy.api.validation import validate

CONTAINER = {"name": "c", "image": "busybox", "command": ["sleep", "1"], "args": ["x"],
             "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP", "hostPort": 8080}],
             "env": [{"name": "A", "value": "b"}], "resources": {"limits": {"cpu": "1"}},
             "readinessProbe": {"httpGet": {"path": "/", "port": 80, "httpHeaders": [{"name": "X", "value": "y"}]},
                                "periodSeconds": 1},
             "livenessProbe": {"tcpSocket": {"port": "http"}}, "startupProbe": {"exec": {"command": ["true"]}},
             "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
             "securityContext": {"runAsUser": 65534, "runAsNonRoot": True}}
POD_SPEC = {"containers": [CONTAINER], "initContainers": [dict(CONTAINER, name="i", restartPolicy="Always")],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 5,
            "nodeSelector": {"a": "b"}, "hostNetwork": False, "securityContext": {"runAsGroup": 1}}
META = {"name": "x", "namespace": "default", "labels": {"app": "x"}, "annotations": {"a": "b"}}
OBJECTS = [
    {"apiVersion": "v1", "kind": "Service", "metadata": META, "spec": {
        "type": "LoadBalancer", "selector": {"app": "x"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "a", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"},
                  {"name": "b", "port": 81, "targetPort": 81}],
        "externalIPs": ["192.0.2.1"], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}, "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 30500, "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "loadBalancerSourceRanges": ["10.0.0.0/8"], "allocateLoadBalancerNodePorts": True,
        "internalTrafficPolicy": "Cluster"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": META, "spec": {"type": "ExternalName",
                                                                       "externalName": "a.example.com"}},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": META, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "x"},
                                    "matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
        "template": {"metadata": {"labels": {"app": "x"}}, "spec": POD_SPEC},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
        "minReadySeconds": 1, "revisionHistoryLimit": 3, "progressDeadlineSeconds": 60}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": META, "spec": POD_SPEC},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": META, "subsets": [{
        "addresses": [{"ip": "10.0.0.1", "hostname": "h", "nodeName": "n"}], "notReadyAddresses": [{"ip": "10.0.0.2"}],
        "ports": [{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "b", "port": 81}]}]},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": META, "addressType": "IPv4",
     "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "hostname": "h", "nodeName": "n"}],
     "ports": [{"name": "a", "port": 80, "protocol": "TCP", "appProtocol": "http"}]},
    {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": META,
     "spec": {"addresses": ["192.0.2.0/28"], "autoAssign": True}},
    {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": META,
     "spec": {"ipAddressPools": ["x"], "nodeSelectors": [{"matchLabels": {"a": "b"}}]}},
]
SUBSTITUTES = [None, 0, -1, 80, 2 ** 40, 2 ** 63 - 1, 1.5, True, False, "", "80", "x" * 300, "10.96.0.010",
               [], [80], ["a"], [None], [[1]], {}, {"a": 1}, {"": None}]


def paths(value, prefix=()):
    """Every path to a node of ``value`` (keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths(item, prefix + (i,))


def replaced(obj, path, value, delete=False):
    out = copy.deepcopy(obj)
    if not path:
        return value
    node = out
    for part in path[:-1]:
        node = node[part]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


GATE = Admission(service_cidr="10.96.0.0/12")


def run(obj, old=None):
    """Validation, and the admission gate on create and as an update of ``old``: errors, never
    an exception nor an internal error."""
    errs = validate(apply_defaults(obj), service_cidr="10.96.0.0/12")
    assert all(e.type != errors.INTERNAL for e in errs), [str(e) for e in errs]
    for verdict in (GATE.admit(obj), GATE.admit(obj, old=old) if old is not None else None):
        if verdict is not None:
            assert verdict.reason != INTERNAL and "Internal error" not in (verdict.message or ""), verdict
    return errs


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o["kind"] + "/" + str(o.get("spec", {}).get("type", "")))
def test_every_field_of_every_type_gives_errors_not_exceptions(obj):
    run(obj)
    admitted = apply_defaults(obj)
    for path in list(paths(obj)):
        if path[:1] in (("apiVersion",), ("kind",)):
            continue
        for value in SUBSTITUTES:
            run(replaced(obj, path, value), old=admitted)
        run(replaced(obj, path, None, delete=True), old=admitted)


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: o["kind"])
def test_defaulted_objects_with_wrong_types_are_still_validated_totally(obj):
    """The daemon validates defaulted objects: substitute after defaulting too."""
    defaulted = apply_defaults(obj)
    for path in list(paths(defaulted)):
        if path[:1] in (("apiVersion",), ("kind",)):
            continue
        for value in (None, "80", [80], {"a": 1}, True, 2 ** 40):
            errs = validate(replaced(defaulted, path, value))
            assert all(e.type != errors.INTERNAL for e in errs), (path, value, [str(e) for e in errs])


def test_wrong_types_are_reported_at_their_field_alone():
    svc = copy.deepcopy(OBJECTS[0])
    svc["spec"]["ports"][0]["port"] = "80"
    assert [str(e) for e in validate(apply_defaults(svc))] == [
        'spec.ports[0].port: Invalid value: "80": must be of type integer']
    svc["spec"]["ports"][0]["port"] = [80]
    assert [str(e) for e in validate(apply_defaults(svc))] == [
        'spec.ports[0].port: Invalid value: []string{"80"}: must be of type integer']
