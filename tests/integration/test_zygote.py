"""The pod-server fork server (kproxy/node/zygote.py via launcher.py) in a netns this test makes:
the forked server answers inside the pod's netns with the pod's hostname, survives clients that
reset their connections (SIGPIPE), and reports how it ended as subprocess would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

from kproxy.node.launcher import Launcher

CLIENT = """import socket, struct, sys
for _ in range(200):  # clients that reset: the server's writes hit closed sockets
    s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode())
"""


@pytest.fixture
def netns():
    name = f"kpt{uuid.uuid4().hex[:4]}-zygote"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", name])


def test_forked_pod_server(netns):
    launcher = Launcher()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = launcher.spawn(netns, "web-7", ["--pod", "web-7", "--ip", "127.0.0.1", "8080/TCP"],
                                  {"PATH": os.environ["PATH"]}, f"{tmp}/server.log")
            assert subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split() \
                == [str(proc.pid)]
            for _ in range(50):
                got = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT],
                                     capture_output=True, text=True)
                if got.returncode == 0:
                    break
            assert "pod web-7 namespace default ip 127.0.0.1" in got.stdout, got.stderr
            host = subprocess.run(["nsenter", "-t", str(proc.pid), "-u", "hostname"], capture_output=True, text=True)
            assert host.stdout.strip() == "web-7"
            assert proc.poll() is None
            ignored = int(next(line.split()[1] for line in open(f"/proc/{proc.pid}/status")
                               if line.startswith("SigIgn:")), 16)
            assert ignored & (1 << (signal.SIGPIPE - 1))  # a reset client must not kill it
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            second = launcher.spawn(netns, "web-8", ["--pod", "web-8", "--ip", "127.0.0.1", "8081/TCP"],
                                    {}, f"{tmp}/second.log")
            os.killpg(second.pid, signal.SIGKILL)
            assert second.wait(timeout=10) == -signal.SIGKILL
        finally:
            launcher.stop()
    assert not launcher.alive()
