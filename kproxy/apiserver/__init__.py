"""A Kubernetes API server for the lab, so the real kubectl and client libraries drive it.

Modules (owner in parentheses; each one's docstring says why it is as it is):

    server.py      (apicore) HTTPS with aiohttp on its own loop thread, authentication, routing;
                   the daemon's role (daemon.py builds it with the front)
    rest.py        (apicore) resource paths -> get, list, watch; presenting stored objects
    writes.py      (apicore) create, update, patch, delete through the admission gate and the
                   manifests folder (kproxy/store/desired.py, shared with `kproxy apply`)
    watchcache.py  (apicore) every /registry/ object with its revision, and recent changes
    status.py      (apicore) Status objects with the API server's reasons, codes and words
    resources.py, discovery.py, openapi.py  (discovery) the served resources, discovery, OpenAPI
    patch.py, selectors.py, table.py        (patchsel) patches, selectors, Table responses
    streams.py ... (streams) logs, exec, port-forward, proxy

Interfaces other modules rely on (stable since the apicore checkpoint):

- `server.ApiServer(ctx, writer=None)`: `.prepare()` (certs, token, the host loopback socket,
  STATE/kubeconfig; call before entering a sandbox netns), `.start()` (binds NODE_IP:6443 in a
  sandbox lab; supervised threads `apiserver` and `apiserver-cache`), `.stop()`;
  `.extra_routes`: callables `(app) -> None` run after discovery's routes and before the
  resource routes (streams' `add_routes(app, access, lookup)` goes there, bound with
  functools.partial); `.lookup(kind, ns, name) -> dict | None` reads the watch cache.
- `server.kubeconfig_path(state_dir)`: STATE/kubeconfig (`kproxy kubeconfig --path`).
- `writes.Writer(ctx, frontend, sync)`: `.handle(verb, target, body, content_type, query,
  user_agent) -> (code, answer, warning_headers)`; `sync(timeout=60, settled=True) -> bool` is
  `Daemon.sync` (wait for the next loop pass to begin and end; the control socket uses it too).
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
