"""The feature store: per-split arrays + masks on disk, and the one function that fills them.

A split folder holds ``text.npy audio.npy visual.npy`` (float32, one row per table row, in
table order), ``mask.npy`` ((N, 3) bool: text, audio, visual present), ``face_found.npy``
((N,) bool) and ``index.csv`` (clip_id, label, dialogue, sequence). An absent modality is a
row of zeros with mask False: the model reads the mask and never the zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc.config import ConfigError

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
        """One row as a feature item (a dict of modality vectors, mask and label)."""
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


def load_split(features_dir: str | Path, tables_dir: str | Path, split: str) -> FeatureSet:
    """Cached features of ``split``, checked against its table (same clips, same order)."""
    features = FeatureSet.load(Path(features_dir) / split)
    table_path = Path(tables_dir) / f"{split}.csv"
    if table_path.exists():
        clips = pd.read_csv(table_path, usecols=["clip_id"], dtype=str, keep_default_na=False)["clip_id"]
        if clips.tolist() != features.index["clip_id"].tolist():
            raise ConfigError(f"{features_dir}/{split} is stale: its clips differ from {table_path}; "
                              "rerun `dvc repro featurize`")
    return features
