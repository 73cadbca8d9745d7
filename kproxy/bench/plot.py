"""A tiny PNG plotter (zlib + struct, no matplotlib): line charts on log axes and bar charts,
with a built-in 5x7 pixel font. Enough for the benchmark's one figure.
"""
from __future__ import annotations

import math
import struct
import zlib

_FONT = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "-": (0, 0, 0, 0x1F, 0, 0, 0), "_": (0, 0, 0, 0, 0, 0, 0x1F), "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0), "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08), "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0), "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08), "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "*": (0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0), "^": (0x04, 0x0A, 0x11, 0, 0, 0, 0),
    "|": (0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04), "'": (0x04, 0x04, 0x08, 0, 0, 0, 0),
    ";": (0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08), "!": (0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04), "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (120, 120, 120), (225, 225, 225)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207)]


def png_bytes(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` (width*height*3 bytes, rows top to bottom)."""
    if len(rgb) != width * height * 3:
        raise ValueError("pixel buffer does not match the size")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride:(y + 1) * stride]) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class Canvas:
    def __init__(self, width: int, height: int, bg=WHITE):
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        x0, x1 = sorted((max(0, int(x0)), min(self.w - 1, int(x1))))
        y0, y1 = sorted((max(0, int(y0)), min(self.h - 1, int(y1))))
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(y0, y1 + 1):
            i = (y * self.w + x0) * 3
            self.px[i:i + len(row)] = row

    def line(self, x0: float, y0: float, x1: float, y1: float, color, width: int = 1) -> None:
        x0, y0, x1, y1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        r = width // 2
        while True:
            if r:
                self.rect(x0 - r, y0 - r, x0 + r, y0 + r, color)
            else:
                self.set(x0, y0, color)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: float, y: float, s: str, color=BLACK, scale: int = 2, anchor: str = "left") -> None:
        """Draw ``s`` with its top at y; anchor left, center or right at x."""
        width = text_width(s, scale)
        x = int(x - (width if anchor == "right" else width // 2 if anchor == "center" else 0))
        for ch in s:
            glyph = _FONT.get(ch.upper(), _FONT["?"])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (0x10 >> col):
                        self.rect(x + col * scale, int(y) + row * scale, x + col * scale + scale - 1,
                                  int(y) + row * scale + scale - 1, color)
            x += 6 * scale

    def png(self) -> bytes:
        return png_bytes(self.w, self.h, self.px)


def text_width(s: str, scale: int = 2) -> int:
    return max(0, len(s) * 6 * scale - scale)


def si(v: float) -> str:
    """Short tick label: 0.001, 0.1, 1, 10, 1K, 10K."""
    if v >= 1000:
        return f"{v / 1000:g}K"
    return f"{v:g}"


def _log_range(values: list[float]) -> tuple[float, float]:
    lo = min(values)
    hi = max(values)
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    return float(a), float(b)


def line_panel(c: Canvas, box: tuple[int, int, int, int], title: str, series: list[dict], xlabel: str,
               ylabel: str) -> None:
    """Log-log lines. Each series: {label, points: [(x, y, lower_bound)]}; a lower-bound point
    (a measurement that hit its time limit) is drawn as a hollow triangle."""
    x0, y0, w, h = box
    c.text(x0 + w // 2, y0, title, scale=2, anchor="center")
    px0, py0, pw, ph = x0 + 70, y0 + 30, w - 90, h - 30 - 60 - 16 * ((len(series) + 1) // 2)
    pts = [(x, y) for s in series for x, y, *_ in s["points"] if x > 0 and y > 0]
    if not pts:
        c.text(x0 + w // 2, y0 + h // 2, "no data", color=GREY, anchor="center")
        return
    lx = _log_range([p[0] for p in pts])
    ly = _log_range([p[1] for p in pts])

    def X(v):
        return px0 + (math.log10(v) - lx[0]) / (lx[1] - lx[0]) * pw

    def Y(v):
        return py0 + ph - (math.log10(v) - ly[0]) / (ly[1] - ly[0]) * ph

    for e in range(int(ly[0]), int(ly[1]) + 1):
        c.line(px0, Y(10 ** e), px0 + pw, Y(10 ** e), LIGHT)
        c.text(px0 - 6, Y(10 ** e) - 7, si(10 ** e), color=GREY, anchor="right")
    for e in range(int(lx[0]), int(lx[1]) + 1):
        c.line(X(10 ** e), py0, X(10 ** e), py0 + ph, LIGHT)
        c.text(X(10 ** e), py0 + ph + 6, si(10 ** e), color=GREY, anchor="center")
    c.line(px0, py0 + ph, px0 + pw, py0 + ph, BLACK)
    c.line(px0, py0, px0, py0 + ph, BLACK)
    c.text(px0 + pw // 2, py0 + ph + 26, xlabel, anchor="center")
    c.text(x0, y0 + 18, ylabel, color=GREY, scale=1)
    for k, s in enumerate(series):
        color = s.get("color") or PALETTE[k % len(PALETTE)]
        good = [(X(x), Y(y), lb) for x, y, *rest in s["points"] if x > 0 and y > 0 for lb in [bool(rest and rest[0])]]
        for a, b in zip(good, good[1:]):
            c.line(a[0], a[1], b[0], b[1], color, width=3 if not (a[2] or b[2]) else 1)
        for x, y, lb in good:
            if lb:
                c.line(x - 6, y + 5, x, y - 6, color, 2)
                c.line(x, y - 6, x + 6, y + 5, color, 2)
                c.line(x - 6, y + 5, x + 6, y + 5, color, 2)
            else:
                c.rect(x - 3, y - 3, x + 3, y + 3, color)
        lx_, ly_ = x0 + 10 + (k % 2) * (w // 2), py0 + ph + 48 + (k // 2) * 16
        c.rect(lx_, ly_ + 3, lx_ + 14, ly_ + 7, color)
        c.text(lx_ + 20, ly_, s["label"], scale=1)


def bar_panel(c: Canvas, box: tuple[int, int, int, int], title: str, groups: list[tuple[str, list[tuple[str, float]]]],
              ylabel: str, note: str = "") -> None:
    """Grouped bars on a linear axis; groups = [(group label, [(bar label, value)])]."""
    x0, y0, w, h = box
    c.text(x0 + w // 2, y0, title, scale=2, anchor="center")
    values = [v for _, bars in groups for _, v in bars if v is not None]
    px0, py0, pw, ph = x0 + 70, y0 + 30, w - 90, h - 30 - 70
    if not values:
        c.text(x0 + w // 2, y0 + h // 2, "no data", color=GREY, anchor="center")
        return
    top = max(values) or 1.0
    mag = 10 ** math.floor(math.log10(top))
    step = next(s * mag for s in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10) if top / (s * mag) <= 6)
    top = step * math.ceil(top / step)

    def Y(v):
        return py0 + ph - v / top * ph

    v = 0.0
    while v <= top + 1e-9:
        c.line(px0, Y(v), px0 + pw, Y(v), LIGHT)
        c.text(px0 - 6, Y(v) - 7, f"{v:g}", color=GREY, anchor="right")
        v += step
    c.line(px0, py0 + ph, px0 + pw, py0 + ph, BLACK)
    c.line(px0, py0, px0, py0 + ph, BLACK)
    c.text(x0, y0 + 18, ylabel, color=GREY, scale=1)
    labels = []
    for _, bars in groups:
        for name, _ in bars:
            if name not in labels:
                labels.append(name)
    gw = pw / max(1, len(groups))
    for g, (gname, bars) in enumerate(groups):
        bw = gw * 0.8 / max(1, len(bars))
        for b, (name, val) in enumerate(bars):
            if val is None:
                continue
            color = PALETTE[labels.index(name) % len(PALETTE)]
            bx = px0 + g * gw + gw * 0.1 + b * bw
            c.rect(bx + 1, Y(val), bx + bw - 2, py0 + ph - 1, color)
            c.text(bx + bw / 2, Y(val) - 12, f"{val:.0f}" if val >= 100 else f"{val:.3g}", scale=1, anchor="center")
        c.text(px0 + g * gw + gw / 2, py0 + ph + 6, gname, scale=1 if text_width(gname, 2) > gw else 2,
               anchor="center")
    if len(labels) > 1:
        for k, name in enumerate(labels):
            lx_, ly_ = x0 + 10 + (k % 3) * (w // 3), py0 + ph + 30 + (k // 3) * 14
            c.rect(lx_, ly_ + 2, lx_ + 12, ly_ + 6, PALETTE[k % len(PALETTE)])
            c.text(lx_ + 18, ly_, name, scale=1)
    if note:
        c.text(x0 + 10, y0 + h - 12, note, color=GREY, scale=1)
