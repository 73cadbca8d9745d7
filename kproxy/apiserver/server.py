"""The API server as a role of the controller process: HTTPS (aiohttp) on its own asyncio loop
thread, client-certificate (or bearer token) authentication, and the routes of discovery,
streams and the resources.

Where it listens, and why there:
- the host's loopback (127.0.0.1, `up --api-port` or a free port): what the admin kubeconfig
  names. In a sandbox lab the daemon moves into the node's network namespace (daemon.run:
  enter_netns), so this socket is made BEFORE that (`bind_loopback`) and stays in the root
  namespace's loopback, while everything the server does itself (reaching pods for logs, exec,
  proxy) happens inside the lab;
- inside a sandbox lab, the node's address at 6443 (`bind_lab`): where the `default/kubernetes`
  Service (10.96.0.1:443) sends pods, as on a real cluster. A host-mode lab listens on no
  non-loopback address (the node's address is the host's own).

Files (STATE/pki, 0600; kproxy/cluster/pki.py): the CA, apiserver.crt (serving: 127.0.0.1, the
node's address, the `kubernetes` Service's ClusterIP and names), admin.crt (the kubeconfig's
client certificate, O=system:masters), apiserver-token (a bearer token for curl),
apiserver-port (the last port, taken again when free); and
STATE/kubeconfig (0600), removed when the server stops (`kproxy kubeconfig --path` names it).
Anonymous requests get 401 Unauthorized, on every path, /healthz, /livez, /readyz and /version
included: upstream serves those to anonymous clients through RBAC's system:public-info-viewer,
but kproxy has no RBAC and nothing in the lab probes them without credentials, so it serves no
path to a client it cannot name. A certificate of the lab CA outside group system:masters (the
nodes', etcd's, CoreDNS's) is 403 Forbidden: without RBAC, every authenticated user could
write everything.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import threading
from pathlib import Path

import yaml
from aiohttp import web

from kproxy.apiserver import rest
from kproxy.apiserver import status as st
from kproxy.apiserver.watchcache import WatchCache
from kproxy.cluster.pki import Pki, _write_private

log = logging.getLogger("kproxy")

LAB_PORT = 6443
KUBECONFIG = "kubeconfig"
TOKEN = "apiserver-token"
LAST_PORT = "apiserver-port"   # in STATE/pki: the loopback port of the last run
# The API server's limits (k8s.io/apiserver): a request body of at most 3 MiB
# (MaxRequestBodyBytes; more is 413 RequestEntityTooLarge), headers within 32 s of connecting
# (ReadHeaderTimeout: a client that trickles them, slowloris, is dropped), a body within the
# request timeout (60 s). An idle keep-alive connection is closed after IDLE_SECONDS too.
MAX_BODY = 3 * 1024 * 1024
# Open connections the server keeps: every role of the daemon shares its file descriptors (a
# systemd unit's soft limit is 1,024), so a flood of idle connections must not starve the proxy
# or the store. Past this, a new connection is closed at once (kube-apiserver bounds requests in
# flight instead: --max-requests-inflight 400 + --max-mutating-requests-inflight 200).
MAX_CONNECTIONS = 600
ADMIN_GROUP = "system:masters"  # the admin kubeconfig's certificate (O=system:masters) and the token
IDLE_SECONDS = 32
BODY_SECONDS = 60


def kubeconfig_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / KUBECONFIG


def free_loopback_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s


class ApiServer:
    """The role. `writer` (writes.Writer) takes the write verbs; without one they answer 405."""

    def __init__(self, ctx, writer=None, capacity: int | None = None):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.state = Path(ctx.cfg.state_dir)
        self.pki = Pki.of(self.state)
        cap = capacity or int(os.environ.get("KPROXY_WATCH_CACHE_SIZE") or 0) or None
        self.cache = WatchCache(ctx.store, **({"capacity": cap} if cap else {}))
        self.writer = writer
        self.sockets: list[socket.socket] = []
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.token = ""
        self._lab_bound = False
        self.extra_routes: list = []  # callables (app) -> None (streams' are mounted by app())

    # -- set-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Certificates, the token and the host loopback socket: before the daemon enters the
        lab's namespace (the socket then stays on the host's loopback)."""
        self.pki.ensure_ca()
        ips = [self.ctx.ranges.nth_ip(1)]
        if self.cfg.sandbox:
            ips.append(self.ctx.node_ip)
        self.pki.issue_apiserver(tuple(ips), self.cfg.cluster_domain)
        self.pki.issue_admin()
        token_file = self.pki.root / TOKEN
        if not token_file.exists():
            _write_private(token_file, secrets.token_hex(24).encode())
        self.token = token_file.read_text().strip()
        sock = self._loopback_socket()
        self.port = sock.getsockname()[1]
        _write_private(self.pki.root / LAST_PORT, f"{self.port}\n".encode())
        self.sockets.append(sock)
        self.write_kubeconfig()

    def _loopback_socket(self) -> socket.socket:
        """`up --api-port`, else the port of the last run when it is free (a copied kubeconfig
        keeps working across `down`/`up`), else a free one."""
        if self.cfg.api_port:
            return free_loopback_socket(int(self.cfg.api_port))
        try:
            return free_loopback_socket(int((self.pki.root / LAST_PORT).read_text()))
        except (OSError, ValueError):
            return free_loopback_socket(0)

    def bind_lab(self) -> None:
        """Inside a sandbox lab: the node's address at 6443 (behind the `kubernetes` Service).
        Called by the supervised thread (a failure is the component's, retried), once."""
        if not self.cfg.sandbox or self._lab_bound:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.ctx.node_ip, LAB_PORT))
        s.listen(128)
        s.setblocking(False)
        self.sockets.append(s)
        self._lab_bound = True

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert, key = self.pki.pair("apiserver")
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(self.pki.ca_cert))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # no certificate: a bearer token, else 401
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def write_kubeconfig(self) -> Path:
        cert, key = self.pki.pair("admin")
        b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
        name = f"kproxy-{self.cfg.naming.prefix}"
        doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": name, "cluster": {"server": f"https://127.0.0.1:{self.port}",
                                                        "certificate-authority-data": b64(self.pki.ca_cert)}}],
               "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": b64(cert),
                                                                "client-key-data": b64(key)}}],
               "contexts": [{"name": f"kubernetes-admin@{name}",
                             "context": {"cluster": name, "user": "kubernetes-admin", "namespace": "default"}}],
               "current-context": f"kubernetes-admin@{name}"}
        path = kubeconfig_path(self.state)
        _write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())
        return path

    # -- the application ------------------------------------------------------------------
    def app(self) -> web.Application:
        from kproxy.apiserver import discovery
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_BODY)
        app[discovery.HEALTH_CHECKS] = {"etcd": self._store_check, "informer-sync": self._cache_check}
        discovery.add_routes(app)
        self._mount_streams(app)
        for add in self.extra_routes:
            add(app)
        app.router.add_route("*", "/api/v1/{tail:.+}", self._core)
        app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", self._grouped)
        return app

    def _mount_streams(self, app: web.Application) -> None:
        """pods/log, exec, portforward and the services'/pods' proxy (streams.py): the pods are
        reached from this process, which lives in the lab (the sandbox node's namespace)."""
        from kproxy.apiserver import streams
        from kproxy.apiserver.podaccess import PodAccess
        streams.add_routes(app, PodAccess(self.cfg), self.lookup)

    def lookup(self, kind: str, ns: str, name: str) -> dict | None:
        """An object as the API returns it (streams' pod and Service look-ups), or None."""
        from kproxy.apiserver.resources import for_kind
        res = for_kind(kind)
        if res is None:
            return None
        key = rest.store_key(res, ns, name)
        obj, rev = self.cache.get(key)
        return rest.present(res, key, obj, rev, self.cache) if obj is not None else None

    def _store_check(self) -> str | None:
        try:
            self.ctx.store.revision()
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            return f"the store does not answer: {e}"
        return None

    def _cache_check(self) -> str | None:
        return None if self.cache.loaded.is_set() else "the watch cache has not listed the store yet"

    def authenticated(self, request: web.Request) -> bool:
        return self.user(request) is not None

    def user(self, request: web.Request) -> tuple[str, tuple[str, ...]] | None:
        """(user, groups) of the request, or None (401): a client certificate verified against
        the lab CA by the TLS handshake (CN = user, O = groups, as the API server's x509
        authenticator), else the bearer token (the admin: system:masters). Compared in
        constant time."""
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            names = [kv for rdn in peer.get("subject", ()) for kv in rdn]
            cn = next((v for k, v in names if k == "commonName"), "")
            return cn, tuple(v for k, v in names if k == "organizationName")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and self.token and \
                hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return "kubernetes-admin", (ADMIN_GROUP,)
        return None

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        who = self.user(request)
        if who is None:
            return st.response(st.unauthorized())
        if ADMIN_GROUP not in who[1]:
            # The lab CA also signs etcd's, the nodes' and CoreDNS's client certificates: they
            # authenticate, but there is no RBAC here to give them less than everything, so only
            # the admin's group may use the API (upstream: RBAC's system:masters).
            return st.response(st.status(403, "Forbidden", f'forbidden: User "{who[0]}" cannot '
                                         f'{request.method.lower()} path "{request.path}": only group '
                                         f'"{ADMIN_GROUP}" may use the lab\'s API server', {}))
        try:
            return await handler(request)
        except st.ApiError as e:
            return st.response(e.status)
        except web.HTTPNotFound:
            return st.response(st.no_route())
        except web.HTTPMethodNotAllowed:
            return st.response(st.method_not_allowed())
        except web.HTTPRequestEntityTooLarge:
            return st.response(st.too_large(MAX_BODY))
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return st.response(st.status(e.status, e.reason.replace(" ", ""), e.text or e.reason))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - one request's bug is that request's 500
            log.exception("API request %s %s failed", request.method, request.path)
            return st.response(st.internal(f"{type(e).__name__}: {e}"))

    async def _core(self, request: web.Request) -> web.StreamResponse:
        return await self.dispatch(request, "", "v1", request.match_info["tail"])

    async def _grouped(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await self.dispatch(request, m["group"], m["version"], m["tail"])

    async def dispatch(self, request: web.Request, group: str, version: str, tail: str) -> web.StreamResponse:
        t = rest.resolve(group, version, [p for p in tail.split("/")])
        q, method = request.query, request.method
        reads = rest.Reads(self.cache)
        if not self.cache.loaded.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self.cache.loaded.wait, 30)
        if t.sub and t.sub not in ("status", "scale"):
            raise st.ApiError(st.no_route())
        if t.sub == "scale" and t.res.kind != "Deployment":
            raise st.ApiError(st.no_route())
        if method == "GET":
            if not t.name:
                if q.get("watch") in ("true", "1"):
                    table = _table_wanted(request)
                    convert = None
                    if table is not None and _to_table(t.res.kind, [], table) is not None:
                        convert = lambda o: _to_table(t.res.kind, [o], table)  # noqa: E731
                    return await reads.watch(request, t, convert)
                items, rev = reads.items(t, q)
                return self.collection(request, t, items, rev)
            obj = reads.get(t)
            if t.sub == "scale":
                from kproxy.apiserver.writes import scale_of
                return json_response(scale_of(obj))
            return self.single(request, t, obj)
        if self.writer is None:
            raise st.ApiError(st.method_not_allowed())
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if t.name else "deletecollection"}.get(method)
        if verb is None or verb not in t.res.verbs or (verb == "create" and t.name) or \
                (verb in ("update", "patch") and not t.name):
            raise st.ApiError(st.method_not_allowed())
        try:
            body = await asyncio.wait_for(request.read(), BODY_SECONDS)
        except asyncio.TimeoutError:
            raise st.ApiError(st.timeout(f"the request body did not arrive within {BODY_SECONDS} s")) from None
        call = lambda: self.writer.handle(verb, t, body, request.headers.get("Content-Type", ""), q,  # noqa: E731
                                          request.headers.get("User-Agent", ""))
        code, result, warnings = await asyncio.get_running_loop().run_in_executor(None, call)
        await self._caught_up(result)
        if isinstance(result, dict) and result.get("kind") != "Status" and verb in ("create", "update", "patch"):
            resp = self.single(request, t, result, code)
        else:
            resp = json_response(result, code)
        for w in warnings:
            resp.headers.add("Warning", w)
        return resp

    async def _caught_up(self, result) -> None:
        """After a write, until the watch cache holds its revision (at most a second): a client's
        next read (kubectl apply, then get) sees what it just wrote, as from etcd."""
        try:
            rev = int(((result or {}).get("metadata") or {}).get("resourceVersion") or 0)
        except (TypeError, ValueError):
            rev = 0
        self.cache.kick()
        deadline = asyncio.get_running_loop().time() + 1.0
        while self.cache.revision < rev and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.002)
            self.cache.kick()

    # -- bodies ---------------------------------------------------------------------------
    def collection(self, request: web.Request, t: rest.Target, items: list[dict], rev: int) -> web.Response:
        table = _table_wanted(request)
        if table is not None:
            body = _to_table(t.res.kind, items, table)
            if body is not None:
                body.setdefault("metadata", {})["resourceVersion"] = str(rev)
                return json_response(body)
        return json_response({"kind": f"{t.res.kind}List", "apiVersion": t.res.api_version,
                              "metadata": {"resourceVersion": str(rev)},
                              "items": [rest.strip_for_list(o) for o in items]})

    def single(self, request: web.Request, t: rest.Target, obj: dict, code: int = 200) -> web.Response:
        table = _table_wanted(request)
        if table is not None:
            body = _to_table(t.res.kind, [obj], table)
            if body is not None:
                return json_response(body, code)
        return json_response(obj, code)

    # -- running --------------------------------------------------------------------------
    def serve(self) -> None:
        """The supervised thread: the HTTPS server on its own loop until the daemon stops."""
        self.bind_lab()
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        runner = None
        try:  # a failure anywhere closes what was opened: the supervisor starts it again
            runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=1,
                                   keepalive_timeout=IDLE_SECONDS)
            loop.run_until_complete(runner.setup())
            _cap_connections(runner.server, MAX_CONNECTIONS)
            tls = self.ssl_context()
            for s in self.sockets:
                loop.run_until_complete(web.SockSite(runner, s.dup(), ssl_context=tls).start())
            self.ctx.components.ok("apiserver")
            log.info("API server: https://127.0.0.1:%d%s", self.port,
                     f" and https://{self.ctx.node_ip}:{LAB_PORT} in the lab" if len(self.sockets) > 1 else "")
            loop.run_until_complete(_until(self.ctx.stopping))
        finally:
            if runner is not None:
                loop.run_until_complete(runner.cleanup())
            loop.close()

    def start(self) -> None:
        self.ctx.supervise("apiserver-cache", self._feed)
        self.ctx.supervise("apiserver", self.serve)

    def _feed(self) -> None:
        """The supervised thread that keeps the watch cache up to date with the store."""
        self.cache.load()
        self.ctx.components.ok("apiserver-cache")
        self.cache.run(self.ctx.stopping)

    def stop(self) -> None:
        kubeconfig_path(self.state).unlink(missing_ok=True)
        for s in self.sockets:
            s.close()


def _cap_connections(server: web.Server, limit: int) -> None:
    """Close a connection made while `limit` others are open (counted once TLS is up; a
    handshake that never ends is dropped by asyncio after 60 s)."""
    made = server.connection_made
    refused = [0]

    def capped(handler, transport) -> None:
        made(handler, transport)
        if len(server.connections) > limit:
            refused[0] += 1
            if refused[0] == 1 or refused[0] % 1000 == 0:
                log.warning("API server: %d connections open; closing new ones (%d so far)", limit, refused[0])
            transport.abort()
    server.connection_made = capped


async def _until(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.2)


def json_response(body, code: int = 200) -> web.Response:
    return web.Response(status=code, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json")


def _table_wanted(request: web.Request) -> str | None:
    """`Accept: application/json;as=Table;...`: the includeObject wanted, else None."""
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0] if accept else ""
    if "as=Table" not in first:
        return None
    return request.query.get("includeObject") or "Metadata"


def _to_table(kind: str, objs: list[dict], include: str) -> dict | None:
    from kproxy.apiserver.table import to_table
    if include not in ("None", "Metadata", "Object"):
        raise st.ApiError(st.bad_request(f'invalid value "{include}" for includeObject: must be one of None, '
                                         "Metadata, Object"))
    try:
        return to_table(kind, objs, include)
    except KeyError:
        return None  # a kind without columns: the plain objects
