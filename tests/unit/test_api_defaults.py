"""Defaulting per kind (pkg/apis/core/v1/defaults.go, pkg/apis/apps/v1/defaults.go)."""

import copy

from kproxy.api.defaults import apply_defaults, image_pull_policy, patch_allocated_values


def service(**spec):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec}


def test_returns_a_deep_copy():
    original = service(ports=[{"port": 80}])
    snapshot = copy.deepcopy(original)
    out = apply_defaults(original)
    assert original == snapshot
    assert out is not original and out["spec"]["ports"][0] is not original["spec"]["ports"][0]


def test_cluster_ip_service():
    spec = apply_defaults(service(selector={"app": "web"}, ports=[{"port": 80}]))["spec"]
    assert spec == {
        "selector": {"app": "web"},
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
        "sessionAffinity": "None",
        "type": "ClusterIP",
        "internalTrafficPolicy": "Cluster",
        "ipFamilyPolicy": "SingleStack",
        "ipFamilies": ["IPv4"],
    }


def test_node_port_and_load_balancer_services():
    spec = apply_defaults(service(type="NodePort", ports=[{"port": 80, "targetPort": "http"}]))["spec"]
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["ports"][0]["targetPort"] == "http"
    assert "allocateLoadBalancerNodePorts" not in spec
    spec = apply_defaults(service(type="LoadBalancer", ports=[{"port": 80}]))["spec"]
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["allocateLoadBalancerNodePorts"] is True


def test_session_affinity_client_ip_gets_default_timeout():
    spec = apply_defaults(service(sessionAffinity="ClientIP", ports=[{"port": 80}]))["spec"]
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    spec = apply_defaults(service(sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}}))["spec"]
    assert "sessionAffinityConfig" not in spec  # dropped when affinity is None


def test_external_name_service_has_no_ip_families_or_traffic_policies():
    spec = apply_defaults(service(type="ExternalName", externalName="example.com"))["spec"]
    assert spec == {"type": "ExternalName", "externalName": "example.com", "sessionAffinity": "None"}


def test_cluster_ip_and_cluster_ips_are_synced():
    spec = apply_defaults(service(clusterIP="10.96.0.10", ports=[{"port": 53}]))["spec"]
    assert spec["clusterIPs"] == ["10.96.0.10"]
    spec = apply_defaults(service(clusterIPs=["fd00::10"], ports=[{"port": 53}]))["spec"]
    assert spec["clusterIP"] == "fd00::10" and spec["ipFamilies"] == ["IPv6"]


def test_headless_service_without_selector_requires_dual_stack():
    spec = apply_defaults(service(clusterIP="None"))["spec"]
    assert spec["ipFamilyPolicy"] == "RequireDualStack"
    assert spec["ipFamilies"] == ["IPv4", "IPv6"]
    spec = apply_defaults(service(clusterIP="None", selector={"app": "db"}))["spec"]
    assert spec["ipFamilyPolicy"] == "SingleStack" and spec["ipFamilies"] == ["IPv4"]


def test_pod_defaults():
    pod = apply_defaults({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{
            "name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"port": 80}},
            "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5},
        }]},
    })
    assert pod["metadata"]["namespace"] == "default"
    spec = pod["spec"]
    assert (spec["restartPolicy"], spec["dnsPolicy"], spec["terminationGracePeriodSeconds"]) == ("Always", "ClusterFirst", 30)
    assert spec["enableServiceLinks"] is True and spec["schedulerName"] == "default-scheduler"
    container = spec["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert container["readinessProbe"] == {
        "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
    }
    assert container["livenessProbe"]["periodSeconds"] == 5


def test_image_pull_policy():
    assert image_pull_policy("nginx") == "Always"
    assert image_pull_policy("nginx:latest") == "Always"
    assert image_pull_policy("localhost:5000/nginx") == "Always"
    assert image_pull_policy("localhost:5000/nginx:1.2") == "IfNotPresent"
    assert image_pull_policy("nginx@sha256:abc") == "IfNotPresent"


def test_deployment_defaults():
    deployment = apply_defaults({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "lab"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
    })
    spec = deployment["spec"]
    assert deployment["metadata"]["namespace"] == "lab"
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always" and pod_spec["dnsPolicy"] == "ClusterFirst"
    assert "enableServiceLinks" not in pod_spec  # only defaulted on Pods, not templates
    assert pod_spec["containers"][0]["imagePullPolicy"] == "Always"


def test_recreate_strategy_gets_no_rolling_update():
    deployment = apply_defaults({"kind": "Deployment", "spec": {"strategy": {"type": "Recreate"}}})
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_endpoints_and_endpoint_slices():
    endpoints = apply_defaults({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
                                "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]})
    assert endpoints["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    slice_ = apply_defaults({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "web-abc"},
        "addressType": "IPv4", "ports": [{"port": 80}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}],
    })
    assert slice_["ports"] == [{"port": 80, "name": "", "protocol": "TCP"}]
    assert slice_["endpoints"] == [{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}]


def test_namespaces_and_cluster_scoped_kinds():
    ns = apply_defaults({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab", "namespace": "x"}})
    assert ns["metadata"] == {"name": "lab", "labels": {"kubernetes.io/metadata.name": "lab"}}
    assert ns["status"] == {"phase": "Active"}
    node = apply_defaults({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    assert node["metadata"] == {"name": "n1"}


def test_patch_allocated_values_keeps_cluster_ip_and_node_ports():
    old = apply_defaults(service(type="NodePort", clusterIP="10.96.0.20",
                                 ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    new = apply_defaults(service(type="NodePort", ports=[{"name": "http", "port": 8080}]))
    patched = patch_allocated_values(old, new)
    assert patched["spec"]["clusterIP"] == "10.96.0.20"
    assert patched["spec"]["clusterIPs"] == ["10.96.0.20"]
    assert patched["spec"]["ports"][0]["nodePort"] == 30080
    assert "clusterIP" not in new["spec"]  # input untouched
