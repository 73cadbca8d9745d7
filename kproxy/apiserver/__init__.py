"""A Kubernetes API server for the lab, so the real kubectl and client libraries drive it.

Modules (each one's docstring says why it is as it is):

    server.py      HTTPS with aiohttp on its own loop thread, authentication, routing;
                   the daemon's role (daemon.py builds it with the front)
    rest.py        resource paths -> get, list, watch; presenting stored objects
    writes.py      create, update, patch, delete through the admission gate and the
                   manifests folder (kproxy/store/desired.py, shared with `kproxy apply`)
    watchcache.py  every /registry/ object with its revision, and recent changes
    status.py      Status objects with the API server's reasons, codes and words
    resources.py, discovery.py              the served resources, discovery, /version, health
    openapi.py, openapi_pb.py, openapi_trim.py  OpenAPI v2 (JSON, protobuf) and v3 from upstream's
                   1.32 spec trimmed to the served kinds (openapi_v1_32.json.gz)
    strict.py      fieldValidation: unknown and duplicate fields, the 422 Invalid Status
    protobuf.py, protobuf_trim.py           the protobuf bodies kubectl 1.32 sends on create
    patch.py, strategicpatch.py, patchmeta.py  JSON, merge and strategic merge patches
    ssa.py         server-side apply (managedFields, conflicts; simplified, see its docstring)
    selectors.py   label and field selectors with the API server's errors
    table.py, columndocs.py                 Table responses (kubectl's columns, kproxy/tables.py)
    streams.py, execio.py, wschannel.py, spdy.py  logs, exec, attach, port-forward over
                   WebSocket channels and SPDY/3.1 (also tunnelled in a WebSocket)
    podaccess.py   the pod side of exec/logs/port-forward (kproxy/node/access.py, shared with the CLI)
    proxyhttp.py   the services/pods proxy subresources (`kubectl proxy`)

Interfaces other modules rely on:

- `server.ApiServer(ctx, writer=None)`: `.prepare()` (certs, token, the host loopback socket,
  STATE/kubeconfig; call before entering a sandbox netns), `.start()` (binds NODE_IP:6443 in a
  sandbox lab; supervised threads `apiserver` and `apiserver-cache`), `.stop()`;
  `.extra_routes`: callables `(app) -> None` run after discovery's routes and before the
  resource routes (streams' `add_routes(app, access, lookup)` goes there, bound with
  functools.partial); `.lookup(kind, ns, name) -> dict | None` reads the watch cache.
- `server.kubeconfig_path(state_dir)`: STATE/kubeconfig (`kproxy kubeconfig --path`).
- `writes.Writer(ctx, frontend, sync, admission=None)`: `.handle(verb, target, body, content_type, query,
  user_agent) -> (code, answer, warning_headers)`; `sync(timeout=60, settled=True) -> bool` is
  `Daemon.sync` (wait for the next loop pass to begin and end; the control socket uses it too);
  `admission` (same signature, default `sync`) is `Daemon.admission` (wait only until that pass's
  front stored the folder): creates and updates wait for it, except Deployments and LoadBalancer
  Services, whose answers carry what the controllers add later in the pass.
- `rest.deployment_conditions(dep)`: Available/Progressing derived for a status without them.
- `status.ApiError(status_dict)`: raise it in any handler; the server answers the Status.
  Constructors: `not_found(resource, group, name)`, `already_exists`, `conflict`, `expired`,
  `unauthorized()`, `forbidden`, `method_not_allowed()`, `bad_request(msg)`, `invalid(kind,
  name, field_errors)`, `status(code, reason, message, details)`, `response(status) -> web.Response`.
- `rest.resolve(group, version, path_parts) -> Target(res, namespace, name, sub)`,
  `rest.store_key(res, ns, name)`, `rest.present(res, key, obj, rev, cache)`.
- `watchcache.WatchCache(store)`: `.get(key) -> (obj, rev)`, `.list(prefix) -> (items, rev)`,
  `.watch(rev, listener) -> (backlog, unsubscribe)` (raises `Expired`), `.kick()`; its events
  are `Event(rev, type, key, obj, prev)`.
- Store additions (kproxy/store): `get_with_revision(key) -> (value, mod_rev)`,
  `list_with_revisions(prefix) -> ([(key, value, mod_rev)], store_rev)`; SQLite's
  `changes_since(rev) -> (changes, store_rev, oldest)`.
"""
