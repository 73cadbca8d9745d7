#!/usr/bin/env python3
"""Pass-time probe (issue 14's watch latency): a Daemon (all roles) in this process on SQLite and
the FakeKernel, N Service files (bench's generator), then 40 times one file's label changed and
one pass timed: the front's step (what an API write waits for: `Daemon.admission`) and the whole
pass (`Daemon.sync`). No root, no lab, no network. Works on trees before this probe too (the
step's `record` argument is looked for), so two commits can be compared on one machine:
    PYTHONPATH=$PWD .venv/bin/python scripts/pass_probe.py 1000
"""
import sys, time, tempfile, yaml, inspect
from pathlib import Path
from kproxy.bench import gen
from kproxy.config import LabConfig
from kproxy.daemon import Daemon
from kproxy.proxy.fake import FakeKernel
from kproxy.store.sqlite import SqliteStore
n = int(sys.argv[1])
tmp = Path(tempfile.mkdtemp())
cfg = LabConfig(state_dir=str(tmp), sandbox=True, cluster_dns=False)
Path(cfg.manifests).mkdir(parents=True)
d = Daemon(cfg, store=SqliteStore(tmp / "s.db"), kernel=FakeKernel())
d.ctx.node_ip = "192.168.49.2"
d.proxy.make_proxier()
d.frontend.start(); d.frontend.ensure_system_objects()
class K:
    pods = {}
    def tick(self, guard=None): return {}
    def finished_pods(self): return []
d.agent.kubelet = K()
new = "record" in inspect.signature(d.frontend.step).parameters
for i in range(n):
    (Path(cfg.manifests) / f"api-{i:05d}.yaml").write_text(gen.manifest(i, [gen.endpoint_ip(i)], prefix="api"))
def one_pass():
    now = time.monotonic(); d.frontend.next_poll = 0.0
    t0 = time.perf_counter()
    if new:
        d.frontend.step(now, record=False); t1 = time.perf_counter(); d.frontend.save_record(now)  # as the loop does
    else:
        d.frontend.step(now); t1 = time.perf_counter()
    d._pass(now); d._publish()
    return t1 - t0, time.perf_counter() - t0
one_pass()  # created
# every document once judged as an update of what was admitted (what a running lab holds)
d.frontend.signature = None; one_pass(); one_pass()
adm, tot = [], []
for k in range(40):
    doc = list(yaml.safe_load_all(gen.manifest(k, [gen.endpoint_ip(k)], prefix="api")))
    doc[0]["metadata"]["labels"] = {"seq": str(k)}
    (Path(cfg.manifests) / f"api-{k:05d}.yaml").write_text(yaml.safe_dump_all(doc))
    a, t = one_pass(); adm.append(a * 1000); tot.append(t * 1000)
adm.sort(); tot.sort()
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
print(f"{n} Services, one file's label changed: front step (admission) p50 {q(adm,.5):.1f} p99 {q(adm,.99):.1f} ms; whole pass p50 {q(tot,.5):.1f} p99 {q(tot,.99):.1f} ms (n=40)")
