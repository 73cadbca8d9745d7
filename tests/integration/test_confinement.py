"""Issue 12 #1/#2 in a live lab: objects that used to raise in the daemon's pass (and so froze
rules, probes and restarts for everything) are reported with their file, while another Service
is programmed at once; `kproxy status` lists the daemon's healthy components and exits 0."""
from __future__ import annotations

import time

HOSTILE = """apiVersion: v1
kind: Service
metadata: {name: zero-padded}
spec: {clusterIP: 10.96.0.010, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: null-key}
spec: {~: 1, selector: {app: x}, ports: [{port: 80}]}
"""

GOOD = """apiVersion: v1
kind: Service
metadata: {name: after-bad}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
"""


def test_a_bad_object_is_reported_and_another_service_is_programmed_within_2s(lab):
    (lab.manifests / "hostile.yaml").write_text(HOSTILE)
    try:
        lab.wait_for(lambda: "hostile.yaml" in lab.kproxy("status", check=False).stdout, timeout=10)
        start = time.monotonic()
        (lab.manifests / "good.yaml").write_text(GOOD)
        lab.wait_for(lambda: "default/after-bad" in lab.node_save(), timeout=5, interval=0.05)
        assert time.monotonic() - start < 2.0
        status = lab.kproxy("status", check=False)
        assert status.returncode == 0, status.stdout
        assert "Traceback" not in status.stdout + status.stderr
        ok = next(line for line in status.stdout.splitlines() if line.startswith("components ok:"))
        for component in ("reconcile", "control-socket", "healthz-server", "metrics-server"):
            assert component in ok, status.stdout
    finally:
        (lab.manifests / "hostile.yaml").unlink(missing_ok=True)
        (lab.manifests / "good.yaml").unlink(missing_ok=True)
