"""OpenAPI documents (kproxy.apiserver.openapi) and strict field validation / Invalid Status
(kproxy.apiserver.strict), against upstream v1.32's schema and the API server's wording."""

import json

from kproxy.api import errors
from kproxy.api.admission import Admission
from kproxy.apiserver import openapi, resources, strict


def _doc(group, version):
    return json.loads(openapi.v3_document(group, version))


def test_v3_index_lists_every_served_group_version_with_its_hash():
    index = openapi.v3_index()["paths"]
    assert set(index) == {"api/v1", "apis/apps/v1", "apis/events.k8s.io/v1", "apis/coordination.k8s.io/v1",
                          "apis/discovery.k8s.io/v1", "apis/metallb.io/v1beta1"}
    url = index["api/v1"]["serverRelativeURL"]
    assert url == "/openapi/v3/api/v1?hash=" + openapi.v3_hash(openapi.v3_document("", "v1"))
    assert len(url.split("=")[1]) == 128


def test_v3_service_ports_keep_upstream_patch_metadata():
    doc = _doc("", "v1")
    spec = doc["components"]["schemas"]["io.k8s.api.core.v1.ServiceSpec"]
    ports = spec["properties"]["ports"]
    assert ports["x-kubernetes-patch-merge-key"] == "port" and ports["x-kubernetes-patch-strategy"] == "merge"
    assert ports["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.ServicePort"}
    # a ref with a description beside it is wrapped in allOf, as kube-openapi writes v3
    affinity = spec["properties"]["sessionAffinityConfig"]
    assert affinity["allOf"] == [{"$ref": "#/components/schemas/io.k8s.api.core.v1.SessionAffinityConfig"}]
    containers = doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    svc = doc["components"]["schemas"]["io.k8s.api.core.v1.Service"]
    assert svc["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Service", "version": "v1"}]
    assert "#/definitions/" not in json.dumps(doc)


def test_v3_patch_operations_advertise_smp_and_field_validation():
    """What kubectl 1.32 looks for: the kind's PATCH op, its GVK, SMP in requestBody, fieldValidation."""
    for group, version in (("", "v1"), ("apps", "v1"), ("discovery.k8s.io", "v1"), ("metallb.io", "v1beta1")):
        doc = _doc(group, version)
        patched = {}
        for path, item in doc["paths"].items():
            op = item.get("patch")
            if op and "/{name}" in path and not path.split("{name}")[1]:
                gvk = op["x-kubernetes-group-version-kind"]
                patched[gvk["kind"]] = op
                names = {p["name"] for p in op.get("parameters", [])}
                assert "fieldValidation" in names, path
                assert op["requestBody"]["content"], path
        for r in resources.resources_in(group, version):
            if "patch" in r.verbs:
                assert r.kind in patched, (group, r.kind)
                smp = "application/strategic-merge-patch+json" in patched[r.kind]["requestBody"]["content"]
                assert smp == (group != "metallb.io")  # a CRD has no strategic merge patch


def test_v3_read_only_resources_have_no_write_operations():
    doc = _doc("apps", "v1")
    rs = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"]
    assert "get" in rs and not {"put", "patch", "delete"} & set(rs)
    assert "post" in doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]
    assert _doc("", "v1")["paths"].get("/api/v1/namespaces/{namespace}/configmaps") is None


def test_v2_document_is_upstream_swagger_trimmed():
    doc = json.loads(openapi.v2_document())
    assert doc["swagger"] == "2.0"
    assert "io.k8s.api.apps.v1.Deployment" in doc["definitions"]
    assert "io.k8s.api.batch.v1.Job" not in doc["definitions"]
    assert "v1.32" in openapi.data()["source"]


def test_unknown_fields_paths_as_the_decoder_words_them():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labelz": {}},
           "spec": {"selectr": {"app": "web"}, "ports": [{"port": 80}, {"port": 81, "nodeport": 3}]}}
    assert strict.unknown_fields("Service", svc) == ["metadata.labelz", "spec.selectr", "spec.ports[1].nodeport"]
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"any": "x"}},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i",
                                                          "imagePullPolcy": "Always"}]}}}}
    assert strict.unknown_fields("Deployment", dep) == ["spec.template.spec.containers[0].imagePullPolcy"]
    # the events.k8s.io Event has its own fields
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "note": "x",
          "eventTime": None}
    assert strict.unknown_fields("Event", ev) == []
    assert strict.unknown_fields("Event", dict(ev, apiVersion="v1")) == ["note"]
    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "p"},
            "spec": {"addresses": ["10.0.0.0/24"], "autoassign": False}}
    assert strict.unknown_fields("IPAddressPool", pool) == ["spec.autoassign"]
    assert strict.unknown_fields("ConfigMap", {"data": {}}) == []


def test_duplicate_fields_and_messages():
    body = b'{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","name":"b"},' \
           b'"spec":{"ports":[{"port":80,"port":81}]}}'
    assert strict.duplicate_fields(body) == ["metadata.name", "spec.ports[0].port"]
    assert strict.duplicate_fields(b"not json") == []
    obj = json.loads(body)
    found = strict.problems("Service", dict(obj, extra=1), body)
    assert found == ['unknown field "extra"', 'duplicate field "metadata.name"', 'duplicate field "spec.ports[0].port"']
    status = strict.strict_status("Service", "v1", ['unknown field "spec.foo"'])
    assert status["code"] == 400 and status["reason"] == "BadRequest"
    assert status["message"] == ('Service in version "v1" cannot be handled as a Service: '
                                 'strict decoding error: unknown field "spec.foo"')
    assert strict.strict_message("Service", "v1", ['unknown field "spec.foo"'], create=False) == \
        'strict decoding error: unknown field "spec.foo"'
    assert strict.warning_headers(['unknown field "spec.foo"']) == ['299 - "unknown field \\"spec.foo\\""']


def test_invalid_status_from_the_admission_gate():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 99999}]}}
    verdict = Admission().admit(svc)
    status = strict.invalid_status("Service", "web", verdict.field_errors)
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert status["details"] == {"name": "web", "kind": "Service", "causes": [{
        "reason": "FieldValueInvalid", "field": "spec.ports[0].nodePort",
        "message": "Invalid value: 99999: provided port is not in the valid range. "
                   "The range of valid ports is 30000-32767"}]}
    dep = strict.invalid_status("Deployment", "d", [errors.required("spec.selector")])
    assert dep["details"]["group"] == "apps" and dep["message"] == 'Deployment.apps "d" is invalid: spec.selector: Required value'
