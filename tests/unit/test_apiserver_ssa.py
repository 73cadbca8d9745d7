"""ssa.py: server-side apply as kubectl 1.32 sends it (bodies in data/kubectl_patches.json),
managedFields in the API server's FieldsV1 form, and its 409 Conflict wording."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from kproxy.apiserver.patch import PatchError
from kproxy.apiserver.ssa import decode_fields, encode_fields, field_set, record_update, server_side_apply
from kproxy.apiserver.patchmeta import schema_for

DATA = json.loads((pathlib.Path(__file__).parent / "data" / "kubectl_patches.json").read_text())
LIVE = DATA["live"]


def sent(name):
    p = next(p for p in DATA["patches"] if p["name"] == name)
    assert p["contentType"] == "application/apply-patch+yaml"
    return p


def managers(obj):
    return [(e["manager"], e["operation"]) for e in obj["metadata"].get("managedFields", [])]


def fields(obj, manager):
    return next(e["fieldsV1"] for e in obj["metadata"]["managedFields"] if e["manager"] == manager)


SVC_FIELDS = {"f:metadata": {"f:labels": {"f:app": {}}},
              "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:name": {}, "f:nodePort": {},
                                                                        "f:port": {}, "f:targetPort": {}},
                                     'k:{"port":8443,"protocol":"TCP"}': {".": {}, "f:name": {}, "f:port": {},
                                                                          "f:targetPort": {}}},
                         "f:selector": {"f:app": {}}, "f:type": {}}}


def test_kubectl_sends_json_with_its_field_manager():
    p = sent("apply-server-side-service")
    assert "fieldManager=kubectl&" in p["path"] and "force=false" in p["path"]
    assert "force=true" in sent("apply-server-side-deployment-forced")["path"]


def test_create_by_apply_records_the_appliers_fields():
    out = server_side_apply("Service", None, sent("apply-server-side-service")["body"].encode(), "kubectl")
    [entry] = out["metadata"]["managedFields"]
    assert {k: entry[k] for k in ("manager", "operation", "apiVersion", "fieldsType")} == \
        {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1"}
    assert entry["fieldsV1"] == SVC_FIELDS
    assert out["spec"]["ports"][1] == {"name": "alt", "port": 8443, "targetPort": 8443}


def test_first_apply_on_an_untracked_object_conflicts_with_before_first_apply():
    """The live Service has no managedFields (a manifest-folder object): its fields get the
    "before-first-apply" manager, and changing port 80's targetPort collides with it."""
    body = sent("apply-server-side-service")["body"].encode()
    with pytest.raises(PatchError) as e:
        server_side_apply("Service", LIVE["Service"], body, "kubectl", before_first_apply=True)
    assert (e.value.code, e.value.reason) == (409, "Conflict")
    assert e.value.message == ('Apply failed with 1 conflict: conflict with "before-first-apply" using v1: '
                               '.spec.ports[port=80,protocol="TCP"].targetPort')
    assert e.value.details == {"causes": [{"reason": "FieldManagerConflict",
                                           "message": 'conflict with "before-first-apply" using v1',
                                           "field": '.spec.ports[port=80,protocol="TCP"].targetPort'}]}


def test_untracked_object_by_default_is_applied_over_without_conflict():
    """A store that keeps no managedFields: repeated applies must not collide with themselves."""
    body = sent("apply-server-side-service")["body"].encode()
    out = server_side_apply("Service", LIVE["Service"], body, "kubectl")
    assert [(p["port"], p["targetPort"]) for p in out["spec"]["ports"]] == [(80, 8080), (443, 443), (8443, 8443)]
    assert managers(out) == [("kubectl", "Apply")]
    stripped = copy.deepcopy(out)
    del stripped["metadata"]["managedFields"]
    again = json.loads(body)
    again["spec"]["ports"][0]["targetPort"] = 9090
    assert server_side_apply("Service", stripped, json.dumps(again).encode(), "kubectl")["spec"]["ports"][0][
        "targetPort"] == 9090


def test_force_takes_the_field_and_keeps_what_others_own():
    body = sent("apply-server-side-service")["body"].encode()
    out = server_side_apply("Service", LIVE["Service"], body, "kubectl", force=True, before_first_apply=True)
    assert [(p["port"], p["targetPort"]) for p in out["spec"]["ports"]] == [(80, 8080), (443, 443), (8443, 8443)]
    assert out["metadata"]["labels"] == {"app": "web", "old": "yes"}  # "old" is before-first-apply's
    assert managers(out) == [("before-first-apply", "Update"), ("kubectl", "Apply")]
    port80 = fields(out, "before-first-apply")["f:spec"]["f:ports"]['k:{"port":80,"protocol":"TCP"}']
    assert "f:targetPort" not in port80 and "f:protocol" in port80
    assert fields(out, "kubectl") == SVC_FIELDS
    assert out["metadata"]["uid"] == LIVE["Service"]["metadata"]["uid"]
    # kubectl's follow-up (csaupgrade): the same annotation value under another manager is no conflict
    then = sent("apply-server-side-service")["then"][0]
    assert "fieldManager=kubectl-last-applied" in then["path"]
    again = server_side_apply("Service", out, then["body"].encode(), "kubectl-last-applied")
    assert managers(again)[-1] == ("kubectl-last-applied", "Apply")


def test_reapply_without_a_field_removes_it():
    body = json.loads(sent("apply-server-side-service")["body"])
    out = server_side_apply("Service", None, json.dumps(body).encode(), "kubectl")
    body["spec"]["ports"] = body["spec"]["ports"][:1]
    body["metadata"]["labels"]["tier"] = "front"
    out = server_side_apply("Service", out, json.dumps(body).encode(), "kubectl")
    assert [p["port"] for p in out["spec"]["ports"]] == [80]
    assert out["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert list(fields(out, "kubectl")["f:spec"]["f:ports"]) == ['k:{"port":80,"protocol":"TCP"}']


def test_an_update_takes_ownership_and_the_next_apply_conflicts():
    """kubectl scale (an Update by "kubectl") takes .spec.replicas from the applier."""
    dep = json.loads(sent("apply-server-side-deployment-forced")["body"])
    live = server_side_apply("Deployment", None, json.dumps(dep).encode(), "lab")
    live["metadata"]["uid"] = "u-1"
    scaled = copy.deepcopy(live)
    scaled["spec"]["replicas"] = 5
    scaled = record_update("Deployment", live, scaled, "kubectl", "apps/v1")
    assert managers(scaled) == [("lab", "Apply"), ("kubectl", "Update")]
    assert fields(scaled, "kubectl") == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in fields(scaled, "lab")["f:spec"]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:9"
    with pytest.raises(PatchError) as e:
        server_side_apply("Deployment", scaled, json.dumps(dep).encode(), "lab")
    assert e.value.message == 'Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.replicas'
    out = server_side_apply("Deployment", scaled, json.dumps(dep).encode(), "lab", force=True)
    assert out["spec"]["replicas"] == 2 and managers(out) == [("lab", "Apply")]
    assert out["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:9"


def test_several_conflicts_are_grouped_by_manager():
    live = server_side_apply("Service", None, sent("apply-server-side-service")["body"].encode(), "a")
    body = json.loads(sent("apply-server-side-service")["body"])
    body["spec"]["type"] = "ClusterIP"
    body["spec"]["selector"] = {"app": "api"}
    with pytest.raises(PatchError) as e:
        server_side_apply("Service", live, json.dumps(body).encode(), "b")
    assert e.value.message == 'Apply failed with 2 conflicts: conflicts with "a":\n- .spec.selector.app\n- .spec.type'


def test_update_of_an_untracked_object_stays_untracked_and_a_create_is_tracked():
    new = copy.deepcopy(LIVE["Service"])
    new["spec"]["type"] = "ClusterIP"
    assert "managedFields" not in record_update("Service", LIVE["Service"], new, "kubectl-edit")["metadata"]
    created = record_update("Service", None, copy.deepcopy(LIVE["Service"]), "kubectl-create")
    assert managers(created) == [("kubectl-create", "Update")]


def test_apply_patch_passes_server_side_apply_on():
    from kproxy.apiserver.patch import apply_patch
    p = sent("apply-server-side-service")
    out = apply_patch("Service", None, p["body"].encode(), p["contentType"], field_manager="kubectl")
    assert fields(out, "kubectl") == SVC_FIELDS
    pool = apply_patch("IPAddressPool", LIVE["IPAddressPool"], b"spec:\n  autoAssign: true\n",
                       "application/apply-patch+yaml", field_manager="kubectl")
    assert pool["spec"]["autoAssign"] is True and managers(pool)[-1] == ("kubectl", "Apply")


def test_kubectl_csaupgrade_rewrites_managed_fields_with_a_json_patch():
    """kubectl apply --server-side on a client-side-applied object first moves
    kubectl-client-side-apply's fields to itself by replacing /metadata/managedFields (a JSON
    patch); the server keeps what the request wrote, so the next apply can drop those fields."""
    from kproxy.apiserver.patch import JSON_PATCH, apply_patch
    live = record_update("Deployment", None, copy.deepcopy(LIVE["Deployment"]), "kubectl-client-side-apply")
    assert managers(live) == [("kubectl-client-side-apply", "Update")]
    entry = {**live["metadata"]["managedFields"][0], "manager": "kubectl", "operation": "Apply"}
    ops = [{"op": "replace", "path": "/metadata/managedFields", "value": [entry]},
           {"op": "replace", "path": "/metadata/resourceVersion", "value": "7"}]
    patched = apply_patch("Deployment", live, json.dumps(ops).encode(), JSON_PATCH)
    upgraded = record_update("Deployment", live, patched, "kubectl", "apps/v1")
    assert managers(upgraded) == [("kubectl", "Apply")]
    body = json.loads(sent("apply-server-side-deployment-forced")["body"])
    out = server_side_apply("Deployment", upgraded, json.dumps(body).encode(), "kubectl")
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["web"]  # "side" dropped
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_field_manager_is_required():
    with pytest.raises(PatchError) as e:
        server_side_apply("Service", None, b"{}", "")
    assert (e.value.code, e.value.message) == (422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                                                    "Required value: is required for apply patch")


def test_fields_round_trip_and_stay_off_metadata_identity():
    paths = field_set(LIVE["Deployment"], schema_for("Deployment"))
    assert decode_fields(encode_fields(paths)) == paths
    top = {p[0][1] for p in paths}
    assert top == {"metadata", "spec"}  # apiVersion, kind, status are never tracked
    assert not any(p[:2] == (("f", "metadata"), ("f", "name")) for p in paths)
