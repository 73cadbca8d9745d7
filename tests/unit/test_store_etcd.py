"""The pure parts of the etcd store (store/etcd.py): key encoding, prefix ranges, the compares
and ops of a commit, and how a transaction reads, buffers and commits — against a fake gateway,
no etcd needed (tests/integration/test_etcd_store.py runs a real one)."""

from __future__ import annotations

import base64
import json

import pytest

from kproxy.store.base import Conflict
from kproxy.store.etcd import (EtcdStore, build_txn, decode_key, delete_op, encode_key, key_compare,
                               prefix_range_end, put_op, range_compare, retry)
from kproxy.store.sqlite import SqliteStore


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


# ================================================================== keys and ranges


def test_keys_are_base64_of_utf8():
    assert encode_key("/registry/pods/default/a") == b64("/registry/pods/default/a")
    assert encode_key(b"\0") == "AA=="
    assert encode_key("/ns/é") == base64.b64encode("/ns/é".encode("utf-8")).decode()
    for key in ["/allocations/clusterips/10.96.0.1", "/a/é/ü", ""]:
        assert decode_key(encode_key(key)) == key


def test_prefix_range_end():
    assert prefix_range_end("/allocations/clusterips/") == b"/allocations/clusterips0"
    assert prefix_range_end("/registry/pods/default/") == b"/registry/pods/default0"
    assert prefix_range_end("a") == b"b"
    assert prefix_range_end(b"a\xff") == b"b"          # trailing 0xff bytes are cut, the byte before grows
    assert prefix_range_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_range_end(b"\xff\xff") == b"\0"      # nothing above: to the end of the keyspace
    assert prefix_range_end("") == b"\0"
    # every key under the prefix sorts below the end, the next sibling does not
    end = prefix_range_end("/registry/pods/")
    assert b"/registry/pods/zzz\xff" < end <= b"/registry/pods0" < b"/registry/podsx/"


# ================================================================== compares and ops


def test_key_compares():
    assert key_compare("/k", 7) == {"key": b64("/k"), "target": "MOD", "result": "EQUAL", "mod_revision": 7}
    assert key_compare("/k", 0) == {"key": b64("/k"), "target": "VERSION", "result": "EQUAL", "version": 0}


def test_range_compare_asserts_nothing_newer_than_the_read():
    assert range_compare("/allocations/clusterips/", 41) == {
        "key": b64("/allocations/clusterips/"), "range_end": b64("/allocations/clusterips0"),
        "target": "MOD", "result": "LESS", "mod_revision": 42}
    assert range_compare("", 3) == {"key": "AA==", "range_end": "AA==", "target": "MOD", "result": "LESS",
                                    "mod_revision": 4}


def test_put_op_skips_an_unchanged_value():
    op = put_op("/k", '{"a":1}')
    assert op == {"request_txn": {
        "compare": [{"key": b64("/k"), "target": "VALUE", "result": "EQUAL", "value": b64('{"a":1}')},
                    {"key": b64("/k"), "target": "LEASE", "result": "EQUAL", "lease": 0}],
        "success": [],
        "failure": [{"request_put": {"key": b64("/k"), "value": b64('{"a":1}')}}]}}
    leased = put_op("/nodes/n1", '"up"', lease=99)["request_txn"]
    assert leased["compare"][1]["lease"] == 99
    assert leased["failure"] == [{"request_put": {"key": b64("/nodes/n1"), "value": b64('"up"'), "lease": 99}}]
    assert delete_op("/k") == {"request_delete_range": {"key": b64("/k")}}


def test_build_txn():
    req = build_txn(seen={"/a/x": 5, "/b": 0, "/a/absent": 0},
                    listed={"/a/": 9},
                    writes={"/a/new": ("put", "1", None), "/a/x": ("delete", None, None)})
    assert req["compare"] == [range_compare("/a/", 9), key_compare("/a/x", 5), key_compare("/b", 0)]
    # /a/absent needs no compare: the range compare fails if it is created
    assert req["success"] == [put_op("/a/new", "1"), delete_op("/a/x")]
    assert req["failure"] == []


# ================================================================== transactions against a fake gateway


class FakeGateway:
    """Answers kv/range from a dict at a fixed revision and records every request."""

    def __init__(self, data: dict[str, tuple[object, int]], revision: int, succeed: bool = True):
        self.data, self.rev, self.succeed = data, revision, succeed
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, path: str, payload: dict) -> dict:
        self.calls.append((path, payload))
        header = {"revision": str(self.rev)}
        if path == "kv/range":
            start = base64.b64decode(payload["key"])
            end = base64.b64decode(payload["range_end"]) if "range_end" in payload else None
            kvs = []
            for key in sorted(self.data):
                raw = key.encode()
                if (raw == start) if end is None else (start <= raw and (end == b"\0" or raw < end)):
                    value, mod = self.data[key]
                    kvs.append({"key": b64(key), "value": b64(json.dumps(value)), "mod_revision": str(mod),
                                "create_revision": str(mod), "version": "1"})
            return {"header": header, **({"kvs": kvs, "count": str(len(kvs))} if kvs else {})}
        if path == "kv/txn":
            return {"header": {"revision": str(self.rev + (1 if self.succeed else 0))}, "succeeded": self.succeed}
        raise AssertionError(path)


@pytest.fixture
def fake():
    store = EtcdStore("http://127.0.0.1:1")  # never contacted: _post is replaced
    gw = FakeGateway({"/alloc/10.0.0.2": ("a/one", 3), "/alloc/10.0.0.3": ("a/two", 5), "/other": (1, 2)}, 7)
    store._post = gw
    return store, gw


def test_reads_pin_one_snapshot_and_are_recorded(fake):
    store, gw = fake
    with store.transaction() as t:
        assert t.get("/other") == 1
        assert t.read_revision == 7
        assert t.list("/alloc/") == [("/alloc/10.0.0.2", "a/one"), ("/alloc/10.0.0.3", "a/two")]
        assert t.get("/alloc/10.0.0.9") is None  # known absent from the listing: no request
        assert t.get("/missing") is None
        t.put("/alloc/10.0.0.4", "a/three")
        req = t.request()
    ranges = [p for path, p in gw.calls if path == "kv/range"]
    assert "revision" not in ranges[0] and all(p["revision"] == 7 for p in ranges[1:])
    assert len(ranges) == 3  # /other, the /alloc/ listing, /missing
    assert req["compare"] == [range_compare("/alloc/", 7), key_compare("/other", 2), key_compare("/missing", 0)]
    assert req["success"] == [put_op("/alloc/10.0.0.4", '"a/three"')]
    assert gw.calls[-1] == ("kv/txn", req)
    assert t.committed_revision == 8


def test_own_writes_are_visible_inside_the_transaction(fake):
    store, gw = fake
    with store.transaction() as t:
        t.put("/alloc/10.0.0.1", {"x": 1})
        assert t.get("/alloc/10.0.0.1") == {"x": 1}
        assert t.delete("/alloc/10.0.0.2") is True
        assert t.get("/alloc/10.0.0.2") is None
        assert t.list("/alloc/") == [("/alloc/10.0.0.1", {"x": 1}), ("/alloc/10.0.0.3", "a/two")]
        assert t.delete("/alloc/10.0.0.1") is True   # its own put
        assert t.delete("/alloc/10.0.0.9") is False  # absent
        req = t.request()
    assert req["success"] == [delete_op("/alloc/10.0.0.2"), delete_op("/alloc/10.0.0.1")]
    assert key_compare("/alloc/10.0.0.2", 3) in req["compare"]


def test_read_only_and_rolled_back_transactions_send_no_txn(fake):
    store, gw = fake
    with store.transaction() as t:
        t.list("/alloc/")
        t.get("/other")
    with pytest.raises(ValueError), store.transaction() as t:
        t.put("/other", 2)
        raise ValueError("boom")
    assert [path for path, _ in gw.calls] == ["kv/range", "kv/range", ]
    # a blind write reads nothing and asserts nothing
    store.put("/blind", [1], lease=12)
    assert gw.calls[-1] == ("kv/txn", {"compare": [], "success": [put_op("/blind", "[1]", 12)], "failure": []})


def test_a_failed_compare_is_a_conflict_and_retry_runs_again(fake):
    store, gw = fake
    gw.succeed = False
    with pytest.raises(Conflict), store.transaction() as t:
        t.get("/other")
        t.put("/other", 2)
    runs = []

    def bump(txn):
        runs.append(1)
        if len(runs) == 3:
            gw.succeed = True
        txn.put("/other", txn.get("/other") + 1)
        return len(runs)

    assert retry(store, bump) == 3
    gw.succeed = False
    runs.clear()
    with pytest.raises(Conflict):
        retry(store, lambda txn: txn.put("/x", txn.get("/other")), attempts=2)


def test_retry_works_with_the_sqlite_store(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    assert retry(store, lambda t: (t.put("/k", 1), t.get("/k"))[1]) == 1
    with pytest.raises(KeyError):  # other errors are not retried and roll back
        retry(store, lambda t: (t.put("/k", 2), {}["x"]))
    assert store.get("/k") == 1
    store.close()


# ================================================================== TLS (issue 12, finding 8)


def test_an_https_store_presents_the_lab_certificate_and_trusts_only_the_lab_ca(tmp_path, monkeypatch):
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    # requests would let these replace the lab CA and send etcd's traffic through a proxy
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("HTTPS_PROXY", "http://192.0.2.1:3128")
    store = EtcdStore("https://10.0.0.1:2379", ca=str(tmp_path / "ca.crt"), cert=str(tmp_path / "c.crt"),
                      key=str(tmp_path / "c.key"))
    session = store._client().session
    assert store._client().get_url("kv/range") == "https://10.0.0.1:2379/v3/kv/range"
    assert session.verify == str(tmp_path / "ca.crt")
    assert session.cert == (str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
    settings = session.merge_environment_settings("https://10.0.0.1:2379/v3/kv/range", {}, None, None, None)
    assert settings["verify"] == str(tmp_path / "ca.crt") and not settings["proxies"]


def test_store_tls_arguments_are_checked_with_the_flag_named(tmp_path):
    (tmp_path / "c.crt").write_text("x")
    with pytest.raises(ValueError, match="--store-cert and --store-key"):
        EtcdStore("https://10.0.0.1:2379", cert=str(tmp_path / "c.crt"))
    with pytest.raises(ValueError, match="--store-ca needs an https:// etcd URL"):
        EtcdStore("http://10.0.0.1:2379", ca=str(tmp_path / "c.crt"))
    with pytest.raises(ValueError, match=f"--store-ca {tmp_path}/missing.crt: cannot read it"):
        EtcdStore("https://10.0.0.1:2379", ca=str(tmp_path / "missing.crt"))
