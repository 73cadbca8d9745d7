"""selectors.py against upstream's own cases (labels/selector_test.go, fields/selector_test.go)
and the API server's refusals, word for word."""

from __future__ import annotations

import pytest

from kproxy.apiserver.selectors import (SelectorError, parse_field_selector, parse_label_requirements,
                                        parse_label_selector)

# ------------------------------------------------------------------ label selectors: TestSelectorMatches


@pytest.mark.parametrize("sel, labels, want", [
    ("", {"x": "y"}, True), ("x=y", {"x": "y"}, True), ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True), ("notin=in", {"notin": "in"}, True), ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True), ("x>1", {"x": "2"}, True), ("x<1", {"x": "0"}, True),
    ("x=z", {}, False), ("x=y", {"x": "z"}, False), ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False), ("x", {"y": "z"}, False), ("!x", {"x": "z"}, False),
    ("x>1", {"x": "0"}, False), ("x<1", {"x": "2"}, False),
    ("foo=bar,baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
    ("app in (web,api)", {"app": "api"}, True), ("app notin (web)", {}, True), ("app notin (web)", {"app": "web"}, False),
    ("app==web", {"app": "web"}, True), ("x=", {"x": ""}, True), ("x=", {}, False),
])
def test_matches(sel, labels, want):
    assert parse_label_selector(sel)(labels) is want


# ------------------------------------------------------------------ TestSetSelectorParser

@pytest.mark.parametrize("sel, reqs", [
    ("\rx", [("x", "exists", [])]),
    ("this-is-a-dns.domain.com/key-with-dash", [("this-is-a-dns.domain.com/key-with-dash", "exists", [])]),
    ("0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
     [("0.1.2.domain/99", "notin", ["10.10.100.1", "tick.tack.clock"])]),
    ("foo  in\t (abc)", [("foo", "in", ["abc"])]), ("x notin\n (abc)", [("x", "notin", ["abc"])]),
    ("x in (abc,)", [("x", "in", ["", "abc"])]), ("x in (abc,abc)", [("x", "in", ["abc"])]),
    ("x in ()", [("x", "in", [""])]), ("x in (a,,a,,a,,a,,)", [("x", "in", ["", "a"])]),
    ("x notin (abc,,def),bar,z in (),w", [("bar", "exists", []), ("w", "exists", []),
                                          ("x", "notin", ["", "abc", "def"]), ("z", "in", [""])]),
    ("x=a,y!=b,z in (h,i,j)", [("x", "=", ["a"]), ("y", "!=", ["b"]), ("z", "in", ["h", "i", "j"])]),
    ("x notin (, a)", [("x", "notin", ["", "a"])]), ("a ", [("a", "exists", [])]),
    ("a in (x,y,notin, z,in)", [("a", "in", ["in", "notin", "x", "y", "z"])]),
    ("x>1", [("x", "gt", ["1"])]), ("!x", [("x", "!", [])]),
])
def test_parses_like_upstream(sel, reqs):
    assert parse_label_requirements(sel) == reqs


@pytest.mark.parametrize("sel, message", [
    ("x=a||y=b", "unable to parse requirement: values[0][x]: Invalid value: \"a||y\": a valid label must be an "
                 "empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                 "an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                 "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
    ("x==a==b", "found '==', expected: ',' or 'end of string'"),
    ("!x=a", "found '=', expected: ',' or 'end of string'"),
    ("x<a", "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, "
            "the value must be an integer"),
    ("x,,y", "found ',', expected: identifier after ','"),
    (",x,y", "found ',', expected: !, identifier, or 'end of string'"),
    ("x nott in (y)", "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt"),
    ("a in (xyz),", "found '', expected: identifier after ','"),
    ("a in (xyz)b notin ()", "found 'b', expected: ',' or 'end of string'"),
    ("a in (xyz abc)", "unable to parse requirement: found 'abc', expected: ',' or ')'"),
    ("a notin(", "unable to parse requirement: found '', expected: ',', ')' or identifier"),
    ("a (", "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"),
    ("(", "found '(', expected: !, identifier, or 'end of string'"),
    ("app in web", "unable to parse requirement: found 'web' expected: '('"),
    ("Bad_Key_/x=y", "unable to parse requirement: <nil>: Invalid value: \"Bad_Key_/x\": prefix part a lowercase "
                     "RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
                     "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation "
                     "is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
    ("app=a$b", "unable to parse requirement: values[0][app]: Invalid value: \"a$b\": a valid label must be an "
                "empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                "an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
])
def test_refusals_in_upstreams_words(sel, message):
    with pytest.raises(SelectorError) as e:
        parse_label_selector(sel)
    assert e.value.message == message


# ------------------------------------------------------------------ field selectors

POD = {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
       "spec": {"nodeName": "node-2", "restartPolicy": "Always"},
       "status": {"phase": "Running", "podIP": "10.244.2.4", "podIPs": [{"ip": "10.244.2.4"}]}}
EVENT = {"kind": "Event", "metadata": {"name": "web.1", "namespace": "default"}, "type": "Normal",
         "reason": "Scheduled", "source": {"component": "kproxy-scheduler"},
         "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "u-1"}}


@pytest.mark.parametrize("kind, obj, sel, want", [
    ("Pod", POD, "metadata.name=web-1", True), ("Pod", POD, "metadata.name==web-2", False),
    ("Pod", POD, "metadata.namespace!=kube-system", True), ("Pod", POD, "spec.nodeName=node-2,status.phase=Running", True),
    ("Pod", POD, "status.phase!=Running", False), ("Pod", POD, "status.podIP=10.244.2.4", True),
    ("Pod", POD, "spec.host=node-2", True),  # the old clients' spelling
    ("Pod", POD, "spec.hostNetwork=false", True), ("Pod", POD, "status.podIPs=10.244.2.4", False),  # never set
    ("Pod", POD, "", True), ("Pod", POD, ",", True),
    ("Event", EVENT, "involvedObject.name=web-1,involvedObject.kind=Pod", True),
    ("Event", EVENT, "involvedObject.uid=u-1,type=Normal,reason=Scheduled", True),
    ("Event", EVENT, "source=kproxy-scheduler", True), ("Event", EVENT, "involvedObject.namespace=other", False),
    ("Node", {"metadata": {"name": "n"}, "spec": {}}, "spec.unschedulable=false", True),
    ("Namespace", {"metadata": {"name": "ns"}, "status": {"phase": "Active"}}, "status.phase=Active", True),
    ("Service", {"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "NodePort"}}, "spec.type=NodePort", True),
    ("Deployment", {"metadata": {"name": "d", "namespace": "x"}}, "metadata.namespace=x", True),
    ("Pod", {"metadata": {"name": "a,b=c"}}, r"metadata.name=a\,b\=c", True),
])
def test_field_selectors_match(kind, obj, sel, want):
    assert parse_field_selector(kind, sel)(obj) is want


def test_events_k8s_io_uses_regarding():
    ev = {"metadata": {"name": "e", "namespace": "default"}, "regarding": {"kind": "Pod", "name": "web-1"},
          "reason": "Started", "type": "Normal"}
    assert parse_field_selector("Event", "regarding.name=web-1,reason=Started", "events.k8s.io")(ev)
    assert parse_field_selector("Event", "regarding.name=web-1,reportingController=kproxy-scheduler",
                                "events.k8s.io")(EVENT)  # the same Event stored in core/v1's shape
    with pytest.raises(SelectorError) as e:
        parse_field_selector("Event", "involvedObject.name=web-1", "events.k8s.io")
    assert e.value.message == "field label not supported: involvedObject.name"


@pytest.mark.parametrize("kind, sel, message", [
    ("Pod", "spec.containers=x", "field label not supported: spec.containers"),
    ("Node", "metadata.namespace=x", "field label not supported: metadata.namespace"),
    ("Event", "message=x", "field label not supported: message"),
    ("Deployment", "status.replicas=1",
     '"status.replicas" is not a known field selector: only "metadata.name", "metadata.namespace"'),
    ("Endpoints", "subsets=1",
     '"subsets" is not a known field selector: only "metadata.name", "metadata.namespace"'),
    ("Pod", "metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
    ("Pod", "metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
    ("Pod", r"metadata.name=a\x", r"invalid field selector: invalid escape sequence: \x"),
])
def test_field_selector_refusals(kind, sel, message):
    with pytest.raises(SelectorError) as e:
        parse_field_selector(kind, sel)
    assert e.value.message == message
