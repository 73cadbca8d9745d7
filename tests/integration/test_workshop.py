"""examples/workshop/README.md, executed: the walk-through never rots.

The README's ```sh blocks whose first line is `# step ...` are run in order in one sandboxed lab
(the `lab` fixture), each command through bash from the repository's folder, with `kproxy` on PATH
meaning this checkout's CLI (`sys.executable -m kproxy.cli`) and KPROXY_STATE_DIR the lab's. The
comment lines after a command are its checks:

    # expect: TEXT        the command's output (stdout and stderr) contains TEXT
    # expect-none: TEXT   it does not
    # exit: N             it exits with N (without this line: 0)

Other comments are prose. Packets stay inside the lab: every command targets its pods, its node
or its `outside` netns.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO

WORKSHOP = REPO / "examples" / "workshop"
README = WORKSHOP / "README.md"


@dataclass
class Command:
    line: int  # where it is in the README, for the failure message
    text: str
    expect: list[str] = field(default_factory=list)
    expect_none: list[str] = field(default_factory=list)
    exit: int = 0


@dataclass
class Step:
    title: str
    commands: list[Command]


def parse(markdown: str) -> list[Step]:
    """The runnable steps of the README, in order."""
    steps: list[Step] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        start, i = i + 1, i + 1
        while lines[i].strip() != "```":
            i += 1
        block = lines[start:i]
        i += 1
        if not block or not re.match(r"# step\b", block[0]):
            continue
        step = Step(block[0].removeprefix("#").strip(), [])
        pending = ""
        for n, raw in enumerate(block[1:], start + 2):
            line = raw.rstrip()
            if pending:
                step.commands[-1].text += "\n" + line
                pending = line if line.endswith("\\") else ""
                continue
            if not line.strip():
                continue
            m = re.match(r"#\s*(expect|expect-none|exit):\s?(.*)$", line)
            if m:
                if not step.commands:
                    raise ValueError(f"README line {n}: `{line}` before any command of {step.title}")
                cmd = step.commands[-1]
                if m.group(1) == "expect":
                    cmd.expect.append(m.group(2))
                elif m.group(1) == "expect-none":
                    cmd.expect_none.append(m.group(2))
                else:
                    cmd.exit = int(m.group(2))
                continue
            if line.startswith("#"):
                continue
            step.commands.append(Command(n, line))
            pending = line if line.endswith("\\") else ""
        steps.append(step)
    return steps


def test_the_readme_parses_into_steps_with_checks():
    """No lab needed: the README has its steps, each command checked, each manifest applied."""
    steps = parse(README.read_text())
    assert [s.title.split(":")[0] for s in steps][:3] == ["step 1", "step 2", "step 3"]
    assert all(c.expect or c.expect_none for s in steps for c in s.commands), \
        [c.text for s in steps for c in s.commands if not (c.expect or c.expect_none)]
    applied = " ".join(c.text for s in steps for c in s.commands)
    for manifest in sorted(WORKSHOP.glob("*.yaml")):
        assert f"examples/workshop/{manifest.name}" in applied, f"{manifest.name} is in no step"
    # the parser itself: a continuation line, each kind of check
    text = "```sh\n# step x\nkproxy get \\\n  pods\n# expect: A\n# expect-none: B\nfalse\n# exit: 1\n```\n"
    [step] = parse(text)
    assert [(c.text, c.expect, c.expect_none, c.exit) for c in step.commands] == [
        ("kproxy get \\\n  pods", ["A"], ["B"], 0), ("false", [], [], 1)]
    assert parse("```sh\nkproxy up\n```\n") == []  # a block without `# step` is prose


@pytest.fixture(scope="module")
def shell(lab, tmp_path_factory):
    """Runs one README command as a student would, with `kproxy` meaning this checkout's CLI."""
    bindir = tmp_path_factory.mktemp("bin")
    wrapper = bindir / "kproxy"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kproxy.cli "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {**lab.env, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def run(text: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", text], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    return run


def test_the_workshop_runs_as_written(lab, shell):
    if not os.access("/usr/bin/redis-server", os.X_OK):
        pytest.fail("/usr/bin/redis-server is missing: run scripts/setup (it installs redis-server and "
                    "redis-tools, which step 3 of the workshop runs)")
    steps = parse(README.read_text())
    assert len(steps) >= 10
    for step in steps:
        for cmd in step.commands:
            res = shell(cmd.text)
            out = res.stdout + res.stderr
            where = f"{step.title}, README line {cmd.line}: {cmd.text}\n--- output (exit {res.returncode}):\n{out}"
            assert res.returncode == cmd.exit, f"exit {res.returncode}, want {cmd.exit}: {where}"
            for want in cmd.expect:
                assert want in out, f"no {want!r} in the output of {where}"
            for unwanted in cmd.expect_none:
                assert unwanted not in out, f"{unwanted!r} in the output of {where}"


def test_the_redis_fallback_serves_on_6379(lab, shell):
    """The documented fallback (no Debian redis-server): the built-in server behind `redis`."""
    res = shell("kproxy apply -f examples/workshop/fallback/redis-builtin.yaml --wait")
    assert res.returncode == 0 and "deployment.apps/redis configured" in res.stdout, res
    res = shell("kproxy exec deploy/backend -- curl -s --max-time 3 http://redis:6379/")
    assert res.stdout.startswith("pod redis-"), res
    res = shell("kproxy exec deploy/backend -- redis-cli -h redis ping")
    assert res.stdout.strip() == "ping", res  # an echo of what redis-cli sent, as the README says
