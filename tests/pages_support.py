"""Helpers shared by test_pages.py, test_pages_browser.py and benchmarks/pages_render.py: the demo corpus's
test table (real extracted frames and wavs) and predictions written the way the evaluate stage writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from hlm12erc.config import MELD_LABELS, DataParams, TablesParams
from hlm12erc.data import tables


def write_demo_tables(descriptor: dict, manifest: pd.DataFrame, media_dir: Path, table_dir: Path) -> Path:
    """The demo corpus's 1NF tables in ``table_dir`` (media paths relative to it); returns test.csv."""
    built = tables.build_tables(descriptor, manifest, DataParams(), TablesParams(), MELD_LABELS,
                                media_dir=media_dir, table_dir=table_dir)
    tables.write_tables(built, table_dir)
    return table_dir / "test.csv"


def write_predictions(table: pd.DataFrame, path: Path, seed: int, wrong_every: int = 3,
                      labels: list[str] | None = None) -> pd.DataFrame:
    """Seeded predictions for ``table`` in the evaluate stage's format: every ``wrong_every``-th turn (shifted by
    the seed) predicted wrong, the rest right, probabilities peaked on the predicted label."""
    labels = labels or list(MELD_LABELS)
    rng = np.random.default_rng(seed)
    gold = [labels.index(v) for v in table["label"]]
    predicted = [(g + 1 + (i % 5)) % len(labels) if (i + seed) % wrong_every == 0 else g for i, g in enumerate(gold)]
    logits = rng.normal(0, 1, (len(table), len(labels)))
    logits[np.arange(len(table)), predicted] += 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame({"clip_id": table["clip_id"].astype(str), "label": table["label"].astype(str),
                          "predicted": [labels[i] for i in predicted]})
    for i, label in enumerate(labels):
        frame[f"p_{label}"] = probs[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6f")
    return frame


def page_json(path: Path) -> dict:
    """The data blob a page renders."""
    text = Path(path).read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1))


WAIT_S = 20


def open_page(browser, path: Path, fragment: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")  # a new document each time, even when only the fragment differs
    browser.get(path.resolve().as_uri() + fragment)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return browser


def shown_clips(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('.turn:not(.hide)')).map(e => e.dataset.clip)")
