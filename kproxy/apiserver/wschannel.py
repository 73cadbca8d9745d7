"""The WebSocket side of the streams: the `channel.k8s.io` protocols of exec (kubectl 1.30+
uses v5 by default) and the SPDY tunnel of port-forward (kubectl 1.31+).

channel.k8s.io: every binary message is one channel's bytes, its first byte the channel
number: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (JSON {"Width", "Height"}). What the
error channel carries grew with the versions: v1-v3 the error's text, v4 a `Status` object
(the exit code as kubectl reads it: reason NonZeroExitCode, a cause of type ExitCode),
v5 adds message [255, channel]: the client closed that channel (stdin's EOF, which v4 could not
say, so `echo x | kubectl exec -i` could never end).

Port-forward tunnelling (subprotocol `SPDY/3.1+portforward.k8s.io`): the binary messages carry
a SPDY/3.1 byte stream, split anywhere; spdy.Session reads it as it would a TCP connection.
"""
from __future__ import annotations

import asyncio
import json

from aiohttp import WSMsgType, web

from kproxy.apiserver import spdy

V5, V4, V3, V2, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
EXEC_PROTOCOLS = (V5, V4, V3, V2, V1)   # our preference: the newest the client offers
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
TUNNEL_PREFIX = "SPDY/3.1+"
PORTFORWARD = "portforward.k8s.io"
TUNNEL_PROTOCOL = TUNNEL_PREFIX + PORTFORWARD


def success_status() -> dict:
    return {"metadata": {}, "status": "Success"}


def exit_status(argv: list[str], code: int) -> dict:
    """The Status the kubelet's exec answers for a command that exited with `code` != 0
    (remotecommand's NonZeroExitCode; StatusCause.Type is spelled `reason` in JSON)."""
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"[{' '.join(argv)}], exit code {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def failure_status(message: str, reason: str = "InternalError", code: int = 500) -> dict:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


def error_payload(protocol: str, status: dict) -> bytes:
    """What the error channel carries at the end: v4/v5 the Status, older ones its text
    (nothing on success)."""
    if protocol in (V4, V5):
        return json.dumps(status).encode()
    return b"" if status.get("status") == "Success" else status.get("message", "").encode()


class ExecChannels:
    """What an exec talks to, whichever transport carries it (WebSocket here, SPDY in
    streams.py): `stdin` (None without -i; EOF when the client closes it), `resizes` (a queue
    of (width, height)), `stdout`/`stderr` writers, `finish(status)`, and `gone` (set when
    the client went away: the command is then killed)."""

    def __init__(self, protocol: str, stdin: bool, tty: bool):
        self.protocol = protocol
        self.stdin = asyncio.StreamReader(limit=1 << 24) if stdin else None
        self.resizes: asyncio.Queue = asyncio.Queue()
        self.tty = tty
        self.gone = asyncio.Event()

    def stdout(self, data: bytes) -> None:
        raise NotImplementedError

    def stderr(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        pass

    async def finish(self, status: dict) -> None:
        raise NotImplementedError

    def resize_json(self, data: bytes) -> None:
        """One or more concatenated {"Width": W, "Height": H} objects (SPDY's resize stream is
        a JSON stream, WebSocket sends one per message)."""
        text, dec, pos = data.decode(errors="replace"), json.JSONDecoder(), 0
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = dec.raw_decode(text, pos)
            except ValueError:
                return
            if isinstance(obj, dict) and isinstance(obj.get("Width"), int) and isinstance(obj.get("Height"), int):
                self.resizes.put_nowait((obj["Width"], obj["Height"]))


class Sender:
    """One writer task per WebSocket: frames leave in the order they were produced even when
    produced from synchronous callbacks (spdy.Session's `write`)."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())

    def send(self, data: bytes) -> None:
        self.queue.put_nowait(data)

    async def _run(self) -> None:
        while True:
            data = await self.queue.get()
            try:
                if data is None:
                    return
                if not self.ws.closed:
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                pass
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        if self.queue.qsize() > 16:
            await self.queue.join()

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await self.task


class WsExecChannels(ExecChannels):
    """channel.k8s.io over an accepted WebSocket; `pump()` reads the client's messages."""

    def __init__(self, ws: web.WebSocketResponse, protocol: str, stdin: bool, tty: bool):
        super().__init__(protocol, stdin, tty)
        self.ws = ws
        self.sender = Sender(ws)

    def _send(self, channel: int, data: bytes) -> None:
        self.sender.send(bytes([channel]) + data)

    def stdout(self, data: bytes) -> None:
        self._send(STDOUT, data)

    def stderr(self, data: bytes) -> None:
        self._send(STDOUT if self.tty else STDERR, data)  # a TTY has one output; kubectl opens no stderr

    async def drain(self) -> None:
        await self.sender.drain()

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == STDIN and self.stdin is not None and not self.stdin.at_eof():
                if data:
                    self.stdin.feed_data(data)
            elif channel == RESIZE:
                self.resize_json(data)
            elif channel == CLOSE and self.protocol == V5 and data[:1] == bytes([STDIN]):
                if self.stdin is not None and not self.stdin.at_eof():
                    self.stdin.feed_eof()
        if self.stdin is not None and not self.stdin.at_eof():
            self.stdin.feed_eof()
        self.gone.set()

    async def finish(self, status: dict) -> None:
        payload = error_payload(self.protocol, status)
        if payload or self.protocol in (V4, V5):
            self._send(ERROR, payload)
        await self.sender.close()
        await self.ws.close()


async def tunnel_spdy(ws: web.WebSocketResponse, on_stream) -> None:
    """Run a SPDY session over the WebSocket's binary messages until either side ends it."""
    sender = Sender(ws)
    session = spdy.Session(sender.send, on_stream, sender.drain)

    async def read() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                session.feed(msg.data)
            if session.closed:
                break
        session.close()
    reader = asyncio.ensure_future(read())
    await session.done
    await sender.close()
    reader.cancel()
    await ws.close()


async def channel_portforward(ws: web.WebSocketResponse, ports: list[int], connect) -> None:
    """Port-forward as the Python client (and other WebSocket clients) speaks it: v4.channel.k8s.io
    with `?ports=`, port i on channels 2i (data) and 2i+1 (error), each channel's first message
    the port number (2 bytes, little-endian). One pod connection per port for the WebSocket's
    life; the WebSocket closes once every pod connection ended."""
    sender = Sender(ws)
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps = []
    for i, port in enumerate(ports):
        for channel in (2 * i, 2 * i + 1):
            sender.send(bytes([channel]) + port.to_bytes(2, "little"))
        try:
            reader, writers[i] = await connect(port)
        except (OSError, asyncio.TimeoutError) as e:
            sender.send(bytes([2 * i + 1]) + f"error forwarding port {port}: {e}".encode())
            continue

        async def pump(i: int = i, reader: asyncio.StreamReader = reader) -> None:
            try:
                while chunk := await reader.read(1 << 16):
                    sender.send(bytes([2 * i]) + chunk)
                    await sender.drain()
            except (ConnectionError, OSError):
                pass
        pumps.append(asyncio.ensure_future(pump()))

    async def from_client() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data or msg.data[0] % 2:
                continue
            writer = writers.get(msg.data[0] // 2)
            if writer is not None and not writer.is_closing():
                writer.write(msg.data[1:])
                await writer.drain()
    client = asyncio.ensure_future(from_client())
    try:
        if pumps:
            await asyncio.wait([client, asyncio.gather(*pumps)], return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(0.1)
    finally:
        client.cancel()
        for p in pumps:
            p.cancel()
        for w in writers.values():
            w.close()
        await sender.close()
        await ws.close()
