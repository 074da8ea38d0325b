"""The README's hsicib.hsic example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _hsic_section() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- section:hsic -->(.*?)<!-- /section:hsic -->", text, flags=re.S
    )
    assert match, "README.md has no hsic section markers"
    return match.group(1)


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", _hsic_section(), flags=re.S)
    assert blocks, "the hsic section has no python code block"
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README) + ":hsic-example", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "nHSIC(X;T)" in printed
    assert all(name in namespace for name in ("stats", "grads"))
