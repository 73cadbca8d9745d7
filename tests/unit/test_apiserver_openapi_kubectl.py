"""The real kubectl (v1.32) against the loopback stub of tests/unit/apiserver_stub.py: explain,
client-side apply from the v3 schema, server-side apply, strict field validation and the 422 text."""

import json

import pytest

from tests.unit.apiserver_stub import Stub, kubectl_fixture

SERVICE = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: NODEPORT}]
"""


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    yield from kubectl_fixture(tmp_path_factory, Stub())


def _manifest(kubectl, name, text):
    path = kubectl.tmp / name
    path.write_text(text)
    return str(path)


def test_explain_service_spec_ports(kubectl):
    out = kubectl("explain", "svc.spec.ports").stdout
    assert out.startswith("KIND:       Service\nVERSION:    v1\n\nFIELD: ports <[]ServicePort>")
    assert "The list of ports that are exposed by this service." in out
    for field in ("appProtocol\t<string>", "nodePort\t<integer>", "port\t<integer> -required-",
                  "targetPort\t<IntOrString>"):
        assert field in out
    pools = kubectl("explain", "ipaddresspools.spec.addresses").stdout
    assert "GROUP:      metallb.io" in pools and "FIELD: addresses <[]string>" in pools
    assert "KIND:       Deployment" in kubectl("explain", "deploy.spec.strategy.rollingUpdate").stdout
    missing = kubectl("explain", "svc.spec.nosuch", check=False)
    assert missing.returncode != 0 and 'field "nosuch" does not exist' in missing.stderr


def test_bad_node_port_is_refused_with_the_api_servers_words(kubectl):
    proc = kubectl("apply", "-f", _manifest(kubectl, "bad.yaml", SERVICE.replace("NODEPORT", "99999")),
                   check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ('The Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 99999: '
                                   'provided port is not in the valid range. The range of valid ports is 30000-32767')


def test_client_side_apply_patches_from_the_v3_schema(kubectl):
    kubectl("apply", "-f", _manifest(kubectl, "web.yaml", SERVICE.replace("NODEPORT", "30080")))
    create = kubectl.stub.requests[-1]
    assert create["method"] == "POST" and create["query"]["fieldValidation"] == "Strict"
    changed = SERVICE.replace("NODEPORT", "30080").replace("8080", "8081")
    proc = kubectl("apply", "-f", _manifest(kubectl, "web2.yaml", changed), "-v=6")
    assert "service/web configured" in proc.stdout
    assert "/openapi/v3/api/v1?hash=" in proc.stderr  # the patch came from the v3 document
    assert "warning" not in proc.stderr.lower()
    patch = kubectl.stub.requests[-1]
    assert patch["method"] == "PATCH" and patch["content_type"] == "application/strategic-merge-patch+json"
    body = json.loads(patch["body"])
    assert body["spec"]["$setElementOrder/ports"] == [{"port": 80}]
    assert body["spec"]["ports"] == [{"port": 80, "targetPort": 8081}]


def test_unknown_fields_are_refused_strictly(kubectl):
    typo = SERVICE.replace("NODEPORT", "30081").replace("name: web", "name: typo").replace("selector:", "selectr:")
    proc = kubectl("apply", "-f", _manifest(kubectl, "typo.yaml", typo), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith('Service in version "v1" cannot be handled as a Service: '
                                        'strict decoding error: unknown field "spec.selectr"')
    ssa = kubectl("apply", "--server-side", "-f", str(kubectl.tmp / "typo.yaml"), check=False)
    assert ssa.returncode == 1 and 'strict decoding error: unknown field "spec.selectr"' in ssa.stderr
    request = kubectl.stub.requests[-1]
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["query"] == {"fieldManager": "kubectl", "fieldValidation": "Strict", "force": "false"}


def test_server_side_apply_and_expose(kubectl):
    deploy = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hello}\nspec:\n  replicas: 1\n"
              "  selector: {matchLabels: {app: hello}}\n  template:\n    metadata: {labels: {app: hello}}\n"
              "    spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]}\n")
    out = kubectl("apply", "--server-side", "-f", _manifest(kubectl, "hello.yaml", deploy)).stdout
    assert out.strip() == "deployment.apps/hello serverside-applied"
    out = kubectl("expose", "deployment", "hello", "--port", "80", "--type", "NodePort").stdout
    assert out.strip() == "service/hello exposed"
    svc = json.loads(kubectl.stub.requests[-1]["body"])
    assert svc["spec"]["selector"] == {"app": "hello"}
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["type"] == "NodePort"
