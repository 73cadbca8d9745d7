"""Discovery bodies, /version and health output of the lab's API server (kproxy.apiserver.discovery),
checked against upstream v1.32's documents (kubernetes/kubernetes api/discovery/*.json)."""

import pytest

from kproxy.apiserver import discovery as d
from kproxy.apiserver import resources as res


def _entry(body, name):
    return next(r for r in body["resources"] if r["name"] == name)


def test_core_resource_list_matches_upstream_entries():
    body = d.api_resource_list("", "v1")
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == "v1" and "apiVersion" not in body
    pods = _entry(body, "pods")
    # upstream api__v1.json: pods
    assert pods == {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    "shortNames": ["po"], "categories": ["all"]}
    assert _entry(body, "pods/eviction") == {"name": "pods/eviction", "singularName": "", "namespaced": True,
                                             "group": "policy", "version": "v1", "kind": "Eviction",
                                             "verbs": ["create"]}
    assert _entry(body, "pods/exec")["kind"] == "PodExecOptions"
    assert _entry(body, "pods/log")["verbs"] == ["get"]
    for sub in ("attach", "binding", "portforward", "proxy", "status"):
        _entry(body, f"pods/{sub}")
    assert _entry(body, "services/proxy")["kind"] == "ServiceProxyOptions"
    assert _entry(body, "services")["shortNames"] == ["svc"]
    assert _entry(body, "namespaces")["namespaced"] is False
    names = [r["name"] for r in body["resources"]]
    assert names == sorted(names)  # the API server lists resources sorted


def test_apps_scale_subresource_is_autoscaling_v1():
    body = d.api_resource_list("apps", "v1")
    assert body["apiVersion"] == "v1" and body["groupVersion"] == "apps/v1"
    assert _entry(body, "deployments/scale") == {"name": "deployments/scale", "singularName": "",
                                                 "namespaced": True, "group": "autoscaling", "version": "v1",
                                                 "kind": "Scale", "verbs": ["get", "patch", "update"]}
    assert _entry(body, "deployments")["shortNames"] == ["deploy"]
    assert _entry(body, "replicasets")["verbs"] == ["get", "list", "watch"]  # derived: read-only


def test_groups_and_unknown_paths():
    groups = d.api_group_list()
    assert groups["kind"] == "APIGroupList"
    names = [g["name"] for g in groups["groups"]]
    assert names == ["apps", "events.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "metallb.io"]
    assert d.api_group("metallb.io")["preferredVersion"] == {"groupVersion": "metallb.io/v1beta1",
                                                             "version": "v1beta1"}
    assert d.api_group("batch") is None and d.api_resource_list("apps", "v2") is None
    assert d.api_resource_list("", "v2") is None
    assert d.api_versions("127.0.0.1:6443") == {
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}


def test_every_meta_kind_the_lab_admits_is_served():
    from kproxy.api import meta
    for kind in meta.ADMITTED_KINDS:
        r = res.for_kind(kind)
        assert r is not None and r.group_version == meta.KINDS[kind].api_versions[0]
        assert "create" in r.verbs
    assert res.find("events.k8s.io", "v1", "events").kind == "Event"
    assert res.find("", "v1", "services").path("default", "web", "status") == \
        "/api/v1/namespaces/default/services/web/status"
    assert res.find("apps", "v1", "deployments").path("ns1") == "/apis/apps/v1/namespaces/ns1/deployments"
    assert res.find("", "v1", "nodes").path("ignored", "n1") == "/api/v1/nodes/n1"


def test_aggregated_shape():
    core = d.aggregated(core=True)
    assert core["apiVersion"] == "apidiscovery.k8s.io/v2" and core["kind"] == "APIGroupDiscoveryList"
    assert len(core["items"]) == 1 and "name" not in core["items"][0]["metadata"]
    v1 = core["items"][0]["versions"][0]
    assert v1["version"] == "v1" and v1["freshness"] == "Current"
    svc = next(r for r in v1["resources"] if r["resource"] == "services")
    assert svc["responseKind"] == {"group": "", "version": "v1", "kind": "Service"}
    assert svc["scope"] == "Namespaced" and svc["singularResource"] == "service" and svc["categories"] == ["all"]
    assert {s["subresource"] for s in svc["subresources"]} == {"status", "proxy"}
    apis = d.aggregated(core=False, version="v2beta1")
    assert apis["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    apps = next(i for i in apis["items"] if i["metadata"]["name"] == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    scale = next(s for s in deploy["subresources"] if s["subresource"] == "scale")
    assert scale["responseKind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    ns = next(r for r in core["items"][0]["versions"][0]["resources"] if r["resource"] == "namespaces")
    assert ns["scope"] == "Cluster"


@pytest.mark.parametrize("accept,form", [
    (None, "legacy"),
    ("application/json", "legacy"),
    ("*/*", "legacy"),
    # what kubectl 1.32 sends
    ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
     "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", "v2"),
    ("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", "v2beta1"),
    ("application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
     "application/json", "legacy"),
    ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0.5,application/json;q=0.9", "legacy"),
    ("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList", None),
    ("application/vnd.kubernetes.protobuf", None),
])
def test_accept_negotiation(accept, form):
    assert d.negotiate_discovery(accept) == form


def test_version_body():
    v = d.version_info()
    assert v["major"] == "1" and v["minor"] == "32" and v["gitVersion"].startswith("v1.32.")
    assert v["platform"].startswith("linux/") and "x86_64" not in v["platform"]


def test_health_text_as_upstream_prints_it():
    assert d.health_report("healthz", {}, verbose=False) == (200, "ok")
    code, text = d.health_report("readyz", {"etcd": lambda: None}, verbose=True)
    assert code == 200 and text.startswith("[+]ping ok\n[+]log ok\n[+]etcd ok\n")
    assert text.endswith("\nreadyz check passed\n")
    code, text = d.health_report("livez", {"etcd": lambda: "connection refused"}, verbose=False)
    assert code == 500 and "[-]etcd failed: reason withheld\n" in text and text.endswith("livez check failed\n")
    code, text = d.health_report("healthz", {}, verbose=True, exclude=("etcd", "nope"))
    assert "[+]etcd excluded: ok" in text
    assert 'warn: some health checks cannot be excluded: no matches for "nope"' in text
    assert d.health_report("healthz", {"etcd": lambda: 1 / 0}, False, only="etcd")[0] == 500
    assert d.health_report("healthz", {}, False, only="ping") == (200, "ok")
    assert d.health_report("healthz", {}, False, only="nope")[0] == 404
