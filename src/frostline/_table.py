"""Plain-text tables and human-readable sizes, shared by every report frostline prints.

>>> print(render(["module", "FLOPs", "note"], [["encoder.layer.0.query", "9.44M", "first part, second part"]],
...              width=30))
module      FLOPs  note
----------  -----  -----------
encoder.    9.44M  first part,
  layer.0.         second part
  query
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

WIDTH = 120  # the terminal frostline's reports fit by default; ``width=None`` keeps one line per row


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


def brief(names: Sequence[str], keep: int = 3, *, noun: str | None = None) -> str:
    """The first ``keep`` names and how many more: ``"a, b, c, ... (+5)"``; with a ``noun``, counted first:
    ``"8 parameters (a, b, c, ... (+5))"``.

    >>> brief(["a", "b", "c", "d", "e"]), brief(["a"], noun="parameter")
    ('a, b, c, ... (+2)', '1 parameter (a)')
    """
    extra = f", ... (+{len(names) - keep})" if len(names) > keep else ""
    listed = ", ".join(names[:keep]) + extra
    return listed if noun is None else f"{len(names)} {noun}{'s' if len(names) != 1 else ''} ({listed})"


def paragraph(text: str, width: int | None, indent: str = "") -> str:
    """``text`` wrapped at ``width`` columns (None: as it is), continuation lines indented by ``indent``."""
    if width is None:
        return text
    return "\n".join(textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False) for line in text.split("\n"))


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], *, title: str | None = None,
           footer: Sequence[Sequence[object]] = (), width: int | None = None) -> str:
    """Render rows as an aligned text table; numbers right-aligned, text left-aligned.

    With ``width``, a table wider than that wraps its headers at spaces, then its widest text columns (after
    ``", "``, spaces and dots) until it fits or no column can shrink further; numbers never wrap. Cells may be any
    objects (shown as ``str`` shows them):

    >>> print(render(["n", "name"], [[3, "a"], [12.5, "b"]]))
       n  name
    ----  ----
       3  a
    12.5  b
    """
    cells = [[str(c) for c in row] for row in [headers, *rows, *footer]]
    numeric = [bool(all(_is_number(r[i]) for r in cells[1:]) and (rows or footer)) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if width is not None:
        widths = _fit(cells, numeric, widths, width)

    def lines(row: Sequence[str], header: bool = False) -> list[str]:
        parts = [_wrap(c, w, first=i == 0 and not header) if len(c) > w else [c]
                 for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        if header:  # a wrapped header reads top-down, aligned at the rule
            parts = [[""] * (max(map(len, parts)) - len(p)) + p for p in parts]
        out = []
        for k in range(max(map(len, parts))):
            line = [p[k] if k < len(p) else "" for p in parts]
            out.append("  ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(line, widths, numeric, strict=False)).rstrip())
        return out

    rule = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += [*lines(cells[0], header=True), rule, *(ln for r in cells[1 : 1 + len(rows)] for ln in lines(r))]
    if footer:
        out += [rule, *(ln for r in cells[1 + len(rows) :] for ln in lines(r))]
    return "\n".join(out)


def _tokens(text: str, fine: bool = True) -> list[str]:
    """Where ``text`` may break: after ", " (``fine``: also after a space or a dot); separators stay left."""
    pattern = r"(?<= )|(?<=\.)(?=[^\s\d])" if fine else r"(?<=, )"
    return [t for t in re.split(pattern, text) if t]


def _wrap(text: str, width: int, first: bool = False) -> list[str]:
    """``text`` in lines of at most ``width``, broken between list items where they fit, else at spaces and dots
    (a longer unbreakable token gets a line of its own); continuation lines of the first column are indented,
    so a wrapped name does not read as a new row."""
    indent = "  " if first else ""
    tokens = [t for item in _tokens(text, fine=False)
              for t in (_tokens(item) if len(item.rstrip()) > width - len(indent) else [item])]
    lines, line = [], ""
    for token in tokens:
        if line.strip() and len((line + token).rstrip()) > width:
            lines.append(line.rstrip())
            line = indent + token.lstrip()
        else:
            line += token
    return [*lines, line.rstrip()]


def _fit(cells: list[list[str]], numeric: list[bool], widths: list[int], limit: int) -> list[int]:
    """Column widths for a table of at most ``limit`` columns: headers first, then the widest text column."""
    widths = list(widths)
    header_floor = [max(len(t.strip()) for t in _tokens(h)) for h in cells[0]]
    body = [max((len(r[i]) for r in cells[1:]), default=0) for i in range(len(widths))]
    floor = [max(header_floor[i], body[i] if numeric[i] else
                 max((len(t.strip()) + 2 * (i == 0) for r in cells[1:] for t in _tokens(r[i])), default=0))
             for i in range(len(widths))]
    total = lambda: sum(widths) + 2 * (len(widths) - 1)  # noqa: E731
    # headers wider than their column's values wrap first, those that save the most columns first
    for i in sorted(range(len(widths)), key=lambda i: max(header_floor[i], body[i]) - widths[i]):
        if total() > limit:
            widths[i] = max(header_floor[i], body[i])
    while total() > limit:
        shrinkable = [i for i in range(len(widths)) if not numeric[i] and widths[i] > floor[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: (widths[i], -i))
        widths[widest] -= 1
    return widths


def _is_number(text: str) -> bool:
    text = text.strip().rstrip("%").replace(",", "").rstrip("KMGx").replace(" KiB", "").replace(" MiB", "")
    text = text.replace(" GiB", "").replace(" B", "")
    try:
        float(text)
        return True
    except ValueError:
        return text in ("-", "")
