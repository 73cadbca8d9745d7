"""FieldError / InvalidError wording, checked against upstream's exact text.

Expected strings come from k8s.io/apimachinery field/errors.go and
api/errors/errors.go (NewInvalid), and from messages real API servers return.
"""

from kproxy.api.errors import (
    FieldError,
    InvalidError,
    duplicate,
    forbidden,
    go_label_selector,
    go_quote,
    go_string_map,
    go_string_slice,
    invalid,
    not_supported,
    required,
    too_long,
    too_many,
)


def test_invalid_renders_ints_bare_and_strings_quoted():
    err = invalid("spec.ports[0].nodePort", 80,
                  "provided port is not in the valid range. The range of valid ports is 30000-32767")
    assert str(err) == (
        "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. "
        "The range of valid ports is 30000-32767"
    )
    assert str(invalid("metadata.name", "Web_1", "bad")) == 'metadata.name: Invalid value: "Web_1": bad'


def test_required_forbidden_and_too_long_never_show_the_value():
    assert str(required("spec.ports[0].port")) == "spec.ports[0].port: Required value"
    assert str(required("metadata.name", "name or generateName is required")) == (
        "metadata.name: Required value: name or generateName is required")
    assert str(forbidden("spec.ports[0].nodePort", "may not be used when `type` is 'ClusterIP'")) == (
        "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'")
    assert str(too_long("metadata.annotations", "x" * 10, 5)) == (
        "metadata.annotations: Too long: must have at most 5 bytes")


def test_not_supported_lists_quoted_values():
    err = not_supported("spec.type", "Foo", ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"])
    assert str(err) == (
        'spec.type: Unsupported value: "Foo": supported values: '
        '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'
    )


def test_duplicate_and_too_many():
    assert str(duplicate("spec.ports[1].name", "http")) == 'spec.ports[1].name: Duplicate value: "http"'
    assert str(too_many("endpoints", 1001, 1000)) == "endpoints: Too many: 1001: must have at most 1000 items"


def test_go_value_rendering():
    assert go_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert str(go_string_slice(["10.0.0.5"])) == '[]string{"10.0.0.5"}'
    assert str(go_string_slice(["a", "b"])) == '[]string{"a", "b"}'
    assert str(go_string_map({"b": "2", "a": "1"})) == 'map[string]string{"a":"1", "b":"2"}'
    assert str(go_string_map(None)) == "map[string]string(nil)"
    assert str(go_label_selector({"matchLabels": {"app": "x"}})) == (
        'v1.LabelSelector{MatchLabels:map[string]string{"app":"x"}, '
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
    )
    assert str(invalid("x", None, "d")) == "x: Invalid value: null: d"
    assert str(invalid("x", True, "d")) == "x: Invalid value: true: d"


def test_invalid_error_with_one_error():
    err = InvalidError("Service", "web", [invalid(
        "spec.ports[0].nodePort", 80,
        "provided port is not in the valid range. The range of valid ports is 30000-32767")])
    assert str(err) == (
        'Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 80: provided port is not '
        "in the valid range. The range of valid ports is 30000-32767"
    )


def test_invalid_error_with_several_errors_is_bracketed_and_deduplicated():
    one = forbidden("spec.ports[0].nodePort", "may not be used when `type` is 'ClusterIP'")
    two = forbidden("spec.ports[1].nodePort", "may not be used when `type` is 'ClusterIP'")
    err = InvalidError("Service", "portworx-service", [one, two, one])
    assert str(err) == (
        'Service "portworx-service" is invalid: [spec.ports[0].nodePort: Forbidden: may not be used '
        "when `type` is 'ClusterIP', spec.ports[1].nodePort: Forbidden: may not be used when `type` "
        "is 'ClusterIP']"
    )


def test_invalid_error_qualifies_non_core_kinds_with_their_group():
    err = InvalidError("Deployment", "coredns", [duplicate(
        "spec.template.spec.containers[0].ports[1].name", "dns-tcp")])
    assert str(err) == (
        'Deployment.apps "coredns" is invalid: '
        'spec.template.spec.containers[0].ports[1].name: Duplicate value: "dns-tcp"'
    )
    assert str(InvalidError("Service", "web", [])) == 'Service "web" is invalid'


def test_to_status_matches_the_api_server_response():
    err = InvalidError("Deployment", "coredns", [duplicate(
        "spec.template.spec.containers[0].ports[1].name", "dns-tcp")])
    assert err.to_status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": str(err),
        "reason": "Invalid",
        "details": {
            "name": "coredns",
            "group": "apps",
            "kind": "Deployment",
            "causes": [{
                "reason": "FieldValueDuplicate",
                "message": 'Duplicate value: "dns-tcp"',
                "field": "spec.template.spec.containers[0].ports[1].name",
            }],
        },
        "code": 422,
    }


def test_field_error_is_a_plain_value():
    assert invalid("a", 1, "b") == FieldError("FieldValueInvalid", "a", 1, "b")
