"""The cluster DNS server: CoreDNS's kubeadm setup in one asyncio process.

    python -m kproxy.dns.server --store STATE/store.db --listen 0.0.0.0:53 \
        --domain cluster.local --ttl 30 --upstream 192.0.2.53

Answers names in the cluster domain (and the reverse zones) from a `ClusterRecords` built from
the lab's SQLite store, which it only ever reads (a `mode=ro` connection: the store's own class
writes its schema and takes a write lock when it opens). It polls the store's revision every
100 ms and rebuilds the records when a Service, EndpointSlice, Pod or Namespace changed, so
answers follow endpoints as quickly as kube-proxy's rules do.

Everything else is relayed to the `--upstream` resolvers (CoreDNS's `forward`), over the
protocol the client used, within 2 s; no upstream means REFUSED at once, a dead one SERVFAIL,
so no client ever waits on a timeout of ours. Like kubeadm's `fallthrough in-addr.arpa
ip6.arpa`, reverse names the cluster does not know go upstream too.

Alongside: `/health` (`health` plugin), `/ready` (`ready` plugin: 200 after the first load),
`/metrics` (`prometheus` plugin, the two request/response counters) and a `log` plugin line
per query on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import decimal
import json
import random
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from kproxy.proxy.metrics import Counter, Registry

from .records import Answer, ClusterRecords, is_reverse_name, zone_of

FORWARD_TIMEOUT = 2.0                  # CoreDNS forward's overall budget per query
POLL_INTERVAL = 0.1
TCP_IDLE_TIMEOUT = 10.0                # CoreDNS closes idle TCP connections after 10 s
UDP_DEFAULT_SIZE = 512                 # RFC 1035 limit without EDNS0
PREFIXES = {"services": "/registry/services/", "endpoint_slices": "/registry/endpointslices/",
            "pods": "/registry/pods/", "namespaces": "/registry/namespaces/"}
# Query types CoreDNS's metrics label by name; the rest count as "other".
MONITORED_TYPES = {"A", "AAAA", "CNAME", "DNSKEY", "DS", "MX", "NSEC3", "NSEC", "NS", "PTR", "RRSIG",
                   "SOA", "SRV", "TXT", "IXFR", "AXFR", "ANY"}
FLAG_ORDER = [("qr", dns.flags.QR), ("aa", dns.flags.AA), ("tc", dns.flags.TC), ("rd", dns.flags.RD),
              ("ra", dns.flags.RA), ("ad", dns.flags.AD), ("cd", dns.flags.CD)]


# ------------------------------------------------------------------ the store, read-only


@dataclass
class Snapshot:
    """The objects DNS is built from, read in one transaction so they agree with `revision`."""
    revision: int
    objects: dict[str, list]


class StoreReader:
    """Reads the lab's SQLite store without ever writing to it.

    `SqliteStore` creates its schema, switches to WAL and takes BEGIN IMMEDIATE when it opens,
    so a reader built on it would write; this opens the file with `mode=ro` and reads the same
    `kv`/`meta` tables. A store that does not exist yet reads as None until it does.
    Use from one thread only (sqlite3's rule).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.exists():
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)
        return self._conn

    def revision(self) -> int | None:
        try:
            conn = self._connection()
            row = conn and conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            return row[0] if row else None
        except sqlite3.Error:
            self.close()                      # e.g. the file was replaced: reconnect next time
            return None

    def snapshot(self) -> Snapshot | None:
        try:
            conn = self._connection()
            if conn is None:
                return None
            conn.execute("BEGIN")
            try:
                (rev,) = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
                objects = {kind: self._values(conn, prefix) for kind, prefix in PREFIXES.items()}
            finally:
                conn.execute("COMMIT")
            return Snapshot(rev, objects)
        except sqlite3.Error:
            self.close()
            return None

    @staticmethod
    def _values(conn: sqlite3.Connection, prefix: str) -> list:
        rows = conn.execute("SELECT value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                            (prefix, prefix + "\uffff")).fetchall()
        return [json.loads(v) for (v,) in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EtcdReader:
    """Reads a multi-node lab's etcd (`https://IP:2379`): the same snapshots, one revision each.
    etcd admits only clients with a lab certificate: the DNS pods' own (`--store-cert`)."""

    def __init__(self, url: str, ca: str | None = None, cert: str | None = None, key: str | None = None):
        from kproxy.store.etcd import EtcdStore
        self.store = EtcdStore(url, timeout=3, ca=ca, cert=cert, key=key)

    def revision(self) -> int | None:
        try:
            return self.store.revision()
        except Exception:  # noqa: BLE001 - etcd away: keep serving what we have
            return None

    def snapshot(self) -> Snapshot | None:
        try:
            with self.store.transaction() as txn:  # every list reads the first one's revision
                objects = {kind: [v for _, v in txn.list(prefix)] for kind, prefix in PREFIXES.items()}
                return Snapshot(txn.read_revision, objects)
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        self.store.close()


# ------------------------------------------------------------------ addresses


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53', '::1' or ':53' (all addresses) -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host or "0.0.0.0", int(port)
    return text, default_port


def _hostport_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------ metrics and logs


class DnsMetrics:
    """The CoreDNS counters the lab looks at, by CoreDNS's names and labels."""

    def __init__(self):
        self.registry = Registry()
        self.requests = self.registry.add(Counter(
            "coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family.",
            labels=("server", "zone", "proto", "family", "type")))
        self.responses = self.registry.add(Counter(
            "coredns_dns_responses_total", "Counter of response status codes.",
            labels=("server", "zone", "rcode", "plugin")))


def _go_seconds(seconds: float) -> str:
    """A duration as CoreDNS's log prints it (Go's FormatFloat 'f', -1): 0.000123s, never 1e-05s."""
    return format(decimal.Decimal(repr(seconds)), "f") + "s"


def _flags_text(wire: bytes) -> str:
    flags = int.from_bytes(wire[2:4], "big")
    return ",".join(name for name, bit in FLAG_ORDER if flags & bit)


def _client_text(client: tuple) -> str:
    host, port = client[0], client[1]
    return _hostport_text(host, port)


# ------------------------------------------------------------------ the server


class DnsServer:
    """Cluster DNS on UDP and TCP at one address, plus health/ready/metrics over HTTP.

    HTTP ports may be 0 (pick a free one: see `http_ports`) or None (not served); `listen`
    port 0 picks one free for both UDP and TCP (see `port`).
    """

    def __init__(self, store: str | Path | StoreReader, *, listen: str = "0.0.0.0:53",
                 domain: str = "cluster.local", ttl: int = 30, upstreams: Sequence[str] = (),
                 health_port: int | None = 8080, ready_port: int | None = 8181,
                 metrics_port: int | None = 9153, http_host: str | None = None,
                 pod_mode: str = "insecure", poll_interval: float = POLL_INTERVAL,
                 forward_timeout: float = FORWARD_TIMEOUT, log: TextIO | None = None):
        self.reader = store if isinstance(store, (StoreReader, EtcdReader)) else \
            EtcdReader(store) if str(store).startswith("http") else StoreReader(store)
        self.host, self.port = parse_hostport(listen, 53)
        self.domain, self.ttl, self.pod_mode = domain, ttl, pod_mode
        self.upstreams = [parse_hostport(u, 53) for u in upstreams]
        self.http_host = http_host or self.host
        self.http_ports = {"health": health_port, "ready": ready_port, "metrics": metrics_port}
        self.poll_interval, self.forward_timeout = poll_interval, forward_timeout
        self.log = log or sys.stdout
        self.metrics = DnsMetrics()
        self.records: ClusterRecords | None = None
        self.revision: int | None = None
        self._objects: dict | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dns-store")
        self._closers: list = []
        self._tasks: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.records is not None

    @property
    def server_label(self) -> str:
        return "dns://" + _hostport_text(self.host, self.port)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind everything, load the store once, then keep it fresh in the background."""
        await self._bind_dns()
        for route, port in list(self.http_ports.items()):
            if port is not None:
                server = await asyncio.start_server(self._http_handler(route), self.http_host, port)
                self.http_ports[route] = server.sockets[0].getsockname()[1]
                self._closers.append(server)
        await self.refresh()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for closer in self._closers:
            closer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(self._executor, self.reader.close)
        self._executor.shutdown(wait=True)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (CoreDNS prints its server block on start; so do we)."""
        await self.start()
        print(self.server_label, file=self.log, flush=True)
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def _bind_dns(self) -> None:
        """UDP and TCP on the same port; with port 0, retry until one port is free for both."""
        loop = asyncio.get_running_loop()
        for _attempt in range(20):
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port))
            port = transport.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                transport.close()
                if self.port:
                    raise
                continue
            self.port = port
            self._closers += [transport, tcp]
            return
        raise OSError("no free port for both UDP and TCP")

    # -------------------------------------------------------------- the store

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception as e:             # keep serving the last good records
                print(f"[ERROR] plugin/kubernetes: reload failed: {e}", file=self.log, flush=True)

    async def refresh(self) -> None:
        """Rebuild the records if the store moved on and what DNS reads of it changed."""
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(self._executor, self.reader.revision)
        if revision is None or revision == self.revision:
            return
        snap = await loop.run_in_executor(self._executor, self.reader.snapshot)
        if snap is None:
            return
        if snap.objects != self._objects or self.records is None:
            self.records = await loop.run_in_executor(self._executor, self._build, snap.objects)
            self._objects = snap.objects
        self.revision = snap.revision

    def _build(self, objects: dict) -> ClusterRecords:
        return ClusterRecords(objects["services"], objects["endpoint_slices"], objects["pods"],
                              namespaces=objects["namespaces"], domain=self.domain, ttl=self.ttl,
                              pod_mode=self.pod_mode)

    # -------------------------------------------------------------- one query

    async def handle(self, wire: bytes, proto: str, client: tuple) -> bytes | None:
        """Bytes in, bytes out, with a log line and metrics. An unparsable packet gets FORMERR
        if its header is readable, else None (nothing to send)."""
        start = time.perf_counter()
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return self._format_error(wire)
        try:
            response, plugin = await self._respond(query, proto)
        except Exception as e:                 # a bug must not leave the client waiting
            print(f"[ERROR] {type(e).__name__}: {e}", file=self.log, flush=True)
            response, plugin = _reply(query, dns.rcode.SERVFAIL), ""
        out = response.to_wire(max_size=self._max_size(query, proto), prefer_truncation=True)
        self._account(query, wire, out, response.rcode(), proto, client, plugin, start)
        return out

    async def _respond(self, query: dns.message.Message, proto: str) -> tuple[dns.message.Message, str]:
        """The response and the plugin CoreDNS would credit it to (for the metrics label)."""
        if query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.NOTIMP), ""
        if len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR), ""
        question = query.question[0]
        name = question.name.to_text()
        if question.rdclass == dns.rdataclass.IN and zone_of(name, self.domain):
            return await self._cluster(query, name, dns.rdatatype.to_text(question.rdtype), proto)
        return await self._forward_or_refuse(query, proto)

    async def _cluster(self, query, name: str, qtype: str, proto: str) -> tuple[dns.message.Message, str]:
        if self.records is None:               # CoreDNS: not synced with the API yet
            return _reply(query, dns.rcode.SERVFAIL), "kubernetes"
        answer = self.records.resolve(name, qtype)
        if answer.rcode == "NXDOMAIN" and is_reverse_name(name) and self.upstreams:
            return await self._forward_or_refuse(query, proto)   # fallthrough in-addr.arpa ip6.arpa
        response = _cluster_reply(query, answer)
        await self._complete_cname(response, answer, qtype, proto)
        return response, "kubernetes"

    async def _complete_cname(self, response, answer: Answer, qtype: str, proto: str) -> None:
        """An ExternalName answer ends in a CNAME out of the cluster: add what the upstream
        says the target has, as CoreDNS's kubernetes plugin does through its `upstream`."""
        if qtype == "CNAME" or not answer.answer or answer.answer[-1][2] != "CNAME" or not self.upstreams:
            return
        target = answer.answer[-1][3]
        if zone_of(target, self.domain):
            return
        reply = await self._forward(dns.message.make_query(target, qtype), proto)
        if reply is not None:
            response.answer.extend(reply.answer)

    async def _forward_or_refuse(self, query, proto: str) -> tuple[dns.message.Message, str]:
        if not self.upstreams:
            return _reply(query, dns.rcode.REFUSED), ""
        reply = await self._forward(query, proto)
        if reply is None:
            return _reply(query, dns.rcode.SERVFAIL), "forward"
        return reply, "forward"

    async def _forward(self, query: dns.message.Message, proto: str) -> dns.message.Message | None:
        """Ask the upstreams in random order (CoreDNS's default policy) until one answers,
        all within the forward timeout; None when none did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_timeout
        for host, port in random.sample(self.upstreams, len(self.upstreams)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            ask = dns.asyncquery.tcp if proto == "tcp" else dns.asyncquery.udp
            try:
                return await ask(query, host, timeout=remaining, port=port)
            except (dns.exception.DNSException, OSError, EOFError, ValueError):
                continue
        return None

    @staticmethod
    def _max_size(query: dns.message.Message, proto: str) -> int:
        """What fits the client: 64 KiB over TCP, its EDNS0 buffer (at least 512) or 512 over UDP."""
        if proto == "tcp":
            return 65535
        return max(query.payload, UDP_DEFAULT_SIZE) if query.edns >= 0 else UDP_DEFAULT_SIZE

    @staticmethod
    def _format_error(wire: bytes) -> bytes | None:
        """FORMERR for a packet with a readable header; silence for anything shorter."""
        if len(wire) < 12:
            return None
        msg = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
        msg.flags = dns.flags.QR
        msg.set_rcode(dns.rcode.FORMERR)
        return msg.to_wire()

    def _account(self, query, wire: bytes, out: bytes, rcode: int, proto: str, client: tuple,
                 plugin: str, start: float) -> None:
        """One `log` plugin line and the two counters, as CoreDNS's log and prometheus do."""
        question = query.question[0] if query.question else None   # an RRset: falsy, being empty
        asked = question is not None
        qtype = dns.rdatatype.to_text(question.rdtype) if asked else "None"
        family = "2" if ":" in client[0] else "1"
        rcode_text = dns.rcode.to_text(rcode)
        self.metrics.requests.inc(1, self.server_label, ".", proto, family,
                                  qtype if qtype in MONITORED_TYPES else "other")
        self.metrics.responses.inc(1, self.server_label, ".", rcode_text, plugin)
        do = bool(query.ednsflags & dns.flags.DO) if query.edns >= 0 else False
        bufsize = self._max_size(query, proto)
        name = question.name.to_text().lower() if asked else "."
        qclass = dns.rdataclass.to_text(question.rdclass) if asked else "IN"
        line = (f'[INFO] {_client_text(client)} - {query.id} "{qtype} {qclass} {name} {proto} {len(wire)} '
                f'{str(do).lower()} {bufsize}" {rcode_text} {_flags_text(out)} {len(out)} '
                f'{_go_seconds(round(time.perf_counter() - start, 9))}')
        print(line, file=self.log, flush=True)

    # -------------------------------------------------------------- transports

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries, answered in order, until the client goes quiet or away."""
        client = writer.get_extra_info("peername")
        try:
            while True:
                size = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                wire = await asyncio.wait_for(reader.readexactly(int.from_bytes(size, "big")), TCP_IDLE_TIMEOUT)
                out = await self.handle(wire, "tcp", client)
                if out is None:
                    break
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _http_handler(self, route: str):
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                path = request.split(b" ", 2)[1].decode("latin-1").split("?")[0]
                status, ctype, body = self._http_response(route, path)
                head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n")
                writer.write(head.encode() + body)
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                    ConnectionError, IndexError):
                pass
            finally:
                writer.close()
        return serve

    def _http_response(self, route: str, path: str) -> tuple[str, str, bytes]:
        """health: always OK; ready: OK after the first load, else 503 naming the plugin
        still waiting (as CoreDNS's ready does); metrics: the text exposition."""
        text = "text/plain; charset=utf-8"
        if path != f"/{route}":
            return "404 Not Found", text, b"404 page not found\n"
        if route == "health":
            return "200 OK", text, b"OK"
        if route == "ready":
            return ("200 OK", text, b"OK") if self.ready else ("503 Service Unavailable", text, b"kubernetes")
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", self.metrics.registry.exposition().encode()


class _UdpProtocol(asyncio.DatagramProtocol):
    """Each datagram is answered in its own task, so a slow upstream holds up nobody else."""

    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.server._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr) -> None:
        out = await self.server.handle(data, "udp", addr)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


# ------------------------------------------------------------------ messages


def _reply(query: dns.message.Message, rcode: int) -> dns.message.Message:
    """A bare reply with the question echoed (RA off, as CoreDNS's own errors are)."""
    response = dns.message.make_response(query, our_payload=max(query.payload, UDP_DEFAULT_SIZE))
    response.set_rcode(rcode)
    return response


def _cluster_reply(query: dns.message.Message, answer: Answer) -> dns.message.Message:
    """The kubernetes plugin's message: AA set, RA not, DO echoed, records from `answer`."""
    response = _reply(query, dns.rcode.from_text(answer.rcode))
    response.flags |= dns.flags.AA
    if query.edns >= 0 and query.ednsflags & dns.flags.DO:
        response.ednsflags |= dns.flags.DO
    for section, records in ((response.answer, answer.answer), (response.authority, answer.authority),
                             (response.additional, answer.additional)):
        for owner, ttl, rtype, text in records:
            rdtype = dns.rdatatype.from_text(rtype)
            rrset = response.find_rrset(section, dns.name.from_text(owner), dns.rdataclass.IN, rdtype,
                                        create=True)
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text), ttl)
    return response


# ------------------------------------------------------------------ command line


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kproxy.dns.server", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="the lab's SQLite store, or its etcd (https://IP:2379); read only")
    p.add_argument("--store-ca", default=None, help="etcd: the lab CA (STATE/pki/ca.crt)")
    p.add_argument("--store-cert", default=None, help="etcd: this server's client certificate")
    p.add_argument("--store-key", default=None, help="etcd: this server's client key")
    p.add_argument("--listen", default="0.0.0.0:53", help="IP:PORT for UDP and TCP")
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--ttl", type=int, default=30)
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="resolver for names outside the cluster (repeatable)")
    p.add_argument("--pods", choices=("insecure", "verified", "disabled"), default="insecure")
    p.add_argument("--http-host", default=None, help="address for health/ready/metrics (default: listen IP)")
    p.add_argument("--health-port", type=int, default=8080)
    p.add_argument("--ready-port", type=int, default=8181)
    p.add_argument("--metrics-port", type=int, default=9153)
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    store = EtcdReader(args.store, args.store_ca, args.store_cert, args.store_key) \
        if args.store.startswith("http") else args.store
    server = DnsServer(store, listen=args.listen, domain=args.domain, ttl=args.ttl,
                       upstreams=args.upstream, health_port=args.health_port, ready_port=args.ready_port,
                       metrics_port=args.metrics_port, http_host=args.http_host, pod_mode=args.pods)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.serve_forever(stop)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_main(_args(argv)))


if __name__ == "__main__":
    main()
