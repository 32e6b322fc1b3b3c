"""The feature store: per-split arrays + masks on disk, and the one function that fills them.

A split folder holds ``text.npy audio.npy visual.npy`` (float32, one row per table row, in
table order), ``mask.npy`` ((N, 3) bool: text, audio, visual present), ``face_found.npy``
((N,) bool) and ``index.csv`` (clip_id, label, dialogue, sequence). An absent modality is a
row of zeros with mask False: the model reads the mask and never the zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc.config import FeatureParams

MODALITIES = ("text", "audio", "visual")
TABLE_SPLITS = ("train", "valid", "test", "sample")
INDEX_COLUMNS = ("clip_id", "label", "dialogue", "sequence")


@dataclass
class FeatureSet:
    """Features of one table: ``arrays[modality]`` (N, d), ``mask`` (N, 3), ``face_found``, ``index``."""

    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    face_found: np.ndarray
    index: pd.DataFrame

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> dict:
        """One row as a feature item (what :class:`~hlm12erc.training.api.ERCDataCollator` batches)."""
        item = {m: self.arrays[m][row] for m in MODALITIES}
        item["mask"] = self.mask[row]
        item["label"] = self.index["label"].iat[row]
        return item

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.arrays[m].shape[1]) for m in MODALITIES}

    @property
    def labels(self) -> list[str]:
        return self.index["label"].astype(str).tolist()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for modality in MODALITIES:
            np.save(folder / f"{modality}.npy", self.arrays[modality].astype(np.float32))
        np.save(folder / "mask.npy", self.mask.astype(bool))
        np.save(folder / "face_found.npy", self.face_found.astype(bool))
        self.index.to_csv(folder / "index.csv", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> FeatureSet:
        folder = Path(folder)
        needed = [f"{m}.npy" for m in MODALITIES] + ["mask.npy", "face_found.npy", "index.csv"]
        missing = [name for name in needed if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(f"{folder}: feature file(s) {missing} missing; run `dvc repro featurize`")
        arrays = {m: np.load(folder / f"{m}.npy") for m in MODALITIES}
        index = pd.read_csv(folder / "index.csv", dtype={"clip_id": str, "label": str}, keep_default_na=False)
        return cls(arrays, np.load(folder / "mask.npy"), np.load(folder / "face_found.npy"), index)


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
        raise FileNotFoundError(f"{tables_dir}/train.csv not found; run `dvc repro tabulate` first")
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
