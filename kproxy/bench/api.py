"""scripts/bench's api section (issue 14): the lab's Kubernetes API server as its clients see it,
in a sandboxed lab holding --api-services Services (1,000 by default):

  kubectl   `kubectl get svc -A` (the whole command, as a user waits for it) and
            --api-applies `kubectl apply -f` calls of one new Service each, one after the other
  list      GET /api/v1/services, plain JSON and as kubectl asks (a meta.k8s.io Table), on a warm
            keep-alive connection over loopback: the time from the request to the last byte of
            the answer is the server's time (TLS set-up and kubectl's own start are not in it)
  watch     write -> event: a PATCH of one Service's label through the API, timed from before
            the request to the arrival of the MODIFIED event carrying that label on an open
            watch; one write at a time, so no event waits for another. The same for a manifest
            file edited by hand (the folder is polled, so that one is informational)

Targets of the issue: the list of 1,000 Services <= 200 ms server time (its median), watch
latency p99 <= 100 ms. The client here is http.client with the admin kubeconfig's own
credentials, so the figures depend on the API server only, not on a client library.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import yaml

from kproxy.bench import gen, stats
from kproxy.bench.lab import sandboxed_lab
from kproxy.bench.sandbox import BenchError, Lab
from kproxy.bench.session import Bench, log
from kproxy.bench.table import fmt_seconds, verdict

TARGET_LIST = 0.200        # a list of 1,000 Services, server time (median)
TARGET_WATCH_P99 = 0.100   # write -> watch event, p99
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


class ApiClient:
    """Requests to the lab's API server on one keep-alive HTTPS connection, authenticated as the
    admin kubeconfig says (client certificate and/or bearer token), verified against its CA."""

    def __init__(self, kubeconfig: str, scratch: Path):
        kc = yaml.safe_load(Path(kubeconfig).read_text())
        ctx_name = kc.get("current-context") or kc["contexts"][0]["name"]
        ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in kc.get("users", []) if u["name"] == ctx.get("user")), {})
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        scratch.mkdir(parents=True, exist_ok=True)

        def material(key: str, name: str, where: dict) -> str | None:
            if where.get(f"{key}-data"):
                path = scratch / name
                path.write_bytes(base64.b64decode(where[f"{key}-data"]))
                os.chmod(path, 0o600)
                return str(path)
            return where.get(key)
        self.ssl = ssl.create_default_context(cafile=material("certificate-authority", "ca.crt", cluster))
        cert, key = material("client-certificate", "client.crt", user), material("client-key", "client.key", user)
        if cert:
            self.ssl.load_cert_chain(cert, key)
        self.headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        self.conn: http.client.HTTPSConnection | None = None

    def connect(self, timeout: float = 30) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
        conn.connect()
        return conn

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
                ) -> tuple[int, bytes, float]:
        """(status, body, seconds from sending the request to the answer's last byte)."""
        if self.conn is None:
            self.conn = self.connect()
        t = time.perf_counter()
        self.conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
        resp = self.conn.getresponse()
        data = resp.read()
        took = time.perf_counter() - t
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return resp.status, data, took

    def json(self, path: str) -> dict:
        status, data, _ = self.request("GET", path, headers={"Accept": "application/json"})
        if status != 200:
            raise BenchError(f"GET {path}: {status} {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.conn:
            self.conn.close()


class Watch:
    """One watch stream read by a thread: every event's (arrival time, type, name, labels)."""

    def __init__(self, client: ApiClient, path: str):
        self.conn = client.connect(timeout=300)
        self.conn.request("GET", path, headers={**client.headers, "Accept": "application/json"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise BenchError(f"watch {path}: {self.resp.status} {self.resp.read()[:300]!r}")
        self.events: list[tuple[float, str, str, dict]] = []
        self.cond = threading.Condition()
        self.error: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                at = time.perf_counter()
                ev = json.loads(line)
                meta = ev.get("object", {}).get("metadata", {})
                with self.cond:
                    self.events.append((at, ev.get("type", ""), meta.get("name", ""), meta.get("labels") or {}))
                    self.cond.notify_all()
        except Exception as e:  # noqa: BLE001 - the stream's end is the measurer's business
            self.error = f"{type(e).__name__}: {e}"
        with self.cond:
            self.error = self.error or "the watch ended"
            self.cond.notify_all()

    def wait(self, pred, timeout: float) -> float | None:
        """Arrival time of the first event matching pred(type, name, labels), None after timeout."""
        deadline = time.perf_counter() + timeout
        with self.cond:
            while True:
                for at, typ, name, labels in self.events:
                    if pred(typ, name, labels):
                        return at
                left = deadline - time.perf_counter()
                if left <= 0 or self.error:  # no event will come on an ended stream
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        try:
            self.conn.sock.shutdown(2)
        except OSError:
            pass
        self.conn.close()


def api_part(bench: Bench) -> None:
    """The api section, in its own sandboxed lab."""
    a = bench.args
    if "api" in a.skip:
        return
    res = bench.res.setdefault("api", {})
    kubectl = shutil.which("kubectl")
    if not kubectl:
        bench.note("api: kubectl is not on PATH (scripts/setup --test says how to get it): section skipped")
        return
    if bench.left() < 120:
        bench.note("api skipped: the time budget is used up")
        return
    n = a.api_services
    with sandboxed_lab(bench, "api") as (lab, _):
        kubeconfig = lab.kproxy("kubeconfig", "--path").stdout.strip()
        client = ApiClient(kubeconfig, bench.tmp / "api-credentials")
        try:
            res.update({"services": n, "kubectl": subprocess.run([kubectl, "version", "--client", "-o", "json"],
                                                                 capture_output=True, text=True).stdout[:400]})
            load(bench, lab, client, n)
            kubectl_get(bench, kubectl, kubeconfig, n)
            list_latency(bench, client)
            watch_latency(bench, lab, client, n)
            kubectl_applies(bench, lab, kubectl, kubeconfig)
            res["loadavg"] = os.getloadavg()[0]  # a shared machine's load moves these figures
        finally:
            client.close()


def load(bench: Bench, lab: Lab, client: ApiClient, n: int) -> None:
    """n selector-less Services (each with an EndpointSlice) written into the lab's folder; the
    seconds until the API lists them all."""
    log(f"api: {n} Services into the folder")
    t = time.monotonic()
    for i in range(n):
        lab.write_manifest(f"api-{i:05d}.yaml", gen.manifest(i, [gen.endpoint_ip(i)], prefix="api"))
    deadline = time.monotonic() + min(600, max(60, bench.left() - 60))
    while True:
        items = client.json("/api/v1/namespaces/default/services")["items"]
        have = sum(1 for s in items if s["metadata"]["name"].startswith("api-") and s["spec"].get("clusterIP"))
        if have >= n:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"api: only {have}/{n} Services listed by the API after {time.monotonic() - t:.0f} s")
        time.sleep(0.5)
    bench.res["api"]["load_seconds"] = time.monotonic() - t


def kubectl_get(bench: Bench, kubectl: str, kubeconfig: str, n: int, runs: int = 5) -> None:
    """`kubectl get svc -A` as a user runs it (discovery cached after the first), wall time."""
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    cache = ["--cache-dir", str(bench.tmp / "kubectl-cache")]
    times, rows = [], 0
    for _ in range(runs + 1):  # the first fills kubectl's discovery cache; not counted
        t = time.perf_counter()
        out = subprocess.run([kubectl, *cache, "get", "svc", "-A"], env=env, capture_output=True, text=True, timeout=120)
        took = time.perf_counter() - t
        if out.returncode != 0:
            raise BenchError(f"kubectl get svc -A failed: {out.stderr.strip()[:300]}")
        rows = len(out.stdout.splitlines()) - 1
        times.append(took)
    if rows < n:
        raise BenchError(f"kubectl get svc -A listed {rows} Services, fewer than {n}")
    bench.res["api"]["kubectl_get_svc_all"] = {**stats.summary(times[1:]), "first": times[0], "rows": rows}
    log(f"api: kubectl get svc -A ({rows} rows) p50 {fmt_seconds(stats.percentile(times[1:], 50))}")


def list_latency(bench: Bench, client: ApiClient, runs: int = 20) -> None:
    """GET /api/v1/services as JSON and as kubectl's Table, warm connection, server time."""
    for key, accept in (("list_json", "application/json"), ("list_table", TABLE_ACCEPT)):
        client.request("GET", "/api/v1/services", headers={"Accept": accept})  # warm: connection, caches
        times, size = [], 0
        for _ in range(runs):
            status, data, took = client.request("GET", "/api/v1/services", headers={"Accept": accept})
            if status != 200:
                raise BenchError(f"GET /api/v1/services ({accept[:30]}): {status} {data[:200]!r}")
            times.append(took)
            size = len(data)
        bench.res["api"][key] = {**stats.summary(times), "bytes": size}
        log(f"api: {key} p50 {fmt_seconds(stats.percentile(times, 50))} ({size} bytes)")


def watch_latency(bench: Bench, lab: Lab, client: ApiClient, n: int) -> None:
    """--api-watch-events PATCHes through the API, then a few hand edits of a manifest file,
    each timed to its MODIFIED event on one open watch of the default namespace's Services."""
    a = bench.args
    rv = client.json("/api/v1/namespaces/default/services?limit=1")["metadata"].get("resourceVersion", "")
    watch = Watch(client, f"/api/v1/namespaces/default/services?watch=1&resourceVersion={rv}")
    patch_times, lat, missed = [], [], 0
    try:
        for k in range(a.api_watch_events):
            if bench.left() < 30:
                bench.note(f"api: watch stopped after {k} writes (time budget)")
                break
            name, seq = gen.service_name(k % n, "api"), f"w{k}"
            body = json.dumps({"metadata": {"labels": {"bench-seq": seq}}}).encode()
            t0 = time.perf_counter()
            status, data, took = client.request("PATCH", f"/api/v1/namespaces/default/services/{name}", body,
                                                {"Content-Type": "application/merge-patch+json",
                                                 "Accept": "application/json"})
            if status != 200:
                raise BenchError(f"PATCH service {name}: {status} {data[:300]!r}")
            patch_times.append(took)
            at = watch.wait(lambda typ, nm, labels: typ == "MODIFIED" and nm == name
                            and labels.get("bench-seq") == seq, timeout=5)
            if at is None:
                missed += 1
            else:
                lat.append(at - t0)
        files = []
        for k in range(a.api_file_edits):
            name, seq = gen.service_name(k, "api"), f"f{k}"
            doc = list(yaml.safe_load_all(gen.manifest(k, [gen.endpoint_ip(k)], prefix="api")))
            doc[0]["metadata"]["labels"] = {"bench-seq": seq}
            time.sleep(0.3)
            t0 = time.perf_counter()
            lab.write_manifest(f"api-{k:05d}.yaml", yaml.safe_dump_all(doc, sort_keys=False))
            at = watch.wait(lambda typ, nm, labels: typ == "MODIFIED" and nm == name
                            and labels.get("bench-seq") == seq, timeout=10)
            if at is not None:
                files.append(at - t0)
    finally:
        watch.close()
    bench.res["api"]["watch"] = {**stats.summary(lat), "missed": missed}
    bench.res["api"]["patch"] = stats.summary(patch_times)
    bench.res["api"]["file_edit_watch"] = {**stats.summary(files), "missed": a.api_file_edits - len(files)}
    if missed:
        bench.note(f"api: {missed} of {a.api_watch_events} writes brought no watch event within 5 s")
    if lat:
        log(f"api: write -> watch event p50 {fmt_seconds(stats.percentile(lat, 50))} "
            f"p99 {fmt_seconds(stats.percentile(lat, 99))} (n={len(lat)})")


def kubectl_applies(bench: Bench, lab: Lab, kubectl: str, kubeconfig: str) -> None:
    """--api-applies `kubectl apply -f` calls, each of one new Service, one after the other."""
    a = bench.args
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    cache = ["--cache-dir", str(bench.tmp / "kubectl-cache")]
    folder = bench.tmp / "api-apply"
    folder.mkdir(exist_ok=True)
    times = []
    t_all = time.perf_counter()
    for k in range(a.api_applies):
        if bench.left() < 20:
            bench.note(f"api: kubectl apply stopped after {k} calls (time budget)")
            break
        path = folder / f"apply-{k:03d}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"apply-{k:03d}"},
                                        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}}))
        t = time.perf_counter()
        out = subprocess.run([kubectl, *cache, "apply", "-f", str(path)], env=env, capture_output=True, text=True,
                             timeout=60)
        times.append(time.perf_counter() - t)
        if out.returncode != 0 or out.stdout.strip() != f"service/apply-{k:03d} created":
            raise BenchError(f"kubectl apply #{k}: {out.returncode} {(out.stderr or out.stdout).strip()[:300]}")
    bench.res["api"]["kubectl_apply"] = {**stats.summary(times), "total": time.perf_counter() - t_all}
    if times:
        log(f"api: {len(times)} kubectl apply in {time.perf_counter() - t_all:.1f} s")


def table_section(r: dict) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The report's rows of the api section (results ``r``)."""
    v = r.get("api") or {}
    rows = []
    n = v.get("services")
    at = f"{n} Services" if n else "API"
    if v.get("load_seconds") is not None:
        rows.append((f"{at}: written into the folder -> all listed by the API", fmt_seconds(v["load_seconds"]), "", ""))
    g = v.get("kubectl_get_svc_all") or {}
    if g.get("n"):
        rows.append((f"{at}: kubectl get svc -A ({g['rows']} rows), whole command, p50 / max (n={g['n']}; "
                     f"first, discovery uncached: {fmt_seconds(g.get('first'))})",
                     f"{fmt_seconds(g['p50'])} / {fmt_seconds(g['max'])}", "", ""))
    for key, what in (("list_json", "list GET /api/v1/services, JSON"),
                      ("list_table", "list as kubectl asks (meta.k8s.io Table)")):
        x = v.get(key) or {}
        if x.get("n"):
            target = f"<= {TARGET_LIST * 1000:.0f} ms" if n == 1000 else ""
            rows.append((f"{at}: {what}, server time p50 / p99 (n={x['n']}, {x['bytes'] / 1024:.0f} KiB)",
                         f"{fmt_seconds(x['p50'])} / {fmt_seconds(x['p99'])}", target,
                         verdict(x["p50"], TARGET_LIST) if target else ""))
    w = v.get("watch") or {}
    if w.get("n"):
        rows.append((f"watch latency, PATCH sent -> MODIFIED event, p50 / p99 (n={w['n']}, missed {w['missed']})",
                     f"{fmt_seconds(w['p50'])} / {fmt_seconds(w['p99'])}", f"<= {TARGET_WATCH_P99 * 1000:.0f} ms",
                     verdict(w["p99"], TARGET_WATCH_P99)))
    p = v.get("patch") or {}
    if p.get("n"):
        rows.append(("  the PATCH's own answer (admitted, written to the folder and the store), p50 / p99",
                     f"{fmt_seconds(p['p50'])} / {fmt_seconds(p['p99'])}", "", ""))
    f = v.get("file_edit_watch") or {}
    if f.get("n"):
        rows.append((f"  a manifest file edited by hand -> MODIFIED event, p50 / max (n={f['n']}; the folder is "
                     f"polled)", f"{fmt_seconds(f['p50'])} / {fmt_seconds(f['max'])}", "", "info"))
    ap = v.get("kubectl_apply") or {}
    if ap.get("n"):
        rows.append((f"{ap['n']} kubectl apply calls (one new Service each): total; per call p50 / p99",
                     f"{fmt_seconds(ap['total'])}; {fmt_seconds(ap['p50'])} / {fmt_seconds(ap['p99'])}", "", ""))
    load = f"; load average {v['loadavg']:.1f} at its end" if v.get("loadavg") is not None else ""
    return f"7. Kubernetes API server (kubectl and a raw client against a sandboxed lab{load})", rows
