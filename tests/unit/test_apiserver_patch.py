"""patch.py: what kubectl really sends, applied as the API server applies it, refused in its words.

The bodies come from kubectl v1.32 itself (data/kubectl_patches.json, captured against a stub
by data/capture_kubectl_patches.py); the expected objects are worked out by hand from upstream's
rules (strategicpatch's merge keys, directives and ordering; RFC 7386; RFC 6902), and the
refusals are the handlers' exact Status reason, code and message (apiserver patch.go,
interpretStrategicMergePatchError, NewGenericServerResponse, negotiation's 415).
"""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from kproxy.apiserver.patch import (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, PatchError, apply_patch)

DATA = json.loads((pathlib.Path(__file__).parent / "data" / "kubectl_patches.json").read_text())
LIVE = DATA["live"]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def sent(name):
    p = next(p for p in DATA["patches"] if p["name"] == name)
    return p["contentType"], p["body"].encode()


def run(name, kind, obj=None):
    ctype, body = sent(name)
    obj = copy.deepcopy(obj if obj is not None else LIVE[kind])
    before = copy.deepcopy(obj)
    out = apply_patch(kind, obj, body, ctype)
    assert obj == before, "apply_patch must not modify its input"
    return out


# ------------------------------------------------------------------ kubectl apply (client-side)


def test_apply_deployment_three_way_patch():
    """Image change, a port added and one removed, an env var removed (a server-added one kept), a
    container removed, strategy switched to Recreate ($retainKeys drops rollingUpdate), a label removed."""
    out = run("apply-deployment", "Deployment")
    assert out["metadata"]["labels"] == {"app": "web"}
    anns = out["metadata"]["annotations"]
    assert anns["deployment.kubernetes.io/revision"] == "1"
    assert json.loads(anns[LAST_APPLIED])["spec"]["replicas"] == 2
    spec = out["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "Recreate"}
    [web] = spec["template"]["spec"]["containers"]
    assert web == {"name": "web", "image": "nginx:2", "imagePullPolicy": "IfNotPresent",
                   "ports": [{"containerPort": 8080}, {"containerPort": 80}],
                   "env": [{"name": "A", "value": "1"}, {"name": "FROM_SERVER", "value": "x"}]}
    assert out["status"] == LIVE["Deployment"]["status"]


def test_apply_service_three_way_patch():
    """Port 443 removed, 8443 added, port 80's targetPort changed: nodePort/protocol the server set
    stay on port 80 (merged by the `port` merge key), order as $setElementOrder says."""
    out = run("apply-service", "Service")
    assert out["metadata"]["labels"] == {"app": "web"}
    assert out["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
        {"name": "alt", "port": 8443, "targetPort": 8443},
    ]
    assert out["spec"]["clusterIP"] == "10.96.0.10"


def test_apply_custom_resource_is_a_json_merge_patch():
    ctype, _ = sent("apply-ipaddresspool")
    assert ctype == MERGE_PATCH  # kubectl knows a CRD has no strategic merge patch
    out = run("apply-ipaddresspool", "IPAddressPool")
    assert out["spec"] == {"addresses": ["192.168.49.220-192.168.49.230"]}


# ------------------------------------------------------------------ label, annotate, scale, patch, set, rollout


def test_label_adds_and_removes():
    assert run("label-service", "Service")["metadata"]["labels"] == {"app": "web", "tier": "web"}


def test_label_with_resource_version_sets_the_precondition():
    """kubectl sends the version in the patch; the REST layer compares it with the live one (409)."""
    out = run("label-resource-version", "Service")
    assert out["metadata"]["labels"]["app"] == "web2" and out["metadata"]["resourceVersion"] == "8"


def test_annotate():
    anns = run("annotate-deployment", "Deployment")["metadata"]["annotations"]
    assert anns["note"] == "hello" and LAST_APPLIED in anns


def test_scale_patches_the_scale_subresource():
    scale = {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"replicas": 3}, "status": {"replicas": 3}}
    ctype, body = sent("scale-deployment")
    assert (ctype, body) == (MERGE_PATCH, b'{"spec":{"replicas":1}}')
    assert apply_patch("Scale", scale, body, ctype)["spec"] == {"replicas": 1}


def test_strategic_patch_merges_service_ports_by_port():
    out = run("patch-service-strategic", "Service")
    assert [(p["port"], p["targetPort"], p.get("nodePort")) for p in out["spec"]["ports"]] == \
        [(80, 9090, 30080), (443, 443, 31443)]


def test_json_patch_replace():
    assert run("patch-deployment-json", "Deployment")["spec"]["replicas"] == 4


def test_set_image_keeps_other_containers_in_order():
    cs = run("set-image", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in cs] == [("web", "nginx:3"), ("side", "busybox:1")]


def test_rollout_restart_annotates_the_template():
    out = run("rollout-restart", "Deployment")
    assert "kubectl.kubernetes.io/restartedAt" in out["spec"]["template"]["metadata"]["annotations"]
    assert out["spec"]["template"]["metadata"]["labels"] == {"app": "web"}


# ------------------------------------------------------------------ strategic merge patch details

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "finalizers": ["a", "b"]},
       "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/a"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}], "tolerations": [{"key": "x"}]},
       "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}}


def smp(obj, patch, kind="Pod"):
    return apply_patch(kind, obj, json.dumps(patch).encode(), STRATEGIC_MERGE_PATCH)


def test_conditions_merge_by_type():
    out = smp(POD, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]


def test_untagged_list_is_replaced():
    assert smp(POD, {"spec": {"tolerations": [{"key": "y"}]}})["spec"]["tolerations"] == [{"key": "y"}]


def test_volume_mounts_merge_by_mount_path_and_volumes_retain_keys():
    out = smp(POD, {"spec": {"containers": [{"name": "c", "volumeMounts": [{"name": "w", "mountPath": "/b"}]}],
                             "volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}})
    # without $setElementOrder upstream puts the patch's new items before the server's (mergeSortedSlice)
    assert [m["mountPath"] for m in out["spec"]["containers"][0]["volumeMounts"]] == ["/b", "/a"]
    assert out["spec"]["volumes"] == [{"name": "v", "hostPath": {"path": "/x"}}]


def test_primitive_list_merge_and_delete():
    out = smp(POD, {"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert out["metadata"]["finalizers"] == ["c", "b"]  # new items first, as above


def test_patch_replace_and_delete_directives():
    out = smp(POD, {"spec": {"containers": [{"name": "n", "image": "j"}, {"$patch": "replace"}]}})
    assert out["spec"]["containers"] == [{"name": "n", "image": "j"}]
    out = smp(POD, {"spec": {"containers": [{"name": "c", "$patch": "delete"}]}})
    assert out["spec"]["containers"] == []
    assert smp(POD, {"status": {"$patch": "delete"}})["status"] == {}


def test_null_deletes_a_key():
    assert "tolerations" not in smp(POD, {"spec": {"tolerations": None}})["spec"]


# ------------------------------------------------------------------ refusals


def refused(kind, obj, body, ctype):
    with pytest.raises(PatchError) as e:
        apply_patch(kind, obj, body if isinstance(body, bytes) else json.dumps(body).encode(), ctype)
    return e.value


def test_missing_merge_key_is_upstreams_plain_500():
    e = refused("Pod", POD, {"spec": {"containers": [{"image": "x"}]}}, STRATEGIC_MERGE_PATCH)
    assert (e.code, e.reason, e.message) == (500, "", "map: map[image:x] does not contain declared merge key: name")
    assert e.status() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "map: map[image:x] does not contain declared merge key: name", "code": 500}


def test_unknown_directive():
    e = refused("Pod", POD, {"spec": {"$patch": "merge"}}, STRATEGIC_MERGE_PATCH)
    assert (e.code, e.message) == (500, "unknown patch type: merge in map: map[$patch:merge]")


def test_bad_retain_keys_is_400():
    e = refused("Deployment", LIVE["Deployment"], {"spec": {"strategy": {"$retainKeys": ["type"], "x": 1}}},
                STRATEGIC_MERGE_PATCH)
    assert (e.code, e.reason, e.message) == (400, "BadRequest", "invalid patch format of retainKeys")


def test_lists_of_lists_are_422():
    e = refused("Pod", {"metadata": {"finalizers": [["a"]]}}, {"metadata": {"finalizers": [["b"]]}},
                STRATEGIC_MERGE_PATCH)
    assert (e.code, e.reason, e.message) == (422, "Invalid", "the server rejected our request due to an error in our request")


def test_strategic_merge_patch_of_a_custom_resource_is_415():
    e = refused("IPAddressPool", LIVE["IPAddressPool"], {"spec": {}}, STRATEGIC_MERGE_PATCH)
    assert (e.code, e.reason) == (415, "UnsupportedMediaType")
    assert e.message == ("the body of the request was in an unknown format - accepted media types include: "
                         "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")


def test_unknown_content_type_is_415():
    e = refused("Service", LIVE["Service"], {}, "application/json")
    assert e.code == 415 and e.message.endswith("application/json-patch+json, application/merge-patch+json, "
                                                "application/strategic-merge-patch+json, application/apply-patch+yaml")


def test_content_type_parameters_are_ignored():
    out = apply_patch("Service", LIVE["Service"], b'{"metadata":{"labels":{"x":"y"}}}', MERGE_PATCH + "; charset=utf-8")
    assert out["metadata"]["labels"]["x"] == "y"


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/spec/replicas", "value": 2}],          # testing value /spec/replicas failed
    [{"op": "remove", "path": "/metadata/labels/nope"}],              # Unable to remove nonexistent key
    [{"op": "add", "path": "/spec/nope/deeper", "value": 1}],         # doc is missing path
    [{"op": "replace", "path": "/spec/template/spec/containers/5", "value": {}}],
    [{"op": "move", "from": "/spec/nope", "path": "/spec/x"}],
    [{"op": "bogus", "path": "/spec"}],
])
def test_json_patch_failures_are_422_without_detail(ops):
    e = refused("Deployment", LIVE["Deployment"], ops, JSON_PATCH)
    assert (e.code, e.reason, e.message) == (422, "Invalid", "the server rejected our request due to an error in our request")


def test_json_patch_v4_quirks():
    """evanphx/json-patch v4 (what the API server links): replace of a missing key adds it; a
    test of an absent key against null passes."""
    out = apply_patch("Deployment", LIVE["Deployment"],
                      json.dumps([{"op": "test", "path": "/spec/paused", "value": None},
                                  {"op": "replace", "path": "/spec/paused", "value": True}]).encode(), JSON_PATCH)
    assert out["spec"]["paused"] is True


def test_json_patch_that_is_not_a_list_is_400():
    e = refused("Deployment", LIVE["Deployment"], {"op": "add"}, JSON_PATCH)
    assert (e.code, e.message) == (400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")


def test_merge_patch_refusals():
    assert refused("Service", LIVE["Service"], b"{nope", MERGE_PATCH).message == "Invalid JSON Patch"
    assert refused("Service", LIVE["Service"], b"null", MERGE_PATCH).code == 400
    e = refused("Service", LIVE["Service"], b"[1]", MERGE_PATCH)
    assert (e.code, e.reason) == (422, "Invalid")


def test_invalid_strategic_json_is_400_in_go_words():
    e = refused("Service", LIVE["Service"], b"[1]", STRATEGIC_MERGE_PATCH)
    assert (e.code, e.message) == (400, "json: cannot unmarshal array into Go value of type map[string]interface {}")
    e = refused("Service", LIVE["Service"], b"{nope", STRATEGIC_MERGE_PATCH)
    assert (e.code, e.message) == (400, "invalid character 'n' looking for beginning of object key string")


def test_too_many_json_patch_operations():
    e = refused("Service", LIVE["Service"], [{"op": "test", "path": "", "value": None}] * 10001, JSON_PATCH)
    assert (e.code, e.reason) == (413, "RequestEntityTooLarge")
    assert e.message == "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
