"""Losses on hand-computed inputs: every value here is worked out by hand or by torch's reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hlm12erc.config import ObjectiveConfig
from hlm12erc.models.losses import (
    Criterion,
    LossConfig,
    batch_hard_triplet_loss,
    class_weights,
    dice_loss,
    focal_loss,
    supervised_contrastive_loss,
)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
TARGETS = torch.tensor([0, 1, 2, 0])
NO_EMBEDDING = torch.zeros(4, 2)


def test_ce_on_logits_equals_torch_and_hand_value():
    loss = Criterion(LossConfig.of(ObjectiveConfig(loss="ce")), [0, 1, 2], 3)(LOGITS, NO_EMBEDDING, TARGETS)
    assert torch.isclose(loss, F.cross_entropy(LOGITS, TARGETS))
    hand = np.mean([-(2 - math.log(math.exp(2) + 1 + math.exp(-1))),
                    -(1.5 - math.log(math.exp(0.5) + math.exp(1.5) + 1)),
                    -(3 - math.log(2 + math.exp(3))), math.log(3)])
    assert loss.item() == pytest.approx(hand, rel=1e-5)


def test_class_weights_are_inverse_frequency_and_absent_class_gets_the_largest():
    # one loss module for encoders and heads: an absent class gets the largest present weight
    weights = class_weights([0, 0, 0, 1], 3)  # N=4, C=3: 4/(3*3), 4/(3*1), absent -> max = 4/3
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])


def test_class_weights_sqrt_inverse_frequency():
    y = np.array([0] * 8 + [1] * 2)
    w = class_weights(y, 3, 0.5).numpy()
    assert w[1] > w[0]
    assert np.isclose(w[0], (10 / (3 * 8)) ** 0.5) and np.isclose(w[2], w[1])
    # power 0 = unweighted
    assert class_weights(y, 3, 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_weighted_ce_is_weighted_mean():
    train_targets = [0, 0, 0, 1, 2, 2]
    criterion = Criterion(LossConfig.of(ObjectiveConfig(loss="weighted_ce")), train_targets, 3)
    loss = criterion(LOGITS, NO_EMBEDDING, TARGETS)
    weights = torch.tensor([6 / 9, 6 / 3, 6 / 6])
    per_row = F.cross_entropy(LOGITS, TARGETS, reduction="none")
    w = weights[TARGETS]
    assert loss.item() == pytest.approx(((per_row * w).sum() / w.sum()).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-3)


def test_focal_gamma_zero_is_ce_and_gamma_down_weights_easy_rows():
    assert focal_loss(LOGITS, TARGETS, gamma=0.0).item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item())
    p = torch.softmax(LOGITS, -1)[torch.arange(4), TARGETS]
    hand = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert focal_loss(LOGITS, TARGETS, gamma=2.0).item() == pytest.approx(hand.item(), rel=1e-6)
    assert focal_loss(LOGITS, TARGETS, gamma=2.0) < focal_loss(LOGITS, TARGETS, gamma=0.0)


def test_dice_hand_value_and_perfect_prediction():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))  # probabilities exactly
    targets = torch.tensor([0, 1])
    # class 0: overlap 0.5, sum p 0.75, sum y 1 -> (1+1)/(1.75+1); class 1: overlap .75, sum p 1.25 -> 2.5/3.25
    hand = 1 - ((2 * 0.5 + 1) / (0.75 + 1 + 1) + (2 * 0.75 + 1) / (1.25 + 1 + 1)) / 2
    assert dice_loss(logits, targets).item() == pytest.approx(hand, rel=1e-6)
    confident = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
    assert dice_loss(confident, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_supcon_tiny_hand_example():
    # three unit vectors: a and b same class at 90 degrees, c another class opposite a
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    t = 1.0
    # anchor a: positives {b}: s_ab=0, s_ac=-1 -> -log(e^0/(e^0+e^-1))
    la = -math.log(1 / (1 + math.exp(-1)))
    # anchor b: s_ba=0, s_bc=0 -> -log(1/2)
    lb = math.log(2)
    assert supervised_contrastive_loss(z, y, t).item() == pytest.approx((la + lb) / 2, rel=1e-6)
    assert supervised_contrastive_loss(z, torch.tensor([0, 1, 2]), t).item() == 0.0  # no positives


def test_batch_hard_triplet_tiny_hand_example():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1 at sqrt2; negatives at 2 and sqrt2 -> nearest sqrt2 -> relu(0 + m)
    margin = 0.5
    assert batch_hard_triplet_loss(z, y, margin).item() == pytest.approx(margin, rel=1e-6)
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    assert batch_hard_triplet_loss(separated, y, margin).item() == pytest.approx(0.0, abs=1e-6)


def test_aux_weight_adds_the_auxiliary_term():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    base = Criterion(LossConfig.of(ObjectiveConfig(loss="ce")), [0, 1, 2], 3)(LOGITS, z, TARGETS)
    contrastive = LossConfig.of(ObjectiveConfig(loss="ce", aux_loss="contrastive", aux_weight=0.5, temperature=1.0))
    with_aux = Criterion(contrastive, [0, 1, 2], 3)(LOGITS, z, TARGETS)
    assert with_aux.item() == pytest.approx(base.item() + 0.5 * supervised_contrastive_loss(z, TARGETS, 1.0).item())


def test_unknown_loss_names_fail_clearly():
    with pytest.raises(ValueError, match="loss='hinge'"):
        Criterion(LossConfig.of(ObjectiveConfig(loss="hinge")), [0], 3)
    with pytest.raises(ValueError, match="aux_loss='center'"):
        Criterion(LossConfig.of(ObjectiveConfig(aux_loss="center")), [0], 3)


def test_label_smoothing_and_class_weight_power_reach_the_loss():
    train_targets = [0, 0, 0, 1, 2, 2]
    smoothed = Criterion(LossConfig.of(ObjectiveConfig(loss="ce", label_smoothing=0.1)), train_targets, 3)
    assert smoothed(LOGITS, NO_EMBEDDING, TARGETS).item() == pytest.approx(
        F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.1).item(), rel=1e-6)
    sqrt = Criterion(LossConfig.of(ObjectiveConfig(loss="weighted_ce", class_weight_power=0.5)), train_targets, 3)
    w = class_weights(train_targets, 3, 0.5)
    assert sqrt.weight.tolist() == pytest.approx(w.tolist())
    assert sqrt(LOGITS, NO_EMBEDDING, TARGETS).item() == pytest.approx(
        F.cross_entropy(LOGITS, TARGETS, weight=w).item(), rel=1e-6)


def test_loss_config_reads_an_objective_and_the_text_encoder_params():
    from hlm12erc.config import TextEncoderParams
    from hlm12erc.models.losses import LossConfig

    enc = LossConfig.of(TextEncoderParams())
    assert (enc.loss, enc.class_weight_power, enc.label_smoothing, enc.aux_loss) == ("weighted_ce", 0.5, 0.1, "none")
    obj = LossConfig.of(ObjectiveConfig(name="x", loss="focal", aux_loss="triplet", aux_weight=0.2, margin=0.3))
    assert (obj.name, obj.loss, obj.aux_loss, obj.aux_weight, obj.margin) == ("x", "focal", "triplet", 0.2, 0.3)


def test_loss_denominator_matches_the_mean_the_loss_takes():
    """What data-parallel ranks weight their shares by: sum of the halves' (loss x denominator) = the whole's."""
    train_targets = [0, 0, 0, 1, 2, 2]
    logits, target = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 2, 0, 1])
    for config in (ObjectiveConfig(loss="ce", label_smoothing=0.1), ObjectiveConfig(loss="weighted_ce",
                   label_smoothing=0.1), ObjectiveConfig(loss="focal")):
        criterion = Criterion(LossConfig.of(config), train_targets, 3)
        halves = [criterion(logits[s], NO_EMBEDDING[:1], target[s]) * criterion.denominator(target[s])
                  for s in (slice(0, 2), slice(2, 6))]
        whole = criterion(logits, NO_EMBEDDING[:1], target) * criterion.denominator(target)
        assert torch.isclose(sum(halves), whole, rtol=1e-5), config.loss
