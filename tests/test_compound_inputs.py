"""Mixed inputs in one compound: embedding losses beside pixel losses (``embeddings=``) and surface losses
with precomputed distance maps (``dist_maps=``), from Python and from spec strings (issue 19, item 11)."""

import pytest
import torch

import seglosses as sl
from seglosses.losses.compound import loss_domain


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    embeddings = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    return logits, labels, embeddings


def test_spec_with_an_embedding_term_equals_the_sum_of_the_functions():
    logits, labels, embeddings = inputs()
    criterion = sl.create_loss("ce + 0.1*info_nce")
    value = criterion(logits, labels, embeddings=embeddings)
    expected = sl.cross_entropy_loss(logits, labels) + 0.1 * sl.pixel_info_nce_loss(embeddings, labels)
    torch.testing.assert_close(value, expected)
    grads = torch.autograd.grad(value, (logits, embeddings))
    expected_grads = torch.autograd.grad(expected, (logits, embeddings))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert set(criterion.logs()) >= {"loss/ce", "loss/info_nce"}


def test_python_terms_with_embeddings_and_ignore_index():
    logits, labels, embeddings = inputs(1)
    labels[:, :2] = 255
    criterion = sl.CompoundLoss(
        [
            (1.0, "dice", sl.DiceLoss(ignore_index=255)),
            (0.5, "center", sl.CenterLoss(num_classes=3, dim=4, ignore_index=255)),
        ]
    )
    criterion.eval()  # the centers stay as they are
    value = criterion(logits, labels, embeddings=embeddings)
    centers = criterion.losses[1].centers
    expected = sl.dice_loss(logits, labels, ignore_index=255) + 0.5 * sl.center_loss(
        embeddings, labels, centers, ignore_index=255
    )
    torch.testing.assert_close(value, expected)


def test_the_sampler_gets_the_logits_when_it_reads_them():
    """``hard`` mining picks the misclassified pixels of ``argmax(logits)``: the compound passes its
    logits; a ``random`` sampler is not given them (no argmax computed)."""
    logits, labels, embeddings = inputs(2)
    spec = "ce + info_nce(strategy='hard', max_total=40)"
    torch.manual_seed(3)
    value = sl.create_loss(spec)(logits, labels, embeddings=embeddings)
    torch.manual_seed(3)
    hard = sl.pixel_info_nce_loss(embeddings, labels, logits=logits, strategy="hard", max_total=40)
    torch.testing.assert_close(value, sl.cross_entropy_loss(logits, labels) + hard)


def test_surface_terms_take_precomputed_distance_maps():
    logits, labels, _ = inputs(3)
    maps = sl.target_distance_maps(labels, 3)
    criterion = sl.create_loss("dice + 0.5*boundary")
    with_maps = criterion(logits, labels, dist_maps=maps)
    torch.testing.assert_close(with_maps, criterion(logits, labels))  # computed on the fly otherwise
    expected = sl.dice_loss(logits, labels) + 0.5 * sl.boundary_loss(logits, labels, dist_maps=maps)
    torch.testing.assert_close(with_maps, expected)
    # the maps are what the surface loss reads: other maps give another value
    assert not torch.allclose(criterion(logits, labels, dist_maps=maps * 2), with_maps)


def test_embedding_and_surface_terms_together():
    logits, labels, embeddings = inputs(4)
    maps = sl.target_distance_maps(labels, 3)
    criterion = sl.create_loss("ce + 0.1*triplet + 0.01*boundary")
    value = criterion(logits, labels, embeddings=embeddings, dist_maps=maps)
    expected = (
        sl.cross_entropy_loss(logits, labels)
        + 0.1 * sl.triplet_loss(embeddings, labels)
        + 0.01 * sl.boundary_loss(logits, labels, dist_maps=maps)
    )
    torch.testing.assert_close(value, expected)


def test_a_missing_input_names_the_term():
    logits, labels, _ = inputs()
    criterion = sl.create_loss("ce + 0.1*info_nce")
    with pytest.raises(sl.SegLossError, match=r"embeddings= for term 'info_nce' \(PixelInfoNCELoss"):
        criterion(logits, labels)


def test_an_input_no_term_takes_is_refused():
    logits, labels, embeddings = inputs()
    taken = r"keyword inputs this loss's terms take \(weight_map=, mask=\), got embeddings="
    with pytest.raises(sl.SegLossError, match=taken):
        sl.create_loss("lovasz + topk_ce")(logits, labels, embeddings=embeddings)
    with pytest.raises(sl.SegLossError, match=r"\(weight_map=, mask=, embeddings=\), got dist_maps="):
        sl.create_loss("ce + info_nce")(logits, labels, embeddings=embeddings, dist_maps=logits)


def test_embedding_terms_go_beside_softmax_losses_only():
    with pytest.raises(sl.SegLossError, match="embedding losses beside softmax losses only"):
        sl.create_loss("binary_dice + info_nce")
    assert loss_domain("ce + info_nce") == "softmax"
    assert loss_domain("info_nce + triplet") == "embedding"


def test_a_compound_of_embedding_losses_alone_takes_embeddings_and_labels():
    _, labels, embeddings = inputs(5)
    criterion = sl.create_loss("info_nce + 0.5*triplet")
    expected = sl.pixel_info_nce_loss(embeddings, labels) + 0.5 * sl.triplet_loss(embeddings, labels)
    torch.testing.assert_close(criterion(embeddings, labels), expected)


def test_nested_compound_passes_the_inputs_on():
    logits, labels, embeddings = inputs(6)
    inner = sl.create_loss("ce + 0.1*info_nce")
    outer = sl.CompoundLoss([(1.0, "inner", inner), (2.0, "dice", sl.DiceLoss())])
    value = outer(logits, labels, embeddings=embeddings)
    expected = inner(logits, labels, embeddings=embeddings) + 2 * sl.dice_loss(logits, labels)
    torch.testing.assert_close(value, expected)
