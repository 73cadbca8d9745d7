"""The API server's proxy subresource: `/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH`
and `/api/v1/namespaces/NS/pods/[SCHEME:]NAME[:PORT]/proxy/PATH`, the second way the course reaches
a ClusterIP (`kubectl proxy`, then curl on 127.0.0.1:8001).

As upstream resolves it (the service REST storage's ResourceLocation): a numeric PORT becomes
the name of the Service port that has it (else 503 `no service port N found`), and the request
goes to a random ready address of the Service's Endpoints carrying a port of that name (503
`no endpoints available for service "NAME"` when none). A Service without an Endpoints object
(none is written yet) is reached at its ClusterIP. Pods: their podIP and the given port (80 by
default). The server runs in the lab's node netns, so these addresses route from here.

Hop-by-hop headers and the client's credentials for the API server are not passed on.
"""
from __future__ import annotations

import os
import random
import ssl

import aiohttp
from aiohttp import web

from kproxy.apiserver import status as st

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "authorization", "host", "content-length"}


def split_scheme_name_port(text: str) -> tuple[str, str, str] | None:
    """`web`, `web:80`, `https:web:443`, `https:web:` (upstream's SplitSchemeNamePort)."""
    parts = text.split(":")
    if len(parts) == 1:
        scheme, name, port = "", parts[0], ""
    elif len(parts) == 2:
        scheme, name, port = "", parts[0], parts[1]
    elif len(parts) == 3:
        scheme, name, port = parts
    else:
        return None
    if not name or scheme not in ("", "http", "https"):
        return None
    return scheme or "http", name, port


def _unavailable(message: str) -> web.Response:
    return st.status_response(503, "ServiceUnavailable", message)


def service_location(lookup, ns: str, ident: str) -> tuple[str, str, int] | web.Response:
    """(scheme, host, port) for a service proxy request, or the API server's error."""
    parsed = split_scheme_name_port(ident)
    if parsed is None:
        return st.status_response(400, "BadRequest", f'invalid service request "{ident}"')
    scheme, name, port = parsed
    svc = lookup("Service", ns, name)
    if svc is None:
        return st.response(st.not_found("services", "", name))
    ports = svc.get("spec", {}).get("ports") or []
    port_name = port
    if port.isdigit():
        match = next((p for p in ports if str(p.get("port")) == port), None)
        if match is None:
            return _unavailable(f'no service port {port} found for service "{name}"')
        port_name = match.get("name", "")
    eps = lookup("Endpoints", ns, name)
    if eps is None:
        cip = svc.get("spec", {}).get("clusterIP")
        match = next((p for p in ports if p.get("name", "") == port_name), None)
        if cip and cip != "None" and match is not None:
            return scheme, cip, int(match["port"])
        return _unavailable(f'no endpoints available for service "{name}"')
    subsets = list(eps.get("subsets") or [])
    random.shuffle(subsets)
    for subset in subsets:
        addresses = subset.get("addresses") or []
        if not addresses:
            continue
        for p in subset.get("ports") or []:
            if p.get("name", "") == port_name:
                return scheme, random.choice(addresses)["ip"], int(p["port"])
    return _unavailable(f'no endpoints available for service "{ident}"')


def pod_location(lookup, ns: str, ident: str) -> tuple[str, str, int] | web.Response:
    parsed = split_scheme_name_port(ident)
    if parsed is None:
        return st.status_response(400, "BadRequest", f'invalid pod request "{ident}"')
    scheme, name, port = parsed
    pod = lookup("Pod", ns, name)
    if pod is None:
        return st.response(st.not_found("pods", "", name))
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return st.status_response(400, "BadRequest", f'address not allowed: pod "{name}" has no IP address')
    if port and not port.isdigit():
        named = [p["containerPort"] for c in pod["spec"].get("containers", []) for p in c.get("ports", [])
                 if p.get("name") == port]
        if not named:
            return st.status_response(400, "BadRequest", f'pod "{name}" has no port named "{port}"')
        return scheme, ip, named[0]
    return scheme, ip, int(port) if port else (443 if scheme == "https" else 80)


def rewrite_location(location: str, prefix: str, backend: str) -> str:
    """A redirect to the backend itself stays under the proxy path (as upstream's proxy
    transport rewrites it): `/login` or `http://10.244.0.5:8080/login` -> PREFIX/login."""
    if location.startswith(backend + "/") or location == backend:
        location = location[len(backend):] or "/"
    if location.startswith("/") and not location.startswith("//"):
        return prefix + location
    return location


def _dial_error(host: str, port: int, e: BaseException) -> str:
    """Go's words for a failed dial, as the API server quotes them."""
    os_error = getattr(e, "os_error", e)
    if isinstance(os_error, OSError) and os_error.errno:  # asyncio rewords strerror: the errno's own words
        return f"dial tcp {host}:{port}: connect: {os.strerror(os_error.errno).lower()}"
    if isinstance(e, (TimeoutError, aiohttp.ServerTimeoutError)):
        return f"dial tcp {host}:{port}: i/o timeout"
    return str(e) or type(e).__name__


class ProxyHandler:
    def __init__(self, lookup):
        self.lookup = lookup
        self._session: aiohttp.ClientSession | None = None
        self._insecure = ssl.create_default_context()
        self._insecure.check_hostname = False
        self._insecure.verify_mode = ssl.CERT_NONE  # upstream does not verify a pod's certificate either

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._session

    async def service(self, request: web.Request) -> web.StreamResponse:
        where = service_location(self.lookup, request.match_info["namespace"], request.match_info["ident"])
        return await self._forward(request, where)

    async def pod(self, request: web.Request) -> web.StreamResponse:
        where = pod_location(self.lookup, request.match_info["namespace"], request.match_info["ident"])
        return await self._forward(request, where)

    async def _forward(self, request: web.Request, where) -> web.StreamResponse:
        if isinstance(where, web.Response):
            return where
        scheme, host, port = where
        if "path" not in request.match_info and request.method == "GET":  # as upstream: .../proxy -> .../proxy/
            raise web.HTTPMovedPermanently(request.rel_url.with_path(request.rel_url.path + "/"))
        path = "/" + request.match_info.get("path", "")
        url = f"{scheme}://{host}:{port}{path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{host}:{port}"
        body = await request.read() if request.can_read_body else None
        try:
            upstream = await self.session().request(
                request.method, url, params=request.rel_url.query, headers=headers, data=body,
                allow_redirects=False, ssl=self._insecure if scheme == "https" else None)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return _unavailable(f"error trying to reach service: {_dial_error(host, port, e)}")
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            prefix = request.rel_url.path[:request.rel_url.path.index("/proxy") + len("/proxy")]
            for k, v in upstream.headers.items():
                if k.lower() == "location":
                    v = rewrite_location(v, prefix, f"{scheme}://{host}:{port}")
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientError, ConnectionError):
                pass
            await resp.write_eof()
        return resp


def add_routes(app: web.Application, lookup) -> None:
    h = ProxyHandler(lookup)
    for kind, handler in (("services", h.service), ("pods", h.pod)):
        base = "/api/v1/namespaces/{namespace}/" + kind + "/{ident}/proxy"
        app.router.add_route("*", base, handler)
        app.router.add_route("*", base + "/{path:.*}", handler)

    async def close(_app) -> None:
        if h._session is not None:
            await h._session.close()
    app.on_cleanup.append(close)
