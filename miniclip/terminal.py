"""What a person sees on the terminal: the one progress bar (downloads, index builds, embedding many files),
plain-text tables, human-readable sizes, file names with their control characters escaped."""

from __future__ import annotations

import sys
import time
import unicodedata
from collections.abc import Sequence
from typing import IO


def format_size(n: float) -> str:
    """Bytes in decimal units, as the hub shows them ("605 MB", "1.71 GB")."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e7:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} kB"
    return f"{n:.0f} B"


def display_width(text: str) -> int:
    """Columns `text` takes on a terminal: wide (CJK, most emoji) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` (a file name, a query) safe to print on a terminal or draw on an image: control characters
    (`\\r`, `\\n`, the ESC of escape sequences `\\x1b`), line and paragraph separators and invisible format
    characters (right-to-left overrides `\\u202e`) are shown escaped, and a byte of a file name that was not
    valid UTF-8 (which Python keeps as a lone surrogate, PEP 383 "surrogateescape") as `\\xe9`. Letters of
    every script, emoji (with their zero-width joiners) and spaces are unchanged."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        category = unicodedata.category(c)
        if category not in ("Cc", "Cs", "Cf", "Zl", "Zp") or c == "\u200d":
            out.append(c)
        elif c in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[c])
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # surrogateescape's stand-in for the byte ord(c) - 0xDC00
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


def ljust(text: str, width: int) -> str:
    """str.ljust by display columns, so that columns of CJK or emoji text line up."""
    return text + " " * max(0, width - display_width(text))


def text_table(rows: Sequence[Sequence[str]], rule: bool = True) -> str:
    """Rows of strings as aligned columns, two spaces apart; `rule` draws dashes under the first (header) row."""
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(ljust(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Progress:
    """`label  [#####...............]   25%  25 MB / 100 MB  12 MB/s  ETA 0:06` (unit="bytes") or
    `label  [#####...............]   25%  8/32  3.1 img/s  ETA 0:08` (unit="img", any name) on one line,
    redrawn at most ten times a second. Drawn only when `enabled`, which by default is whether the stream
    (stderr) is a terminal: nothing reaches logs or pipes."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "bytes", enabled: bool | None = None,
                 stream: IO[str] | None = None, clock=time.monotonic):
        self.label, self.unit, self.clock = label, unit, clock
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.width = 0
        self.start(0, total, draw=False)

    def start(self, done: int, total: int | None, *, draw: bool = True) -> None:
        """(Re)start the clock with `done` of `total` already there (a resumed download)."""
        self.done = self.first = done
        self.total = total
        self.t0 = self.last = self.clock()
        if draw:
            self._draw()

    def update(self, n: int) -> None:
        self.done += n
        if self.clock() - self.last >= 0.1 or self.done == self.total:
            self._draw()

    def finish(self, note: str = "") -> None:
        if self.enabled and (self.width or note or self.done):
            self._draw(note)
            self.stream.write("\n")
            self.stream.flush()

    def _count(self, n: float) -> str:
        return format_size(n) if self.unit == "bytes" else f"{n:.0f}"

    def _draw(self, note: str = "") -> None:
        if not self.enabled:
            return
        self.last = now = self.clock()
        rate = (self.done - self.first) / max(now - self.t0, 1e-6)
        parts = [self.label]
        if self.total:
            frac = min(self.done / self.total, 1.0)
            parts += ["[" + "#" * round(20 * frac) + "." * (20 - round(20 * frac)) + "]", f"{100 * frac:3.0f}%",
                      f"{self._count(self.done)} / {self._count(self.total)}" if self.unit == "bytes"
                      else f"{self.done}/{self.total}"]
        else:
            parts.append(self._count(self.done))
        if now - self.t0 > 0 and self.done > self.first:
            parts.append(f"{format_size(rate)}/s" if self.unit == "bytes" else f"{rate:.1f} {self.unit}/s")
            if self.total and rate > 0 and not note:
                eta = round((self.total - self.done) / rate)
                parts.append(f"ETA {eta // 60}:{eta % 60:02d}")
        if note:
            parts.append(note)
        line = "  ".join(parts)
        self.stream.write("\r" + line.ljust(self.width))  # pad: a shorter line must cover the last one
        self.stream.flush()
        self.width = len(line)
