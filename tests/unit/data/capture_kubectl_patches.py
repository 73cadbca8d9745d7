"""Re-capture kubectl_patches.json: the PATCH bodies the real kubectl (v1.32) sends.

Run by hand, not by the suite (it needs /usr/bin/kubectl):  python3 capture_kubectl_patches.py
It serves just enough discovery plus the file's live objects on 127.0.0.1 (plain HTTP, nothing
else is contacted), writes the manifests to a temporary folder, runs each recorded command
against that server and stores each PATCH's path, Content-Type and body back in the file (a
command's further PATCHes, like kubectl apply --server-side's csaupgrade, under "then").
The expected results of applying them are written by hand in test_apiserver_patch.py / _ssa.py.
"""
import json
import os
import pathlib
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).parent / "kubectl_patches.json"
PATHS = {"Deployment": "/apis/apps/v1/namespaces/default/deployments/web",
         "Service": "/api/v1/namespaces/default/services/web",
         "IPAddressPool": "/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools/pool"}
OBJS: dict = {}
PATCHES: list = []


def _res(name: str, kind: str, namespaced: bool = True, short: tuple = ()) -> dict:
    return {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
            "verbs": ["get", "list", "patch", "update", "create", "delete"], "shortNames": list(short)}


def _group(name: str, version: str) -> dict:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


SCALE = {"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
         "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}
DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1",
              "groups": [_group("apps", "v1"), _group("metallb.io", "v1beta1")]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1",
                "resources": [_res("services", "Service", short=("svc",)), _res("pods", "Pod", short=("po",))]},
    "/apis/apps/v1": {"kind": "APIResourceList", "groupVersion": "apps/v1",
                      "resources": [_res("deployments", "Deployment", short=("deploy",)), SCALE]},
    "/apis/metallb.io/v1beta1": {"kind": "APIResourceList", "groupVersion": "metallb.io/v1beta1",
                                 "resources": [_res("ipaddresspools", "IPAddressPool")]},
}


def _scale(base: dict) -> dict:
    n = base["spec"].get("replicas", 1)
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": base["metadata"]["name"], "namespace": "default", "resourceVersion": "5"},
            "spec": {"replicas": n}, "status": {"replicas": n}}


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _object(self) -> dict | None:
        path = self.path.split("?")[0]
        if path.endswith("/scale") and path[:-6] in OBJS:
            return _scale(OBJS[path[:-6]])
        return DISCOVERY.get(path) or OBJS.get(path)

    def do_GET(self):
        obj = self._object()
        if obj is None:
            return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                    "code": 404, "message": "not found"})
        self._send(200, obj)

    def do_PATCH(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        PATCHES.append({"path": self.path, "contentType": self.headers.get("Content-Type"), "body": body.decode()})
        self.do_GET()


def main() -> None:
    data = json.loads(HERE.read_text())
    OBJS.update({PATHS[k]: v for k, v in data["live"].items()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in data["manifests"].items():
            pathlib.Path(tmp, f"{name}.yaml").write_text(text)
        cfg = pathlib.Path(tmp, "kubeconfig")
        cluster = {"server": f"http://127.0.0.1:{server.server_port}"}
        cfg.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                   "clusters": [{"name": "c", "cluster": cluster}],
                                   "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                                   "users": [{"name": "u", "user": {"token": "x"}}]}))
        for p in data["patches"]:
            del PATCHES[:]
            cmd = p["command"].replace("-f ", f"--validate=false -f {tmp}/")
            subprocess.run(cmd, shell=True, check=True, env={**os.environ, "KUBECONFIG": str(cfg)},
                           capture_output=True)
            p.update(PATCHES[0])
            p.pop("then", None)
            if len(PATCHES) > 1:
                p["then"] = PATCHES[1:]
    server.shutdown()
    HERE.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
