"""Stage featurize: every table of a folder -> cached feature arrays (one :class:`FeatureSet` per split)."""

from __future__ import annotations

from pathlib import Path

from hlm12erc import tracking
from hlm12erc.config import Params
from hlm12erc.features.store import TABLE_SPLITS, FeatureSet, featurize_tables


def featurize_stage(params: Params, tables_dir: str | Path, out_dir: str | Path) -> dict[str, FeatureSet]:
    from hlm12erc.data.meld import load_table

    for split in TABLE_SPLITS:  # bad rows fail before any slow work
        if (Path(tables_dir) / f"{split}.csv").exists():
            load_table(Path(tables_dir) / f"{split}.csv", params.labels)
    tracking.ensure_store()  # once, before train/evaluate runs may start in parallel
    return featurize_tables(tables_dir, out_dir, params.features, params.labels)
