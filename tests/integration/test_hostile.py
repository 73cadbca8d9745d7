"""The hostile-manifest corpus against a live lab (issue 12's "done when").

Every case of tests/corpus/hostile (made by its make.py: static files plus FIFOs, symlinks out
of the folder, huge and deep files) is given to `kproxy apply` and dropped into the folder of a
running lab. Each must give a clear error naming its file (and field), or be a documented
acceptance; never a traceback, never a hang; the daemon stays alive, a new Service written while
the bad files are there is programmed within 2 s, and a Service that was serving keeps serving.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

from .conftest import hits

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hostile"
BATCH = 10  # cases in the folder at once

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: keeper}
spec:
  replicas: 2
  selector: {matchLabels: {app: keeper}}
  template:
    metadata: {labels: {app: keeper}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: keeper}
spec:
  selector: {app: keeper}
  ports: [{port: 80, targetPort: 8080}]
"""

PROBE = """apiVersion: v1
kind: Service
metadata: {name: probe-%d}
spec:
  selector: {app: keeper}
  ports: [{port: 80, targetPort: 8080}]
"""


def _corpus(stage: Path) -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("hostile_make", CORPUS / "make.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    return make.materialize(stage)


@pytest.fixture(scope="module")
def cases(lab):
    stage = lab.state_dir / "corpus"
    stage.mkdir()
    expect = _corpus(stage)
    assert len(expect) >= 100
    return stage, expect


def _programmed(lab, name: str, deadline: float) -> str | None:
    """The Service's ClusterIP once a rule for it is in the node's nat table, None at the deadline."""
    while time.monotonic() < deadline:
        saved = lab.node_save()
        for line in saved.splitlines():
            if f"default/{name} cluster IP" in line and "-d " in line:
                return line.split("-d ", 1)[1].split("/", 1)[0]
        time.sleep(0.05)
    return None


def _alive(lab) -> bool:
    pid = int((lab.state_dir / "daemon.pid").read_text())
    return Path(f"/proc/{pid}").exists()


def test_apply_refuses_each_case_clearly(lab, cases):
    stage, expect = cases
    for name, want in sorted(expect.items()):
        start = time.monotonic()
        res = lab.kproxy("apply", "-f", str(stage / name), check=False, timeout=30)
        out = res.stdout + res.stderr
        assert time.monotonic() - start < 10, f"{name}: apply took too long"
        assert "Traceback" not in out, f"{name}:\n{out}"
        if "apply_error" in want:  # accepted in the folder; `apply` of no object is kubectl's error
            assert res.returncode == 1 and want["apply_error"] in out, f"{name}:\n{out}"
            continue
        if "accepted" in want:
            assert res.returncode == 0, f"{name} ({want['accepted']}):\n{out}"
            lab.kproxy("delete", "-f", str(stage / name), check=False)
            continue
        assert res.returncode != 0, f"{name}: apply said\n{out}"
        assert want["error"] in out, f"{name}: want {want['error']!r} in\n{out}"
        if want.get("field"):
            assert want["field"] in out, f"{name}: want field {want['field']!r} in\n{out}"
        # what was written is what was said: a good document beside the bad one is `created`
        written = [f for f in os.listdir(lab.manifests) if "bad-" in f]
        said = [line for line in res.stdout.splitlines() if line.endswith(" created")]
        assert len(written) == len(said), f"{name}: wrote {written}, said {said}"
        if written:
            lab.kproxy("delete", "-f", str(stage / name), check=False)
    left = [f for f in os.listdir(lab.manifests) if "bad-" in f or f in expect]
    assert not left, f"refused or deleted cases left files in the folder: {left}"


def test_the_folder_survives_each_case(lab, cases):
    stage, expect = cases
    lab.apply(WEB)
    keeper = lab.get("svc", "keeper")["spec"]["clusterIP"]
    names = sorted(expect)
    for i in range(0, len(names), BATCH):
        batch = names[i:i + BATCH]
        for name in batch:
            os.rename(stage / name, lab.manifests / name)
        probe = lab.manifests / f"probe-{i}.yaml"
        written = time.monotonic()
        probe.write_text(PROBE % i)
        try:
            ip = _programmed(lab, f"probe-{i}", deadline=written + 2.0)
            assert ip, (f"probe-{i} not programmed within 2 s with {batch} in the folder:\n"
                        + lab.kproxy("status", check=False).stdout)
            assert _alive(lab), f"the daemon died with {batch} in the folder"
            status = lab.kproxy("status", check=False).stdout
            assert "Traceback" not in status
            for name in batch:
                want = expect[name]
                if "error" in want:
                    assert name in status, f"{name} not reported by status:\n{status}"
            answers = hits(lab, "node/node-1", f"http://{keeper}/", 4)
            assert all(not a.startswith("ERR") for a in answers), answers
        finally:
            for name in batch:
                os.rename(lab.manifests / name, stage / name)
            probe.unlink()
    assert _alive(lab)
