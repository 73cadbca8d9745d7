"""The built-in container: what a pod runs when its manifest gives no command.

One small asyncio process per pod listens on each containerPort. A TCP connection whose first
bytes look like an HTTP request gets an HTTP answer naming the pod, its IP and the client's
address (so `curl` shows who answered and whether the source was NATed); any other TCP data is
echoed back; UDP datagrams are echoed, except `whoami`, which is answered with the pod's name.

    python -m kproxy.node.podserver --pod web-1 --namespace default --ip 10.244.0.5 80/TCP 53/UDP
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class Identity:
    def __init__(self, pod: str, namespace: str, ip: str):
        self.pod, self.namespace, self.ip = pod, namespace, ip

    def http_body(self, client: str, path: str) -> tuple[bytes, str]:
        if path.startswith("/json"):
            body = json.dumps({"pod": self.pod, "namespace": self.namespace, "podIP": self.ip,
                               "client": client}) + "\n"
            return body.encode(), "application/json"
        text = f"pod {self.pod} namespace {self.namespace} ip {self.ip} client {client}\n"
        return text.encode(), "text/plain"


async def _read_http_head(reader: asyncio.StreamReader, first: bytes) -> bytes:
    data = first
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 65536:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data += chunk
    return data


async def handle_tcp(ident: Identity, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    client = f"{peer[0]}:{peer[1]}" if peer else "?"
    try:
        first = await reader.read(4096)
        if first.startswith(HTTP_METHODS):
            head = await _read_http_head(reader, first)
            method, path = head.split(b" ", 2)[:2]
            body, ctype = ident.http_body(client, path.decode("latin-1"))
            status = "200 OK"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"X-Pod-Name: {ident.pod}\r\nConnection: close\r\n\r\n".encode())
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
            request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
            print(f'{client} "{request_line}" 200 {len(body)}', flush=True)  # the access log
            return
        while first:  # plain TCP: echo until the client closes
            writer.write(first)
            await writer.drain()
            first = await reader.read(65536)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, ident: Identity):
        self.ident = ident

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if data.strip() == b"whoami":
            data = f"{self.ident.pod}\n".encode()
        self.transport.sendto(data, addr)


async def serve(ident: Identity, ports: list[tuple[int, str]]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    for port, proto in ports:
        if proto == "UDP":
            await loop.create_datagram_endpoint(lambda: UdpEcho(ident), local_addr=("0.0.0.0", port))
        else:
            await asyncio.start_server(lambda r, w: handle_tcp(ident, r, w), "0.0.0.0", port,
                                       reuse_address=True, backlog=1024)
    await stop


def parse_port(text: str) -> tuple[int, str]:
    port, _, proto = text.partition("/")
    return int(port), (proto or "TCP").upper()


def drop_privileges(arg: str) -> None:
    """Become `uid:gid:g1,g2` (security.RunAs.arg) for good: groups first, the uid last. Ports
    below 1024 still bind: the pod's netns has net.ipv4.ip_unprivileged_port_start=0."""
    uid, gid, groups = arg.split(":")
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pod", required=True)
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--hostname", help="set this hostname (and $HOSTNAME) first: the pod's own UTS namespace")
    ap.add_argument("--user", help="UID:GID:GROUPS to run as (after setting the hostname): securityContext")
    ap.add_argument("ports", nargs="*", help="PORT[/TCP|UDP]; none means 80/TCP")
    args = ap.parse_args(argv)
    if args.hostname:
        socket.sethostname(args.hostname)
        os.environ["HOSTNAME"] = args.hostname
    if args.user:
        drop_privileges(args.user)
    ports = [parse_port(p) for p in args.ports] or [(80, "TCP")]
    asyncio.run(serve(Identity(args.pod, args.namespace, args.ip), ports))


if __name__ == "__main__":
    main()
