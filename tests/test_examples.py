"""The gallery's examples (examples/plot_*.py).

Each example runs when the documentation site is built (sphinx-gallery, configured in docs/conf.py), so
a failing one fails that build. These tests check what the site cannot: that every script is a page the
gallery runs, and what two pages claim beyond running (a resumed run equals an uninterrupted one; the
distributed page's numbers on two real processes).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(command, cwd):
    """stdout of ``command`` run with matplotlib drawing into files (no display)."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_a_page_the_gallery_runs():
    assert len(EXAMPLES) >= 5
    for path in EXAMPLES:
        # sphinx-gallery's filename_pattern (docs/conf.py) runs plot_*.py; other files would be shown unrun
        assert re.fullmatch(r"plot_\d+_\w+\.py", path.name), path.name
        text = path.read_text(encoding="utf-8")
        lines = (ast.get_docstring(ast.parse(text), clean=False) or "").strip("\n").splitlines()
        assert len(lines) > 3 and lines[1] == "=" * len(lines[0]), f"{path.name}: a title, underlined"
        assert "manual_seed(" in text or "default_rng(" in text, f"{path.name}: seeds its random numbers"


def test_checkpoint_example_resumes_exactly(tmp_path):
    out = run([sys.executable, str(ROOT / "examples" / "plot_2_adaptive_checkpoint.py")], tmp_path)
    assert "B equals A: losses True | final loss state True" in out
    assert "C equals A: losses False | final loss state False" in out


@pytest.mark.slow
def test_distributed_example_on_two_processes(tmp_path):
    """The page says: saved as a script and started by torchrun on two processes, each process computes
    the loss and the metric of the whole batch with sync, and its own shard's value without."""
    script = ROOT / "examples" / "plot_4_distributed.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = run([*command, str(script)], tmp_path)  # the two processes' lines may run together
    number, numbers = r"(\d+\.\d+)", r"(\[[\d., ]+\])"
    for rank in (0, 1):
        whole = re.search(rf"process {rank}: batch Dice loss of the whole batch {number}", out)
        shard = re.search(rf"process {rank}: of its own shard {number}, with sync=True {number}", out)
        dice = re.search(rf"process {rank}: Dice per class {numbers}, of the whole batch {numbers}", out)
        assert whole and shard and dice, out
        assert shard.group(2) == whole.group(1), out
        assert shard.group(1) != whole.group(1), out
        assert dice.group(1) == dice.group(2), out
