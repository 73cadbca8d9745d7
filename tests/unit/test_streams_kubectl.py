"""The streams with the REAL kubectl (/usr/bin/kubectl, v1.32) against a stub API server
(tests/unit/kubectl_stub.py) that mounts kproxy/apiserver/streams.add_routes: logs [-f]
[--tail], exec (WebSocket v5 as kubectl 1.32 does by default, and SPDY/3.1 as older clients
do, forced with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false), exec -t through a pseudo-terminal,
port-forward (SPDY tunnelled in a WebSocket, and plain SPDY) and the service/pod proxy
through `kubectl proxy`. Each asserts what kubectl printed or which "pod" answered.

Needs kubectl and curl (scripts/setup); fails loudly without them.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import aiohttp
import pytest

from tests.unit.kubectl_stub import KUBECTL, TOKEN, FakeAccess, StubServer, pod

NO_WS = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


@contextlib.contextmanager
def pod_deleted(stub):
    """Pod web-1 is gone from the stub's store while inside (a following stream must end), then back."""
    saved = stub.objects.pop(("Pod", "web-1"))
    try:
        yield
    finally:
        stub.objects[("Pod", "web-1")] = saved


def _need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.fail(f"{tool} is not installed (run scripts/setup)")


class LoopbackPort:
    """A port of the pod, served on loopback: each connection is handed to `_one` in a thread."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        raise NotImplementedError


class PodPort(LoopbackPort):
    """Port 8080 of pod web-1, an HTTP server: it names itself and the request."""

    def _one(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        body = b"pod web-1 answered " + data.split(b"\r\n")[0]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        conn.close()


class BlobPort(LoopbackPort):
    """Port 7000 of the pod: `D` -> sends BLOB and closes; `U` + bytes + EOF -> their sha1 and length."""
    BLOB = bytes(range(256)) * 20_000  # 5 MB

    def _one(self, conn):
        if conn.recv(1) == b"D":
            conn.sendall(self.BLOB)
        else:
            h, n = hashlib.sha1(), 0
            while data := conn.recv(65536):
                h.update(data)
                n += len(data)
            conn.sendall(f"{h.hexdigest()} {n}".encode())
        conn.close()


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    _need(KUBECTL)
    _need("curl")
    folder = tmp_path_factory.mktemp("streams")
    log = folder / "web-1.log"
    log.write_bytes(b"line1\nline2\nline3\n")
    pod_port = PodPort()
    closed = socket.socket()  # bound, never listening: a pod port that refuses connections
    closed.bind(("127.0.0.1", 0))
    blob_port = BlobPort()
    access = FakeAccess({"web-1/app": log}, {8080: pod_port.port, 9999: closed.getsockname()[1],
                                              7000: blob_port.port})
    objects = {
        ("Pod", "web-1"): pod("web-1", {"app": "web"}),
        ("Pod", "stopped"): pod("stopped", {"state": "stopped"}),
        ("Pod", "two"): pod("two", containers=("a", "b")),
        ("Service", "web"): {"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
                             "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        ("Endpoints", "web"): {"subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                                            "ports": [{"name": "http", "port": pod_port.port}]}]},
    }
    server = StubServer(folder, access, objects).start()
    server.log, server.pod_port = log, pod_port
    yield server
    server.stop()
    closed.close()


def _run(stub, *args, env=None, input=None):
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **(env or {})}
    return subprocess.run([KUBECTL, *args], input=input, capture_output=True, timeout=60, env=full)


# ---- logs -------------------------------------------------------------------------------------

def test_logs_and_tail(stub):
    assert _run(stub, "logs", "web-1").stdout == b"line1\nline2\nline3\n"
    assert _run(stub, "logs", "web-1", "--tail", "2").stdout == b"line2\nline3\n"
    assert _run(stub, "logs", "pod/web-1", "-c", "app", "--limit-bytes", "3").stdout == b"lin"


def test_logs_errors(stub):
    res = _run(stub, "logs", "stopped")
    assert res.returncode == 1
    assert b'container "app" in pod "stopped" is waiting to start: ContainerCreating' in res.stderr
    res = _run(stub, "logs", "web-1", "-c", "nope")
    assert b"container nope is not valid for pod web-1" in res.stderr


def test_logs_follow_until_the_pod_is_gone(stub):
    env = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder)}
    proc = subprocess.Popen([KUBECTL, "logs", "-f", "web-1", "--tail", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(1.0)
        with open(stub.log, "ab") as f:
            f.write(b"appended while following\n")
        time.sleep(1.0)
        assert proc.poll() is None  # still following
        with pod_deleted(stub):
            out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        with open(stub.log, "rb") as f:
            data = f.read()
        stub.log.write_bytes(data.replace(b"appended while following\n", b""))
    assert proc.returncode == 0, err
    assert out == b"line3\nappended while following\n"


# ---- exec -------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket", "spdy"])
def test_exec_output_and_exit_code(stub, env):
    res = _run(stub, "exec", "web-1", "--", "sh", "-c", "echo out; echo err >&2; exit 3", env=env)
    assert res.stdout == b"out\n"
    assert res.stderr == b"err\ncommand terminated with exit code 3\n"
    assert res.returncode == 3
    seen = [r for r in stub.requests if "/exec?" in r][-1]
    assert seen.startswith("POST" if env else "GET")  # a WebSocket is a GET, a SPDY upgrade a POST


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket", "spdy"])
def test_exec_stdin_reaches_the_command_and_ends(stub, env):
    res = _run(stub, "exec", "-i", "web-1", "--", "sh", "-c", "tr a-z A-Z; echo done", env=env,
               input=b"hello from stdin\n" * 1000)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"HELLO FROM STDIN\n" * 1000 + b"done\n"


def test_exec_without_i_gets_no_stdin(stub):
    res = _run(stub, "exec", "web-1", "--", "sh", "-c", "cat; echo eof", input=b"ignored\n")
    assert res.stdout == b"eof\n"


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket", "spdy"])
def test_exec_tty(stub, env):
    """-it through `script` (kubectl needs a terminal): the command has a terminal of the
    client's size and TERM, and one output stream."""
    _need("script")
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **env}
    res = subprocess.run(["script", "-qec", f"stty cols 99 rows 33; {KUBECTL} exec -it web-1 -- "
                          "sh -c 'tty; stty size; echo $TERM; echo err >&2; exit 4'", "/dev/null"],
                         capture_output=True, timeout=60, env=full, stdin=subprocess.DEVNULL)
    out = res.stdout.replace(b"^@", b"")  # script's own NUL on our closed stdin, echoed by the terminal
    assert re.search(rb"/dev/pts/\d+\r\n33 99\r\nxterm\r\nerr\r\ncommand terminated with exit code 4", out), out
    assert res.returncode == 4


def test_exec_errors(stub):
    res = _run(stub, "exec", "stopped", "--", "true")
    assert res.returncode == 1
    assert res.stderr == b'Error from server (BadRequest): unable to upgrade connection: container not found ("app")\n'
    res = _run(stub, "exec", "web-1", "-c", "zz", "--", "true")
    assert res.stderr == b"Error from server (BadRequest): container zz is not valid for pod web-1\n"


def test_websocket_v4_exit_status_and_resize_json(stub):
    """A v4 client (no close signal): the error channel carries the Status kubectl decodes."""
    async def talk():
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        url = (f"https://127.0.0.1:{stub.port}/api/v1/namespaces/default/pods/web-1/exec"
               "?command=sh&command=-c&command=exit+7&container=app&stdout=true&stderr=true")
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url, protocols=("v4.channel.k8s.io",), ssl=ctx,
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                assert ws.protocol == "v4.channel.k8s.io"
                msgs = [m.data async for m in ws if m.type == aiohttp.WSMsgType.BINARY]
        return msgs
    msgs = asyncio.run(talk())
    (err,) = [m for m in msgs if m[0] == 3]
    status = json.loads(err[1:])
    assert status == {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                      "message": "command terminated with non-zero exit code: error executing command "
                                 "[sh -c exit 7], exit code 7",
                      "details": {"causes": [{"reason": "ExitCode", "message": "7"}]}}


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket", "spdy"])
def test_attach_shows_new_output_until_the_pod_is_gone(stub, env):
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **env}
    proc = subprocess.Popen([KUBECTL, "attach", "web-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full)
    try:
        deadline = time.time() + 10
        while not any("/attach?" in r for r in stub.requests[-3:]) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        with open(stub.log, "ab") as f:
            f.write(b"written after attach\n")
        time.sleep(1.0)
        with pod_deleted(stub):
            out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        stub.log.write_bytes(stub.log.read_bytes().replace(b"written after attach\n", b""))
    assert out == b"written after attach\n", err  # not the lines written before
    assert proc.returncode == 0, err


def _ws_exec(stub, query: str, protocol: str, send: list[bytes]) -> tuple[str, dict[int, bytes]]:
    """Speak channel.k8s.io by hand: send the messages, collect what comes back per channel."""
    async def talk():
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        url = f"https://127.0.0.1:{stub.port}/api/v1/namespaces/default/pods/web-1/exec?{query}"
        got: dict[int, bytes] = {}
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url, protocols=(protocol,), ssl=ctx,
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                for m in send:
                    await ws.send_bytes(m)
                async for m in ws:
                    if m.type == aiohttp.WSMsgType.BINARY and m.data:
                        got[m.data[0]] = got.get(m.data[0], b"") + m.data[1:]
                return ws.protocol, got
    return asyncio.run(talk())


def test_websocket_v5_protocol_by_hand(stub):
    """v5's close signal ([255, 0]: EOF on stdin) ends `cat`; resize on channel 4 sizes the TTY;
    v1's error channel is text."""
    proto, got = _ws_exec(stub, "command=cat&container=app&stdin=true&stdout=true&stderr=true",
                          "v5.channel.k8s.io", [b"\x00hello ", b"\x00world", bytes([255, 0])])
    assert proto == "v5.channel.k8s.io"
    assert got[1] == b"hello world"
    assert json.loads(got[3]) == {"metadata": {}, "status": "Success"}
    proto, got = _ws_exec(stub, "command=stty&command=size&container=app&stdin=true&stdout=true&tty=true",
                          "v5.channel.k8s.io", [b'\x04{"Width":120,"Height":40}', bytes([255, 0])])
    assert got[1] == b"40 120\r\n" and 2 not in got  # a TTY: one output channel
    proto, got = _ws_exec(stub, "command=sh&command=-c&command=exit+2&container=app&stdout=true",
                          "channel.k8s.io", [])
    assert proto == "channel.k8s.io"  # v1: the error channel carries text
    assert got[3] == b"command terminated with non-zero exit code: error executing command [sh -c exit 2], exit code 2"


@pytest.mark.parametrize("env,tty", [({}, False), (NO_WS, False), ({}, True)], ids=["websocket", "spdy", "websocket-tty"])
def test_exec_killed_with_its_children_when_kubectl_goes(stub, env, tty, tmp_path):
    pidfile = tmp_path / "pids"
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **env}
    cmd = [KUBECTL, "exec", *(["-it"] if tty else []), "web-1", "--", "sh", "-c",
           f"sleep 300 & echo $$ $! > {pidfile}; wait"]
    if tty:
        cmd = ["script", "-qec", " ".join(f"'{c}'" for c in cmd), "/dev/null"]
    proc = subprocess.Popen(cmd, env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    pids = [int(p) for p in pidfile.read_text().split()]
    os.killpg(proc.pid, 9)  # kubectl (and script) die without a goodbye
    proc.wait(10)

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for p in left:  # never leave them behind, even when the test fails
        os.kill(p, 9)
    assert not left, pids


# ---- port-forward and the proxy ------------------------------------------------------------------

def _curl(url: str) -> bytes:
    return subprocess.run(["curl", "-s", "-m", "10", url], capture_output=True, timeout=20).stdout


def _started(proc: subprocess.Popen, pattern: bytes, timeout: float = 15) -> re.Match:
    deadline, seen = time.time() + timeout, b""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        m = re.search(pattern, seen)
        if m:
            return m
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"kubectl did not start: {seen!r} {proc.stderr.read()!r}")


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket-tunnel", "spdy"])
def test_port_forward_service(stub, env):
    """kubectl resolves svc/web to pod web-1 and port 80 to targetPort 8080 itself; every
    connection is a pair of SPDY streams here, answered by the pod's port."""
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **env}
    proc = subprocess.Popen([KUBECTL, "port-forward", "svc/web", ":80"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080").group(1))
        for i in range(3):
            assert _curl(f"http://127.0.0.1:{port}/n{i}") == f"pod web-1 answered GET /n{i} HTTP/1.1".encode()
    finally:
        proc.terminate()
        proc.wait(10)
    assert [r for r in stub.requests if r.endswith("/portforward")][-1].startswith("POST" if env else "GET")


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket-tunnel", "spdy"])
def test_port_forward_carries_megabytes_both_ways(stub, env):
    """5 MB down and up, the upload ended by a half-close (the client's FIN reaches the pod)."""
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder), **env}
    proc = subprocess.Popen([KUBECTL, "port-forward", "pod/web-1", ":7000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 7000").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"D")
            down = b"".join(iter(lambda: c.recv(1 << 20), b""))
        assert down == BlobPort.BLOB
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"U" + BlobPort.BLOB)
            c.shutdown(socket.SHUT_WR)
            up = b"".join(iter(lambda: c.recv(1 << 20), b""))
        assert up.decode() == f"{hashlib.sha1(BlobPort.BLOB).hexdigest()} {len(BlobPort.BLOB)}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("env", [{}, NO_WS], ids=["websocket", "spdy"])
def test_exec_carries_megabytes_both_ways(stub, env):
    data = BlobPort.BLOB
    res = _run(stub, "exec", "-i", "web-1", "--", "sh", "-c", "tee /dev/stderr | sha1sum", input=data, env=env)
    assert res.returncode == 0
    assert res.stdout.split()[0].decode() == hashlib.sha1(data).hexdigest()
    assert res.stderr == data


def test_port_forward_refused_port_reports_the_pod_error(stub):
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder)}
    proc = subprocess.Popen([KUBECTL, "port-forward", "pod/web-1", ":9999"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 9999").group(1))
        assert _curl(f"http://127.0.0.1:{port}/") == b""
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (b"error forwarding port 9999 to pod web-1, uid uid-web-1: dial tcp4 127.0.0.1:9999: "
            b"connect: connection refused") in err
    assert b"error: lost connection to pod" in err  # kubectl 1.32 gives up on a pod error, as with a cluster


def test_kubectl_proxy_reaches_service_and_pod(stub):
    full = {**os.environ, "KUBECONFIG": str(stub.kubeconfig), "HOME": str(stub.folder)}
    proc = subprocess.Popen([KUBECTL, "proxy", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full)
    try:
        port = int(_started(proc, rb"Starting to serve on 127\.0\.0\.1:(\d+)").group(1))
        base = f"http://127.0.0.1:{port}/api/v1/namespaces/default"
        assert _curl(f"{base}/services/web:80/proxy/") == b"pod web-1 answered GET / HTTP/1.1"
        assert _curl(f"{base}/services/web:http/proxy/a/b?c=d") == b"pod web-1 answered GET /a/b?c=d HTTP/1.1"
        assert _curl(f"{base}/pods/web-1:{stub.pod_port.port}/proxy/p") == b"pod web-1 answered GET /p HTTP/1.1"
        missing = json.loads(_curl(f"{base}/services/nope:80/proxy/"))
        assert (missing["code"], missing["message"]) == (404, 'services "nope" not found')
        wrong = json.loads(_curl(f"{base}/services/web:81/proxy/"))
        assert (wrong["code"], wrong["message"]) == (503, 'no service port 81 found for service "web"')
        refused = json.loads(_curl(f"{base}/pods/web-1:9/proxy/"))
        assert (refused["code"], refused["message"]) == (
            503, "error trying to reach service: dial tcp 127.0.0.1:9: connect: connection refused")
        moved = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                                f"{base}/services/web:80/proxy"], capture_output=True, text=True).stdout
        assert moved == f"301 {base}/services/web:80/proxy/"
    finally:
        proc.terminate()
        proc.wait(10)


# ---- an old client: Debian's kubectl 1.20 (SPDY only) ----------------------------------------------

OLD_KUBECTL = "/opt/kproxy/kubectl-1.20/usr/bin/kubectl"  # unpacked by `scripts/setup --test`


def test_kubectl_1_20_exec_logs_port_forward(stub):
    _need(OLD_KUBECTL)
    old = stub.kubectl("version", "--client", "--short", binary=OLD_KUBECTL)
    assert b"v1.20" in old.stdout
    assert stub.kubectl("logs", "web-1", "--tail", "1", binary=OLD_KUBECTL).stdout == b"line3\n"
    res = stub.kubectl("exec", "web-1", "--", "sh", "-c", "echo out; exit 3", binary=OLD_KUBECTL)
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"command terminated with exit code 3\n")
    res = stub.kubectl("exec", "-i", "web-1", "--", "tr", "a-z", "A-Z", input=b"old client\n", binary=OLD_KUBECTL)
    assert (res.returncode, res.stdout) == (0, b"OLD CLIENT\n")
    assert [r for r in stub.requests if "/exec?" in r][-1].startswith("POST")  # a SPDY upgrade
    proc = stub.kubectl_bg("port-forward", "svc/web", ":80", binary=OLD_KUBECTL)
    try:
        port = int(_started(proc, rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080").group(1))
        assert _curl(f"http://127.0.0.1:{port}/old") == b"pod web-1 answered GET /old HTTP/1.1"
    finally:
        proc.terminate()
        proc.wait(10)


# ---- the official Python client (kubernetes.stream: WebSocket v5/v4 channels) -------------------------

def test_python_client_exec_and_port_forward(stub):
    from kubernetes import client, config
    from kubernetes.stream import portforward, stream
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(stub.kubeconfig)))
    out = stream(api.connect_get_namespaced_pod_exec, "web-1", "default", command=["sh", "-c", "echo hi; echo oops >&2"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "hi\noops\n"
    resp = stream(api.connect_get_namespaced_pod_exec, "web-1", "default", command=["sh", "-c", "exit 6"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=10)
    assert resp.returncode == 6
    pf = portforward(api.connect_get_namespaced_pod_portforward, "web-1", "default", ports="8080")
    sock = pf.socket(8080)
    sock.setblocking(True)
    sock.sendall(b"GET /py HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    assert data.endswith(b"pod web-1 answered GET /py HTTP/1.1")
    assert pf.error(8080) is None
