"""Losses, all computed from logits (never from softmax outputs fed back into a log).

Main terms (``loss``): ``ce``, ``weighted_ce`` (inverse-frequency class weights from the train
labels, to the power ``class_weight_power``), ``focal`` (gamma; class-weighted unless the power
is 0), ``dice`` (soft multi-class Dice); ``label_smoothing`` for the cross-entropies.
Auxiliary terms on the fused embedding (``objective.aux_loss``, scaled by ``aux_weight``):
``contrastive`` (supervised contrastive, Khosla et al. 2020) and ``triplet`` (batch-hard).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(targets: Sequence[int] | np.ndarray, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights ``(N / (C * count_c)) ** power`` (power 0.5 = the milder square root);
    a class absent from train gets the largest present weight."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = (counts.sum() / (n_classes * counts[present])) ** power
    if present.any():
        weights[~present] = weights[present].max()
    return torch.tensor(weights, dtype=torch.float32)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """``-(1 - p_t)^gamma * log p_t``, mean over the batch (weighted mean with class weights)."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weight is None:
        return loss.mean()
    w = weight.to(logits.device)[targets]
    return (loss * w).sum() / w.sum()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over classes: ``1 - mean_c (2 sum p*y + eps) / (sum p + sum y + eps)``."""
    probs = logits.softmax(dim=-1)
    onehot = F.one_hot(targets, logits.shape[-1]).to(probs.dtype)
    overlap = (probs * onehot).sum(0)
    dice = (2 * overlap + eps) / (probs.sum(0) + onehot.sum(0) + eps)
    return 1 - dice.mean()


def supervised_contrastive_loss(embedding: torch.Tensor, targets: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    """SupCon: each anchor pulls its same-label samples and pushes the rest (cosine / T).

    ``loss_i = -mean_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``, averaged over the
    anchors that have a positive; 0 when no anchor has one.
    """
    z = F.normalize(embedding, dim=-1)
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (targets[:, None] == targets[None, :]) & ~self_mask
    n_positives = positives.sum(1)
    has_positive = n_positives > 0
    if not has_positive.any():
        return embedding.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1)[has_positive] / n_positives[has_positive]
    return per_anchor.mean()


def batch_hard_triplet_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """For each anchor: relu(farthest positive - nearest negative + margin), on L2-normalised
    embeddings; averaged over anchors having both; 0 when none has."""
    z = F.normalize(embedding, dim=-1)
    distance = torch.cdist(z, z)
    same = targets[:, None] == targets[None, :]
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    positives, negatives = same & ~self_mask, ~same
    valid = positives.any(1) & negatives.any(1)
    if not valid.any():
        return embedding.sum() * 0.0
    hardest_positive = distance.masked_fill(~positives, float("-inf")).max(1).values
    hardest_negative = distance.masked_fill(~negatives, float("inf")).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()


@dataclass
class LossConfig:
    """The loss settings an objective or the text encoder carries (same names in params.yaml)."""

    name: str = "model"  # for error messages
    loss: str = "ce"  # ce | weighted_ce | focal | dice
    class_weight_power: float = 1.0  # weighted_ce / focal class weights = inverse frequency ** power
    label_smoothing: float = 0.0  # ce / weighted_ce
    focal_gamma: float = 2.0
    aux_loss: str = "none"  # none | contrastive | triplet, on the embedding
    aux_weight: float = 0.0
    temperature: float = 0.1
    margin: float = 0.5

    @classmethod
    def of(cls, settings: object) -> "LossConfig":
        """The loss fields of any settings object (an ObjectiveConfig, the text encoder params)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)})


class Criterion:
    """``criterion(logits, embedding, targets)`` = main loss + aux_weight * auxiliary loss, from logits.

    ``denominator(targets)`` is what the main loss's mean divides by (the targets' class weights,
    or their count), so data-parallel ranks can weight their shares of one batch exactly.
    """

    def __init__(self, config: LossConfig, train_targets: Sequence[int] | np.ndarray, n_classes: int):
        if config.loss not in ("ce", "weighted_ce", "focal", "dice"):
            raise ValueError(f"{config.name}: loss='{config.loss}' is not known; use ce, weighted_ce, focal or dice")
        if config.aux_loss not in ("none", "contrastive", "triplet"):
            raise ValueError(f"{config.name}: aux_loss='{config.aux_loss}' is not known; "
                             "use none, contrastive or triplet")
        self.config = config
        weighted = config.loss == "weighted_ce" or (config.loss == "focal" and config.class_weight_power > 0)
        self.weight = class_weights(train_targets, n_classes, config.class_weight_power) if weighted else None

    def main(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c, weight = self.config, None if self.weight is None else self.weight.to(logits.device)
        if c.loss in ("ce", "weighted_ce"):
            return F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=c.label_smoothing)
        if c.loss == "focal":
            return focal_loss(logits.float(), targets, c.focal_gamma, weight)
        return dice_loss(logits.float(), targets)

    def denominator(self, targets: torch.Tensor) -> float:
        if self.weight is None or self.config.loss == "dice":
            return float(len(targets))
        return float(self.weight[targets.cpu()].sum())

    def __call__(self, logits: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c, loss = self.config, self.main(logits, targets)
        if c.aux_loss == "contrastive" and c.aux_weight:
            return loss + c.aux_weight * supervised_contrastive_loss(embedding.float(), targets, c.temperature)
        if c.aux_loss == "triplet" and c.aux_weight:
            return loss + c.aux_weight * batch_hard_triplet_loss(embedding.float(), targets, c.margin)
        return loss
