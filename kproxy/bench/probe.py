"""A prober run inside a lab's node netns (``ip netns exec NODE python -m kproxy.bench.probe``):
for each JSON line ``{"ip": ..., "port": 80, "timeout": 20}`` on stdin it watches, at once and
in two threads, (1) ``iptables-save -t nat`` until the ClusterIP shows up and (2) TCP connections
(an HTTP GET) to ip:port until one is answered, and prints the wall-clock time of each as one
JSON line. Every loop is bounded by the request's timeout; EOF on stdin ends the prober.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time


def watch_rules(ip: str, deadline: float, out: dict) -> None:
    needle = f"-d {ip}/32 "
    polls = []
    while time.time() < deadline:
        start = time.time()
        text = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        end = time.time()
        polls.append(end - start)
        if needle in text:
            out["rule_at"] = end
            break
        time.sleep(0.005)
    out["save_polls"] = len(polls)
    out["save_seconds_mean"] = sum(polls) / len(polls) if polls else None


def watch_connect(ip: str, port: int, deadline: float, out: dict) -> None:
    attempts = 0
    while time.time() < deadline:
        attempts += 1
        try:
            with socket.create_connection((ip, port), timeout=0.05) as s:
                s.settimeout(2)
                s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
                data = b""
                while b"\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    out["connect_at"] = time.time()
                    break
        except OSError:
            pass
        time.sleep(0.005)
    out["connect_attempts"] = attempts


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        deadline = time.time() + float(req.get("timeout", 20))
        out: dict = {"ip": req["ip"]}
        threads = [threading.Thread(target=watch_rules, args=(req["ip"], deadline, out)),
                   threading.Thread(target=watch_connect, args=(req["ip"], int(req.get("port", 80)), deadline, out))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
