"""The pods' streaming subresources: `log`, `exec`, `portforward` (and `proxy`, from
proxyhttp.py), what `kubectl logs [-f]`, `exec [-it]` and `port-forward` call.

Transports, as kubectl picks them:
- logs: a plain GET answered with chunked text/plain, the file the kubelet writes, followed
  (follow=true) until the pod is gone or ends, or the client leaves;
- exec: a WebSocket speaking channel.k8s.io (v5 from kubectl 1.30, wschannel.py), or for older
  clients (Debian's kubectl 1.20) an HTTP upgrade to SPDY/3.1 (spdy.py) with one stream per
  stdin/stdout/stderr/error/resize, chosen by X-Stream-Protocol-Version;
- port-forward: SPDY/3.1 (portforward.k8s.io), tunnelled in a WebSocket by kubectl 1.31+ or
  upgraded to directly: for each local connection the client opens an `error` and a `data`
  stream with the same requestID and the pod port; we connect to the pod and copy both ways.

Pod-side work (the command line, the log file, the TCP connection) is PodAccess's.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from aiohttp import web

from kproxy.apiserver import execio, spdy, wschannel
from kproxy.apiserver import status as st
from kproxy.apiserver.podaccess import PodAccess
from kproxy.node import access as node_access

log = logging.getLogger(__name__)

Lookup = Callable[[str, "str | None", str], "dict | None"]
SPDY_UPGRADE = "SPDY/3.1"
STREAM_TIMEOUT = 30.0  # how long an exec waits for the client's SPDY streams


def bad_request(message: str) -> web.Response:
    return st.response(st.bad_request(message))


def pod_not_found(name: str) -> web.Response:
    return st.response(st.not_found("pods", "", name))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true")


def _container(pod: dict, request: web.Request) -> tuple[str | None, web.Response | None]:
    """The container the request names, or the pod's only one; the API server's errors otherwise."""
    names, name = node_access.container_names(pod), request.query.get("container", "")
    pname = pod["metadata"]["name"]
    if not name:
        if len(names) == 1:
            return names[0], None
        return None, bad_request(f"a container name must be specified for pod {pname}, "
                                 f"choose one of: [{' '.join(names)}]")
    if name not in names:
        return None, bad_request(f"container {name} is not valid for pod {pname}")
    return name, None


def _wants_upgrade(request: web.Request, proto: str) -> bool:
    return ("upgrade" in request.headers.get("Connection", "").lower()
            and request.headers.get("Upgrade", "").lower() == proto.lower())


def _offered(request: web.Request) -> list[str]:
    """X-Stream-Protocol-Version, sent once per protocol (or comma-separated)."""
    return [p.strip() for v in request.headers.getall("X-Stream-Protocol-Version", []) for p in v.split(",") if p.strip()]


class StreamHandlers:
    def __init__(self, access: PodAccess, lookup: Lookup):
        self.access, self.lookup = access, lookup

    # ---- logs ------------------------------------------------------------------------------
    def _pod_container(self, request: web.Request) -> tuple[dict | None, str | None, web.Response | None]:
        """(the pod the path names, the container the query names or its only one), or the API
        server's error: what log, exec and attach each begin with."""
        name = request.match_info["name"]
        pod = self.lookup("Pod", request.match_info["namespace"], name)
        if pod is None:
            return None, None, pod_not_found(name)
        cname, err = _container(pod, request)
        return pod, cname, err

    async def log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        pod, cname, err = self._pod_container(request)
        if err:
            return err
        if where := self.access.elsewhere(pod):
            return bad_request(where)
        if _flag(request, "previous"):
            return bad_request(f'previous terminated container "{cname}" in pod "{name}" not found')
        try:
            tail_lines = int(request.query.get("tailLines", "-1"))
            limit = int(request.query.get("limitBytes", "0"))
        except ValueError:
            return bad_request("tailLines and limitBytes must be integers")
        path = self.access.log_path(pod, cname)
        if path is None:
            return bad_request(f'container "{cname}" in pod "{name}" is waiting to start: '
                               f'{node_access.waiting_reason(pod, cname)}')
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0

        async def out(chunk: bytes) -> bool:
            nonlocal sent
            if limit > 0:
                chunk = chunk[:limit - sent]
            if chunk:
                await resp.write(chunk)
                sent += len(chunk)
            return not (limit > 0 and sent >= limit)
        uid = pod["metadata"].get("uid")
        try:
            with open(path, "rb") as f:
                f.seek(node_access.tail_offset(f, tail_lines))
                more = True
                while more and (chunk := f.read(1 << 16)):  # what is there now, a block at a time
                    more = await out(chunk)
                while more and _flag(request, "follow"):
                    chunk = f.read(1 << 16)
                    if chunk:
                        more = await out(chunk)
                        continue
                    now = self.lookup("Pod", ns, name)
                    if now is None or now["metadata"].get("uid") != uid:
                        break  # the pod is gone, so is its output
                    if now.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                        if not (chunk := f.read()):
                            break
                        more = await out(chunk)
                        continue
                    if request.transport is None or request.transport.is_closing():
                        break
                    await asyncio.sleep(0.2)
            await resp.write_eof()
        except ConnectionError:  # the client left
            pass
        return resp

    # ---- exec ------------------------------------------------------------------------------
    def _exec_target(self, request: web.Request) -> tuple[list[str] | None, list[str], web.Response | None]:
        pod, cname, err = self._pod_container(request)
        if err:
            return None, [], err
        command = request.query.getall("command", [])
        if not command:
            return None, [], bad_request("you must specify at least one command for the container")
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return None, [], bad_request(f"cannot exec into a container in a completed pod; current phase is {phase}")
        if where := self.access.elsewhere(pod):
            return None, [], bad_request(where)
        argv = self.access.exec_argv(pod, cname, command)
        if argv is None:
            return None, [], bad_request(f'unable to upgrade connection: container not found ("{cname}")')
        return argv, command, None

    async def exec(self, request: web.Request) -> web.StreamResponse:
        argv, command, err = self._exec_target(request)
        if err:
            return err
        tty = _flag(request, "tty")
        return await self._channels(request, _flag(request, "stdin"), tty,
                                    lambda chans: execio.run(argv, command, tty, chans))

    async def attach(self, request: web.Request) -> web.StreamResponse:
        """The container's output from now on (its stdin is not open: pods here run without one)."""
        ns, name = request.match_info["namespace"], request.match_info["name"]
        pod, cname, err = self._pod_container(request)
        if err:
            return err
        if where := self.access.elsewhere(pod):
            return bad_request(where)
        if not node_access.container_running(pod, cname):
            return bad_request(f'unable to upgrade connection: container not found ("{cname}")')
        path, uid = self.access.log_path(pod, cname), pod["metadata"].get("uid")

        def alive() -> bool:
            now = self.lookup("Pod", ns, name)
            return now is not None and now["metadata"].get("uid") == uid
        return await self._channels(request, False, _flag(request, "tty"),
                                    lambda chans: execio.attach(path, alive, chans))

    async def _channels(self, request: web.Request, stdin: bool, tty: bool, run) -> web.StreamResponse:
        """Accept the client's transport for exec/attach (WebSocket channel.k8s.io, or a SPDY
        upgrade) and `await run(chans)` with its channels."""
        if _wants_upgrade(request, "websocket"):
            ws = web.WebSocketResponse(protocols=wschannel.EXEC_PROTOCOLS, heartbeat=None)
            if not ws.can_prepare(request).ok:
                return bad_request("unable to upgrade connection: no channel.k8s.io protocol offered")
            await ws.prepare(request)
            chans = wschannel.WsExecChannels(ws, ws.ws_protocol or wschannel.V1, stdin, tty)
            pump = asyncio.ensure_future(chans.pump())
            try:
                await run(chans)
            finally:
                pump.cancel()
            return ws
        if _wants_upgrade(request, SPDY_UPGRADE):
            offered = _offered(request)
            proto = next((p for p in wschannel.EXEC_PROTOCOLS if p in offered and p != wschannel.V5), None)
            if proto is None:
                return bad_request(f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                                   f"server supports {list(wschannel.EXEC_PROTOCOLS[1:])}")
            return await self._spdy_channels(request, proto, stdin, tty, run)
        return bad_request("Upgrade request required")

    async def _spdy_channels(self, request, proto, stdin, tty, run) -> web.StreamResponse:
        """SPDY: wait for the streams the query promised (error, stdin, stdout, stderr without a
        TTY, resize with one), as the kubelet does, then run."""
        want = {"error"} | ({"stdin"} if _flag(request, "stdin") else set()) | \
            ({"stdout"} if _flag(request, "stdout") else set()) | \
            ({"stderr"} if not tty and _flag(request, "stderr") else set()) | \
            ({"resize"} if tty and proto not in (wschannel.V1, wschannel.V2) else set())
        streams: dict[str, spdy.Stream] = {}
        ready = asyncio.Event()

        def on_stream(stream: spdy.Stream) -> None:
            streams[stream.header("streamtype")] = stream
            if want <= streams.keys():
                ready.set()
        resp, session = await upgrade_spdy(request, proto, on_stream)
        try:
            await asyncio.wait_for(ready.wait(), STREAM_TIMEOUT)
        except asyncio.TimeoutError:
            session.goaway()
            await finish_upgrade(request, session)
            return resp
        if not stdin:
            streams.pop("stdin", None)
        await run(execio.SpdyExecChannels(proto, streams, session, tty))
        await finish_upgrade(request, session)
        return resp

    # ---- port-forward ------------------------------------------------------------------------
    async def portforward(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        pod = self.lookup("Pod", ns, name)
        if pod is None:
            return pod_not_found(name)
        if pod.get("status", {}).get("phase") != "Running":
            return bad_request(f"pod {name} is not running and cannot be port-forwarded; current phase is "
                               f"{pod.get('status', {}).get('phase', 'Pending')}")
        forward = PortForward(self.access, pod)
        if _wants_upgrade(request, "websocket"):
            ws = web.WebSocketResponse(protocols=(wschannel.TUNNEL_PROTOCOL, wschannel.V4), heartbeat=None)
            if not ws.can_prepare(request).ok:
                return bad_request("unable to upgrade connection: subprotocol "
                                   f"{wschannel.TUNNEL_PROTOCOL} or {wschannel.V4} required")
            ports: list[int] = []
            if ws.can_prepare(request).protocol == wschannel.V4:
                try:
                    ports = [int(p) for v in request.query.getall("ports", []) for p in v.split(",")]
                    if not ports or not all(0 < p < 65536 for p in ports):
                        raise ValueError
                except ValueError:
                    return bad_request("query parameter \"ports\" is required: one or more ports from 1 to 65535")
            await ws.prepare(request)
            if ws.ws_protocol == wschannel.V4:
                await wschannel.channel_portforward(ws, ports, lambda port: self.access.open_connection(pod, port))
            else:
                await wschannel.tunnel_spdy(ws, forward.on_stream)
            forward.stop()
            return ws
        if _wants_upgrade(request, SPDY_UPGRADE):
            offered = _offered(request)
            if offered and wschannel.PORTFORWARD not in offered:
                return bad_request(f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                                   f"server supports [{wschannel.PORTFORWARD}]")
            resp, session = await upgrade_spdy(request, wschannel.PORTFORWARD if offered else "", forward.on_stream)
            await session.done
            forward.stop()
            await finish_upgrade(request, session)
            return resp
        return bad_request("Upgrade request required")


class PortForward:
    """The streams of one port-forward connection: pairs (error, data) by requestID, then one
    TCP connection to the pod per pair, as the kubelet's httpstream port-forwarder does."""

    def __init__(self, access: PodAccess, pod: dict):
        self.access, self.pod = access, pod
        self.pending: dict[str, dict[str, spdy.Stream]] = {}
        self.tasks: set[asyncio.Task] = set()

    def on_stream(self, stream: spdy.Stream) -> None:
        kind, rid = stream.header("streamtype"), stream.header("requestid")
        if kind not in ("error", "data"):
            stream.session.send(spdy.RstStream(stream.id, spdy.PROTOCOL_ERROR))
            stream.session.forget(stream)
            return
        pair = self.pending.setdefault(rid, {})
        pair[kind] = stream
        if len(pair) == 2:
            del self.pending[rid]
            task = asyncio.ensure_future(self._forward(pair["error"], pair["data"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _forward(self, error: spdy.Stream, data: spdy.Stream) -> None:
        port_text = data.header("port")
        meta = self.pod["metadata"]
        try:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            error.write(f'invalid port: "{port_text}"'.encode())
            error.close()
            data.close()
            return
        try:
            reader, writer = await self.access.open_connection(self.pod, port)
        except (OSError, asyncio.TimeoutError) as e:
            reason = (os.strerror(e.errno) if isinstance(e, OSError) and e.errno  # asyncio rewords strerror
                      else "i/o timeout" if isinstance(e, asyncio.TimeoutError) else str(e))
            error.write(f"error forwarding port {port} to pod {meta['name']}, uid {meta.get('uid', '')}: "
                        f"dial tcp4 {self.pod.get('status', {}).get('podIP', '')}:{port}: connect: "
                        f"{reason.lower()}".encode())
            error.close()
            data.close()
            return

        async def to_pod() -> None:
            try:
                while chunk := await data.reader.read(1 << 16):
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        async def from_pod() -> None:
            try:
                while chunk := await reader.read(1 << 16):
                    data.write(chunk)
                    await data.session.drain()
            except (ConnectionError, OSError):
                pass
            data.close()
        up = asyncio.ensure_future(to_pod())
        try:
            await from_pod()
            await asyncio.wait_for(up, timeout=30) if not data.reset else None
        except asyncio.TimeoutError:
            pass
        finally:
            up.cancel()
            writer.close()
            error.close()

    def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()


# ---- SPDY over an HTTP upgrade (aiohttp has no notion of it: we take the connection) ---------

class _SpdyFeed:
    """What aiohttp's protocol feeds the bytes after our 101 to (its set_parser interface)."""

    def __init__(self, session: spdy.Session):
        self.session = session

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.session.feed(data)
        return self.session.closed, b""

    def feed_eof(self) -> None:
        self.session.close()


async def upgrade_spdy(request: web.Request, protocol: str, on_stream) -> tuple[web.StreamResponse, spdy.Session]:
    """Answer 101 Switching Protocols to SPDY/3.1 and run a session on the raw connection."""
    transport, proto = request.transport, request.protocol

    async def drain() -> None:
        helper = getattr(proto, "_drain_helper", None)
        if helper is not None and transport is not None and not transport.is_closing():
            await helper()
    session = spdy.Session(lambda b: transport.write(b) if not transport.is_closing() else None, on_stream, drain)
    headers = {"Connection": "Upgrade", "Upgrade": SPDY_UPGRADE}
    if protocol:
        headers["X-Stream-Protocol-Version"] = protocol
    resp = web.StreamResponse(status=101, headers=headers)
    resp.force_close()
    proto.set_parser(_SpdyFeed(session))  # before the 101: the client's first frame follows it
    await resp.prepare(request)
    return resp, session


async def finish_upgrade(request: web.Request, session: spdy.Session) -> None:
    session.close()
    transport = request.transport
    if transport is not None and not transport.is_closing():
        await asyncio.sleep(0)
        transport.close()


MOUNTED = web.AppKey("kproxy.streams", bool)


def add_routes(app: web.Application, access: PodAccess, lookup: Lookup) -> None:
    """Register pods' log/exec/attach/portforward and the services'/pods' proxy (once per app: a second
    call is a no-op, aiohttp refuses a route registered twice)."""
    from kproxy.apiserver import proxyhttp
    if app.get(MOUNTED):
        return
    app[MOUNTED] = True
    h = StreamHandlers(access, lookup)
    base = "/api/v1/namespaces/{namespace}/pods/{name}"
    app.router.add_route("GET", base + "/log", h.log)
    for method in ("GET", "POST"):
        app.router.add_route(method, base + "/exec", h.exec)
        app.router.add_route(method, base + "/attach", h.attach)
        app.router.add_route(method, base + "/portforward", h.portforward)
    proxyhttp.add_routes(app, lookup)
