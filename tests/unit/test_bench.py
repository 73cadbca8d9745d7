"""The benchmark's pure parts (kproxy/bench): generators, statistics, restore-text handling,
wrk parsing, the table and the PNG writer. No root, no network namespaces, fast.
"""
from __future__ import annotations

import ipaddress
import math
import struct
import zlib

import pytest
import yaml

from kproxy.bench import gen, stats
from kproxy.bench.dataplane import parse_wrk
from kproxy.bench.plot import Canvas, bar_panel, line_panel, png_bytes
from kproxy.bench.restore import parse
from kproxy.proxy.applier import with_listing
from kproxy.bench.run import parse_args
from kproxy.bench.sync import _repeat
from kproxy.bench.table import fmt_ratio, fmt_seconds, format_table, verdict
from kproxy.bench.worker import CFG
from kproxy.proxy import render

# ------------------------------------------------------------------------ generators


def test_cluster_is_deterministic_and_in_range():
    a = gen.cluster(300, seed=3)
    assert a == gen.cluster(300, seed=3)
    assert a != gen.cluster(300, seed=4)
    services, slices = a
    assert len(services) == len(slices) == 300
    counts = [len(s["endpoints"]) for s in slices]
    assert min(counts) >= 2 and max(counts) <= 10
    assert len(set(counts)) > 5  # spread over 2..10, not one value
    ips = [s["spec"]["clusterIP"] for s in services]
    assert len(set(ips)) == 300
    svc_net = ipaddress.ip_network("10.96.0.0/12")
    assert all(ipaddress.ip_address(ip) in svc_net for ip in ips)
    assert not {"10.96.0.1", "10.96.0.10"} & set(ips)
    for svc, sl in zip(services, slices):
        assert "selector" not in svc["spec"]
        assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]


def test_cluster_ip_skips_network_gateway_and_broadcast_hosts():
    hosts = {gen.cluster_ip(i).rsplit(".", 1)[1] for i in range(2000)}
    assert not {"0", "1", "255"} & hosts
    assert len({gen.cluster_ip(i) for i in range(20000)}) == 20000


def test_endpoint_ips_are_valid_hosts_off_the_lab_node_cidr():
    for j in (0, 253, 254, 63499, 63500, 10**6):
        ip = ipaddress.ip_address(gen.endpoint_ip(j))
        assert ip in ipaddress.ip_network("10.244.0.0/16")
        assert ip not in ipaddress.ip_network("10.244.0.0/24")
        assert str(ip).rsplit(".", 1)[1] not in ("0", "255")


def test_change_endpoints_changes_exactly_one_service():
    services, slices = gen.cluster(50, seed=1)
    before = [list(map(str, s["endpoints"])) for s in slices]
    name = gen.change_endpoints(slices, 0)
    after = [list(map(str, s["endpoints"])) for s in slices]
    changed = [i for i in range(50) if before[i] != after[i]]
    assert len(changed) == 1
    assert slices[changed[0]]["metadata"]["labels"]["kubernetes.io/service-name"] == name
    eps = [e["addresses"][0] for e in slices[changed[0]]["endpoints"]]
    assert len(eps) == len(set(eps)) and 2 <= len(eps) <= 10


def test_rendered_cluster_has_a_chain_per_endpoint():
    services, slices = gen.cluster(20, seed=2)
    res = render.render(services, slices, render.ProxyConfig(**CFG))
    sep = [c for c in res.nat_chains if c.startswith("KUBE-SEP-")]
    assert len(sep) == sum(len(s["endpoints"]) for s in slices)
    assert all(f"-d {s['spec']['clusterIP']} --dport 80" in res.text for s in services)


def test_manifest_is_a_selector_less_service_and_its_slice():
    docs = list(yaml.safe_load_all(gen.manifest(5, ["10.244.0.2", "10.244.0.3"])))
    assert [d["kind"] for d in docs] == ["Service", "EndpointSlice"]
    svc, sl = docs
    assert svc["spec"]["clusterIP"] == gen.cluster_ip(5) and "selector" not in svc["spec"]
    assert sl["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]
    assert [e["addresses"][0] for e in sl["endpoints"]] == ["10.244.0.2", "10.244.0.3"]
    dep = yaml.safe_load(gen.deployment("web", 3))
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["template"]["metadata"]["labels"] == {"app": "web"}


# ------------------------------------------------------------------------ statistics


def test_percentile_interpolates_like_numpy():
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile([5], 99) == 5
    xs = list(range(1, 21))  # 1..20
    assert stats.percentile(xs, 0) == 1 and stats.percentile(xs, 100) == 20
    assert stats.percentile(xs, 99) == pytest.approx(19.81)
    assert stats.percentile(reversed(xs), 90) == pytest.approx(18.1)
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_summary():
    s = stats.summary([0.3, 0.1, 0.2])
    assert s["n"] == 3 and s["min"] == 0.1 and s["max"] == 0.3 and s["p50"] == 0.2
    assert s["mean"] == pytest.approx(0.2)
    assert stats.summary([]) == {"n": 0}


@pytest.mark.parametrize("x, df, expected", [
    (3.841458820694124, 1, 0.05),        # chi2.sf(3.84, 1) = 0.05 (the 95% critical value)
    (3.84, 1, 0.050043521248705),
    (10.0, 5, 0.0752352461),             # chi2.sf(10, 5)
    (0.5, 3, 0.9188914116546758),
    (100.0, 50, 3.4549e-05),
    (2.0, 2, math.exp(-1.0)),            # df 2 is exponential: exp(-x/2)
    (18.307, 10, 0.05),                  # the tables' critical values for df 10
    (29.588, 10, 0.001),
    (0.0, 4, 1.0),
])
def test_chi2_sf_known_values(x, df, expected):
    assert stats.chi2_sf(x, df) == pytest.approx(expected, rel=2e-4)


def test_gamma_q_both_branches_agree_with_closed_forms():
    for x in (0.1, 0.9, 1.5, 3.0, 12.0):  # Q(1, x) = exp(-x); series below a+1, fraction above
        assert stats.gamma_q(1.0, x) == pytest.approx(math.exp(-x), rel=1e-10)
        # Q(1/2, x) = erfc(sqrt(x))
        assert stats.gamma_q(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-9)


def test_balance_uniform_and_skewed():
    even = stats.balance([2000, 2000, 2000, 2000, 2000])
    assert even["chi2"] == 0 and even["p_value"] == 1.0 and even["max_min_ratio"] == 1.0
    skew = stats.balance([3000, 2000, 2000, 1500, 1500])
    assert skew["chi2"] == pytest.approx(750.0) and skew["df"] == 4 and skew["p_value"] < 1e-100
    assert skew["max_min_ratio"] == 2.0
    assert stats.balance([10, 0])["max_min_ratio"] == math.inf


def test_fit_power_recovers_exponent():
    c, k = stats.fit_power([(100, 0.01 * 100 ** 2), (1000, 0.01 * 1000 ** 2), (5000, 0.01 * 5000 ** 2)])
    assert k == pytest.approx(2.0) and c == pytest.approx(0.01)
    assert stats.fit_power([(100, 1.0)]) is None


# ------------------------------------------------------------------------ restore text

TEXT = """*filter
:KUBE-SERVICES - [0:0]
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
:KUBE-SVC-BBB - [0:0]
:KUBE-SEP-B1 - [0:0]
:KUBE-SEP-OLD - [0:0]
-A KUBE-SERVICES -d 10.96.0.2/32 -j KUBE-SVC-AAA
-A KUBE-SERVICES -d 10.96.0.3/32 -j KUBE-SVC-BBB
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SVC-AAA -m statistic --mode random --probability 0.5 -j KUBE-SEP-A1
-A KUBE-SVC-AAA -j KUBE-SEP-A2
-A KUBE-SEP-A1 -s 10.244.1.1/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A2 -s 10.244.1.2/32 -j KUBE-MARK-MASQ
-A KUBE-SVC-BBB -j KUBE-SEP-B1
-A KUBE-SEP-B1 -s 10.244.1.3/32 -j KUBE-MARK-MASQ
-X KUBE-SEP-OLD
COMMIT
"""


def test_parse():
    filt, nat = parse(TEXT)
    assert filt.name == "filter" and filt.declared == ["KUBE-SERVICES"]
    assert nat.deleted == ["KUBE-SEP-OLD"]
    assert nat.rules["KUBE-SVC-AAA"][1] == "-A KUBE-SVC-AAA -j KUBE-SEP-A2"


def test_with_listing_adds_a_chainless_command_per_table():
    out = with_listing(TEXT).splitlines()
    assert [out[i + 1] for i, line in enumerate(out) if line.startswith("*")] == ["-S", "-S"]
    assert [line for line in out if line != "-S"] == TEXT.splitlines()


# ------------------------------------------------------------------------ wrk, table, plot

WRK = """Running 10s test @ http://10.100.0.2/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.12ms    1.03ms  28.50ms   90.12%
    Req/Sec     3.88k   210.33     4.20k    70.00%
  Latency Distribution
     50%    3.98ms
     75%    4.40ms
     90%    5.01ms
     99%    8.20ms
  38612 requests in 10.00s, 7.10MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
Requests/sec:   3860.41
Transfer/sec:    726.97KB
"""


def test_parse_wrk():
    r = parse_wrk(WRK)
    assert r["requests_per_second"] == 3860.41 and r["requests"] == 38612
    assert r["duration_seconds"] == 10.0
    assert r["latency"]["avg"] == pytest.approx(0.00412) and r["latency"]["p99"] == pytest.approx(0.0082)
    assert r["latency"]["max"] == pytest.approx(0.0285)
    assert r["errors"] == {"connect": 0, "read": 3, "write": 0, "timeout": 0}
    assert parse_wrk(WRK.replace("4.12ms", "900.00us"))["latency"]["avg"] == pytest.approx(0.0009)
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 10.100.0.2:80 Connection refused")


def test_formatting_and_verdicts():
    assert fmt_seconds(None) == "-"
    assert fmt_seconds(0.00123) == "1.23 ms"
    assert fmt_seconds(0.5) == "500 ms"
    assert fmt_seconds(2.5) == "2.50 s"
    assert fmt_seconds(95.12) == "95.1 s"
    assert fmt_ratio(1.234) == "1.23x" and fmt_ratio(None) == "-" and fmt_ratio(math.inf) == "-"
    assert verdict(0.09, 0.1) == "PASS" and verdict(0.11, 0.1) == "FAIL" and verdict(None, 0.1) == "n/a"
    assert verdict(0.95, 0.9, higher_is_better=True) == "PASS"
    assert verdict(0.85, 0.9, higher_is_better=True) == "FAIL"


def test_format_table_aligns_columns():
    text = format_table([("render", [("100 Services", "62 ms", "", "")]),
                         ("change", [("10000: partial sync p99", "3.20 s", "<= 100 ms", "FAIL")])])
    lines = text.splitlines()
    assert lines[0].startswith("measurement") and set(lines[1]) == {"-"}
    assert "== render" in lines and "== change" in lines
    body = [line for line in lines[2:] if not line.startswith("==")]
    assert len({line.index("|") for line in body}) == 1  # the value column lines up
    assert body[-1].endswith("| FAIL")


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"  # 8-bit RGB
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h = size
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w)
    return w, h, raw


def test_png_bytes_round_trip():
    w, h = 3, 2
    px = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    dw, dh, raw = _decode_png(png_bytes(w, h, px))
    assert (dw, dh) == (3, 2)
    assert raw == b"\x00" + px[:9] + b"\x00" + px[9:]
    with pytest.raises(ValueError):
        png_bytes(2, 2, b"\x00" * 3)


def test_charts_draw_something():
    c = Canvas(600, 400)
    line_panel(c, (0, 0, 300, 400), "SYNC", [{"label": "a", "points": [(100, 0.1), (1000, 1.0), (10000, 60, True)]}],
               "SERVICES", "SECONDS")
    bar_panel(c, (300, 0, 300, 400), "PODS", [("10", [("s", 1.5)]), ("100", [("s", 9.0)])], "SECONDS")
    w, h, raw = _decode_png(c.png())
    assert (w, h) == (600, 400)
    assert sum(1 for i in range(0, len(c.px), 3) if c.px[i:i + 3] != b"\xff\xff\xff") > 5000  # not blank


def test_args_smoke_and_skip():
    a = parse_args(["--smoke"])
    assert a.sizes == [100] and a.pods == [10] and a.e2e_sizes == [100]
    b = parse_args(["--sizes", "1000,100", "--skip", "pods,balance"])
    assert b.sizes == [100, 1000] and b.skip == {"pods", "balance"}
    assert parse_args([]).sizes == [100, 1000, 5000, 10000]
    with pytest.raises(SystemExit):
        parse_args(["--skip", "nope"])


def test_repeat_keeps_the_median_and_every_run():
    r = _repeat(None, {"ok": True, "seconds": 5.0})
    r = _repeat(r, {"ok": True, "seconds": 1.0})
    r = _repeat(r, {"ok": True, "seconds": 2.0})
    assert r["seconds"] == 2.0 and [x["seconds"] for x in r["runs"]] == [5.0, 1.0, 2.0]
    first = {"ok": True, "seconds": 4.0, "render": 1.0}  # a result without "runs" yet
    two = _repeat(first, {"ok": True, "seconds": 2.0, "render": 3.0}, keys=("seconds", "render"))
    assert two["seconds"] == 3.0 and two["render"] == 2.0 and len(two["runs"]) == 2
    kept = _repeat(two, {"ok": False, "timed_out": True})
    assert kept["seconds"] == 3.0 and len(kept["runs"]) == 3


def test_proxy_modes_and_the_nftables_rows():
    """Both modes by default, side by side; the nftables rows say full sync / bare nft -f and
    the one-Service change against the 100 ms target at the largest size."""
    from kproxy.bench import nftables
    assert parse_args([]).proxy_modes == {"iptables", "nftables"}
    assert parse_args(["--proxy-modes", "nftables"]).proxy_modes == {"nftables"}
    with pytest.raises(SystemExit):
        parse_args(["--proxy-modes", "ipvs"])
    change = {"summary": {"n": 20, "p50": 0.3, "p99": 0.4}, "nft": {"p50": 0.29}}
    r = {"nft": {100: {"load": 1.0, "full": {"ok": True, "seconds": 0.12, "render": 0.02, "nft": 0.1, "lines": 99},
                       "bare": {"ok": True, "seconds": 0.1}, "hinted_endpoints": {**change, "summary": {
                           "n": 20, "p50": 0.02, "p99": 0.03}}},
                 10000: {"load": 1.0, "full": {"ok": True, "seconds": 20.0, "render": 3, "nft": 17, "lines": 9},
                         "bare": {"ok": True, "seconds": 40.0}, "hinted_endpoints": change,
                         "cache": 0.18, "nocache": 0.002, "check": 0.3, "same_shape": 0.39, "libnftables": 0.16}}}
    (full_title, full), (change_title, rows) = nftables.report_rows(r)
    assert full_title.startswith("2n.") and change_title.startswith("3n.")
    ratios = [row for row in full if "bare nft -f" in row[0]]
    assert [row[1:] for row in ratios] == [("1.20x", "<= 1.2x", "PASS"), ("0.50x", "<= 1.2x", "PASS")]
    targeted = [row for row in rows if row[2]]
    assert len(targeted) == 1 and targeted[0][0].startswith("10000:") and targeted[0][3] == "FAIL"
    assert any("libnftables" in row[0] for row in rows)
    assert nftables.report_rows({}) == []
