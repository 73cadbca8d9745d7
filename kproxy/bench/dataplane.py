"""Load generation inside a lab: wrk output parsing, and the balance client (10,000 fresh
connections through a ClusterIP, counting which pod answered each)."""
from __future__ import annotations

import re

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict:
    """Requests/s, transfer, latency (avg, stdev, max, percentiles with --latency) and errors."""
    out: dict = {"latency": {}, "errors": {}}
    for line in output.splitlines():
        s = line.strip()
        m = re.match(r"Requests/sec:\s+([\d.]+)", s)
        if m:
            out["requests_per_second"] = float(m.group(1))
        m = re.match(r"(\d+) requests in ([\d.]+\w+),", s)
        if m:
            out["requests"] = int(m.group(1))
            out["duration_seconds"] = _duration(m.group(2))
        m = re.match(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", s)
        if m:
            out["latency"].update(avg=_duration(m.group(1)), stdev=_duration(m.group(2)), max=_duration(m.group(3)))
        m = re.match(r"(50|75|90|99)%\s+([\d.]+\w+)$", s)
        if m:
            out["latency"][f"p{m.group(1)}"] = _duration(m.group(2))
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            out["errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            out["errors"]["non_2xx"] = int(m.group(1))
    if "requests_per_second" not in out:
        raise ValueError("no Requests/sec in wrk output")
    return out


# Run in the node netns: python -c BALANCE_CLIENT IP PORT CONNECTIONS CONCURRENCY SECONDS.
# Each connection is new (so each one is a new conntrack entry, i.e. a new DNAT choice); prints
# {"pod": count, ...} plus errors as JSON. Bounded by count and by SECONDS.
BALANCE_CLIENT = r"""
import asyncio, json, sys, time
ip, port, total, conc, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
counts, errors, left = {}, [0], [total]
deadline = time.monotonic() + limit
async def one():
    r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
    try:
        w.write(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 3)
    finally:
        w.close()
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"x-pod-name:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no X-Pod-Name")
async def worker():
    while left[0] > 0 and time.monotonic() < deadline:
        left[0] -= 1
        try:
            pod = await one()
            counts[pod] = counts.get(pod, 0) + 1
        except Exception:
            errors[0] += 1
async def main():
    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    print(json.dumps({"counts": counts, "errors": errors[0], "seconds": time.monotonic() - start}))
asyncio.run(main())
"""
