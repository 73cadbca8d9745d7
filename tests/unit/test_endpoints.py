"""Service + pods -> EndpointSlices and Endpoints (controllers/endpoints.py), as upstream's
endpointslice, endpoints and endpointslice-mirroring controllers build them."""

from __future__ import annotations


from kproxy.controllers.endpoints import (
    MANAGED_BY,
    SERVICE_NAME,
    endpoints_from_slices,
    mirror_endpoints,
    resolve_target_port,
    slices_for_service,
)

NODE = "node-1"


def svc(name="web", ns="default", selector=None, ports=None, **spec):
    spec["selector"] = {"app": "web"} if selector is None else selector
    spec["ports"] = ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 80,
                                                      "targetPort": 8080}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod(name, ip="10.244.0.2", labels=None, ready=True, ns="default", ports=None, terminating=False,
        phase="Running", node=None):
    p = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}",
                     "labels": {"app": "web"} if labels is None else labels},
        "spec": {"containers": [{"name": "c", "ports": ports or []}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if ip:
        p["status"]["podIP"] = ip
    if terminating:
        p["metadata"]["deletionTimestamp"] = "2024-05-01T12:00:00Z"
    if node:
        p["spec"]["nodeName"] = node
    return p


def ips(sl):
    return [e["addresses"][0] for e in sl["endpoints"]]


def conditions(sl):
    return {e["addresses"][0]: e["conditions"] for e in sl["endpoints"]}


# ------------------------------------------------------------------ slices


def test_one_slice_with_matching_pods():
    pods = [pod("web-b", "10.244.0.3"), pod("web-a", "10.244.0.2", node="node-2"),
            pod("db", "10.244.0.9", labels={"app": "db"})]
    (sl,) = slices_for_service(svc(), pods, NODE)
    assert sl["apiVersion"] == "discovery.k8s.io/v1"
    assert sl["kind"] == "EndpointSlice"
    assert sl["addressType"] == "IPv4"
    assert sl["metadata"]["namespace"] == "default"
    assert sl["metadata"]["generateName"] == "web-"
    assert sl["metadata"]["name"].startswith("web-")
    assert sl["metadata"]["labels"] == {SERVICE_NAME: "web", MANAGED_BY: "endpointslice-controller.k8s.io"}
    assert sl["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    # sorted by pod name, with node and targetRef
    assert sl["endpoints"] == [
        {"addresses": ["10.244.0.2"], "conditions": {"ready": True, "serving": True, "terminating": False},
         "nodeName": "node-2", "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-a", "uid": "uid-web-a"}},
        {"addresses": ["10.244.0.3"], "conditions": {"ready": True, "serving": True, "terminating": False},
         "nodeName": NODE, "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-b", "uid": "uid-web-b"}},
    ]


def test_slice_name_is_stable():
    a = slices_for_service(svc(), [pod("web-a")], NODE)
    b = slices_for_service(svc(), [pod("web-a"), pod("web-b", "10.244.0.3")], NODE)
    assert a[0]["metadata"]["name"] == b[0]["metadata"]["name"]


def test_selector_matching_and_namespace():
    pods = [pod("a", "10.244.0.2", labels={"app": "web", "tier": "front"}),
            pod("b", "10.244.0.3", labels={"app": "web", "tier": "back"}),
            pod("c", "10.244.0.4", labels={"tier": "front"}),
            pod("d", "10.244.0.5", labels={"app": "web", "tier": "front"}, ns="other")]
    (sl,) = slices_for_service(svc(selector={"app": "web", "tier": "front"}), pods, NODE)
    assert ips(sl) == ["10.244.0.2"]


def test_only_pods_with_an_ip_and_not_finished():
    pods = [pod("a", None), pod("b", "10.244.0.3"), pod("c", "10.244.0.4", phase="Succeeded"),
            pod("d", "10.244.0.5", phase="Failed")]
    (sl,) = slices_for_service(svc(), pods, NODE)
    assert ips(sl) == ["10.244.0.3"]


def test_no_pods_gives_one_empty_slice():
    (sl,) = slices_for_service(svc(), [pod("db", labels={"app": "db"})], NODE)
    assert sl["endpoints"] == []
    assert sl["ports"] == []
    assert sl["metadata"]["labels"][SERVICE_NAME] == "web"


def test_ready_follows_the_pod_ready_condition():
    pods = [pod("a", "10.244.0.2", ready=True), pod("b", "10.244.0.3", ready=False)]
    (sl,) = slices_for_service(svc(), pods, NODE)
    assert conditions(sl) == {
        "10.244.0.2": {"ready": True, "serving": True, "terminating": False},
        "10.244.0.3": {"ready": False, "serving": False, "terminating": False},
    }


def test_pod_without_conditions_is_not_ready():
    p = pod("a")
    del p["status"]["conditions"]
    (sl,) = slices_for_service(svc(), [p], NODE)
    assert sl["endpoints"][0]["conditions"]["ready"] is False


def test_publish_not_ready_addresses_makes_unready_pods_ready():
    (sl,) = slices_for_service(svc(publishNotReadyAddresses=True), [pod("b", "10.244.0.3", ready=False)], NODE)
    assert sl["endpoints"][0]["conditions"]["ready"] is True


def test_publish_not_ready_addresses_keeps_serving_as_the_pod_readiness():
    (sl,) = slices_for_service(svc(publishNotReadyAddresses=True), [pod("b", "10.244.0.3", ready=False)], NODE)
    assert sl["endpoints"][0]["conditions"] == {"ready": True, "serving": False, "terminating": False}


def test_publish_not_ready_addresses_keeps_terminating_pods_ready():
    p = pod("a", "10.244.0.2", ready=True, terminating=True)
    (sl,) = slices_for_service(svc(publishNotReadyAddresses=True), [p], NODE)
    assert sl["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": True}


def test_terminating_pods_are_listed_not_ready():
    pods = [pod("a", "10.244.0.2", ready=True, terminating=True),
            pod("b", "10.244.0.3", ready=False, terminating=True)]
    (sl,) = slices_for_service(svc(), pods, NODE)
    assert conditions(sl) == {
        "10.244.0.2": {"ready": False, "serving": True, "terminating": True},
        "10.244.0.3": {"ready": False, "serving": False, "terminating": True},
    }


# ------------------------------------------------------------------ target ports


def test_resolve_target_port():
    p = pod("a", ports=[{"name": "http", "containerPort": 8080},
                        {"name": "dns", "containerPort": 5353, "protocol": "UDP"}])
    assert resolve_target_port({"port": 80}, p) == 80
    assert resolve_target_port({"port": 80, "targetPort": 9090}, p) == 9090
    assert resolve_target_port({"port": 80, "targetPort": "9090"}, p) == 9090
    assert resolve_target_port({"port": 80, "targetPort": "http"}, p) == 8080
    assert resolve_target_port({"port": 53, "targetPort": "dns", "protocol": "UDP"}, p) == 5353
    # the protocol must match as well as the name
    assert resolve_target_port({"port": 53, "targetPort": "dns"}, p) is None
    assert resolve_target_port({"port": 80, "targetPort": "metrics"}, p) is None


def test_named_target_port_resolves_per_pod():
    s = svc(ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}])
    pods = [pod("a", "10.244.0.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.0.3", ports=[{"name": "web", "containerPort": 9090}]),
            pod("c", "10.244.0.4", ports=[{"name": "web", "containerPort": 8080}])]
    slices = slices_for_service(s, pods, NODE)
    assert len(slices) == 2
    by_port = {sl["ports"][0]["port"]: ips(sl) for sl in slices}
    assert by_port == {8080: ["10.244.0.2", "10.244.0.4"], 9090: ["10.244.0.3"]}
    assert slices[0]["metadata"]["name"] != slices[1]["metadata"]["name"]
    assert all(sl["ports"][0]["name"] == "http" and sl["ports"][0]["protocol"] == "TCP" for sl in slices)


def test_pod_missing_the_named_port_is_left_out_of_that_port():
    s = svc(ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}])
    pods = [pod("a", "10.244.0.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.0.3", ports=[{"name": "other", "containerPort": 9090}])]
    slices = slices_for_service(s, pods, NODE)
    with_port = [sl for sl in slices if sl["ports"]]
    assert [(sl["ports"], ips(sl)) for sl in with_port] == [
        ([{"name": "http", "protocol": "TCP", "port": 8080}], ["10.244.0.2"])]
    # like upstream, the pod lands in a slice without ports, which serves nothing
    assert [ips(sl) for sl in slices if not sl["ports"]] == [["10.244.0.3"]]
    # and the Endpoints object leaves it out entirely
    ep = endpoints_from_slices(s, slices)
    assert ep["subsets"] == [{"ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                              "addresses": [{"ip": "10.244.0.2", "nodeName": NODE,
                                             "targetRef": {"kind": "Pod", "namespace": "default",
                                                           "name": "a", "uid": "uid-a"}}]}]


# ------------------------------------------------------------------ Endpoints


def test_endpoints_from_slices_splits_ready_and_not_ready():
    s = svc(ports=[{"protocol": "TCP", "port": 80, "targetPort": 8080}])  # unnamed port
    pods = [pod("a", "10.244.0.2", ready=True), pod("b", "10.244.0.3", ready=False)]
    ep = endpoints_from_slices(s, slices_for_service(s, pods, NODE))
    assert ep == {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "ports": [{"protocol": "TCP", "port": 8080}],  # the empty name is dropped
            "addresses": [{"ip": "10.244.0.2", "nodeName": NODE,
                           "targetRef": {"kind": "Pod", "namespace": "default", "name": "a", "uid": "uid-a"}}],
            "notReadyAddresses": [{"ip": "10.244.0.3", "nodeName": NODE,
                                   "targetRef": {"kind": "Pod", "namespace": "default", "name": "b", "uid": "uid-b"}}],
        }],
    }


def test_endpoints_without_ready_or_not_ready_lists():
    s = svc()
    ep = endpoints_from_slices(s, slices_for_service(s, [pod("a", ready=False)], NODE))
    assert list(ep["subsets"][0]) == ["ports", "notReadyAddresses"]
    ep = endpoints_from_slices(s, slices_for_service(s, [pod("a", ready=True)], NODE))
    assert list(ep["subsets"][0]) == ["ports", "addresses"]


def test_endpoints_without_pods_has_no_subsets():
    s = svc()
    ep = endpoints_from_slices(s, slices_for_service(s, [], NODE))
    assert ep == {"apiVersion": "v1", "kind": "Endpoints",  # labelled as upstream's Endpoints controller does
                  "metadata": {"name": "web", "namespace": "default",
                               "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}}


def test_endpoints_one_subset_per_slice():
    s = svc(ports=[{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}])
    pods = [pod("a", "10.244.0.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.0.3", ports=[{"name": "web", "containerPort": 9090}])]
    ep = endpoints_from_slices(s, slices_for_service(s, pods, NODE))
    assert sorted((sub["ports"][0]["port"], sub["addresses"][0]["ip"]) for sub in ep["subsets"]) == [
        (8080, "10.244.0.2"), (9090, "10.244.0.3")]


def test_endpoints_leave_out_terminating_pods():
    s = svc()
    pods = [pod("a", "10.244.0.2"), pod("b", "10.244.0.3", terminating=True)]
    ep = endpoints_from_slices(s, slices_for_service(s, pods, NODE))
    assert [a["ip"] for a in ep["subsets"][0]["addresses"]] == ["10.244.0.2"]
    assert "notReadyAddresses" not in ep["subsets"][0]


# ------------------------------------------------------------------ mirroring


def test_mirror_endpoints():
    ep = {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext", "namespace": "shop"},
        "subsets": [
            {"addresses": [{"ip": "192.168.1.10", "nodeName": "n1"}, {"ip": "192.168.1.11"}],
             "notReadyAddresses": [{"ip": "192.168.1.12"}],
             "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]},
            {"addresses": [{"ip": "192.168.2.10"}], "ports": [{"port": 443}]},
        ],
    }
    slices = mirror_endpoints(ep)
    assert slices == [
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "ext-mirror-0", "namespace": "shop",
                      "labels": {SERVICE_NAME: "ext", MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}},
         "addressType": "IPv4",
         "ports": [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "", "protocol": "UDP", "port": 53}],
         "endpoints": [{"addresses": ["192.168.1.10"], "conditions": {"ready": True}, "nodeName": "n1"},
                       {"addresses": ["192.168.1.11"], "conditions": {"ready": True}},
                       {"addresses": ["192.168.1.12"], "conditions": {"ready": False}}]},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "ext-mirror-1", "namespace": "shop",
                      "labels": {SERVICE_NAME: "ext", MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}},
         "addressType": "IPv4",
         "ports": [{"name": "", "protocol": "TCP", "port": 443}],
         "endpoints": [{"addresses": ["192.168.2.10"], "conditions": {"ready": True}}]},
    ]


def test_mirror_endpoints_without_subsets():
    assert mirror_endpoints({"metadata": {"name": "ext", "namespace": "default"}}) == []
