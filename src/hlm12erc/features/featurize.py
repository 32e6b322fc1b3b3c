"""Featurizing: the frozen encoders turn 1NF tables into :class:`FeatureSet` arrays.

:class:`Featurizer` is the one entry point (the featurize stage, ``hlm12erc predict`` and the
notebook API all call it); :func:`featurize_stage` is the DVC stage. Training reads only the
cached arrays (:mod:`hlm12erc.features.store`), so it does not depend on the encoders' code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc.config import FeatureParams, Params
from hlm12erc.features.store import INDEX_COLUMNS, TABLE_SPLITS, FeatureSet


def featurize_stage(params: Params, tables_dir: str | Path, out_dir: str | Path) -> dict[str, FeatureSet]:
    from hlm12erc.data.meld import load_table

    for split in TABLE_SPLITS:  # bad rows fail before any slow work
        if (Path(tables_dir) / f"{split}.csv").exists():
            load_table(Path(tables_dir) / f"{split}.csv", params.labels)
    return featurize_tables(tables_dir, out_dir, params.features, params.labels)


class Featurizer:
    """Holds the frozen encoders (the text model loads once) and turns tables into FeatureSets."""

    def __init__(self, params: FeatureParams, progress: bool = True):
        self.params = params
        self.progress = progress
        self._text_encoder = None

    def __call__(self, table: pd.DataFrame) -> FeatureSet:
        from hlm12erc.features.audio import audio_features
        from hlm12erc.features.text import TextEncoder, text_features
        from hlm12erc.features.visual import visual_features

        if self._text_encoder is None:
            self._text_encoder = TextEncoder(self.params.text)
        text, text_present = text_features(table, self.params.text, self._text_encoder)
        audio, audio_present = audio_features(table, self.params.audio, progress=self.progress)
        visual, visual_present, face_found = visual_features(table, self.params.visual, progress=self.progress)
        mask = np.stack([text_present, audio_present, visual_present], axis=1)
        index = table[list(INDEX_COLUMNS)].reset_index(drop=True).copy()
        index["clip_id"] = index["clip_id"].astype(str)
        return FeatureSet({"text": text, "audio": audio, "visual": visual}, mask, face_found, index)


def featurize_tables(tables_dir: str | Path, out_dir: str | Path, params: FeatureParams,
                     labels: list[str] | None = None,
                     log: Callable[[str], None] = print) -> dict[str, FeatureSet]:
    """Featurize every ``<split>.csv`` of ``tables_dir`` into ``out_dir/<split>/``."""
    from hlm12erc.data.meld import load_table

    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    present = [s for s in TABLE_SPLITS if (tables_dir / f"{s}.csv").exists()]
    if "train" not in present:
        raise FileNotFoundError(f"{tables_dir}/train.csv not found; run `dvc repro tables` first")
    featurizer = Featurizer(params)
    results = {}
    for split in present:
        table = load_table(tables_dir / f"{split}.csv", labels)
        features = featurizer(table)
        features.save(out_dir / split)
        counts = features.mask.sum(0)
        log(f"{split}: {len(features)} rows; present text={counts[0]} audio={counts[1]} visual={counts[2]}; "
            f"faces found={int(features.face_found.sum())}; dims={features.dims}")
        results[split] = features
    return results
