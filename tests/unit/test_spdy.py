"""SPDY/3.1 framing (kproxy/apiserver/spdy.py): the dictionary, every frame type round-trips,
header compression keeps its state across blocks, a byte stream split anywhere parses the
same, and the server session's replies (SYN_REPLY, PING echo, RST for unknown streams)."""
from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib

import pytest

from kproxy.apiserver import spdy

# sha256 of moby/spdystream's spdy/dictionary.go headerDictionary bytes (1423 bytes)
SPDYSTREAM_DICT_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_dictionary_is_spdy3s():
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == SPDYSTREAM_DICT_SHA256


FRAMES = [
    spdy.SynStream(1, {"streamtype": ["error"], "port": ["80"], "requestid": ["0"]}, 0, 0, 0),
    spdy.SynStream(3, {"streamtype": ["data"], "multi": ["a", "b"]}, spdy.FLAG_FIN, 1, 7),
    spdy.SynReply(1, {}, 0),
    spdy.SynReply(3, {"x-stream-protocol-version": ["portforward.k8s.io"]}, spdy.FLAG_FIN),
    spdy.Headers(5, {"a": ["b"]}, 0),
    spdy.RstStream(5, spdy.CANCEL),
    spdy.Settings([(0, 4, 1000), (1, 7, 65536)], 0),
    spdy.Ping(1),
    spdy.GoAway(7, 0),
    spdy.WindowUpdate(3, 65536),
    spdy.Data(1, b"hello", 0),
    spdy.Data(3, b"", spdy.FLAG_FIN),
    spdy.Data(5, bytes(range(256)) * 300, 0),
]


def test_round_trip_every_frame_type():
    out_codec, in_codec = spdy.HeaderCodec(), spdy.HeaderCodec()
    wire = b"".join(spdy.encode(f, out_codec) for f in FRAMES)
    assert spdy.FrameReader(in_codec).feed(wire) == FRAMES


def test_split_anywhere():
    """The frames arrive in WebSocket messages or TCP segments cut at any byte."""
    out_codec = spdy.HeaderCodec()
    wire = b"".join(spdy.encode(f, out_codec) for f in FRAMES[:10])
    for step in (1, 3, 7, 64):
        reader, got = spdy.FrameReader(spdy.HeaderCodec()), []
        for i in range(0, len(wire), step):
            got += reader.feed(wire[i:i + step])
        assert got == FRAMES[:10]


def test_control_frame_layout():
    """Draft 3 section 2.2.1: control bit, version 3, type, flags + 24-bit length."""
    raw = spdy.encode(spdy.Ping(0x01020304), spdy.HeaderCodec())
    assert raw == bytes.fromhex("80030006 00000004 01020304".replace(" ", ""))
    raw = spdy.encode(spdy.RstStream(5, spdy.REFUSED_STREAM), spdy.HeaderCodec())
    assert raw == struct.pack(">HHIII", 0x8003, 3, 8, 5, 3)
    raw = spdy.encode(spdy.Data(9, b"ab", spdy.FLAG_FIN), spdy.HeaderCodec())
    assert raw == struct.pack(">II", 9, 0x01000002) + b"ab"


def test_header_block_uses_the_dictionary_and_one_stream():
    """A block compressed by another SPDY/3 peer (zlib with the dictionary, sync-flushed,
    one stream for the connection) decodes; the second block depends on the first."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)

    def block(headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers)) + b"".join(
            struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v)) + v.encode() for k, v in headers.items())
        return comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)
    codec = spdy.HeaderCodec()
    first = {"streamtype": "data", "port": "80", "requestid": "1"}
    assert codec.decode(block(first)) == {k: [v] for k, v in first.items()}
    second = block(first)  # refers back to the first block's bytes
    assert len(second) < 20
    assert codec.decode(second) == {k: [v] for k, v in first.items()}
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderCodec().decode(second)  # without the history it is garbage


def test_wrong_version_is_a_protocol_error():
    raw = struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1"
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.FrameReader(spdy.HeaderCodec()).feed(raw)


def test_session_replies_and_delivers():
    async def scenario():
        wire, streams = bytearray(), []
        session = spdy.Session(wire.extend, streams.append)
        client = spdy.HeaderCodec()
        session.feed(spdy.encode(spdy.SynStream(1, {"streamtype": ["data"]}), client))
        session.feed(spdy.encode(spdy.Data(1, b"abc"), client) + spdy.encode(spdy.Data(1, b"", spdy.FLAG_FIN), client))
        session.feed(spdy.encode(spdy.Ping(5), client) + spdy.encode(spdy.Ping(6), client))
        session.feed(spdy.encode(spdy.Data(99, b"x"), client))
        (stream,) = streams
        assert stream.header("streamtype") == "data"
        assert await stream.reader.read() == b"abc"
        stream.write(b"back")
        stream.close()
        got = spdy.FrameReader(spdy.HeaderCodec()).feed(bytes(wire))
        assert got == [spdy.SynReply(1, {}), spdy.Ping(5), spdy.RstStream(99, spdy.INVALID_STREAM),
                       spdy.Data(1, b"back"), spdy.Data(1, b"", spdy.FLAG_FIN)]
        session.feed(spdy.encode(spdy.RstStream(1, spdy.CANCEL), client))
        assert stream.reset and not session.streams
        session.feed(spdy.encode(spdy.GoAway(1), client))
        assert session.done.done()
    asyncio.run(scenario())


def test_garbage_ends_the_session_with_goaway():
    async def scenario():
        wire = bytearray()
        session = spdy.Session(wire.extend, lambda s: None)
        session.feed(struct.pack(">HHI", 0x8003, 1, 12) + b"\0\0\0\1\0\0\0\0\0\0" + b"zz")
        assert session.closed
        assert spdy.FrameReader(spdy.HeaderCodec()).feed(bytes(wire)) == [spdy.GoAway(0, 1)]
    asyncio.run(scenario())
