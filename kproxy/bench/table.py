"""The benchmark's text table: sections of rows (what, value, target, verdict)."""
from __future__ import annotations

import math


def fmt_seconds(s: float | None) -> str:
    """1.2 ms, 340 ms, 2.50 s, 95.1 s; None as '-'."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.2f} s"
    return f"{s:.1f} s"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or math.isinf(r) or math.isnan(r) else f"{r:.2f}x"


def verdict(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    """PASS / FAIL against a limit; n/a when nothing was measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    ok = value >= limit if higher_is_better else value <= limit
    return "PASS" if ok else "FAIL"


def format_table(sections: list[tuple[str, list[tuple[str, str, str, str]]]]) -> str:
    """Sections [(title, [(what, value, target, verdict)])] as an aligned text table."""
    headers = ("measurement", "value", "target", "")
    rows = [r for _, rs in sections for r in rs]
    widths = [max([len(headers[i])] + [len(str(r[i])) for r in rows]) for i in range(4)]
    total = sum(widths) + 3 * 3

    def line(cells) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(headers), "-" * total]
    for title, rs in sections:
        out.append(f"== {title}")
        out += [line(r) for r in rs]
    return "\n".join(out) + "\n"
