"""seglosses compare: a tiny run end to end, its files, resume after a kill, and errors."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

from seglosses import SegLossError
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
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
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


@pytest.mark.parametrize(
    "spec", ["focal(gamma=2)", "adaptive_focal + linear(start=1, end=0, steps=1)*dice"]
)
def test_a_killed_run_resumes_to_the_same_result(tmp_path, spec):
    """Interrupted after its first epoch, a run continues from its checkpoint bit for bit (adaptive
    statistics and the schedule's step included)."""
    whole, _ = compare([spec], [0], SETTINGS, tmp_path / "whole")

    def kill(spec, seed, epoch, dice):
        raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        compare([spec], [0], SETTINGS, out, kill)
    folder = out / "runs" / slug(spec)
    assert (folder / "seed0.ckpt").exists() and not (folder / "seed0.json").exists()
    assert torch.load(folder / "seed0.ckpt", weights_only=True)["epoch"] == 1
    resumed, _ = compare([spec], [0], SETTINGS, out)
    assert resumed[0].per_class == whole[0].per_class
    assert resumed[0].history == whole[0].history


def _wait_for(condition, process, log, what, timeout=120.0):
    """Poll until ``condition()``; fail (never hang) on a timeout or when ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended (exit {process.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)


def _temporary_files(out):
    """Leftovers of write_atomically (``.<name>.<random>.tmp`` beside the file)."""
    return {path for path in out.rglob("*") if path.name.endswith(".tmp")}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkilled_cli_resumes_to_the_uninterrupted_result(tmp_path):
    """The real command, SIGKILLed twice (after its first checkpoint, then after its first result file),
    finishes on the third start with the files and results of an uninterrupted run."""
    specs, epochs = ["ce", "dice"], 3
    argv = ["--epochs", str(epochs), "--steps", "2", "--seeds", "1", "--patch", "32", "--width", "4",
            "--batch-size", "2"]  # fmt: skip
    settings = Settings(epochs=epochs, steps_per_epoch=2, batch_size=2, patch=32, width=4)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seglosses.cli", "compare", *specs, *argv, "--out", str(out)]
    folders = {spec: out / "runs" / slug(spec) for spec in specs}
    first_checkpoint, first_result = folders["ce"] / "seed0.ckpt", folders["ce"] / "seed0.json"
    orphans = set()  # a kill in the middle of an atomic write may leave its temporary file, nothing else

    def start(log):
        with log.open("wb") as stream:  # the child keeps its own handle
            return subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=stream,
                                    stderr=subprocess.STDOUT)  # fmt: skip

    def kill_when(condition, what, log):
        process = start(log)
        try:
            _wait_for(condition, process, log, what)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
        orphans.update(_temporary_files(out))

    # 1. killed during the first run, after its first epoch: a readable checkpoint, no result yet
    kill_when(first_checkpoint.exists, "first checkpoint", tmp_path / "kill1.log")
    state = torch.load(first_checkpoint, weights_only=True)
    assert 1 <= state["epoch"] < epochs and len(state["history"]["test_dice"]) == state["epoch"]
    killed_history = {name: list(values) for name, values in state["history"].items()}
    assert not first_result.exists() and not (out / "results.json").exists()

    # 2. started again and killed once the first run has finished (somewhere in the second run)
    kill_when(first_result.exists, "first result file", tmp_path / "kill2.log")
    kept = first_result.read_bytes()
    assert json.loads(kept)["history"]["test_dice"] and not (out / "results.json").exists()
    stamp = first_result.stat().st_mtime_ns

    # 3. started again: runs to the end, without retraining the finished run
    log = tmp_path / "final.log"
    process = start(log)
    try:
        assert process.wait(timeout=300) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert first_result.read_bytes() == kept and first_result.stat().st_mtime_ns == stamp

    expected = {out / name for name in ("results.json", "results.csv", "report.md", "learning_curves.png",
                                        "per_class_dice.png", "overlays.png")}  # fmt: skip
    for folder in folders.values():
        expected |= {folder / "seed0.ckpt", folder / "seed0.json", folder / "seed0_prediction.npy"}
    files = {path for path in out.rglob("*") if path.is_file()}
    assert files - orphans == expected
    assert _temporary_files(out) <= orphans  # the resumed command's own writes leave none
    for name in ("learning_curves.png", "per_class_dice.png", "overlays.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(list(csv.DictReader((out / "results.csv").read_text().splitlines()))) == len(specs) * 3
    assert "| `ce` |" in (out / "report.md").read_text() and "| `dice` |" in (out / "report.md").read_text()
    for folder in folders.values():
        assert torch.load(folder / "seed0.ckpt", weights_only=True)["epoch"] == epochs

    # the same results as an uninterrupted run with the same settings (training is deterministic on CPU)
    results = json.loads((out / "results.json").read_text())
    assert results["settings"] == asdict(settings)
    assert [(run["loss"], run["seed"]) for run in results["runs"]] == [(spec, 0) for spec in specs]
    whole, _ = compare(specs, [0], settings, tmp_path / "whole")
    for run, reference in zip(results["runs"], whole):
        assert run["per_class"] == reference.per_class, run["loss"]
        assert run["history"] == reference.history, run["loss"]
        assert len(run["history"]["test_dice"]) == epochs
        prediction = np.load(folders[run["loss"]] / "seed0_prediction.npy")
        assert np.array_equal(prediction, np.load(tmp_path / "whole" / "runs" / slug(run["loss"]) /
                                                  "seed0_prediction.npy"))  # fmt: skip
    assert {name: values[: len(killed_history[name])] for name, values in whole[0].history.items()} == (
        killed_history
    )  # the first kill's checkpoint held the first epochs of the uninterrupted run


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


def test_volumes_train_a_3d_network_and_report(tmp_path):
    """3-D pairs: 3-D patches, a 3-D U-Net, HD95 per class and a middle-slice overlay."""
    from seglosses.compare import random_patches
    from seglosses.report import write_report

    g = torch.Generator().manual_seed(0)
    volume = torch.rand(1, 10, 12, 14, generator=g)
    labels = (volume[0] > 0.5).long()
    images, patches = random_patches([(volume, labels)], 3, 8, g)
    assert images.shape == (3, 1, 8, 8, 8) and patches.shape == (3, 8, 8, 8)
    splits = {"train": [(volume, labels)], "test": [(volume, labels)]}
    settings = Settings(epochs=1, steps_per_epoch=1, batch_size=2, patch=8, width=4, depth=2)
    results, _ = compare(["ce"], [0], settings, tmp_path, splits=splits)
    assert len(results[0].per_class["hd95"]) == 2 and all(v >= 0 for v in results[0].per_class["hd95"])
    write_report(results, settings, tmp_path, splits["test"][0])
    assert (tmp_path / "overlays.png").stat().st_size > 0
    assert "hd95" in (tmp_path / "report.md").read_text()


def test_stale_temporary_files_are_removed(tmp_path):
    """A temporary file left by a write that a SIGKILL interrupted is deleted at the next start."""
    stale = tmp_path / "runs" / "ce-abc" / ".seed0.json.x1y2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    compare(["ce"], [0], SETTINGS, tmp_path)
    assert not stale.exists() and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    """--nproc 2 (DDP, gloo, the batch split in two): the same test metrics as one process and the
    training losses within float rounding; the report is written once."""
    options = ["ce", "dice", "--epochs", "2", "--steps", "2", "--seeds", "1", "--patch", "32", "--width", "4",
               "--batch-size", "4"]  # fmt: skip
    main(["compare", *options, "--out", str(tmp_path / "one")])
    main(["compare", *options, "--nproc", "2", "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / name / "results.json").read_text())["runs"] for name in ("one", "two"))
    for a, b in zip(one, two):
        assert a["per_class"] == b["per_class"] and a["history"]["test_dice"] == b["history"]["test_dice"]
        np.testing.assert_allclose(a["history"]["train_loss"], b["history"]["train_loss"], rtol=1e-6)
    assert (tmp_path / "two" / "report.md").exists()


def test_nproc_must_divide_the_batch(tmp_path):
    settings = Settings(epochs=1, steps_per_epoch=1, batch_size=3, patch=32, width=4, nproc=2)
    with pytest.raises(SegLossError, match="divisible"):
        compare(["ce"], [0], settings, tmp_path)
