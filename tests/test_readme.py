"""The Python examples of the README and of the guides (docs/guide/*.md) run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted(page for page in (ROOT / "docs" / "guide").glob("*.md") if page.name != "index.md")
PAGES = [ROOT / "README.md", *GUIDES]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert blocks or page.name == "input_contract.md", f"{page.name} has Python examples"
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})


def test_demo_runs(capsys):
    from seglosses.__main__ import main

    assert main(["--steps", "3"]) == 0
    assert "foreground Dice" in capsys.readouterr().out
    assert main(["--loss", "nope"]) == 2


def test_every_registered_loss_is_in_the_readme_table():
    """The README's table of losses names every registered loss (a new loss adds its row)."""
    import seglosses as sl

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## The losses") : text.index("## Performance")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = set(re.findall(r"`([a-z_0-9]+)`", " ".join(row.split("|")[1] for row in rows)))
    names = set()
    for name in named:  # "(+ binary_)" rows name the softmax form
        names |= {name, f"binary_{name}"}
    missing = [name for name in sl.list_losses() if name not in names]
    assert not missing, f"README's table lacks {missing}"
