"""How an nftables transaction is compared with an expected one (the reference README's rule):
the same lines, blank lines and `#` comments ignored, and each chain's rules in the same order."""
from __future__ import annotations

import collections
import difflib
import re

import pytest

_RULE = re.compile(r"^add rule ip kube-proxy (\S+) (.*)$")


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def rules_by_chain(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for ln in lines(text):
        m = _RULE.match(ln)
        if m:
            out[m.group(1)].append(m.group(2))
    return dict(out)


def assert_same_transaction(expected: str, got: str) -> None:
    """Same lines (as a multiset) and the same rule order within every chain."""
    want, have = collections.Counter(lines(expected)), collections.Counter(lines(got))
    if want != have:
        diff = "\n".join(difflib.unified_diff(sorted(want.elements()), sorted(have.elements()),
                                              "expected", "rendered", lineterm=""))
        pytest.fail(f"rendered lines differ from the expected text:\n{diff}")
    assert rules_by_chain(expected) == rules_by_chain(got)
