"""strategicpatch.py against upstream's own golden cases.

tests/unit/data/strategicpatch_upstream.json holds the cases of k8s.io/apimachinery's
pkg/util/strategicpatch/patch_test.go (extracted verbatim from its YAML): for each, applying the
expected two-way patch to Original must give TwoWayResult (or Modified), and applying the
expected three-way patch to Current must give Result — exactly, list order included, for the
"raw" cases; after upstream's sortMergeListsByName for the "structured" ones (as upstream's
test compares them). The schema is upstream's test struct MergeItem, written as patchmeta data.
"""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from kproxy.apiserver import strategicpatch as smp
from kproxy.apiserver.patchmeta import Field, merge

DATA = json.loads((pathlib.Path(__file__).parent / "data" / "strategicpatch_upstream.json").read_text())

# MergeItem / RetainKeysMergeItem from patch_test.go
MERGE_ITEM: dict = {}
RETAIN_KEYS_ITEM = {
    "mergingIntList": merge(),
    "mergingList": merge("name", MERGE_ITEM),
    "nonMergingList": Field((), "", MERGE_ITEM),
}
MERGE_ITEM.update({
    "mergingList": merge("name", MERGE_ITEM),
    "nonMergingList": Field((), "", MERGE_ITEM),
    "mergingIntList": merge(),
    "nonMergingIntList": Field(),
    "mergeItemPtr": Field(("merge",), "name", MERGE_ITEM),
    "simpleMap": Field(),
    "replacingItem": Field(("replace",)),
    "retainKeysMap": Field(("retainKeys",), "", RETAIN_KEYS_ITEM),
    "retainKeysMergingList": Field(("merge", "retainKeys"), "name", MERGE_ITEM),
})


def _apply(original, patch):
    return smp.strategic_merge_patch(copy.deepcopy(original or {}), copy.deepcopy(patch or {}), MERGE_ITEM)


def _sort(v, schema):
    """sortMergeListsByNameMap, for the structured cases."""
    if not isinstance(v, dict):
        return v
    out = {}
    for k, x in v.items():
        f = schema.get(k, Field()) if isinstance(schema, dict) else Field()
        if k in (smp.RETAIN_KEYS,) or k.startswith(smp.DELETE_FROM_PRIMITIVE_LIST):
            x = sorted(x, key=str)
        elif isinstance(x, dict):
            x = _sort(x, f.sub)
        elif isinstance(x, list) and "merge" in f.strategies and x:
            if isinstance(x[0], dict):
                x = sorted((_sort(i, f.sub) for i in x), key=lambda i: str(i.get(f.merge_key)))
            else:
                x = sorted({json.dumps(i): i for i in x}.values(), key=str)
        out[k] = x
    return out


RAW = [c for c in DATA["raw"]]


def _ids(cases):
    return [f"{c['set'][:6]}:{c['description'][:70]}" for c in cases]


@pytest.mark.parametrize("case", RAW, ids=_ids(RAW))
def test_raw_two_way(case):
    if "TwoWay" not in case:
        pytest.fail("case without a two-way patch")
    if case.get("ExpectedError"):
        with pytest.raises(smp.SMPError) as e:
            _apply(case.get("Original"), case["TwoWay"])
        assert case["ExpectedError"] in e.value.message
        return
    want = case.get("TwoWayResult", case.get("Modified"))
    assert _apply(case.get("Original"), case["TwoWay"]) == (want or {})


THREE = [c for c in RAW if c.get("Result") is not None]


@pytest.mark.parametrize("case", THREE, ids=_ids(THREE))
def test_raw_three_way(case):
    assert _apply(case.get("Current"), case["ThreeWay"]) == case["Result"]


STRUCT = DATA["structured"]


@pytest.mark.parametrize("case", STRUCT, ids=_ids([{"set": c["set"], "description": c["description"]} for c in STRUCT]))
def test_structured(case):
    orig = _sort(case.get("original") or {}, MERGE_ITEM)
    want = _sort(case.get("twoWayResult") or case.get("modified") or {}, MERGE_ITEM)
    got = _apply(orig, _sort(case.get("twoWay") or {}, MERGE_ITEM))
    assert got == want
    if case.get("result") is not None and case.get("threeWay") is not None:
        cur = _sort(case.get("current") or {}, MERGE_ITEM)
        assert _apply(cur, _sort(case["threeWay"], MERGE_ITEM)) == _sort(case["result"], MERGE_ITEM)


def test_case_counts():
    """The fixture is the whole upstream corpus, not a hand-picked part of it."""
    assert len(DATA["raw"]) == 104 and len(DATA["structured"]) == 40
