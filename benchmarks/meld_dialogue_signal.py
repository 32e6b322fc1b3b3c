"""Probe: is there dialogue-level signal left in the fine-tuned text encoders' out-of-sample readings?

For each seed's ensemble (the encoders and text views ``benchmarks/meld_erc.py`` cached under --out;
missing ones are fine-tuned first), the ``text_finetune`` probabilities p on MELD's valid split,
which no encoder trained on, are the inputs of three multinomial logistic regressions, scored by
grouped 5-fold cross-validation over valid's dialogues:

  * ``this turn``: log p(t);
  * ``+ previous turns``: log p(t), log p of the same speaker's previous turn, log p of the previous
    turn when another speaker said it, and a flag for each (0 where there is no such turn);
  * ``+ previous and next turns``: those and log p of the next turn, with its flag.

If the neighbouring turns' readings held emotion evidence the encoders (which read 3 past turns and
the next one as text) had not used, the longer regressions would have the lower log-loss. A dialogue
head that learns on train, where the encoders' readings are cleaner than anywhere else, can find
no more than this.

Usage (from the repo root):
  .venv/bin/python benchmarks/meld_dialogue_signal.py --out /tmp/meld_erc --seeds 42 44 [--c 0.03 0.3 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import meld_erc
import numpy as np
import pandas as pd

from hlm12erc.data import context
from hlm12erc.metrics import compute_metrics
from hlm12erc.training.fit import new_model


def neighbour_turns(table: pd.DataFrame, probs: np.ndarray) -> np.ndarray:
    """Per row: log p(t), log p of the speaker's previous turn, log p of the previous turn if another
    speaker's, log p of the next turn, then their three presence flags (dialogue order from the
    library's context builder)."""
    logp = np.log(np.clip(probs, 1e-6, 1.0))
    same, other, following = np.zeros_like(logp), np.zeros_like(logp), np.zeros_like(logp)
    flags = np.zeros((len(table), 3))
    speakers = table["speaker"].astype(str).to_numpy()
    for i, (rows, place) in enumerate(context.dialogue_positions(table)):
        earlier = rows[:place][::-1]
        mine = [r for r in earlier if speakers[r] == speakers[i]]
        if mine:
            same[i], flags[i, 0] = logp[mine[0]], 1.0
        if len(earlier) and speakers[earlier[0]] != speakers[i]:
            other[i], flags[i, 1] = logp[earlier[0]], 1.0
        if place + 1 < len(rows):
            following[i], flags[i, 2] = logp[rows[place + 1]], 1.0
    return np.hstack([logp, same, other, following, flags])


def signal(table: pd.DataFrame, probs: np.ndarray, labels: list[str], c: float = 1.0,
           folds: int = 5) -> dict[str, tuple[float, float]]:
    """(log-loss, weighted-F1) of ``probs`` as they are and of the three regressions (inverse L2 strength
    ``c``), cross-validated by dialogue."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import GroupKFold

    y = np.array([labels.index(str(v)) for v in table["label"]])
    n = len(labels)
    turns = neighbour_turns(table, probs)
    previous = np.hstack([turns[:, :3 * n], turns[:, 4 * n:4 * n + 2]])
    groups = context.dialogue_ids(table)
    out = {"the ensemble as it is": probs}
    for name, x in (("regression: this turn", turns[:, :n]), ("regression: + previous turns", previous),
                    ("regression: + previous and next turns", turns)):
        fitted = np.zeros_like(probs)
        for train_rows, test_rows in GroupKFold(folds).split(x, y, groups):
            model = LogisticRegression(C=c, max_iter=2000).fit(x[train_rows], y[train_rows])
            fitted[np.ix_(test_rows, model.classes_)] = model.predict_proba(x[test_rows])
        out[name] = fitted
    scores = {}
    for name, p in out.items():
        p = np.clip(p, 1e-9, 1.0)
        loss = float(log_loss(y, p / p.sum(1, keepdims=True), labels=range(len(labels))))
        f1 = compute_metrics([labels[i] for i in y], [labels[i] for i in p.argmax(1)], labels)["weighted_f1"]
        scores[name] = (loss, f1)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=meld_erc.DEFAULT_DATA, help="folder with MELD train/dev CSVs")
    parser.add_argument("--out", type=Path, required=True, help="meld_erc.py's cache folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 44])
    parser.add_argument("--c", type=float, nargs="+", default=[0.03, 0.3, 1.0],
                        help="inverse L2 strengths of the regressions (each one a set of rows)")
    args = parser.parse_args(argv)
    params = common.params_with()
    labels = list(params.labels)
    train, valid, dev = meld_erc.load_splits(args.data, False)
    tables = {"train": train, "valid": valid, "dev": dev}
    windows = new_model(params.objectives["text_finetune"], params).config.reading_windows
    rows = []
    for seed in args.seeds:
        _encoders, views, _summary = meld_erc.ensemble_for(seed, {}, tables, args.out)
        probs = views.probs("valid", windows)
        for c in args.c:
            for name, (loss, f1) in signal(valid, probs, labels, c).items():
                if c == args.c[0] or name.startswith("regression"):
                    rows.append([seed, name, "-" if name.startswith("the") else c, f"{loss:.4f}", f"{f1:.4f}"])
        common.log(f"seed {seed} done")
    table = common.markdown_table(["seed", "valid readings", "C", "log-loss", "weighted-F1"], rows, "rlrrr")
    common.write_page(__file__, "Dialogue signal left in the fine-tuned encoders' valid readings", table,
                      "Lower log-loss with the neighbouring turns would mean evidence the encoders left unused.")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
