"""`kproxy port-forward`: TCP from 127.0.0.1 on the user's host into a pod of the lab.

The listening socket is opened first, in the host's namespace; then the process enters the
node's namespace, so every connection it opens to a pod is made from the node, where pod IPs
are routed. A socket keeps the namespace it was created in, which is what makes this work.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable


def target_port(pod: dict, svc: dict | None, remote: str) -> int:
    """The pod port for REMOTE: a service port maps through its targetPort (by number or by the
    pod's container port name), as kubectl port-forward svc/NAME does."""
    if svc is not None:
        for p in svc["spec"].get("ports", []):
            if str(p["port"]) == remote or p.get("name") == remote:
                remote = str(p.get("targetPort", p["port"]))
                break
        else:
            raise ValueError(f"Service {svc['metadata']['name']} does not have a service port {remote}")
    if remote.isdigit():
        return int(remote)
    for c in pod["spec"].get("containers", []):
        for p in c.get("ports", []):
            if p.get("name") == remote:
                return p["containerPort"]
    raise ValueError(f"Pod '{pod['metadata']['name']}' does not have a named port '{remote}'")


def parse_ports(spec: str) -> tuple[int, str]:
    """`8080:80`, `:80` (a free local port) or `80` (the same port locally)."""
    local, sep, remote = spec.partition(":")
    if not sep:
        local, remote = spec, spec
    return (int(local) if local else 0), remote


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve_one(client: socket.socket, pod_ip: str, port: int, log: Callable[[str], None]) -> None:
    try:
        upstream = socket.create_connection((pod_ip, port), timeout=5)
    except OSError as e:
        log(f"E: error forwarding port {port} to pod {pod_ip}: {e}")
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def listen(address: str, local_port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((address, local_port))
    srv.listen(64)
    return srv


def serve(listeners: list[tuple[socket.socket, str, int]], log: Callable[[str], None],
          stop: threading.Event | None = None) -> None:
    """Accept on each (socket, pod IP, pod port) until `stop`; one thread per connection."""
    stop = stop or threading.Event()

    def accept_loop(srv: socket.socket, pod_ip: str, port: int) -> None:
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                client, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            log(f"Handling connection for {srv.getsockname()[1]}")
            threading.Thread(target=_serve_one, args=(client, pod_ip, port, log), daemon=True).start()

    threads = [threading.Thread(target=accept_loop, args=lst, daemon=True) for lst in listeners]
    for t in threads:
        t.start()
    try:
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        stop.set()
    for t in threads:
        t.join(timeout=1)
