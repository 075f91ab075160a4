"""seglosses compare: a tiny run end to end, its files, resume after a kill, and errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from seglosses.cli import main
from seglosses.compare import Settings, compare, slug

TINY = ["--epochs", "2", "--steps", "2", "--seeds", "2", "--patch", "32", "--width", "4", "--batch-size", "2"]
SETTINGS = Settings(epochs=2, steps_per_epoch=2, batch_size=2, patch=32, width=4)


def test_tiny_run_writes_every_file(tmp_path, capsys):
    out = tmp_path / "out"
    main(["compare", "ce", "dice", *TINY, "--out", str(out)])
    for name in ("results.json", "results.csv", "report.md", "learning_curves.png", "per_class_dice.png",
                 "overlays.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["loss"], r["seed"]) for r in results["runs"]} == {
        ("ce", 0),
        ("ce", 1),
        ("dice", 0),
        ("dice", 1),
    }
    for run in results["runs"]:
        assert len(run["history"]["test_dice"]) == 2 and len(run["per_class"]["dice"]) == 3
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * 2 * 3  # losses × seeds × classes
    assert {"dice", "iou", "boundary_iou", "precision", "recall"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "| `ce` |" in report and "| `dice` |" in report and "**" in report and "± " in report
    assert "mean_dice" in capsys.readouterr().out
    assert not list(out.rglob("*.tmp"))


def test_finished_runs_are_skipped(tmp_path):
    out = tmp_path / "out"
    compare(["ce"], [0], SETTINGS, out)
    result = out / "runs" / slug("ce") / "seed0.json"
    stamp = result.stat().st_mtime_ns
    results, _ = compare(["ce", "dice"], [0], SETTINGS, out)
    assert result.stat().st_mtime_ns == stamp and [r.loss for r in results] == ["ce", "dice"]


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    """Interrupted after its first epoch, a run continues from its checkpoint bit for bit."""
    whole, _ = compare(["focal(gamma=2)"], [0], SETTINGS, tmp_path / "whole")

    def kill(spec, seed, epoch, dice):
        raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        compare(["focal(gamma=2)"], [0], SETTINGS, out, kill)
    folder = out / "runs" / slug("focal(gamma=2)")
    assert (folder / "seed0.ckpt").exists() and not (folder / "seed0.json").exists()
    assert torch.load(folder / "seed0.ckpt", weights_only=True)["epoch"] == 1
    resumed, _ = compare(["focal(gamma=2)"], [0], SETTINGS, out)
    assert resumed[0].per_class == whole[0].per_class
    assert resumed[0].history == whole[0].history


def test_changed_settings_do_not_reuse_results(tmp_path):
    compare(["ce"], [0], SETTINGS, tmp_path)
    longer = Settings(epochs=3, steps_per_epoch=2, batch_size=2, patch=32, width=4)
    results, _ = compare(["ce"], [0], longer, tmp_path)
    assert len(results[0].history["test_dice"]) == 3


def test_slug_stays_inside_the_output_folder():
    for spec in ["../../etc", "ce + 0.5*dice", "focal(gamma=2)", "/abs/path"]:
        name = slug(spec)
        assert "/" not in name and not name.startswith(".")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "focl"], "did you mean 'focal'"),
        (["compare", "binary_dice"], "softmax losses"),
        (["compare", "ce", "--data", "nope"], "folder:PATH"),
        pytest.param(
            ["compare", "ce", "--device", "cuda:7"],
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message"),
        ),
        (["compare", "ce", "--epochs", "0"], "--epochs"),
    ],
)
def test_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
