"""Protobuf request bodies (kproxy.apiserver.protobuf) read as the JSON the same Go value marshals to.

The two captured bodies are what kubectl 1.32 POSTed (`kubectl create deployment hello --image=nginx
--replicas=0 --port=8080`, `kubectl create service nodeport s2 --tcp=80:8080 --node-port=30001`);
the expected JSON is what the same kubectl prints for the same command with --dry-run=client -o json
(less the zero creationTimestamp, which the decoder leaves out).
"""

import pytest

from kproxy.apiserver import protobuf

DEPLOYMENT = bytes.fromhex(
    "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c1010a230a0568656c6c6f12001a0022002a0032"
    "00380042005a0c0a03617070120568656c6c6f128b010800120e0a0c0a03617070120568656c6c6f1a6f0a1e0a001200"
    "1a0022002a003200380042005a0c0a03617070120568656c6c6f124d122f0a056e67696e7812056e67696e782a00320b"
    "0a00100018903f22002a0042006a007200800100880100900100a201001a00320042004a005200580060006800820100"
    "8a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200")
SERVICE = bytes.fromhex(
    "6b3873000a0d0a02763112075365727669636512670a1d0a02733212001a0022002a003200380042005a090a03617070"
    "1202733212420a1d0a0738302d38303830120354435018502207080010903f1a0028b1ea0112090a0361707012027332"
    "1a0022084e6f6465506f72743a00420052005a00600068001a020a001a002200")


def test_kubectl_create_deployment_body():
    assert protobuf.decode(DEPLOYMENT) == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "labels": {"app": "hello"}},
        "spec": {"replicas": 0,  # a pointer: kept although zero
                 "selector": {"matchLabels": {"app": "hello"}},
                 "template": {"metadata": {"labels": {"app": "hello"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx",
                                                       "ports": [{"containerPort": 8080}], "resources": {}}]}},
                 "strategy": {}},
        "status": {}}


def test_kubectl_create_service_body():
    svc = protobuf.decode(SERVICE)
    assert svc["spec"] == {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080,
                                      "nodePort": 30001}],
                           "selector": {"app": "s2"}, "type": "NodePort"}
    assert svc["metadata"] == {"name": "s2", "labels": {"app": "s2"}}


# -- a tiny encoder for the cases kubectl's create commands do not produce ----------------------
def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _f(number, value):
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _obj(api_version, kind, raw):
    return protobuf.MAGIC + _f(1, _f(1, api_version) + _f(2, kind)) + _f(2, raw)


def test_special_types_inline_structs_and_negative_numbers():
    probe = _f(1, _f(2, _f(1, "/healthz") + _f(2, _f(1, 1) + _f(3, "http"))))  # handler.httpGet inline
    probe += _f(3, 5)
    container = (_f(1, "c") + _f(2, "img") + _f(11, probe)
                 + _f(8, _f(1, _f(1, "cpu") + _f(2, _f(1, "100m")))))  # resources.limits
    security = _f(2, -1)  # PodSecurityContext.runAsUser = -1 (a pointer)
    spec = _f(2, container) + _f(4, 0) + _f(14, security)  # terminationGracePeriodSeconds 0
    meta = _f(1, "p") + _f(9, _f(1, 1700000000) + _f(2, 5))  # deletionTimestamp
    pod = protobuf.decode(_obj("v1", "Pod", _f(1, meta) + _f(2, spec)))
    assert pod["metadata"] == {"name": "p", "deletionTimestamp": "2023-11-14T22:13:20Z"}
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 5}
    assert c["resources"] == {"limits": {"cpu": "100m"}}
    assert pod["spec"]["terminationGracePeriodSeconds"] == 0
    assert pod["spec"]["securityContext"] == {"runAsUser": -1}


def test_events_micro_time_and_unknown_fields_are_dropped():
    raw = _f(1, _f(1, "e")) + _f(2, _f(1, 1700000000) + _f(2, 123456000)) + _f(99, "future field")
    ev = protobuf.decode(_obj("events.k8s.io/v1", "Event", raw))
    assert ev["eventTime"] == "2023-11-14T22:13:20.123456Z"
    assert "future field" not in str(ev)


@pytest.mark.parametrize("body,words", [
    (b'{"kind": "Service"}', "prefix"),
    (protobuf.MAGIC + b"\x0a\x09\x0a\x01v", "truncated"),
    (_obj("batch/v1", "Job", b""), 'no kind "Job" is registered for version "batch/v1"'),
    (_obj("v1", "Service", b"\x0a\xff\xff\xff\xff\x0f"), "truncated"),
    (_obj("v1", "Service", b"\x0a\x02\xff\xfe"), "truncated"),
])
def test_bad_bodies_are_refused_by_name(body, words):
    with pytest.raises(protobuf.ProtobufError, match=words):
        protobuf.decode(body)


def test_go_duration_strings():
    assert [protobuf.go_duration(n) for n in (0, 1_500_000_000, 90 * 10**9, 3_600 * 10**9 + 1, 2_000_000)] == [
        "0s", "1.5s", "1m30s", "1h0m0.000000001s", "2ms"]
    assert protobuf.is_protobuf("application/vnd.kubernetes.protobuf; charset=utf-8")
    assert not protobuf.is_protobuf("application/json")
