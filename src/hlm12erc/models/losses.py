"""Losses, all computed from logits (never from softmax outputs fed back into a log).

Main terms (``objective.loss``): ``ce``, ``weighted_ce`` (inverse-frequency class weights from
the train labels), ``focal`` (gamma), ``dice`` (soft multi-class Dice).
Auxiliary terms on the fused embedding (``objective.aux_loss``, scaled by ``aux_weight``):
``contrastive`` (supervised contrastive, Khosla et al. 2020) and ``triplet`` (batch-hard).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(targets: Sequence[int] | np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * count_c)``; a class absent from train gets 1."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
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


Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def build_criterion(objective, train_targets: Sequence[int] | np.ndarray, n_classes: int) -> Criterion:
    """``criterion(logits, embedding, targets)`` = main loss + aux_weight * auxiliary loss."""
    weight = class_weights(train_targets, n_classes) if objective.loss == "weighted_ce" else None

    def main(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if objective.loss == "ce":
            return F.cross_entropy(logits, targets)
        if objective.loss == "weighted_ce":
            return F.cross_entropy(logits, targets, weight=weight.to(logits.device))
        if objective.loss == "focal":
            return focal_loss(logits, targets, objective.focal_gamma)
        return dice_loss(logits, targets)

    def auxiliary(embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if objective.aux_loss == "contrastive":
            return supervised_contrastive_loss(embedding, targets, objective.temperature)
        return batch_hard_triplet_loss(embedding, targets, objective.margin)

    if objective.loss not in ("ce", "weighted_ce", "focal", "dice"):
        raise ValueError(f"objective {objective.name}: loss='{objective.loss}' is not known; "
                         "use ce, weighted_ce, focal or dice")
    if objective.aux_loss not in ("none", "contrastive", "triplet"):
        raise ValueError(f"objective {objective.name}: aux_loss='{objective.aux_loss}' is not known; "
                         "use none, contrastive or triplet")

    def criterion(logits: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = main(logits, targets)
        if objective.aux_loss != "none" and objective.aux_weight:
            loss = loss + objective.aux_weight * auxiliary(embedding, targets)
        return loss

    return criterion
