"""Benchmark: text-only ERC on the real MELD train/dev CSVs.

Protocol: a seeded 10% of train *dialogues* is held out as valid (``meld.holdout_dialogues``,
seed 42), models are selected on valid, dev is the test split and is only reported.

Rows of the printed table:
  * majority class (train's most frequent label);
  * frozen MiniLM + context + MLP head: each turn encoded once by the frozen encoder
    (mean pooled, ``Speaker: text``), features = [target, previous turn, the one before],
    a one-hidden-layer MLP trained with early stopping on valid weighted-F1;
  * fine-tuned MiniLM (:mod:`hlm12erc.training.finetune`, default ``FinetuneConfig``
    unless overridden with ``--set key=value``).

Usage (from the repo root):
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/meld_text.py --out /tmp/meld_text
  ... --quick              # small subset, 1 epoch: a smoke run in a few minutes
  ... --set epochs=4 --set future_turns=1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hlm12erc.data import meld  # noqa: E402
from hlm12erc.config import resolve_jobs  # noqa: E402
from hlm12erc.training import finetune as ft  # noqa: E402

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
DEFAULT_DATA = REPO.parent / "shared" / "meld-text"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- data
def load_splits(data: Path, seed: int, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train_csv, dev_csv = data / "train_sent_emo.csv", data / "dev_sent_emo.csv"
    missing = [str(p) for p in (train_csv, dev_csv) if not p.exists()]
    if missing:
        raise SystemExit(f"error: MELD text CSVs not found: {missing}. Pass --data pointing at a folder "
                         f"with train_sent_emo.csv and dev_sent_emo.csv (default {DEFAULT_DATA}).")
    full = meld.to_table(meld.read_meld_csv(train_csv), "train", "train")
    held = meld.holdout_dialogues(full, 0.1, seed=42)  # the protocol's split: fixed, not --seed
    train, valid = full[~held].reset_index(drop=True), full[held].reset_index(drop=True)
    valid["split"] = "valid"
    dev = meld.to_table(meld.read_meld_csv(dev_csv), "test", "dev")
    if quick:
        train = ft._subset(train, 600, seed).reset_index(drop=True)
        valid = ft._subset(valid, 200, seed).reset_index(drop=True)
        dev = ft._subset(dev, 250, seed).reset_index(drop=True)
    for name, table in (("train", train), ("valid", valid), ("dev", dev)):
        meld.check_labels(table, LABELS, name)
    return train, valid, dev


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, object]:
    labels = list(range(len(LABELS)))
    return {"weighted_f1": float(f1_score(y, pred, average="weighted", labels=labels, zero_division=0)),
            "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
            "per_class_f1": dict(zip(LABELS, map(float, f1_score(y, pred, average=None, labels=labels,
                                                                    zero_division=0))))}


# ----------------------------------------------------------------------------- majority
def run_majority(train: pd.DataFrame, dev: pd.DataFrame) -> dict[str, object]:
    y_train, y_dev = ft.encode_labels(train, LABELS), ft.encode_labels(dev, LABELS)
    majority = int(np.bincount(y_train, minlength=len(LABELS)).argmax())
    return {"name": "majority class", **scores(y_dev, np.full(len(y_dev), majority)),
            "train_minutes": 0.0, "utterances_per_s": None}


# ----------------------------------------------------------------------------- frozen encoder + MLP
@torch.no_grad()
def encode_turns(table: pd.DataFrame, tokenizer, encoder, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalised frozen embedding of each row's ``Speaker: text``."""
    texts = [ft.turn_text(s, t) for s, t in zip(table["speaker"], table["x_text"])]
    lengths = [len(t) for t in texts]
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for idx in ft.sorted_batches(lengths, batch_size):
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=128,
                          return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def context_features(table: pd.DataFrame, emb: np.ndarray, past: int = 2) -> np.ndarray:
    """[target, previous turn, the one before] (zeros where the dialogue has no such turn)."""
    feats = np.zeros((len(table), emb.shape[1] * (past + 1)), dtype=np.float32)
    for row, (rows, place) in enumerate(ft.dialogue_positions(table)):
        for k in range(past + 1):
            if place - k >= 0:
                feats[row, k * emb.shape[1]:(k + 1) * emb.shape[1]] = emb[rows[place - k]]
    return feats


def train_mlp(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, seed: int,
              epochs: int = 60, patience: int = 8) -> torch.nn.Module:
    """One hidden layer, dropout, sqrt-inverse-frequency weighted CE; best epoch on valid weighted-F1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(256, len(LABELS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    weights = ft.class_weights(y, len(LABELS), 0.5)
    xt, yt, xvt = torch.tensor(x), torch.tensor(y), torch.tensor(xv)
    best, best_state, stale = -1.0, None, 0
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 64)):
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx], weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            f1 = f1_score(yv, model(xvt).argmax(1).numpy(), average="weighted")
        if f1 > best:
            best, best_state, stale = f1, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    return model.eval()


def run_frozen(train: pd.DataFrame, valid: pd.DataFrame, dev: pd.DataFrame, seed: int) -> dict[str, object]:
    from transformers import AutoModel

    started = time.perf_counter()
    tokenizer = ft.load_tokenizer(ft.default_model_path())
    encoder = AutoModel.from_pretrained(ft.default_model_path(), add_pooling_layer=False).eval()
    x = context_features(train, encode_turns(train, tokenizer, encoder))
    xv = context_features(valid, encode_turns(valid, tokenizer, encoder))
    mlp = train_mlp(x, ft.encode_labels(train, LABELS), xv, ft.encode_labels(valid, LABELS), seed)
    train_seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    with torch.no_grad():
        pred = mlp(torch.from_numpy(context_features(dev, encode_turns(dev, tokenizer, encoder)))).argmax(1).numpy()
    infer = time.perf_counter() - t0
    return {"name": "frozen MiniLM + 2 prev turns + MLP head", **scores(ft.encode_labels(dev, LABELS), pred),
            "train_minutes": train_seconds / 60, "utterances_per_s": len(dev) / infer}


# ----------------------------------------------------------------------------- fine-tuned
def run_finetune(cfg: ft.FinetuneConfig, train: pd.DataFrame, valid: pd.DataFrame, dev: pd.DataFrame,
                 model_dir: Path) -> dict[str, object]:
    def on_epoch(row: dict) -> None:
        log("epoch " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    log(f"fine-tuning: {cfg}")
    summary = ft.train_finetune(cfg, train, valid, LABELS, model_dir, on_epoch=on_epoch, monitor={"dev": dev})
    loaded = ft.load_finetuned(model_dir)
    t0 = time.perf_counter()
    probs = ft.predict_proba(loaded, dev, batch_size=cfg.eval_batch_size)
    infer = time.perf_counter() - t0
    name = (f"fine-tuned MiniLM ({cfg.pooling} pool, {cfg.past_turns} past/{cfg.future_turns} future turns, "
            f"{cfg.loss}, best epoch {summary['best_epoch']}/{summary['epochs_run']})")
    return {"name": name, **scores(ft.encode_labels(dev, LABELS), probs.argmax(1)),
            "train_minutes": summary["train_seconds"] / 60, "utterances_per_s": len(dev) / infer,
            "best_epoch": summary["best_epoch"], "best_valid_weighted_f1": summary["best_valid_weighted_f1"],
            "history": summary["history"], "config": cfg.__dict__}


# ----------------------------------------------------------------------------- report
def markdown(rows: list[dict[str, object]]) -> str:
    head = ["model", "weighted-F1", "accuracy", "macro-F1", *LABELS, "train min", "infer utt/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["name"]), f"{r['weighted_f1']:.3f}", f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                 *(f"{r['per_class_f1'][label]:.3f}" for label in LABELS),
                 f"{r['train_minutes']:.1f}", "-" if r["utterances_per_s"] is None else f"{r['utterances_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set wants key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-5" as a string: numbers first
            for cast in (int, float):
                try:
                    parsed = cast(parsed)
                    break
                except ValueError:
                    continue
        out[key.strip()] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MELD train/dev CSVs")
    parser.add_argument("--quick", action="store_true", help="small subset, 1 epoch (smoke run)")
    parser.add_argument("--seed", type=int, default=42, help="training seed (the valid split is fixed at 42)")
    parser.add_argument("--out", type=Path, default=None, help="folder for table.md, results.json, history, model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="FinetuneConfig override, repeatable (e.g. --set epochs=4)")
    parser.add_argument("--skip-frozen", action="store_true", help="skip the frozen-encoder baseline")
    args = parser.parse_args(argv)

    overrides = parse_overrides(args.overrides)
    if args.quick:
        overrides = {"epochs": 1, **overrides}
    cfg = ft.FinetuneConfig.from_dict({**ft.FinetuneConfig().__dict__, "seed": args.seed, **overrides})

    train, valid, dev = load_splits(args.data, args.seed, args.quick)
    log(f"train {len(train)} rows / {train['dialogue'].nunique()} dialogues, valid {len(valid)} / "
        f"{valid['dialogue'].nunique()}, dev {len(dev)} / {dev['dialogue'].nunique()}; torch threads "
        f"{resolve_jobs(cfg.threads)}, cuda {torch.cuda.is_available()}")

    out = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    model_dir = (out / "model") if out is not None else Path(tempfile.mkdtemp(prefix="meld_text_"))

    # the fine-tuned model first: it is the row that matters, and the others are quick
    tuned = run_finetune(cfg, train, valid, dev, model_dir)
    log(f"fine-tuned: weighted-F1 {tuned['weighted_f1']:.3f} in {tuned['train_minutes']:.1f} min")
    if out is not None:
        (out / "finetune.json").write_text(json.dumps(tuned, indent=2, default=str), encoding="utf-8")
    rows = [run_majority(train, dev)]
    log(f"majority: weighted-F1 {rows[-1]['weighted_f1']:.3f}")
    if not args.skip_frozen:
        torch.set_num_threads(resolve_jobs(cfg.threads))
        rows.append(run_frozen(train, valid, dev, args.seed))
        log(f"frozen: weighted-F1 {rows[-1]['weighted_f1']:.3f} in {rows[-1]['train_minutes']:.1f} min")
    rows.append(tuned)

    table = markdown(rows)
    history = pd.DataFrame(tuned["history"])
    print("\n" + table + "\n", flush=True)
    print("fine-tuning history (valid selects, dev reported):\n" + history.to_string(index=False), flush=True)
    if out is not None:
        (out / "table.md").write_text(table + "\n", encoding="utf-8")
        (out / "results.json").write_text(json.dumps({"quick": args.quick, "seed": args.seed, "rows": rows,
                                                      "n": {"train": len(train), "valid": len(valid), "dev": len(dev)}},
                                                     indent=2, default=str), encoding="utf-8")
        history.to_csv(out / "history.csv", index=False)
        log(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'history.csv'}, model in {model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
