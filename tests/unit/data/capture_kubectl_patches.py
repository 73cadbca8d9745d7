"""Re-capture kubectl_patches.json: the PATCH bodies the real kubectl (v1.32) sends.

Run by hand, not by the suite (it needs /usr/bin/kubectl):  python3 capture_kubectl_patches.py
It serves just enough discovery plus the file's live objects on 127.0.0.1 (plain HTTP, nothing
else is contacted), writes the manifests to a temporary folder, runs each recorded command
against that server and stores each request's path, Content-Type and body back in the file.
The expected results of applying them are written by hand in test_apiserver_patch.py.
"""
import json
import os
import pathlib
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).parent / "kubectl_patches.json"
PATCHES: list = []

OBJS = {}
def res(name, kind, namespaced=True, verbs=("get","list","patch","update","create","delete"), short=()):
    return {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": list(verbs), "shortNames": list(short)}
CORE = {"kind":"APIResourceList","apiVersion":"v1","groupVersion":"v1","resources":[
    res("services","Service",short=("svc",)), res("pods","Pod",short=("po",)), res("namespaces","Namespace",False,short=("ns",))]}
APPS = {"kind":"APIResourceList","apiVersion":"v1","groupVersion":"apps/v1","resources":[
    res("deployments","Deployment",short=("deploy",)), {"name":"deployments/scale","singularName":"","namespaced":True,"group":"autoscaling","version":"v1","kind":"Scale","verbs":["get","patch","update"]}]}
METALLB = {"kind":"APIResourceList","apiVersion":"v1","groupVersion":"metallb.io/v1beta1","resources":[res("ipaddresspools","IPAddressPool")]}
GROUPS = {"kind":"APIGroupList","apiVersion":"v1","groups":[
  {"name":"apps","versions":[{"groupVersion":"apps/v1","version":"v1"}],"preferredVersion":{"groupVersion":"apps/v1","version":"v1"}},
  {"name":"metallb.io","versions":[{"groupVersion":"metallb.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"metallb.io/v1beta1","version":"v1beta1"}}]}

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type","application/json"); self.send_header("Content-Length",str(len(b))); self.end_headers(); self.wfile.write(b)
    def path_only(self): return self.path.split("?")[0]
    def do_GET(self):
        p = self.path_only()
        if p == "/api": return self.send(200, {"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]})
        if p == "/apis": return self.send(200, GROUPS)
        if p == "/api/v1": return self.send(200, CORE)
        if p == "/apis/apps/v1": return self.send(200, APPS)
        if p == "/apis/metallb.io/v1beta1": return self.send(200, METALLB)
        if p == "/version": return self.send(200, {"major":"1","minor":"32","gitVersion":"v1.32.0"})
        if p.endswith("/scale"):
            base = OBJS.get(p[:-6])
            if base: return self.send(200, {"kind":"Scale","apiVersion":"autoscaling/v1","metadata":{"name":base["metadata"]["name"],"namespace":"default","resourceVersion":"5"},"spec":{"replicas":base["spec"].get("replicas",1)},"status":{"replicas":base["spec"].get("replicas",1)}})
        if p in OBJS: return self.send(200, OBJS[p])
        self.send(404, {"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":f"{p} not found"})
    def do_PATCH(self):
        n = int(self.headers.get("Content-Length") or 0); body = self.rfile.read(n)
        PATCHES.append({"path": self.path, "contentType": self.headers.get("Content-Type"), "body": body.decode()})
        p = self.path_only()
        if p.endswith("/scale"):
            return self.send(200, {"kind":"Scale","apiVersion":"autoscaling/v1","metadata":{"name":"web","namespace":"default"},"spec":{"replicas":1},"status":{"replicas":1}})
        obj = OBJS.get(p)
        if obj is None: return self.send(404, {"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"nf"})
        self.send(200, obj)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0); body = json.loads(self.rfile.read(n))
        self.send(201, body)


PATHS = {"Deployment": "/apis/apps/v1/namespaces/default/deployments/web",
         "Service": "/api/v1/namespaces/default/services/web",
         "IPAddressPool": "/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools/pool"}


def main() -> None:
    data = json.loads(HERE.read_text())
    OBJS.update({PATHS[k]: v for k, v in data["live"].items()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in data["manifests"].items():
            pathlib.Path(tmp, f"{name}.yaml").write_text(text)
        cfg = pathlib.Path(tmp, "kubeconfig")
        cfg.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                   "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                                   "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                                   "users": [{"name": "u", "user": {"token": "x"}}]}))
        for p in data["patches"]:
            del PATCHES[:]
            cmd = p["command"].replace("-f ", f"--validate=false -f {tmp}/")
            subprocess.run(cmd, shell=True, check=True, env={**os.environ, "KUBECONFIG": str(cfg)}, capture_output=True)
            p.update(PATCHES[-1])
    server.shutdown()
    HERE.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
