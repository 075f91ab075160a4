"""seglosses compare: a tiny run end to end, its files and verdict, resume, safe output, data and devices."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from seglosses import SegLossError
from seglosses.cli import main
from seglosses.compare import Settings, compare, slug
from seglosses.compare.report import REPORT_FILES
from seglosses.compare.training import Patches, image_stats, patch_size
from seglosses.data import IGNORE, load_data
from seglosses.models import sliding_window_inference

TINY = ["--epochs", "2", "--steps", "2", "--seeds", "2", "--patch", "32", "--width", "4", "--batch-size", "2"]
SETTINGS = Settings(epochs=2, steps_per_epoch=2, batch_size=2, patch=32, width=4)


@pytest.fixture(scope="module")
def nuclei():
    return load_data("nuclei")


def write_folder(root, masks, seed=0):
    g = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k, mask in enumerate(masks):
        Image.fromarray(g.integers(0, 256, mask.shape, dtype=np.uint8)).save(root / "images" / f"img{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{k}.png")
    return root


def blobs(count=5, size=24, value=1, seed=0):
    """Masks with one square of ``value`` each (0 elsewhere)."""
    g = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        mask = np.zeros((size, size), dtype=np.uint8)
        r, c = g.integers(2, size - 10, 2)
        mask[r : r + 8, c : c + 8] = value
        masks.append(mask)
    return masks


def test_tiny_run_writes_every_file_and_a_verdict(tmp_path, capsys):
    out = tmp_path / "out"
    main(["compare", "ce", "dice", *TINY, "--out", str(out)])
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["loss"], r["seed"]) for r in results["runs"]} == {
        ("ce", 0),
        ("ce", 1),
        ("dice", 0),
        ("dice", 1),
    }
    assert results["classes"] == ["background", "nucleus", "nucleus boundary"]
    assert results["scored"] == ["nucleus", "nucleus boundary"] and results["verdict"]
    for run in results["runs"]:
        assert len(run["history"]["test_dice"]) == 2 and len(run["stats"]["tp"]) == 4  # four test tiles
        assert set(run["per_class"]) == {"dice", "iou", "boundary_iou", "hd95", "precision", "recall"}
    interval = results["summary"]["ce"]["dice"]["interval"]
    assert interval[0] <= results["summary"]["ce"]["dice"]["value"] <= interval[1]
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 2 * 2 and {"mean_dice", "dice[nucleus boundary]", "hd95[nucleus]"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Results") < report.index("## Settings")
    assert "nucleus boundary" in report and "| `ce` |" in report and "trained now" in report
    assert "**" not in report.split("## Results")[1].split("## Per seed")[0]  # 2 seeds: no claims
    printed = capsys.readouterr().out
    assert "use --seeds 3 or more" in printed and "report:" in printed and "| loss |" not in printed
    assert not [p for p in out.rglob("*") if p.name.endswith(".seglosses-tmp")]


def test_finished_runs_are_reused_and_the_report_says_so(tmp_path, nuclei):
    out = tmp_path / "out"
    compare(["ce"], [0], SETTINGS, nuclei, out)
    result = out / "runs" / slug("ce") / "seed0.json"
    stamp = result.stat().st_mtime_ns
    results = compare(["ce", "dice"], [0], SETTINGS, nuclei, out)
    assert result.stat().st_mtime_ns == stamp and [(r.loss, r.reused) for r in results] == [
        ("ce", True),
        ("dice", False),
    ]


@pytest.mark.parametrize("spec", ["focal(gamma=2)", "adaptive_focal + linear(start=1, end=0, steps=1)*dice"])
def test_a_killed_run_resumes_to_the_same_result(tmp_path, nuclei, spec):
    """Interrupted after its first epoch, a run continues from its checkpoint bit for bit (adaptive
    statistics, the schedule's step and the patch sequence included)."""
    whole = compare([spec], [0], SETTINGS, nuclei, tmp_path / "whole")

    def kill(spec, seed, epoch, dice):
        raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        compare([spec], [0], SETTINGS, nuclei, out, kill)
    folder = out / "runs" / slug(spec)
    assert (folder / "seed0.ckpt").exists() and not (folder / "seed0.json").exists()
    assert torch.load(folder / "seed0.ckpt", weights_only=True)["epoch"] == 1
    resumed = compare([spec], [0], SETTINGS, nuclei, out)
    assert resumed[0].stats == whole[0].stats and resumed[0].history == whole[0].history


def test_changed_data_retrains(tmp_path):
    """The run key holds a fingerprint of the files: a changed mask retrains instead of reusing."""
    root = write_folder(tmp_path / "data", blobs())
    out = tmp_path / "out"
    first = compare(["ce"], [0], SETTINGS, load_data(f"folder:{root}"), out)
    again = compare(["ce"], [0], SETTINGS, load_data(f"folder:{root}"), out)
    assert again[0].reused and again[0].stats == first[0].stats
    mask = np.array(Image.open(root / "masks" / "img2.png"))
    mask[:3, :3] = 1
    Image.fromarray(mask).save(root / "masks" / "img2.png")
    os.utime(root / "masks" / "img2.png", ns=(10**9, 10**9))
    changed = compare(["ce"], [0], SETTINGS, load_data(f"folder:{root}"), out)
    assert not changed[0].reused


def test_a_checkpoint_of_other_settings_is_retrained(tmp_path, nuclei):
    """A leftover checkpoint of another class count (the same loss folder) starts afresh, no traceback."""
    out = tmp_path / "out"
    two = load_data("nuclei:2")
    with pytest.raises(KeyboardInterrupt):
        compare(["ce"], [0], SETTINGS, two, out, lambda *event: (_ for _ in ()).throw(KeyboardInterrupt))
    results = compare(["ce"], [0], SETTINGS, nuclei, out)
    assert len(results[0].stats["tp"][0]) == 3 and len(results[0].history["test_dice"]) == 2
    state = torch.load(out / "runs" / slug("ce") / "seed0.ckpt", weights_only=True)
    state["settings"] = Settings(epochs=2, steps_per_epoch=2, batch_size=2, patch=32, width=4).key(
        nuclei, "ce"
    )
    state["model"] = {"nonsense": torch.zeros(1)}  # the same key, a model that does not fit
    torch.save(state, out / "runs" / slug("ce") / "seed0.ckpt")
    (out / "runs" / slug("ce") / "seed0.json").unlink()
    assert len(compare(["ce"], [0], SETTINGS, nuclei, out)[0].history["test_dice"]) == 2


def test_files_it_did_not_write_are_never_touched(tmp_path, nuclei):
    """A user's own temporary file stays; a report file it did not write stops the run before training;
    a runs/ folder without the manifest is someone else's."""
    out = tmp_path / "out"
    out.mkdir()
    draft = out / ".draft.tmp"
    draft.write_text("mine")
    nested = out / "notes" / ".x.json.abc.tmp"
    nested.parent.mkdir()
    nested.write_text("mine too")
    main(["compare", "ce", *TINY, "--seeds", "1", "--out", str(out)])
    assert draft.read_text() == "mine" and nested.read_text() == "mine too"
    own_stale = out / "runs" / slug("ce") / ".seed0.json.q1w2.seglosses-tmp"
    own_stale.write_text("half")
    main(["compare", "ce", *TINY, "--seeds", "1", "--out", str(out)])
    assert not own_stale.exists() and draft.exists()  # its own leftovers only

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(SegLossError, match="did not write"):
        compare(["ce"], [0], SETTINGS, nuclei, mine, report_files=REPORT_FILES)
    assert not (mine / "runs").exists() and (mine / "report.md").read_text() == "my notes"
    (out / "report.md").write_text("edited by hand")
    with pytest.raises(SegLossError, match="changed since"):
        compare(["ce"], [0], SETTINGS, nuclei, out, report_files=REPORT_FILES)
    foreign = tmp_path / "foreign"
    (foreign / "runs").mkdir(parents=True)
    (foreign / "runs" / "experiment.log").write_text("someone else's")
    with pytest.raises(SegLossError, match="without its manifest"):
        compare(["ce"], [0], SETTINGS, nuclei, foreign)


def test_binary_and_mixed_comparisons_on_two_classes(tmp_path):
    """Binary losses train one sigmoid channel; they mix with softmax losses on a two-class task."""
    data = load_data(f"folder:{write_folder(tmp_path / 'data', blobs(value=255))}")
    assert data.classes == ("background", "foreground")
    out = tmp_path / "out"
    main(["compare", "bce", "ce", "binary_dice + bce", "--data", f"folder:{tmp_path / 'data'}", *TINY,
          "--patch", "16", "--out", str(out)])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert [run["loss"] for run in results["runs"]][::2] == ["bce", "ce", "binary_dice + bce"]
    model = torch.load(out / "runs" / slug("bce") / "seed0.ckpt", weights_only=True)["model"]
    assert model["head.weight"].shape[0] == 1
    assert "0 and 255" in (out / "report.md").read_text()


def test_binary_losses_on_more_classes_are_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "ce", "binary_dice", *TINY, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "3-class task" in err and "binary_dice" in err
    assert not (tmp_path / "o").exists()


def test_a_bad_device_fails_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    import seglosses.cli.commands as commands

    monkeypatch.setattr(commands, "load_data", lambda *a, **k: pytest.fail("data read before the check"))
    for device, message in [("gpu", "--device auto, cpu, cuda or cuda:N"), ("tpu:0", "cuda or cuda:N")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", "ce", "--device", device, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["compare", "ce", "--device", "cuda:7", "--out", str(tmp_path / "o")])
        assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "focl"], "did you mean 'focal'"),
        (["compare", "ce(ignore_index=255)"], "--ignore-index"),
        (["compare", "triplet"], "losses on logits"),
        (["compare", "ce", "--data", "nope"], "nnunet:PATH"),
        (["compare", "ce", "--epochs", "0"], "--epochs"),
        (["compare", "ce", "--classes", "1"], "--classes"),
    ],
)
def test_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_a_stray_label_is_one_line_naming_the_file(tmp_path, capsys):
    masks = blobs()
    masks[3][0, 0] = 200
    root = write_folder(tmp_path / "data", masks)
    with pytest.raises(SystemExit):
        main(["compare", "ce", "--data", f"folder:{root}", *TINY, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    line = [line for line in err.splitlines() if line.startswith("error:")][0]
    assert "value 200 in img3.png" in line and "--ignore-index 200" in line


def test_a_void_border_is_ignored_in_training_and_metrics(tmp_path):
    """VOC-style 255 borders with --ignore-index 255: two classes, the border in no count."""
    masks = blobs()
    for mask in masks:
        mask[0, :] = 255
    root = write_folder(tmp_path / "data", masks)
    out = tmp_path / "out"
    main(["compare", "ce", "dice", "--data", f"folder:{root}", "--ignore-index", "255", *TINY, "--patch",
          "16",
          "--out", str(out)])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == ["background", "class 1"] and results["data"]["ignore_index"] == 255
    for run in results["runs"]:
        counted = sum(sum(run["stats"][name][0]) for name in ("tp", "fn"))
        assert counted == 23 * 24  # the test image's pixels less its ignored border row


def test_a_class_absent_from_the_test_split_is_na(tmp_path):
    masks = [m.copy() for m in blobs()]
    for k, mask in enumerate(masks):
        if k != 4:
            mask[-2:, -2:] = 2  # class 2 only in training images
    root = write_folder(tmp_path / "data", masks)
    out = tmp_path / "out"
    main(["compare", "ce", "--data", f"folder:{root}", *TINY, "--patch", "16", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["scored"] == ["class 1"]
    assert all(run["per_class"]["dice"][2] is None for run in results["runs"])
    assert "not in any test mask, so n/a and in no mean: class 2" in (out / "report.md").read_text()


def test_jpeg_images_compare(tmp_path):
    root = tmp_path / "data"
    write_folder(root, blobs())
    for path in (root / "images").glob("*.png"):
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"))
        path.unlink()
    out = tmp_path / "out"
    main(["compare", "ce", "--data", f"folder:{root}", *TINY, "--patch", "16", "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["runs"]


def test_volumes_train_a_3d_network_and_report(tmp_path):
    """An nnU-Net folder of NIfTI volumes: 3-D patches, a 3-D U-Net, sliding windows, a slice overlay."""
    nibabel = pytest.importorskip("nibabel")
    g = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}
        )
    )
    for k in range(5):
        volume = g.random((12, 14, 10)).astype(np.float32)
        for folder, name, array in (
            ("imagesTr", f"v{k}_0000.nii.gz", volume),
            ("labelsTr", f"v{k}.nii.gz", (volume > 0.5).astype(np.uint8)),
        ):
            (tmp_path / "data" / folder).mkdir(exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), str(tmp_path / "data" / folder / name))
    out = tmp_path / "out"
    main(["compare", "ce", "--data", f"nnunet:{tmp_path / 'data'}", *TINY, "--patch", "8", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert all(len(run["stats"]["hd95"][0]) == 2 for run in results["runs"])
    assert np.load(out / "runs" / slug("ce") / "seed0_prediction.npy").ndim == 2
    assert (out / "overlays.png").read_bytes()[:4] == b"\x89PNG"


def test_patches_are_the_same_with_any_number_of_workers(nuclei):
    """Patch j depends on (seed, j) only; forced patches are centred on a foreground class."""
    settings = Settings(batch_size=4, patch=32, oversample=0.5)
    patches = Patches(nuclei, patch_size(settings, nuclei), settings, seed=3)
    loaders = [
        torch.utils.data.DataLoader(patches, batch_size=4, sampler=range(8), num_workers=w) for w in (0, 2)
    ]
    for (a_images, a_labels), (b_images, b_labels) in zip(*loaders):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    for j in (2, 3, 6, 7):  # the last half of each batch of four is forced
        _, labels = patches[j]
        assert labels.shape == (32, 32) and labels[16, 16] >= 1


def test_foreground_positions_are_a_fixed_subset(nuclei, monkeypatch):
    """Beyond LOCATIONS positions of a class, a subset fixed by the case (the same in every process)."""
    import seglosses.compare.training as training

    monkeypatch.setattr(training, "LOCATIONS", 500)
    settings = Settings(batch_size=4, patch=32)
    first, second = (Patches(nuclei, patch_size(settings, nuclei), settings, seed=s) for s in (0, 1))
    where = first.positions(0, 2)
    _, labels = nuclei.read(nuclei.train[0])
    assert len(where) == 500 and len(set(where.tolist())) == 500
    assert (labels.flatten()[where] == 2).all() and torch.equal(where, second.positions(0, 2))


def test_small_images_are_padded_with_ignored_labels(tmp_path):
    root = write_folder(tmp_path, [np.ones((6, 20), dtype=np.uint8)] * 2 + blobs(4, 24))
    data = load_data(f"folder:{root}")
    settings = Settings(batch_size=2, patch=16)
    patches = Patches(data, patch_size(settings, data), settings, seed=0)
    sizes = {tuple(patches[j][1].shape) for j in range(20)}
    assert sizes == {(16, 16)}
    drawn = [patches[j] for j in range(40)]
    padded = [(image, labels) for image, labels in drawn if (labels[6:] == IGNORE).all()]  # the 6-row cases
    assert padded
    assert all((image[:, 6:] == 0).all() and (labels[:6] != IGNORE).all() for image, labels in padded)


def test_sliding_window_equals_a_pointwise_model_applied_whole():
    """Blending normalises the weights: a pointwise model gives the same logits through windows."""
    model = torch.nn.Conv2d(2, 3, 1)
    image = torch.randn(1, 2, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_inference(model, image, 16, overlap=0.5), model(image))
        volume = torch.randn(1, 2, 9, 20, 11)
        conv3 = torch.nn.Conv3d(2, 2, 1)
        torch.testing.assert_close(sliding_window_inference(conv3, volume, 8), conv3(volume))


def test_window_starts_by_hand():
    """Windows of 16 with half overlap: at most 8 apart, the last flush with the end."""
    from seglosses.models.sliding_window import window_starts

    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(37, 16, 0.5) == [0, 7, 14, 21]
    assert window_starts(16, 16, 0.5) == [0] and window_starts(10, 16, 0.5) == [0]
    model = torch.nn.Conv2d(1, 2, 1)
    image = torch.randn(2, 1, 30, 19)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_inference(model, image, (8, 12)), model(image))
    with pytest.raises(SegLossError, match="patch size"):
        sliding_window_inference(model, image, (8, 12, 4))


def test_image_stats_by_hand():
    """A 1 × 6 strip: class 1 predicted on pixels 1-3, true on 2-4; pixel 5 ignored."""
    prediction = torch.tensor([[0, 1, 1, 1, 0, 2]])
    labels = torch.tensor([[0, 0, 1, 1, 1, IGNORE]])
    stats = image_stats(prediction, labels, 3)
    assert stats["tp"].tolist() == [1, 2, 0] and stats["fp"].tolist() == [1, 1, 0]
    assert stats["fn"].tolist() == [1, 1, 0]
    assert np.isnan(stats["hd95"][2]) and np.isfinite(stats["hd95"][1])  # class 2 only at the ignored pixel


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkilled_cli_resumes_to_the_uninterrupted_result(tmp_path, nuclei):
    """The real command, SIGKILLed after its first checkpoint, finishes on the next start with the
    results of an uninterrupted run."""
    argv = [  # 8 epochs: a window of several epochs while the first checkpoint exists (3 was a race)
        "--epochs",
        "8",
        "--steps",
        "2",
        "--seeds",
        "1",
        "--patch",
        "32",
        "--width",
        "4",
        "--batch-size",
        "2",
    ]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "seglosses.cli", "compare", "ce", "dice", *argv, "--out", str(out)]
    checkpoint = out / "runs" / slug("ce") / "seed0.ckpt"
    log = tmp_path / "log"
    with log.open("wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    settings = Settings(epochs=8, steps_per_epoch=2, batch_size=2, patch=32, width=4)
    whole = compare(["ce", "dice"], [0], settings, nuclei, tmp_path / "whole")
    for run, reference in zip(runs, whole):
        assert run["stats"] == reference.stats and run["history"] == reference.history


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    """--nproc 2 (DDP, gloo, the batch split in two): the same test statistics as one process and the
    training losses within float rounding; the report is written once."""
    options = ["ce", "dice", "--epochs", "2", "--steps", "2", "--seeds", "1", "--patch", "32", "--width", "4",
               "--batch-size", "4"]  # fmt: skip
    main(["compare", *options, "--out", str(tmp_path / "one")])
    main(["compare", *options, "--nproc", "2", "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / name / "results.json").read_text())["runs"] for name in ("one", "two"))
    for a, b in zip(one, two):
        assert a["stats"]["tp"] == b["stats"]["tp"] and a["history"]["test_dice"] == b["history"]["test_dice"]
        np.testing.assert_allclose(a["history"]["train_loss"], b["history"]["train_loss"], rtol=1e-6)
    assert (tmp_path / "two" / "report.md").exists()


def test_nproc_must_divide_the_batch(tmp_path, nuclei):
    settings = Settings(epochs=1, steps_per_epoch=1, batch_size=3, patch=32, width=4, nproc=2)
    with pytest.raises(SegLossError, match="divisible"):
        compare(["ce"], [0], settings, nuclei, tmp_path)


def test_ctrl_c_prints_the_resume_hint(tmp_path, capsys, monkeypatch):
    import seglosses.compare as compare_package

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_package, "compare", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "ce", *TINY, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 130 and "run the same command again to resume" in capsys.readouterr().err


def test_workers_and_amp_on_the_cpu(tmp_path, capsys):
    """--workers 2 reads patches in two processes and gives the run of --workers 0; --amp on the CPU
    says it does nothing there."""
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / workers
        main(["compare", "ce", *TINY, "--seeds", "1", "--workers", workers, "--amp", "--device", "cpu",
              "--out", str(out)])  # fmt: skip
        runs[workers] = json.loads((out / "results.json").read_text())["runs"][0]
    assert runs["0"]["stats"] == runs["2"]["stats"] and runs["0"]["history"] == runs["2"]["history"]
    assert "--amp applies to CUDA only" in capsys.readouterr().err
