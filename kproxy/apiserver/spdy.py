"""SPDY/3.1 framing and a server-side session, as kubectl's streams speak it.

Why SPDY at all: `kubectl port-forward` (every version; 1.31+ tunnels it inside a WebSocket)
and `exec` of kubectl before 1.30 (Debian's 1.20) multiplex their streams over SPDY/3.1 through
moby/spdystream. No maintained Python library speaks it, so this module implements what
spdystream uses of the draft 3 spec (chromium.org spdy-protocol-draft3):

- control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS,
  WINDOW_UPDATE, and DATA frames (FIN flag = that side's half-close);
- header blocks: 32-bit counts and lengths, lower-case names, several values joined by NUL,
  compressed with one zlib stream per direction for the whole connection (SYNC_FLUSH after
  each block) primed with the SPDY/3 dictionary below.

Flow control is framed but not enforced: spdystream, the only peer here, never sends
WINDOW_UPDATE and ignores ours, so a window would only stall a stream after 64 KiB.
Back-pressure comes from the transport instead (`Session.drain`).
"""
from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

VERSION = 3

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR = 1, 2, 3, 4, 5, 6

MAX_DATA = (1 << 24) - 1


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed
    header names and common values, then a run of status codes, reason phrases, dates and
    media types. Its SHA-256 is checked in tests/unit/test_spdy.py against spdystream's bytes."""
    words = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
             "accept-ranges age allow authorization cache-control connection content-base content-encoding "
             "content-language content-length content-location content-md5 content-range content-type date "
             "etag expect expires from host if-match if-modified-since if-none-match if-range "
             "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
             "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
             "user-agent vary via warning www-authenticate method get status").split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    return prefixed + tail.encode()


DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer broke the framing: the session answers GOAWAY and ends."""


# --- frames -------------------------------------------------------------------------------

@dataclass
class Frame:
    pass


@dataclass
class Data(Frame):
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass
class SynStream(Frame):
    stream_id: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    flags: int = 0
    associated: int = 0
    priority: int = 0


@dataclass
class SynReply(Frame):
    stream_id: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    flags: int = 0


@dataclass
class Headers(Frame):
    stream_id: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    flags: int = 0


@dataclass
class RstStream(Frame):
    stream_id: int
    status: int = CANCEL


@dataclass
class Settings(Frame):
    values: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)
    flags: int = 0


@dataclass
class Ping(Frame):
    ping_id: int


@dataclass
class GoAway(Frame):
    last_good: int
    status: int = 0


@dataclass
class WindowUpdate(Frame):
    stream_id: int
    delta: int


class HeaderCodec:
    """One zlib stream each way for the connection's lifetime, as SPDY/3 requires: a header
    block can refer back to any earlier block of the same direction."""

    def __init__(self):
        self._out = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._in = zlib.decompressobj(zdict=DICTIONARY)

    def encode(self, headers: dict[str, list[str]]) -> bytes:
        block = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            n, v = name.lower().encode(), "\x00".join(values).encode()
            block += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        return self._out.compress(b"".join(block)) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, data: bytes) -> dict[str, list[str]]:
        try:
            raw = self._in.decompress(data)
        except zlib.error as e:
            raise ProtocolError(f"header block: {e}") from None
        try:
            (count,), pos = struct.unpack_from(">I", raw), 4
            headers: dict[str, list[str]] = {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + n].decode().lower()
                pos += 4 + n
                (n,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + n].decode()
                pos += 4 + n
                headers.setdefault(name, []).extend(value.split("\x00"))
        except (struct.error, UnicodeDecodeError) as e:
            raise ProtocolError(f"header block: {e}") from None
        return headers


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


def encode(frame: Frame, codec: HeaderCodec) -> bytes:
    """The wire bytes of one frame (header blocks through the connection's `codec`)."""
    if isinstance(frame, Data):
        if len(frame.data) > MAX_DATA:
            raise ValueError("DATA frame too long")
        return struct.pack(">II", frame.stream_id & 0x7FFFFFFF, (frame.flags << 24) | len(frame.data)) + frame.data
    if isinstance(frame, SynStream):
        payload = struct.pack(">IIBB", frame.stream_id, frame.associated, frame.priority << 5, 0)
        return _control(SYN_STREAM, frame.flags, payload + codec.encode(frame.headers))
    if isinstance(frame, (SynReply, Headers)):
        ftype = SYN_REPLY if isinstance(frame, SynReply) else HEADERS
        return _control(ftype, frame.flags, struct.pack(">I", frame.stream_id) + codec.encode(frame.headers))
    if isinstance(frame, RstStream):
        return _control(RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
    if isinstance(frame, Settings):
        body = struct.pack(">I", len(frame.values))
        body += b"".join(struct.pack(">II", (f << 24) | i, v) for f, i, v in frame.values)
        return _control(SETTINGS, frame.flags, body)
    if isinstance(frame, Ping):
        return _control(PING, 0, struct.pack(">I", frame.ping_id))
    if isinstance(frame, GoAway):
        return _control(GOAWAY, 0, struct.pack(">II", frame.last_good, frame.status))
    if isinstance(frame, WindowUpdate):
        return _control(WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
    raise TypeError(f"not a SPDY frame: {frame!r}")


class FrameReader:
    """Incremental parser: bytes in (any split), whole frames out."""

    def __init__(self, codec: HeaderCodec):
        self.codec = codec
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while len(self.buf) >= 8:
            word, flags_len = struct.unpack_from(">II", self.buf)
            length = flags_len & 0xFFFFFF
            if len(self.buf) < 8 + length:
                break
            payload = bytes(self.buf[8:8 + length])
            del self.buf[:8 + length]
            flags = flags_len >> 24
            if word & 0x80000000:
                frame = self._control((word >> 16) & 0x7FFF, word & 0xFFFF, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(Data(word & 0x7FFFFFFF, payload, flags))
        return frames

    def _control(self, version: int, ftype: int, flags: int, p: bytes) -> Frame | None:
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        try:
            if ftype == SYN_STREAM:
                sid, assoc, prio, _ = struct.unpack_from(">IIBB", p)
                return SynStream(sid & 0x7FFFFFFF, self.codec.decode(p[10:]), flags, assoc & 0x7FFFFFFF, prio >> 5)
            if ftype in (SYN_REPLY, HEADERS):
                (sid,) = struct.unpack_from(">I", p)
                cls = SynReply if ftype == SYN_REPLY else Headers
                return cls(sid & 0x7FFFFFFF, self.codec.decode(p[4:]), flags)
            if ftype == RST_STREAM:
                sid, status = struct.unpack_from(">II", p)
                return RstStream(sid & 0x7FFFFFFF, status)
            if ftype == SETTINGS:
                (n,) = struct.unpack_from(">I", p)
                vals = [struct.unpack_from(">II", p, 4 + 8 * i) for i in range(n)]
                return Settings([(fi >> 24, fi & 0xFFFFFF, v) for fi, v in vals], flags)
            if ftype == PING:
                return Ping(struct.unpack_from(">I", p)[0])
            if ftype == GOAWAY:
                last, status = struct.unpack_from(">II", p)
                return GoAway(last & 0x7FFFFFFF, status)
            if ftype == WINDOW_UPDATE:
                sid, delta = struct.unpack_from(">II", p)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except struct.error as e:
            raise ProtocolError(f"short control frame type {ftype}: {e}") from None
        return None  # unknown control frame types are ignored (draft 3, 2.2.1)


# --- the session ------------------------------------------------------------------------

class Stream:
    """One stream the client opened: its headers, what it sent (`read`), and our half."""

    def __init__(self, session: "Session", sid: int, headers: dict[str, list[str]], fin: bool):
        self.session, self.id, self.headers = session, sid, headers
        self.reader = asyncio.StreamReader(limit=1 << 24)
        self.closed_local = False
        self.reset = False
        if fin:
            self.reader.feed_eof()

    def header(self, name: str, default: str = "") -> str:
        return (self.headers.get(name.lower()) or [default])[0]

    def write(self, data: bytes) -> None:
        if self.closed_local or self.reset or self.session.closed:
            return
        for i in range(0, len(data), 1 << 16):  # several frames keep any one from holding the line
            self.session.send(Data(self.id, data[i:i + (1 << 16)]))

    def close(self) -> None:
        """Our half-close: a DATA frame with FIN."""
        if not self.closed_local and not self.reset and not self.session.closed:
            self.session.send(Data(self.id, b"", FLAG_FIN))
        self.closed_local = True

    def _remote_reset(self) -> None:
        self.reset = True
        if not self.reader.at_eof():
            self.reader.feed_eof()


class Session:
    """The server's side of one SPDY connection. `write(bytes)` puts bytes on the wire;
    `on_stream(stream)` is called (after our SYN_REPLY) for each stream the client opens;
    `drain()` waits until the wire has room again."""

    def __init__(self, write: Callable[[bytes], None], on_stream: Callable[[Stream], None],
                 drain: Callable[[], "asyncio.Future | None"] | None = None):
        self._write, self._on_stream, self._drain = write, on_stream, drain
        self.codec_in, self.codec_out = HeaderCodec(), HeaderCodec()
        self.reader = FrameReader(self.codec_in)
        self.streams: dict[int, Stream] = {}
        self.last_id = 0
        self.closed = False
        self.done = asyncio.get_event_loop().create_future()

    def send(self, frame: Frame) -> None:
        if not self.closed:
            self._write(encode(frame, self.codec_out))

    async def drain(self) -> None:
        if self._drain is not None:
            res = self._drain()
            if res is not None:
                await res

    def feed(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ProtocolError:
            self.send(GoAway(self.last_id, 1))
            self.close()
            return
        for frame in frames:
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, SynStream):
            if frame.stream_id in self.streams or frame.stream_id % 2 == 0:
                self.send(RstStream(frame.stream_id, PROTOCOL_ERROR))
                return
            self.last_id = max(self.last_id, frame.stream_id)
            stream = Stream(self, frame.stream_id, frame.headers, bool(frame.flags & FLAG_FIN))
            self.streams[frame.stream_id] = stream
            self.send(SynReply(frame.stream_id, {}))  # spdystream's CreateStream waits for it
            self._on_stream(stream)
        elif isinstance(frame, Data):
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                self.send(RstStream(frame.stream_id, INVALID_STREAM))
                return
            if frame.data and not stream.reader.at_eof():
                stream.reader.feed_data(frame.data)
            if frame.flags & FLAG_FIN and not stream.reader.at_eof():
                stream.reader.feed_eof()
        elif isinstance(frame, RstStream):
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream._remote_reset()
        elif isinstance(frame, Ping):
            if frame.ping_id % 2 == 1:  # the client's: echo it; ours (even) would be answers
                self.send(frame)
        elif isinstance(frame, GoAway):
            self.close()
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing to do for a server of these protocols

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream._remote_reset()
        self.streams.clear()
        if not self.done.done():
            self.done.set_result(None)

    def goaway(self) -> None:
        self.send(GoAway(self.last_id, 0))
        self.close()
