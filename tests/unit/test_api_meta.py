"""Kind table, CLI resource words and label selectors."""

import pytest

from kproxy.api.meta import (
    KINDS,
    labels_of,
    namespace_of,
    obj_key,
    resolve_kind,
    selector_matches,
)


@pytest.mark.parametrize("word, kind", [
    ("svc", "Service"), ("services", "Service"), ("Service", "Service"), ("service", "Service"),
    ("deploy", "Deployment"), ("deployments.apps", "Deployment"), ("po", "Pod"), ("pods", "Pod"),
    ("ep", "Endpoints"), ("endpoints", "Endpoints"), ("endpointslices", "EndpointSlice"),
    ("endpointslice.discovery.k8s.io", "EndpointSlice"), ("ns", "Namespace"), ("no", "Node"),
    ("NODES", "Node"),
])
def test_resolve_kind(word, kind):
    assert resolve_kind(word) == kind


def test_resolve_kind_unknown_word_is_none():
    assert resolve_kind("foo") is None


def test_kind_table():
    assert KINDS["Deployment"].api_versions == ("apps/v1",)
    assert KINDS["Deployment"].group == "apps"
    assert KINDS["EndpointSlice"].group == "discovery.k8s.io"
    assert KINDS["Service"].group == ""
    assert not KINDS["Namespace"].namespaced and not KINDS["Node"].namespaced
    assert KINDS["Pod"].namespaced


def test_keys_namespaces_and_labels():
    svc = {"kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}}}
    assert obj_key(svc) == ("Service", "default", "web")
    assert namespace_of({"kind": "Pod", "metadata": {"namespace": "lab"}}) == "lab"
    assert obj_key({"kind": "Node", "metadata": {"name": "n1", "namespace": "x"}}) == ("Node", "", "n1")
    assert labels_of(svc) == {"app": "web"}
    assert labels_of({"kind": "Pod"}) == {}


def test_plain_map_selector():
    assert selector_matches({"app": "web"}, {"app": "web", "tier": "fe"})
    assert not selector_matches({"app": "web"}, {"app": "db"})
    assert selector_matches({}, {"anything": "x"})
    assert not selector_matches(None, {"app": "web"})


def test_label_selector_with_expressions():
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "track", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    good = {"app": "web", "tier": "fe", "track": "stable"}
    assert selector_matches(selector, good)
    assert not selector_matches(selector, {**good, "tier": "db"})
    assert not selector_matches(selector, {**good, "env": "prod"})
    assert not selector_matches(selector, {k: v for k, v in good.items() if k != "track"})
    assert not selector_matches(selector, {**good, "canary": "yes"})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": "b"})
    assert selector_matches({"matchLabels": {}}, {"a": "b"})
