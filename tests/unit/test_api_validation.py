"""Validation messages, compared as exact strings.

Expected text comes from upstream source (pkg/apis/core/validation,
pkg/apis/apps/validation, apimachinery util/validation, the Service
allocators) and from errors real API servers returned to kubectl users.
"""

import pytest

from kproxy.api.admission import Admission
from kproxy.api.defaults import apply_defaults, patch_allocated_values
from kproxy.api.validation import validate, validate_update


class Refused(Exception):
    pass


def check(obj, old=None, **kw):
    """Through the admission gate (api/admission.py): the defaulted object, or Refused(its message)."""
    verdict = Admission(**kw).admit(obj, old=old)
    if not verdict.ok:
        raise Refused(verdict.message)
    return verdict.obj

DNS1035 = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def service(name="web", **spec):
    spec.setdefault("selector", {"app": name})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def deployment(name="web", labels=None, selector=..., containers=None, **spec):
    labels = {"app": name} if labels is None else labels
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"template": {"metadata": {"labels": labels},
                                 "spec": {"containers": containers if containers is not None
                                          else [{"name": "web", "image": "nginx"}]}},
                    **spec}}
    if selector is ...:
        selector = {"matchLabels": labels}
    if selector is not None:
        obj["spec"]["selector"] = selector
    return obj


def pod(containers, name="p"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": containers}}


def error_of(obj, **kw):
    with pytest.raises(Refused) as exc:
        check(obj, **kw)
    return str(exc.value)


def messages(obj, **kw):
    return [str(e) for e in validate(apply_defaults(obj), **kw)]


# --------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------

def test_node_port_out_of_range():
    obj = service(type="NodePort", ports=[{"port": 80, "nodePort": 80}])
    assert error_of(obj) == (
        'Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port is not '
        "in the valid range. The range of valid ports is 30000-32767"
    )


def test_node_port_range_is_configurable_and_allocation_errors_come_first():
    obj = service(name="Web_1", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    assert error_of(obj, node_port_range=(31000, 31999)) == (
        'Service "Web_1" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port '
        "is not in the valid range. The range of valid ports is 31000-31999"
    )


def test_node_port_used_twice_in_one_service():
    obj = service(type="NodePort", ports=[{"name": "a", "port": 80, "nodePort": 30080},
                                          {"name": "b", "port": 81, "nodePort": 30080}])
    assert messages(obj) == ["spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated"]


def test_tcp_and_udp_on_one_port_number_share_their_node_port():
    obj = service(type="NodePort", ports=[{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                                          {"name": "dns-tcp", "port": 53, "nodePort": 30053}])
    assert messages(obj) == []


def test_node_port_forbidden_for_cluster_ip():
    obj = service(name="django", ports=[{"port": 80, "nodePort": 30080}])
    assert error_of(obj) == (
        "Service \"django\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when "
        "`type` is 'ClusterIP'"
    )


def test_cluster_ip_outside_service_cidr():
    obj = service(name="test", clusterIP="1.1.1.1", ports=[{"port": 80}])
    assert error_of(obj, service_cidr="10.32.0.0/12") == (
        'Service "test" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to '
        "allocate IP 1.1.1.1: the provided IP (1.1.1.1) is not in the valid range. The range of "
        "valid IPs is 10.32.0.0/12"
    )
    assert messages(service(clusterIP="10.96.0.0", ports=[{"port": 80}])) == [
        'spec.clusterIPs: Invalid value: []string{"10.96.0.0"}: failed to allocate IP 10.96.0.0: the '
        "provided IP (10.96.0.0) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    ]
    assert messages(service(clusterIP="10.96.0.10", ports=[{"port": 80}])) == []
    assert messages(service(clusterIP="None", ports=[{"port": 80}])) == []


def test_invalid_cluster_ip():
    assert messages(service(clusterIP="10.96.0.300", ports=[{"port": 80}])) == [
        'spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, '
        "(e.g. 10.9.8.7 or 2001:db8::ffff)"
    ]


def test_two_cluster_ips_of_one_family():
    obj = service(name="ds", clusterIPs=["10.96.0.5", "10.96.0.6"], ports=[{"port": 80}])
    assert error_of(obj) == (
        'Service "ds" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.5", "10.96.0.6"}: '
        "may specify no more than one IP for each IP family"
    )


def test_ipv6_family_on_an_ipv4_cluster():
    assert messages(service(ipFamilies=["IPv6"], ports=[{"port": 80}])) == [
        'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster']
    assert messages(service(ipFamilyPolicy="RequireDualStack", ports=[{"port": 80}])) == [
        'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured '
        "for dual-stack services"]
    assert messages(service(ipFamilyPolicy="RequireDualStack", ports=[{"port": 80}]),
                    service_cidr="10.96.0.0/12,fd00:10:96::/112") == []


def test_service_name_must_be_a_dns1035_label():
    assert messages(service(name="Web_1", ports=[{"port": 80}])) == [
        f'metadata.name: Invalid value: "Web_1": {DNS1035}']
    assert messages(service(name="1web", ports=[{"port": 80}])) == [
        f'metadata.name: Invalid value: "1web": {DNS1035}']


def test_unsupported_type():
    assert messages(service(type="Foo", ports=[{"port": 80}])) == [
        'spec.type: Unsupported value: "Foo": supported values: "ClusterIP", "ExternalName", '
        '"LoadBalancer", "NodePort"']


def test_ports_required_unless_headless_or_external_name():
    assert messages(service()) == ["spec.ports: Required value"]
    assert messages(service(clusterIP="None")) == []
    assert messages(service(type="ExternalName", externalName="db.example.com")) == []


def test_port_names_required_when_several_and_unique():
    obj = service(ports=[{"name": "http", "port": 80}, {"port": 443}])
    assert messages(obj) == ["spec.ports[1].name: Required value"]
    obj = service(ports=[{"name": "http", "port": 80}, {"name": "http", "port": 443}])
    assert messages(obj) == ['spec.ports[1].name: Duplicate value: "http"']


def test_duplicate_port_reported_like_kubectl_create_service():
    # kubectl create svc clusterip two-ports --tcp 80:80,443,443 (real API server output)
    obj = service(name="two-ports", ports=[{"name": "80-80", "port": 80, "targetPort": 80},
                                           {"name": "443", "port": 443, "targetPort": 443},
                                           {"name": "443", "port": 443, "targetPort": 443}])
    assert error_of(obj) == (
        'Service "two-ports" is invalid: [spec.ports[2].name: Duplicate value: "443", spec.ports[2]: '
        'Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), '
        'Port:443, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}]'
    )


def test_port_numbers_protocols_and_target_ports():
    obj = service(ports=[{"name": "a", "port": 0}, {"name": "b", "port": 70000, "targetPort": "Http_Port"},
                         {"name": "c", "port": 81, "protocol": "ICMP", "targetPort": 0}])
    assert messages(obj) == [
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        'spec.ports[1].targetPort: Invalid value: "Http_Port": must contain only alpha-numeric '
        "characters (a-z, 0-9), and hyphens (-)",
        'spec.ports[2].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"',
    ]
    assert messages(service(ports=[{"port": 80, "targetPort": "http-alt-8080-xy"}])) == [
        'spec.ports[0].targetPort: Invalid value: "http-alt-8080-xy": must be no more than 15 characters']


def test_external_name():
    assert messages(service(type="ExternalName")) == ["spec.externalName: Required value"]
    assert messages(service(type="ExternalName", externalName="Bad_Name")) == [
        f'spec.externalName: Invalid value: "Bad_Name": {DNS1123_SUBDOMAIN}']
    assert messages(service(type="ExternalName", externalName="db.example.com.", clusterIP="10.96.0.9")) == [
        "spec.clusterIPs: Forbidden: may not be set for ExternalName services"]


def test_session_affinity():
    assert messages(service(sessionAffinity="Sticky", ports=[{"port": 80}])) == [
        'spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None"']
    obj = service(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 90000}},
                  ports=[{"port": 80}])
    assert messages(obj) == [
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 90000: must be greater "
        "than 0 and less than 86400"]


def test_external_traffic_policy_only_for_externally_accessible_services():
    assert messages(service(externalTrafficPolicy="Local", ports=[{"port": 80}])) == [
        'spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services']
    assert messages(service(type="NodePort", externalTrafficPolicy="Nearest", ports=[{"port": 80}])) == [
        'spec.externalTrafficPolicy: Unsupported value: "Nearest": supported values: "Cluster", "Local"']
    assert messages(service(type="NodePort", externalTrafficPolicy="Local", ports=[{"port": 80}])) == []


def test_load_balancer_source_ranges_and_external_ips():
    obj = service(type="LoadBalancer", loadBalancerSourceRanges=["10.0.0.0/8", "10.0.0.1"],
                  externalIPs=["192.168.1.10", "127.0.0.1", "nope"], ports=[{"port": 80}])
    assert messages(obj) == [
        'spec.externalIPs[1]: Invalid value: "127.0.0.1": may not be in the loopback range '
        "(127.0.0.0/8, ::1/128)",
        'spec.externalIPs[2]: Invalid value: "nope": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)',
        'spec.LoadBalancerSourceRanges[1]: Invalid value: "10.0.0.1": must be a valid CIDR value, '
        "(e.g. 10.9.8.0/24 or 2001:db8::/64)",
    ]
    assert messages(service(loadBalancerSourceRanges=["10.0.0.0/8"], ports=[{"port": 80}])) == [
        "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"]


def test_selector_labels_are_validated():
    assert messages(service(selector={"app": "web app"}, ports=[{"port": 80}])) == [
        'spec.selector: Invalid value: "web app": a valid label must be an empty string or consist of '
        "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
        "character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
        "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"]


def test_valid_services_pass():
    assert messages(service(ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                   {"name": "https", "port": 443, "targetPort": 8443}])) == []
    assert messages(service(type="LoadBalancer", ports=[{"port": 80, "nodePort": 32767}])) == []


def test_service_update_keeps_cluster_ip():
    old = check(service(clusterIP="10.96.0.20", ports=[{"port": 80}]))
    # Re-applying the manifest without clusterIP keeps the allocated one: not an update of clusterIP.
    assert check(service(ports=[{"port": 8080}]), old=old)["spec"].get("clusterIP") is None  # as declared
    assert patch_allocated_values(old, apply_defaults(service(ports=[{"port": 8080}])))["spec"]["clusterIP"] == \
        "10.96.0.20"
    new = apply_defaults(service(clusterIP="10.96.0.99", ports=[{"port": 80}]))
    assert [str(e) for e in validate_update(old, new)] == [
        'spec.clusterIPs[0]: Invalid value: []string{"10.96.0.99"}: may not change once set']
    to_external = apply_defaults(service(type="ExternalName", externalName="example.com"))
    assert validate_update(old, to_external) == []


# --------------------------------------------------------------------------
# Deployments
# --------------------------------------------------------------------------

def test_deployment_without_selector():
    assert error_of(deployment(selector=None)) == (
        'Deployment.apps "web" is invalid: [spec.selector: Required value, '
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"web"}: '
        "`selector` does not match template `labels`]"
    )


def test_empty_deployment_matches_real_api_server_output():
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}, "spec": {}}
    assert error_of(obj) == (
        'Deployment.apps "" is invalid: [metadata.name: Required value: name or generateName is '
        "required, spec.selector: Required value, spec.template.metadata.labels: Invalid value: "
        "map[string]string(nil): `selector` does not match template `labels`, "
        "spec.template.spec.containers: Required value]"
    )


def test_selector_must_match_template_labels():
    obj = deployment(name="x", labels={"app": "x"}, selector={"matchLabels": {"app": "y"}})
    assert messages(obj) == [
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"x"}: '
        "`selector` does not match template `labels`"]
    obj = deployment(labels={"app": "web", "tier": "fe"},
                     selector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]})
    assert messages(obj) == []


def test_empty_selector_and_negative_replicas():
    obj = deployment(selector={}, replicas=-1)
    assert messages(obj) == [
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), "
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment",
    ]


def test_bad_selector_operator():
    obj = deployment(selector={"matchExpressions": [{"key": "app", "operator": "Is", "values": ["web"]}]})
    assert messages(obj) == [
        'spec.selector.matchExpressions[0].operator: Invalid value: "Is": not a valid selector operator',
        'spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), '
        'MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:"app", '
        'Operator:"Is", Values:[]string{"web"}}}}: invalid label selector',
    ]


def test_deployment_template_pod_spec_is_validated():
    obj = deployment(containers=[{"name": "HelloWorld-container", "image": "nginx",
                                  "ports": [{"name": "https", "containerPort": 443},
                                            {"name": "https", "containerPort": 8443}]}])
    assert messages(obj) == [
        f'spec.template.spec.containers[0].name: Invalid value: "HelloWorld-container": {DNS1123_LABEL}',
        'spec.template.spec.containers[0].ports[1].name: Duplicate value: "https"',
    ]
    obj = deployment()
    obj["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    assert messages(obj) == [
        'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"']


def test_deployment_selector_is_immutable():
    old = check(deployment(name="x", labels={"app": "x"}))
    new = apply_defaults(deployment(name="x", labels={"app": "x", "v": "2"}))
    assert [str(e) for e in validate_update(old, new)] == [
        'spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"x", "v":"2"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]
    with pytest.raises(Refused) as exc:
        check(deployment(name="x", labels={"app": "x", "v": "2"}), old=old)
    assert str(exc.value).startswith('Deployment.apps "x" is invalid: spec.selector: Invalid value: ')


def test_deployment_name_must_be_a_dns_subdomain():
    assert messages(deployment(name="HelloWorld")) == [
        f'metadata.name: Invalid value: "HelloWorld": {DNS1123_SUBDOMAIN}']


# --------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------

def test_pod_containers_required():
    assert messages(pod([])) == ["spec.containers: Required value"]


def test_container_ports():
    obj = pod([{"name": "web", "image": "nginx", "ports": [
        {"name": "web-http-port-80", "containerPort": 80},
        {"containerPort": 0},
        {"name": "80", "containerPort": 70000, "protocol": "tcp"},
    ]}])
    assert messages(obj) == [
        'spec.containers[0].ports[0].name: Invalid value: "web-http-port-80": must be no more than 15 characters',
        "spec.containers[0].ports[1].containerPort: Required value",
        'spec.containers[0].ports[2].name: Invalid value: "80": must contain at least one letter (a-z)',
        "spec.containers[0].ports[2].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        'spec.containers[0].ports[2].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP"',
    ]


def test_container_names_and_images():
    obj = pod([{"name": "web", "image": "nginx"}, {"name": "web"}])
    assert messages(obj) == [
        "spec.containers[1].image: Required value",
        'spec.containers[1].name: Duplicate value: "web"',
    ]


def test_probes_need_exactly_one_handler():
    obj = pod([{"name": "web", "image": "nginx",
                "readinessProbe": {"periodSeconds": 5},
                "livenessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}, "successThreshold": 2}}])
    assert messages(obj) == [
        "spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
        "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
        "spec.containers[0].readinessProbe: Required value: must specify a handler type",
    ]


def test_pod_restart_and_dns_policy():
    obj = pod([{"name": "web", "image": "nginx"}])
    obj["spec"].update(restartPolicy="Sometimes", dnsPolicy="Cluster")
    assert messages(obj) == [
        'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"',
        'spec.dnsPolicy: Unsupported value: "Cluster": supported values: "ClusterFirstWithHostNet", '
        '"ClusterFirst", "Default", "None"',
    ]


def test_pod_labels_and_namespace():
    obj = pod([{"name": "web", "image": "nginx"}])
    obj["metadata"].update(namespace="Lab", labels={"bad key!": "x"})
    assert messages(obj) == [
        f'metadata.namespace: Invalid value: "Lab": {DNS1123_LABEL}',
        "metadata.labels: Invalid value: \"bad key!\": name part must consist of alphanumeric "
        "characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
        "'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
        "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
    ]


# --------------------------------------------------------------------------
# Endpoints, EndpointSlices, Namespaces
# --------------------------------------------------------------------------

def test_endpoints():
    obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"}, "subsets": [
        {"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.1"}], "ports": [{"port": 80}, {"port": 81}]},
        {"ports": [{"port": 80}]},
    ]}
    assert messages(obj) == [
        'subsets[0].addresses[1].ip: Invalid value: "10.244.1": must be a valid IP address, '
        "(e.g. 10.9.8.7 or 2001:db8::ffff)",
        'subsets[0].addresses[1].ip: Invalid value: "10.244.1": must be a valid IP address',
        "subsets[0].ports[0].name: Required value",
        "subsets[0].ports[1].name: Required value",
        "subsets[1]: Required value: must specify `addresses` or `notReadyAddresses`",
    ]


def test_endpoint_slices():
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "web-x1"},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}],
           "endpoints": [{"addresses": ["10.244.1.5"]}, {"addresses": ["fd00::1"]}, {"addresses": []}]}
    assert messages(obj) == [
        'endpoints[1].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address',
        "endpoints[2].addresses: Required value: must contain at least 1 address",
        'ports[1].name: Duplicate value: "http"',
    ]
    obj["addressType"] = "IP"
    assert messages(obj)[0] == 'addressType: Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"'


def test_namespace_names_are_dns1123_labels():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team.a"}}
    assert messages(ns) == ['metadata.name: Invalid value: "team.a": must not contain dots']
    assert messages({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "123-lab"}}) == []


def test_check_returns_the_defaulted_object():
    stored = check(service(ports=[{"port": 80}]))
    assert stored["metadata"]["namespace"] == "default"
    assert stored["spec"]["type"] == "ClusterIP"


def test_wrong_types_are_reported_not_crashed_on():
    obj = service(ports=[{"port": "80"}])
    assert messages(obj)[0] == 'spec.ports[0].port: Invalid value: "80": must be of type integer'


# --------------------------------------------------------------------------
# issue 12 (#2, #3, #13): hostile objects are refused by field, never crash
# --------------------------------------------------------------------------

def test_a_string_port_is_reported_at_port_alone_not_at_target_port():
    assert messages(service(ports=[{"port": "80"}])) == [
        'spec.ports[0].port: Invalid value: "80": must be of type integer']
    assert messages(service(ports=[{"port": [80]}])) == [
        'spec.ports[0].port: Invalid value: []string{"80"}: must be of type integer']


@pytest.mark.parametrize("obj, expected", [
    (deployment(replicas="3"), 'spec.replicas: Invalid value: "3": must be of type integer'),
    (service(ports={"port": 80}), 'spec.ports: Invalid value: map[string]string{"port":"80"}: must be of type array'),
    (service(ports=[{"port": 80}], type=["ClusterIP"]),
     'spec.type: Invalid value: []string{"ClusterIP"}: must be of type string'),
    (service(ports=[{"port": 80}], clusterIPs=5), "spec.clusterIPs: Invalid value: 5: must be of type array"),
    (service(ports=[{"port": 2 ** 40}]), "spec.ports[0].port: Invalid value: 1099511627776: "
                                         "must fit in type int32 (-2147483648 to 2147483647)"),
    (pod([{"name": "c", "image": "busybox", "command": ["sleep", 5]}]),
     "spec.containers[0].command[1]: Invalid value: 5: must be of type string"),
    (pod([None]), "spec.containers[0]: Invalid value: null: must be of type object"),
])
def test_wrong_types_are_field_errors_before_defaulting(obj, expected):
    assert messages(obj) == [expected]
    with pytest.raises(Refused):
        check(obj)


def test_defaults_never_raise_on_wrong_types():
    for obj in (service(ports=[{"port": 80}], clusterIPs=5), service(sessionAffinity=["x"]), deployment(strategy=[1]),
                {"apiVersion": "v1", "kind": "Service", "metadata": [1]}, ["not", "an", "object"]):
        apply_defaults(obj)  # returns the object undefaulted; validate() says why
        assert validate(apply_defaults(obj))


def test_cluster_ips_with_leading_zeros_are_refused_as_the_api_server_does():
    assert messages(service(ports=[{"port": 80}], clusterIP="10.96.0.010")) == [
        'spec.clusterIPs[0]: Invalid value: "10.96.0.010": must not have leading 0s']
    assert 'spec.externalIPs[0]: Invalid value: "192.0.2.01": must not have leading 0s' in messages(
        service(ports=[{"port": 80}], externalIPs=["192.0.2.01"]))
    assert messages(service(ports=[{"port": 80}], clusterIP="10.96.0.10")) == []


def test_annotations_over_256_kib_are_too_long():
    obj = service(ports=[{"port": 80}])
    obj["metadata"]["annotations"] = {f"a{i}": "x" * 1024 for i in range(260)}
    assert messages(obj) == ["metadata.annotations: Too long: must have at most 262144 bytes"]


@pytest.mark.parametrize("obj, limit", [
    (deployment(name="d" * 254), 253), (pod([{"name": "c", "image": "i"}], name="p" * 254), 253),
    (service(name="s" * 64, ports=[{"port": 80}]), 63),
    ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n" * 64}}, 63),
])
def test_names_over_the_kinds_limit_are_refused(obj, limit):
    name = obj["metadata"]["name"]
    assert f'metadata.name: Invalid value: "{name}": must be no more than {limit} characters' in messages(obj)


def test_huge_values_are_cut_in_messages():
    obj = service(name="x" * 100_000, ports=[{"port": 80}])
    with pytest.raises(Refused) as exc:
        check(obj)
    assert len(str(exc.value)) < 4000 and "(100000 characters)" in str(exc.value)


def test_unknown_api_versions_are_not_served():
    from kproxy.api.meta import no_match_error

    obj = deployment()
    assert no_match_error(obj, "d.yaml") is None
    obj["apiVersion"] = "apps/v2"
    assert no_match_error(obj, "d.yaml") == (
        'resource mapping not found for name: "web" namespace: "" from "d.yaml": no matches for kind "Deployment" '
        'in version "apps/v2"\nensure CRDs are installed first')
    assert no_match_error({"apiVersion": "v1", "kind": "Frob"}, "f.yaml", hint=False).endswith(
        'no matches for kind "Frob" in version "v1"')


def test_address_pools_are_validated():
    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "p", "namespace": "metallb-system"}, "spec": {"addresses": ["192.0.2.0/28"]}}
    assert messages(pool) == []
    pool["spec"]["addresses"] = ["192.0.2.9-192.0.2.1", "banana", "192.0.2.7", 5]
    assert messages(pool) == ["spec.addresses[3]: Invalid value: 5: must be of type string"]
    pool["spec"]["addresses"] = ["192.0.2.9-192.0.2.1", "banana", "192.0.2.7"]
    assert messages(pool) == [
        'spec.addresses[0]: Invalid value: "192.0.2.9-192.0.2.1": the range ends before it starts',
        'spec.addresses[1]: Invalid value: "banana": must be an IPv4 CIDR (192.168.10.0/24) or range '
        "(192.168.10.1-192.168.10.9)"]


def test_security_context_ids_are_refused_outside_the_api_servers_range():
    from kproxy.api import defaults
    pod = defaults.apply_defaults({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "securityContext": {"runAsUser": -1},
        "containers": [{"name": "c", "image": "x", "securityContext": {"runAsGroup": 2147483648, "runAsUser": 0}}]}})
    msgs = [str(e) for e in validate(pod)]
    assert "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive" in msgs
    assert ("spec.containers[0].securityContext.runAsGroup: Invalid value: 2147483648: "
            "must be between 0 and 2147483647, inclusive") in msgs
    assert len(msgs) == 2


# ------------------------------------------------- issue 12 #11: addresses kproxy must not program
def _lb_service(ingress_ip=None, external=None):
    from kproxy.api import defaults
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    if external:
        svc["spec"]["externalIPs"] = [external]
    if ingress_ip:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": ingress_ip}]}}
    return defaults.apply_defaults(svc)


@pytest.mark.parametrize("ip,detail", [
    ("127.0.0.1", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
    ("127.9.9.9", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
    ("0.0.0.0", "may not be unspecified (0.0.0.0)"),
    ("169.254.169.254", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
    ("224.0.0.1", "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
    ("239.255.255.250", "may not be in the multicast range (224.0.0.0/4, ff00::/8)"),
    ("255.255.255.255", "may not be the broadcast address (255.255.255.255)"),
])
def test_special_addresses_refused_in_status_ingress_and_external_ips(ip, detail):
    from kproxy.api import validation
    errs = [str(e) for e in validation.validate(_lb_service(ingress_ip=ip))]
    assert errs == [f'status.loadBalancer.ingress[0].ip: Invalid value: "{ip}": {detail}']
    errs = [str(e) for e in validation.validate(_lb_service(external=ip))]
    assert errs == [f'spec.externalIPs[0]: Invalid value: "{ip}": {detail}']


def test_ordinary_ingress_address_accepted_and_garbage_named():
    from kproxy.api import validation
    assert validation.validate(_lb_service(ingress_ip="192.168.49.240")) == []
    assert [str(e) for e in validation.validate(_lb_service(ingress_ip="nope"))] == [
        'status.loadBalancer.ingress[0].ip: Invalid value: "nope": must be a valid IP address, '
        '(e.g. 10.9.8.7 or 2001:db8::ffff)']
