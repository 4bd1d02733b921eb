"""The README's self-contained example runs and prints the table the README shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_prints_what_the_readme_shows() -> None:
    text = README.read_text()
    example = text.index("## Example")
    code, shown = re.search(r"```python\n(.*?)```\s*```\n(.*?)```", text[example:], re.S).groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert printed.getvalue().strip() == shown.strip()
