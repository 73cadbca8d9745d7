"""The real kubectl (the machine's, v1.32) against a throw-away aiohttp server on loopback that
serves only kproxy.apiserver.discovery.add_routes: what kubectl prints is the assertion."""

import pytest

from tests.unit.apiserver_stub import kubectl_fixture


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    yield from kubectl_fixture(tmp_path_factory)


def test_api_resources_lists_the_served_resources(kubectl):
    out = kubectl("api-resources").stdout.splitlines()
    assert out[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    rows = {tuple(line.split()) for line in out[1:]}
    assert ("services", "svc", "v1", "true", "Service") in rows
    assert ("pods", "po", "v1", "true", "Pod") in rows
    assert ("namespaces", "ns", "v1", "false", "Namespace") in rows
    assert ("deployments", "deploy", "apps/v1", "true", "Deployment") in rows
    assert ("events", "ev", "events.k8s.io/v1", "true", "Event") in rows
    assert ("endpointslices", "discovery.k8s.io/v1", "true", "EndpointSlice") in rows
    assert ("ipaddresspools", "metallb.io/v1beta1", "true", "IPAddressPool") in rows
    assert len(rows) == 13
    wide = kubectl("api-resources", "-o", "wide", "--api-group=apps").stdout
    assert "create,delete,deletecollection,get,list,patch,update,watch   all" in wide
    assert kubectl("api-resources", "--categories=all", "-o", "name").stdout.split() == [
        "pods", "services", "deployments.apps", "replicasets.apps"]


def test_version_and_raw_paths(kubectl):
    assert "Server Version: v1.32.0-kproxy" in kubectl("version").stdout
    assert kubectl("get", "--raw", "/readyz?verbose").stdout.endswith("readyz check passed\n")
    groups = kubectl("api-versions").stdout.split()
    assert groups == ["apps/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1", "events.k8s.io/v1",
                      "metallb.io/v1beta1", "v1"]
