"""kproxy/node/access.py's log tail: `tail_offset` (reading a file backwards in blocks, what
`kubectl logs --tail` and `kproxy logs --tail` use) agrees with the plain definition on files
with and without a final newline, empty lines, any block size."""
from __future__ import annotations

import io
import random

from kproxy.node.access import tail, tail_offset


def test_tail_offset_agrees_with_tail():
    rng = random.Random(7)
    for _ in range(2000):
        lines = [b"x" * rng.randint(0, 5) for _ in range(rng.randint(0, 12))]
        data = b"\n".join(lines) + (b"\n" if lines and rng.random() < 0.7 else b"")
        for n in range(-1, 15):
            off = tail_offset(io.BytesIO(data), n, block=rng.randint(1, 8))
            assert data[off:] == tail(data, n), (data, n)


def test_tail_examples():
    data = b"a\nb\nc\n"
    assert [data[tail_offset(io.BytesIO(data), n):] for n in (-1, 0, 1, 2, 5)] == \
        [b"a\nb\nc\n", b"", b"c\n", b"b\nc\n", b"a\nb\nc\n"]
    assert b"a\nb"[tail_offset(io.BytesIO(b"a\nb"), 1):] == b"b"
