"""The command line: list and plot, and one-line errors with exit status 2."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import seglosses as sl
from seglosses.cli import main
from seglosses.cli.commands import pixel_loss_curve


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_list_names_every_registered_loss(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for name in sl.list_losses():
        assert f"\n{name} " in f"\n{out}"


def test_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "sub" / "focal.png"
    main(["plot", "ce", "focal(gamma=2)", "binary_focal(gamma=0.5)", "--out", str(out), "--points", "20"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_plotted_values_are_the_formula():
    """CE is -log p and focal(γ) is -(1-p)^γ log p at every plotted point."""
    probabilities, ce = pixel_loss_curve("ce", 10)
    _, focal = pixel_loss_curve("focal(gamma=2)", 10)
    for p, a, b in zip(probabilities, ce, focal):
        assert math.isclose(a, -math.log(p), rel_tol=1e-9)
        assert math.isclose(b, -((1 - p) ** 2) * math.log(p), rel_tol=1e-9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "focl"], "did you mean 'focal'"),
        (["plot", "dice"], "got dice (region loss)"),
        (["plot", "contrastive"], "got contrastive (scalar loss)"),
        (["plot", "focal(gamma=-1)"], "gamma"),
        (["plot", "ce", "--points", "3"], "--points"),
        (["nope"], "No such command"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "seglosses.cli", "list"], capture_output=True, text=True)
    assert result.returncode == 0 and "focal" in result.stdout


def test_weights_json_matches_the_api(capsys):
    import json

    from seglosses.data import nuclei

    main(["weights", "nuclei", "--json"])
    report = json.loads(capsys.readouterr().out)
    _, labels = nuclei(split="train")
    counts = torch.bincount(labels.flatten(), minlength=3)
    assert report["counts"] == counts.tolist() == [155512, 34601, 6495]
    for method, values in report["weights"].items():
        torch.testing.assert_close(torch.tensor(values), sl.class_weights(counts, method=method))


def test_weights_table(capsys):
    main(["weights", "nuclei:2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["class", "pixels", "fraction"] and len(lines) == 3


def test_weights_unknown_data(capsys):
    code, _, err = run(["weights", "nucle"], capsys)
    assert code == 2 and "did you mean 'nuclei'" in err
