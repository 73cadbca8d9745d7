"""The hostile manifest corpus (tests/corpus/hostile): every case is refused clearly or documented as accepted.

Each case is read and admitted as the daemon does it (manifest_files -> read_file ->
for each document: the admission gate, api/admission.py), and must:
never raise, take under a second, stay under 50 MB of allocations, and give an
error that contains the expected text, names the file and names the field (or,
for a documented acceptance, no error at all).
"""

import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from kproxy.api import manifest
from kproxy.api.admission import NO_MATCH, Admission

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus" / "hostile"))
import make  # noqa: E402

CASES = make.expectations()


def outcome(folder: Path) -> list[str]:
    """The problems the daemon would report for ``folder``, each naming its file."""
    problems = []
    gate = Admission()
    for path in manifest.manifest_files(folder):
        for doc in manifest.read_file(path):
            if doc.error:
                problems.append(doc.error)
                continue
            verdict = gate.admit(doc.obj, doc.source, hint=False)
            if not verdict.ok:
                problems.append(verdict.message if verdict.reason == NO_MATCH else f"{doc.source}: {verdict.message}")
    return problems


def test_the_corpus_is_large_and_every_file_has_an_expectation():
    assert len(CASES) >= 100
    files = {p.name for p in make.HERE.iterdir() if p.suffix in (".yaml", ".json") and p.name != "expect.yaml"}
    assert files <= set(CASES)
    assert set(CASES) - files == set(make.GENERATED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name, tmp_path):
    made = make.materialize(tmp_path, [name])
    if name not in made:
        pytest.skip("cannot be made here (not root, or a socket path too long)")
    expect = made[name]
    started = time.monotonic()
    problems = outcome(tmp_path)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"{name} took {elapsed:.2f} s"
    if "accepted" in expect:
        assert problems == []
        return
    assert len(problems) == 1, problems
    problem = problems[0]
    assert expect["error"] in problem
    assert name in problem  # names the file
    if "field" in expect:
        assert expect["field"] in problem
    assert len(problem) < 4096  # an excerpt at most, never the file


@pytest.mark.parametrize("name", ["007-billion-laughs.yaml", "184-too-large.yaml", "185-deep-json-100000.json",
                                  "186-deep-yaml-100000.yaml", "187-annotations-300k.yaml",
                                  "191-file-under-cap-accepted.yaml"])
def test_bombs_stay_within_bounded_memory(name, tmp_path):
    make.materialize(tmp_path, [name])
    tracemalloc.start()
    try:
        outcome(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024, f"{name}: {peak / 1e6:.1f} MB"


def test_refused_files_are_never_quoted(tmp_path):
    make.materialize(tmp_path, ["173-symlink-outside.yaml"])
    [problem] = outcome(tmp_path)
    content = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
    if len(content) >= 4:
        assert content not in problem.replace(str(tmp_path), "")
