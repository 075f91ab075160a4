"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has Python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_demo_runs(capsys):
    from seglosses.__main__ import main

    assert main(["--steps", "3"]) == 0
    assert "foreground Dice" in capsys.readouterr().out
    assert main(["--loss", "nope"]) == 2
