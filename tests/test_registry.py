"""Registry, spec strings and compound losses."""

from __future__ import annotations

import pytest
import torch
from helpers import make_inputs

import seglosses as sl
import seglosses.functional as SF

REQUIRED = set(
    "ce bce focal binary_focal dice binary_dice jaccard binary_jaccard tversky binary_tversky focal_tversky "
    "binary_focal_tversky gdl lovasz binary_lovasz mcc binary_mcc topk_ce ohem_ce".split()
)


def test_required_names_registered():
    assert REQUIRED <= set(sl.list_losses())
    for entry in sl.list_losses(details=True):
        assert (
            entry.description
            and entry.domain in ("softmax", "binary", "embedding")
            and entry.kind in ("pixel", "region", "class", "scalar")
        )


def test_single_term_is_the_module():
    loss = sl.create_loss("focal(gamma=1)")
    assert isinstance(loss, sl.FocalLoss) and loss.options["gamma"] == 1


def test_compound_is_the_weighted_sum_and_reports_terms():
    logits, target = make_inputs("softmax")
    loss = sl.create_loss("focal(gamma=2) + tversky(alpha=0.3, beta=0.7) - 0.25*ce + dice*2")
    focal = SF.focal_loss(logits, target, gamma=2)
    tversky = SF.tversky_loss(logits, target, alpha=0.3, beta=0.7)
    ce = SF.cross_entropy_loss(logits, target)
    dice = SF.dice_loss(logits, target)
    torch.testing.assert_close(loss(logits, target), focal + tversky - 0.25 * ce + 2 * dice)
    assert list(loss.last_terms) == ["focal(gamma=2)", "tversky(alpha=0.3, beta=0.7)", "ce", "dice"]
    torch.testing.assert_close(loss.last_terms["ce"], ce.detach())
    assert loss.weights == [1.0, 1.0, -0.25, 2.0]


def test_options_reach_the_terms():
    logits, target = make_inputs("softmax")
    loss = sl.create_loss("ce(weight=[1, 2, 3], label_smoothing=0.1) + 0.5*dice(include_background=False)")
    expected = SF.cross_entropy_loss(logits, target, weight=[1.0, 2.0, 3.0], label_smoothing=0.1)
    expected = expected + 0.5 * SF.dice_loss(logits, target, include_background=False)
    torch.testing.assert_close(loss(logits, target), expected)


def test_repeated_terms_get_unique_labels():
    loss = sl.create_loss("dice + dice")
    assert loss.labels == ["dice", "dice#2"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("focl", r"did you mean 'focal'.*position 0"),
        ("ce + dcie", r"'bce'.*'dice'.*got 'dcie'.*position 5"),
        ("ce +", r"invalid loss spec syntax"),
        ("dice * dice", r"number\*loss.*position 0"),
        ("focal(1)", r"keyword options.*position 6"),
        ("focal(gamma=x)", r"literal value for option 'gamma'.*position 12"),
        ("ce(gama=2)", r"did you mean 'ignore_index'|one of 'weight'"),
        ("focal(gamma='2')", r"gamma to be a finite real number"),
        ("ce(reduction='none') + dice", r"reduce to a scalar"),
        ("", r"non-empty loss spec"),
        ("ce.x", r"loss name or name\(options\)"),
        ("ce + binary_dice", r"one input domain.*'binary', 'softmax'"),
        ("2*3*ce", r"number\*loss"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(sl.SegLossError, match=message):
        sl.create_loss(spec)


def test_minimal_specs_build_and_run():
    for entry in sl.list_losses(details=True):
        if entry.domain == "embedding":  # (embeddings, labels): run by tests/test_embedding.py
            continue
        logits, target = make_inputs(entry.domain)
        value = sl.create_loss(entry.spec)(logits, target)
        assert torch.isfinite(value)


def test_signed_weights():
    assert sl.create_loss("-0.5*ce + dice").weights == [-0.5, 1.0]


def test_module_buffers_do_not_alias_the_callers_tensor():
    weight = torch.tensor([1.0, 2.0, 3.0])
    module = sl.CrossEntropyLoss(weight=weight)
    weight[0] = 100.0
    assert module.weight.tolist() == [1.0, 2.0, 3.0]
