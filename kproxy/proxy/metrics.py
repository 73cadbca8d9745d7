"""kube-proxy's Prometheus metrics, by the same names, in the text exposition format.

Small on purpose: counters, gauges and histograms with labels are all kube-proxy's sync metrics
need, and the text format is a page of code; no client library to install.
"""
from __future__ import annotations

import bisect
import threading


def exponential_buckets(start: float, factor: float, count: int) -> list[float]:
    return [start * factor ** i for i in range(count)]


def linear_buckets(start: float, width: float, count: int) -> list[float]:
    return [start + width * i for i in range(count)]


def _fmt(v: float) -> str:
    """Numbers as Prometheus' Go client prints them: 1, 0.25, 1e-06."""
    if v == float("inf"):
        return "+Inf"
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.values: dict[tuple, float] = {} if self.label_names else {(): 0.0}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self.values[labels] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: list[float], labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self.buckets = sorted(buckets)
        self.series: dict[tuple, list] = {}   # labels -> [bucket counts, sum, count]

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, total, n = self.series.get(labels) or ([0] * len(self.buckets), 0.0, 0)
            i = bisect.bisect_left(self.buckets, value)
            if i < len(counts):
                counts[i] += 1
            self.series[labels] = [counts, total + value, n + 1]

    def lines(self) -> list[str]:
        out = []
        for key, (counts, total, n) in sorted(self.series.items()):
            running = 0
            for le, c in zip(self.buckets, counts):
                running += c
                le_label = 'le="%s"' % _fmt(le)
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le_label)} {running}")
            inf_label = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, inf_label)} {n}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_fmt(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {n}")
        return out


class Registry:
    def __init__(self):
        self.metrics: list[_Metric] = []
        self.hidden: set[str] = set()  # families not exported (the other proxy mode's)

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def exposition(self) -> str:
        out = []
        for m in self.metrics:
            if m.name not in self.hidden:
                out += m.header() + m.lines()
        return "\n".join(out) + "\n"


SYNC_BUCKETS = exponential_buckets(0.001, 2, 15)
PROGRAMMING_BUCKETS = (linear_buckets(0.25, 0.25, 2) + linear_buckets(1, 1, 59)
                       + linear_buckets(60, 5, 12) + linear_buckets(120, 30, 7))


class ProxyMetrics:
    """The kube-proxy metrics kproxy has a counterpart for (names from pkg/proxy/metrics)."""

    def __init__(self):
        r = self.registry = Registry()
        self.sync_duration = r.add(Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", SYNC_BUCKETS))
        self.sync_full_duration = r.add(Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs",
            SYNC_BUCKETS))
        self.sync_partial_duration = r.add(Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs", SYNC_BUCKETS))
        self.last_sync = r.add(Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"))
        self.last_queued = r.add(Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued"))
        self.programming = r.add(Histogram(
            "kubeproxy_network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
            PROGRAMMING_BUCKETS))
        self.rules = r.add(Gauge(
            "kubeproxy_sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
            labels=("table",)))
        self.restore_failures = r.add(Counter(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            "Cumulative proxy iptables restore failures"))
        self.partial_restore_failures = r.add(Counter(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            "Cumulative proxy iptables partial restore failures"))
        # nftables mode's own (upstream exports these instead of the iptables_* ones there)
        self.nft_sync_failures = r.add(Counter(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures"))
        self.nft_cleanup_failures = r.add(Counter(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
            "Cumulative proxy nftables cleanup failures"))
        self.service_changes = r.add(Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"))
        self.endpoint_changes = r.add(Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"))
        self.dns_queries = r.add(Counter(
            "kproxy_dns_queries_total", "DNS queries answered by the cluster DNS, by response code",
            labels=("rcode",)))
        self.set_mode("iptables")


    IPTABLES_ONLY = ("kubeproxy_sync_proxy_rules_iptables_total",
                     "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                     "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total")
    NFTABLES_ONLY = ("kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                     "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total")

    def set_mode(self, mode: str) -> None:
        """Export the families of one proxy mode, as kube-proxy does (its nftables mode has no
        iptables_* counters, its iptables mode no nftables_* ones)."""
        self.registry.hidden = set(self.IPTABLES_ONLY if mode == "nftables" else self.NFTABLES_ONLY)


def count_rules(text: str) -> dict[str, int]:
    """`-A` lines per table of a restore text."""
    counts: dict[str, int] = {}
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            counts.setdefault(table, 0)
        elif line.startswith("-A ") and table:
            counts[table] += 1
    return counts
