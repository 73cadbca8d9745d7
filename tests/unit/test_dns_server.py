"""The cluster DNS server (kproxy/dns/server.py), run in-process on loopback over a temp store."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from kproxy.dns.server import DnsServer, StoreReader, parse_hostport
from kproxy.store.sqlite import SqliteStore

LOOPBACK = "127.0.0.1"
FAST = 0.1                      # "well under 100 ms" for answers that need no upstream


def service(ns, name, **spec):
    return {"kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec}


def endpoint_slice(ns, name, svc_name, ips, ports, ready=True):
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc_name}},
            "ports": ports,
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]}


def put_slice(store, sl):
    store.put(f"/registry/endpointslices/{sl['metadata']['namespace']}/{sl['metadata']['name']}", sl)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "store.db")
    s.put("/registry/services/default/web", service(
        "default", "web", clusterIP="10.96.0.20", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    s.put("/registry/services/default/db", service(
        "default", "db", clusterIP="None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    s.put("/registry/services/default/big", service(
        "default", "big", clusterIP="None", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    s.put("/registry/services/default/ext", service(
        "default", "ext", type="ExternalName", externalName="www.example.com"))
    put_slice(s, endpoint_slice("default", "db-1", "db", ["10.244.1.5"], [{"name": "pg", "port": 5432}]))
    put_slice(s, endpoint_slice("default", "big-1", "big", [f"10.244.7.{i}" for i in range(1, 101)],
                                [{"name": "http", "port": 8080}]))
    yield s
    s.close()


class Running:
    """A DnsServer on its own event loop thread, so the test can use blocking dnspython calls."""

    def __init__(self, server: DnsServer):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(server.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self):
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def start(tmp_path):
    running = []

    def _start(path=None, **kw):
        kw.setdefault("health_port", 0)
        kw.setdefault("ready_port", 0)
        kw.setdefault("metrics_port", 0)
        kw.setdefault("log", io.StringIO())
        r = Running(DnsServer(path or tmp_path / "store.db", listen=f"{LOOPBACK}:0", **kw))
        running.append(r)
        return r.server

    yield _start
    for r in running:
        r.stop()


def udp(server, name, qtype="A", timeout=2, **kw):
    return dns.query.udp(dns.message.make_query(name, qtype, **kw), LOOPBACK, port=server.port, timeout=timeout)


def tcp(server, name, qtype="A", timeout=2, **kw):
    return dns.query.tcp(dns.message.make_query(name, qtype, **kw), LOOPBACK, port=server.port, timeout=timeout)


def rdatas(msg, rdtype="A"):
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                  for rd in rrset)


def http_get(server, route, path=None):
    url = f"http://{LOOPBACK}:{server.http_ports[route]}/{path or route}"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class FakeUpstream:
    """A loopback resolver: A 192.0.2.1 for every name, NXDOMAIN for names starting with 'nx'."""

    def __init__(self, silent=False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.silent, self.seen, self._stop = silent, [], threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                wire, addr = self.sock.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(wire)
            self.seen.append(query.question[0].name.to_text())
            if self.silent:
                continue
            reply = dns.message.make_response(query, recursion_available=True)
            q = query.question[0]
            if q.name.to_text().startswith("nx"):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif q.rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", "192.0.2.1"))
            self.sock.sendto(reply.to_wire(), addr)

    def close(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def upstream():
    u = FakeUpstream()
    yield u
    u.close()


# ================================================================== answers from the store


def test_clusterip_a_over_udp_is_authoritative(store, start):
    server = start()
    reply = udp(server, "web.default.svc.cluster.local")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdatas(reply) == ["10.96.0.20"]
    assert reply.answer[0].ttl == 30
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.QR and reply.flags & dns.flags.RD
    assert not reply.flags & dns.flags.RA          # the kubernetes plugin does not set RA
    assert reply.question[0].name.to_text() == "web.default.svc.cluster.local."


def test_srv_ptr_txt_and_headless_over_udp(store, start):
    server = start()
    srv = udp(server, "_pg._tcp.db.default.svc.cluster.local", "SRV")
    assert rdatas(srv, "SRV") == ["0 100 5432 10-244-1-5.db.default.svc.cluster.local."]
    assert [rr.to_text() for rr in srv.additional] == ["10-244-1-5.db.default.svc.cluster.local. 30 IN A 10.244.1.5"]
    assert rdatas(udp(server, "20.0.96.10.in-addr.arpa", "PTR"), "PTR") == ["web.default.svc.cluster.local."]
    assert rdatas(udp(server, "dns-version.cluster.local", "TXT"), "TXT") == ['"1.1.0"']
    assert rdatas(udp(server, "db.default.svc.cluster.local")) == ["10.244.1.5"]
    assert rdatas(udp(server, "10-1-2-3.default.pod.cluster.local")) == ["10.1.2.3"]


def test_nodata_carries_the_soa(store, start):
    server = start()
    reply = udp(server, "web.default.svc.cluster.local", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    soa = reply.authority[0]
    assert soa.name.to_text() == "cluster.local." and soa.rdtype == dns.rdatatype.SOA
    assert re.fullmatch(r"ns\.dns\.cluster\.local\. hostmaster\.cluster\.local\. \d+ 7200 1800 86400 30",
                        soa[0].to_text())


def test_nxdomain_for_an_unknown_service_is_fast(store, start):
    server = start()
    t0 = time.monotonic()
    reply = udp(server, "nope.default.svc.cluster.local")
    assert time.monotonic() - t0 < FAST
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_a_store_change_is_answered_within_half_a_second(store, start):
    server = start()
    assert rdatas(udp(server, "db.default.svc.cluster.local")) == ["10.244.1.5"]
    put_slice(store, endpoint_slice("default", "db-1", "db", ["10.244.1.5", "10.244.1.6"],
                                    [{"name": "pg", "port": 5432}]))
    t0 = time.monotonic()
    while rdatas(udp(server, "db.default.svc.cluster.local")) != ["10.244.1.5", "10.244.1.6"]:
        assert time.monotonic() - t0 < 0.5, "the new endpoint was not served within 0.5 s"
        time.sleep(0.01)
    store.delete("/registry/services/default/web")
    t0 = time.monotonic()
    while udp(server, "web.default.svc.cluster.local").rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() - t0 < 0.5, "the deleted Service was still served after 0.5 s"
        time.sleep(0.01)


def test_not_ready_endpoints_leave_the_answer(store, start):
    server = start()
    put_slice(store, endpoint_slice("default", "db-1", "db", ["10.244.1.5"], [{"name": "pg", "port": 5432}],
                                    ready=False))
    t0 = time.monotonic()
    while udp(server, "db.default.svc.cluster.local").rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() - t0 < 0.5
        time.sleep(0.01)


# ================================================================== size limits


def test_large_headless_answer_truncates_over_udp_and_is_whole_over_tcp(store, start):
    server = start()
    small = udp(server, "big.default.svc.cluster.local")
    assert small.flags & dns.flags.TC
    assert len(small.to_wire()) <= 512
    full = tcp(server, "big.default.svc.cluster.local")
    assert not full.flags & dns.flags.TC
    assert len(rdatas(full)) == 100


def test_edns_buffer_size_is_honoured(store, start):
    server = start()
    reply = udp(server, "big.default.svc.cluster.local", use_edns=0, payload=4096)
    assert not reply.flags & dns.flags.TC and len(rdatas(reply)) == 100
    assert reply.edns == 0
    small = udp(server, "big.default.svc.cluster.local", use_edns=0, payload=1232)
    assert small.flags & dns.flags.TC


def test_edns_do_bit_is_echoed(store, start):
    server = start()
    reply = udp(server, "web.default.svc.cluster.local", use_edns=0, want_dnssec=True)
    assert reply.edns == 0 and reply.ednsflags & dns.flags.DO


# ================================================================== outside the cluster


def test_refused_at_once_without_upstream(store, start):
    server = start()
    t0 = time.monotonic()
    reply = udp(server, "www.example.com")
    assert time.monotonic() - t0 < FAST
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA
    assert reply.question[0].name.to_text() == "www.example.com."


def test_forwards_to_the_upstream_and_relays_its_answer(store, start, upstream):
    server = start(upstreams=[f"{LOOPBACK}:{upstream.port}"])
    reply = udp(server, "www.example.com")
    assert reply.rcode() == dns.rcode.NOERROR and rdatas(reply) == ["192.0.2.1"]
    assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert udp(server, "nx.example.com").rcode() == dns.rcode.NXDOMAIN
    # cluster names never reach the upstream
    assert udp(server, "nope.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert upstream.seen == ["www.example.com.", "nx.example.com."]


def test_servfail_when_the_upstream_does_not_answer(store, start):
    silent = FakeUpstream(silent=True)
    try:
        server = start(upstreams=[f"{LOOPBACK}:{silent.port}"], forward_timeout=0.3)
        t0 = time.monotonic()
        reply = udp(server, "www.example.com")
        assert 0.25 < time.monotonic() - t0 < 1.5
        assert reply.rcode() == dns.rcode.SERVFAIL
    finally:
        silent.close()


def test_externalname_cname_is_completed_from_the_upstream(store, start, upstream):
    server = start(upstreams=[f"{LOOPBACK}:{upstream.port}"])
    reply = udp(server, "ext.default.svc.cluster.local")
    assert [rr.to_text() for rr in reply.answer] == [
        "ext.default.svc.cluster.local. 30 IN CNAME www.example.com.", "www.example.com. 300 IN A 192.0.2.1"]
    assert reply.flags & dns.flags.AA


def test_externalname_without_upstream_is_the_bare_cname(store, start):
    server = start()
    reply = udp(server, "ext.default.svc.cluster.local")
    assert [rr.to_text() for rr in reply.answer] == ["ext.default.svc.cluster.local. 30 IN CNAME www.example.com."]


def test_unknown_reverse_names_fall_through_to_the_upstream(store, start, upstream):
    server = start(upstreams=[f"{LOOPBACK}:{upstream.port}"])
    udp(server, "8.8.8.8.in-addr.arpa", "PTR")
    assert upstream.seen == ["8.8.8.8.in-addr.arpa."]
    assert rdatas(udp(server, "20.0.96.10.in-addr.arpa", "PTR"), "PTR") == ["web.default.svc.cluster.local."]
    assert upstream.seen == ["8.8.8.8.in-addr.arpa."]


def test_unknown_reverse_names_without_upstream_are_nxdomain(store, start):
    server = start()
    assert udp(server, "8.8.8.8.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN


# ================================================================== health, ready, metrics, logs


def test_health_ready_and_metrics(store, start):
    server = start()
    assert http_get(server, "health") == (200, "OK")
    assert http_get(server, "ready") == (200, "OK")
    udp(server, "web.default.svc.cluster.local")
    tcp(server, "nope.default.svc.cluster.local", "SRV")
    udp(server, "www.example.com", "HINFO")
    status, text = http_get(server, "metrics")
    label = f'server="dns://{LOOPBACK}:{server.port}",zone="."'
    assert status == 200
    assert "# TYPE coredns_dns_requests_total counter" in text
    assert f'coredns_dns_requests_total{{{label},proto="udp",family="1",type="A"}} 1' in text
    assert f'coredns_dns_requests_total{{{label},proto="tcp",family="1",type="SRV"}} 1' in text
    assert f'coredns_dns_requests_total{{{label},proto="udp",family="1",type="other"}} 1' in text
    assert f'coredns_dns_responses_total{{{label},rcode="NOERROR",plugin="kubernetes"}} 1' in text
    assert f'coredns_dns_responses_total{{{label},rcode="NXDOMAIN",plugin="kubernetes"}} 1' in text
    assert f'coredns_dns_responses_total{{{label},rcode="REFUSED",plugin=""}} 1' in text
    assert http_get(server, "health", "ready")[0] == 404   # each port serves its own path only


def test_not_ready_until_the_store_exists(tmp_path, start):
    path = tmp_path / "later.db"
    server = start(path)
    assert http_get(server, "health") == (200, "OK")
    assert http_get(server, "ready")[0] == 503
    assert udp(server, "web.default.svc.cluster.local").rcode() == dns.rcode.SERVFAIL
    assert not path.exists()                       # a reader never creates the store
    store = SqliteStore(path)
    store.put("/registry/services/default/web", service("default", "web", clusterIP="10.96.0.20",
                                                        ports=[{"port": 80}]))
    t0 = time.monotonic()
    while http_get(server, "ready")[0] != 200:
        assert time.monotonic() - t0 < 0.5
        time.sleep(0.02)
    assert rdatas(udp(server, "web.default.svc.cluster.local")) == ["10.96.0.20"]
    store.close()


def test_one_log_line_per_query_in_coredns_format(store, start):
    server = start()
    reply = udp(server, "web.default.svc.cluster.local")
    tcp(server, "www.example.com", "AAAA")
    lines = server.log.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        rf'\[INFO\] 127\.0\.0\.1:\d+ - {reply.id} "A IN web\.default\.svc\.cluster\.local\. udp \d+ false 512" '
        rf'NOERROR qr,aa,rd \d+ \d+\.\d+s', lines[0]), lines[0]
    assert re.fullmatch(
        r'\[INFO\] 127\.0\.0\.1:\d+ - \d+ "AAAA IN www\.example\.com\. tcp \d+ false 65535" REFUSED qr,rd \d+ '
        r'\d+\.\d+s', lines[1]), lines[1]


# ================================================================== the store reader


def test_store_reader_is_read_only(store, tmp_path):
    before = store.revision()
    reader = StoreReader(tmp_path / "store.db")
    snap = reader.snapshot()
    assert snap.revision == before == reader.revision()
    assert [s["metadata"]["name"] for s in snap.objects["services"]] == ["big", "db", "ext", "web"]
    with pytest.raises(sqlite3.OperationalError):
        reader._connection().execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
    reader.close()
    assert store.revision() == before
    missing = StoreReader(tmp_path / "absent.db")
    assert missing.revision() is None and missing.snapshot() is None
    assert not (tmp_path / "absent.db").exists()


def test_parse_hostport():
    assert parse_hostport("10.0.0.1", 53) == ("10.0.0.1", 53)
    assert parse_hostport("10.0.0.1:5353", 53) == ("10.0.0.1", 5353)
    assert parse_hostport("[::1]:5353", 53) == ("::1", 5353)
    assert parse_hostport("::1", 53) == ("::1", 53)
    assert parse_hostport(":53", 0) == ("0.0.0.0", 53)


# ================================================================== the command line


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def test_command_line_serves_and_stops_on_sigterm(store, tmp_path):
    import signal
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kproxy.dns.server", "--store", str(tmp_path / "store.db"),
         "--listen", f"{LOOPBACK}:{port}", "--domain", "cluster.local", "--ttl", "5",
         "--health-port", "0", "--ready-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"dns://{LOOPBACK}:{port}"   # printed once serving
        q = dns.message.make_query("web.default.svc.cluster.local", "A")
        reply = dns.query.udp(q, LOOPBACK, port=port, timeout=2)
        assert [rr.to_text() for rr in reply.answer] == ["web.default.svc.cluster.local. 5 IN A 10.96.0.20"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert '"A IN web.default.svc.cluster.local. udp' in out
