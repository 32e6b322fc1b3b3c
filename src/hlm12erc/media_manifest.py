"""The extract stage's manifest: one row per utterance with its media status and output paths.

Statuses: ``ok``; ``too_long`` (cut at ``max_seconds``; outputs written); ``no_audio`` (frames
only); ``no_video`` (wav only); ``corrupt`` (cannot be opened/decoded; nothing written);
``missing`` (no file); ``text_only`` (the descriptor has no clips folder for the split).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from hlm12erc.data import meld

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("source_split", "clip_id", "dialogue", "sequence", "status", "duration",
                    "frames_dir", "wav", "fingerprint")
STATUSES = ("ok", "too_long", "no_audio", "no_video", "corrupt", "missing", "text_only")


def write_manifest(manifest: pd.DataFrame, media_dir: str | os.PathLike[str]) -> Path:
    path = Path(media_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    manifest.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)
    return path


def read_manifest(media_dir: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(media_dir) / MANIFEST
    if not path.exists():
        raise meld.DataError(f"{path} not found; run the extract stage first (`dvc repro extract`)")
    frame = pd.read_csv(path, dtype={"frames_dir": str, "wav": str, "clip_id": str,
                                     "source_split": str, "status": str}, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS[:8] if c not in frame.columns]
    if missing:
        raise meld.DataError(f"{path}: not an extract manifest, missing column(s) {missing}; "
                             f"re-run `dvc repro extract`")
    return frame


def summarise(manifest: pd.DataFrame) -> str:
    """Counts per status, per source split, as a few printable lines."""
    lines = []
    for split, part in [*manifest.groupby("source_split", sort=False), ("all", manifest)]:
        counts = Counter(part["status"])
        lines.append(f"  {split:5s} {len(part):6d} clips: " +
                     ", ".join(f"{s}={counts[s]}" for s in STATUSES if counts[s]))
    return "\n".join(lines)
