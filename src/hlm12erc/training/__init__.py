"""Training: the loop, metrics, stage functions and the notebook API facades.

``from hlm12erc.training import MeldDataset, ERCDataCollator, ERCTrainer, ERCEvaluator,
ERCMetricCalculator`` (imported lazily, so ``hlm12erc.training.<module>`` stays cheap).
"""

from __future__ import annotations

_API = ("MeldDataset", "ERCDataCollator", "ERCTrainer", "ERCEvaluator", "ERCMetricCalculator")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from hlm12erc.training import api

        return getattr(api, name)
    raise AttributeError(f"module 'hlm12erc.training' has no attribute '{name}'")
