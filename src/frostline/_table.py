"""Plain-text tables and human-readable sizes, shared by every report frostline prints."""

from __future__ import annotations

from typing import Sequence


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None,
           footer: Sequence[Sequence[object]] = ()) -> str:
    """Render rows as an aligned text table; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows, *footer]]
    numeric = [all(_is_number(r[i]) for r in [*rows, *footer]) and (rows or footer) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += [line(cells[0]), rule, *(line(r) for r in cells[1 : 1 + len(rows)])]
    if footer:
        out += [rule, *(line(r) for r in cells[1 + len(rows) :])]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    text = text.strip().rstrip("%").replace(",", "").rstrip("KMGx").replace(" KiB", "").replace(" MiB", "")
    text = text.replace(" GiB", "").replace(" B", "")
    try:
        float(text)
        return True
    except ValueError:
        return text in ("-", "")
