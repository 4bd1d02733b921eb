"""MkDocs hook: the guide pages include the README's sections instead of copies that would drift.

A page line ``<!-- readme: Heading -->`` becomes the README section whose ``## `` heading starts with
``Heading`` (``<!-- readme: intro -->``: the text above the first section), headings raised one level so the
section title is the page title. A name matching no section, and a README section that no page includes, are
warnings, so ``mkdocs build --strict`` fails when the README and the site part ways.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.readme")
_INCLUDE = re.compile(r"^<!-- readme: (.+?) -->$", re.M)
_used: set[str] = set()


def _sections(config) -> dict[str, str]:
    text = (Path(config["config_file_path"]).parent / "README.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    sections = {"intro": parts[0].split("\n", 1)[1].strip()}  # without the "# frostline" title line
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        sections[heading.strip()] = f"## {heading}\n{body}".strip()
    return sections


def _raise_headings(text: str) -> str:
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        out.append(line[1:] if not fenced and line.startswith("##") else line)
    return "\n".join(out)


def on_pre_build(config) -> None:
    _used.clear()


def on_page_markdown(markdown: str, page, config, files) -> str:
    sections = _sections(config)

    def include(match: re.Match) -> str:
        wanted = match.group(1)
        found = [h for h in sections if h == wanted or (wanted != "intro" and h.startswith(wanted))]
        if len(found) != 1:
            log.warning(f"{page.file.src_path}: 'readme: {wanted}' matches {len(found)} README sections "
                        f"(there are: {', '.join(sections)})")
            return ""
        _used.add(found[0])
        return _raise_headings(sections[found[0]])

    return _INCLUDE.sub(include, markdown)


def on_post_build(config) -> None:
    left_out = [h for h in _sections(config) if h not in _used]
    if left_out:
        log.warning(f"README sections that no docs page includes: {', '.join(left_out)}; add a page with "
                    "'<!-- readme: <heading> -->' to docs/ and mkdocs.yml")
