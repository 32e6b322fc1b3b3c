"""The original notebook's modelling API: ``ERCConfigLoader`` and ``ERCModel``.

``ERCConfigLoader(path).load()`` accepts either
  * a params.yaml (a mapping with ``objectives``): returns the objective named by ``name``, or by
    the file's top-level ``model`` when ``name`` is omitted; or
  * a YAML holding one objective config (``modalities: [...]``, ``fusion: ...``): its name is
    ``name`` or the file stem.
It returns an :class:`~hlm12erc.config.ObjectiveConfig`, the config :class:`ERCTrainer` takes.
``ERCModel`` is the pipeline's model (:class:`hlm12erc.models.erc.ErcModel`: ``fit``, ``predict_proba``,
``save``, ``load``); :class:`ERCTrainer` builds and trains one from a config.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hlm12erc.config import ConfigError, ObjectiveConfig, params_from_dict
from hlm12erc.models.erc import ErcModel as ERCModel

__all__ = ["ERCConfigLoader", "ERCModel"]


class ERCConfigLoader:
    def __init__(self, path: str | Path, name: str | None = None):
        self.path, self.name = Path(path), name

    def load(self) -> ObjectiveConfig:
        if not self.path.exists():
            raise ConfigError(f"{self.path}: config file not found")
        raw = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        if "objectives" in raw:
            params = params_from_dict(raw)
            return params.objective(self.name or params.model)
        name = self.name or self.path.stem
        return params_from_dict({"model": name, "objectives": {name: raw}}).objectives[name]
