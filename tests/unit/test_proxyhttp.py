"""The proxy subresource's resolution (kproxy/apiserver/proxyhttp.py), with upstream's rules
and words: SplitSchemeNamePort, a numeric port mapped to the Service port's name, a random
ready address of the Endpoints with that port name, 503s when there is none."""
from __future__ import annotations

import pytest

from kproxy.apiserver.proxyhttp import pod_location, rewrite_location, service_location, split_scheme_name_port

SVC = {"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.20", "ports": [
    {"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090}]}}
EPS = {"subsets": [{"addresses": [{"ip": "10.244.0.4"}, {"ip": "10.244.0.5"}],
                    "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]}]}
POD = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]},
       "status": {"podIP": "10.244.0.9"}}


def lookup_of(objs):
    return lambda kind, ns, name: objs.get((kind, name))


@pytest.mark.parametrize("text,want", [
    ("web", ("http", "web", "")), ("web:80", ("http", "web", "80")), ("https:web:443", ("https", "web", "443")),
    ("https:web:", ("https", "web", "")), ("ftp:web:21", None), (":80", None), ("a:b:c:d", None)])
def test_split_scheme_name_port(text, want):
    assert split_scheme_name_port(text) == want


def test_service_ports_by_number_and_name():
    lookup = lookup_of({("Service", "web"): SVC, ("Endpoints", "web"): EPS})
    seen = {service_location(lookup, "default", "web:80")[1] for _ in range(50)}
    assert seen == {"10.244.0.4", "10.244.0.5"}  # a random ready address
    assert service_location(lookup, "default", "web:80")[2] == 8080
    assert service_location(lookup, "default", "https:web:metrics")[::2] == ("https", 9100)


def test_service_errors_in_upstream_words():
    lookup = lookup_of({("Service", "web"): SVC, ("Endpoints", "web"): EPS})
    for ident, code, message in [
            ("web:81", 503, b'no service port 81 found for service \\"web\\"'),
            ("web", 503, b'no endpoints available for service \\"web\\"'),  # unnamed: no port named ""
            ("nope:80", 404, b'services \\"nope\\" not found')]:
        resp = service_location(lookup, "default", ident)
        assert resp.status == code and message in resp.body, (ident, resp.body)
    empty = lookup_of({("Service", "web"): SVC, ("Endpoints", "web"): {"subsets": []}})
    assert service_location(empty, "default", "web:80").status == 503


def test_service_without_endpoints_object_goes_to_its_cluster_ip():
    lookup = lookup_of({("Service", "web"): SVC})
    assert service_location(lookup, "default", "web:http") == ("http", "10.96.0.20", 80)


def test_pod_location():
    lookup = lookup_of({("Pod", "p"): POD})
    assert pod_location(lookup, "default", "p") == ("http", "10.244.0.9", 80)
    assert pod_location(lookup, "default", "p:web") == ("http", "10.244.0.9", 8080)
    assert pod_location(lookup, "default", "https:p:8443") == ("https", "10.244.0.9", 8443)
    assert pod_location(lookup, "default", "p:nope").status == 400


def test_redirects_stay_under_the_proxy_path():
    prefix = "/api/v1/namespaces/default/services/web:80/proxy"
    assert rewrite_location("/login", prefix, "http://10.244.0.4:8080") == prefix + "/login"
    assert rewrite_location("http://10.244.0.4:8080/a?b", prefix, "http://10.244.0.4:8080") == prefix + "/a?b"
    assert rewrite_location("https://example.com/x", prefix, "http://10.244.0.4:8080") == "https://example.com/x"
    assert rewrite_location("next", prefix, "http://10.244.0.4:8080") == "next"
