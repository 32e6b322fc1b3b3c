"""Benchmark: the fine-tuned text model and the headline model with dialogue context on real MELD text.

Protocol (the pipeline's, for a folder with only MELD's train and dev CSVs): a seeded 10 % of
train *dialogues* (seed 42) is held out as valid and selects every model; dev is the test split
and is only reported. Audio and video are absent (text-only CSVs): the multimodal heads see the
audio/visual modalities masked, as the pipeline does on such data.

Per seed, the text encoders are fine-tuned once (``text_encoder`` params of params.yaml, through
the library's ``ErcModel.fit``), then every head variant is fitted on their vectors. With
``text_encoder.members`` = K, seed s's ensemble is the single encoders of seeds s .. s+K-1 (the
library seeds member k with s + k), each cached once under --out/seed<N>/:

  * majority class;
  * ``text_finetune`` - the encoders' own classifiers (probabilities averaged over the encoders);
  * ``final`` variants - the ``final`` objective of params.yaml with ``dialogue`` none (one head per
    utterance), ``past`` or ``bidirectional``, and ablations (not residual, no triplet term, 2 layers).

The table gives dev weighted-F1, accuracy, macro-F1, per-class F1 and train minutes (the encoders'
minutes are counted in every row that uses them) per seed, then the mean over the seeds.

Usage (from the repo root):
  .venv/bin/python benchmarks/meld_erc.py --out /tmp/meld_erc --seeds 42 43
  ... --quick                        # a few hundred rows, 1 epoch: a smoke run in minutes
  ... --set text_encoder.epochs=5    # any params.yaml override (repeatable)
  ... --set text_encoder.members=1   # one encoder per seed instead of the default ensemble
Encoders and their text vectors are cached under --out/seed<N>/, so a second run only fits heads;
a folder trained with other text_encoder params is refused (use another --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hlm12erc.config import TEXT_ENCODERS, ObjectiveConfig, Params, load_params, params_from_dict  # noqa: E402
from hlm12erc.data import context, meld  # noqa: E402
from hlm12erc.features.store import FeatureSet  # noqa: E402
from hlm12erc.metrics import bootstrap_weighted_f1, compute_metrics  # noqa: E402
from hlm12erc.models.erc import ErcModel, mean_probabilities, predict_proba, softmax, text_views  # noqa: E402
from hlm12erc.runtime import select_device  # noqa: E402
from hlm12erc.training.fit import dialogue_subset, fit, new_model  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "meld-text"
MEDIA_DIMS = {"audio": 16, "visual": 16}  # absent in every row: the width only sizes a masked projection


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_splits(data: Path, quick: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train_csv, dev_csv = data / "train_sent_emo.csv", data / "dev_sent_emo.csv"
    missing = [str(p) for p in (train_csv, dev_csv) if not p.exists()]
    if missing:
        raise SystemExit(f"error: MELD text CSVs not found: {missing}; pass --data pointing at a folder with "
                         f"train_sent_emo.csv and dev_sent_emo.csv (default {DEFAULT_DATA})")
    full = meld.to_table(meld.read_meld_csv(train_csv), "train", "train")
    held = meld.holdout_dialogues(full, 0.1, seed=42)  # the protocol's split: fixed, whatever --seeds
    train, valid = full[~held].reset_index(drop=True), full[held].reset_index(drop=True)
    valid["split"] = "valid"
    dev = meld.to_table(meld.read_meld_csv(dev_csv), "test", "dev")
    if quick:
        train, valid, dev = (dialogue_subset(t, n, 0).reset_index(drop=True)
                             for t, n in ((train, 400), (valid, 150), (dev, 200)))
    return train, valid, dev


def absent_media(table: pd.DataFrame) -> FeatureSet:
    """What featurize gives a text-only table: text present, audio/visual zero and masked."""
    n = len(table)
    arrays = {"text": np.zeros((n, 1), np.float32), **{m: np.zeros((n, d), np.float32) for m, d in MEDIA_DIMS.items()}}
    mask = np.zeros((n, 3), dtype=bool)
    mask[:, 0] = [bool(str(t).strip()) for t in table["x_text"]]
    index = table[["clip_id", "label", "dialogue", "sequence"]].astype({"clip_id": str})
    return FeatureSet(arrays, mask, np.zeros(n, dtype=bool), index)


def metrics_of(table: pd.DataFrame, probs: np.ndarray, labels: list[str]) -> dict:
    """``compute_metrics`` of the argmax of ``probs`` against ``table``'s labels."""
    return compute_metrics(table["label"].astype(str).tolist(), [labels[i] for i in probs.argmax(1)], labels)


def row(name: str, seed: int, dev: pd.DataFrame, probs: np.ndarray, labels: list[str], minutes: float,
        valid_f1: float) -> dict:
    """Dev metrics of ``probs``, next to the valid weighted-F1 that selected the model."""
    metrics = metrics_of(dev, probs, labels)
    return {"name": name, "seed": seed, "weighted_f1": metrics["weighted_f1"], "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
            "train_minutes": minutes, "valid_weighted_f1": valid_f1, "predicted": probs.argmax(1).tolist()}


def encoders_for(seed: int, params: Params, train: pd.DataFrame, valid: pd.DataFrame,
                 out: Path) -> tuple[ErcModel, float]:
    """The seed's encoder (one member), fitted once and cached in ``out``."""
    folder, record = out / "text_encoder", out / "text_encoder.json"
    settings = {k: v for k, v in asdict(params.text_encoder).items() if k != "eval_batch_size"}
    if (folder / "config.json").exists() and record.exists():
        saved = json.loads(record.read_text())
        changed = sorted(k for k, v in saved.get("text_encoder", settings).items() if settings.get(k) != v)
        if changed:
            raise SystemExit(f"error: {folder} holds encoders trained with other text_encoder params "
                             f"({', '.join(changed)}); pass another --out for these settings")
        return ErcModel.load(folder), saved["train_minutes"]
    out.mkdir(parents=True, exist_ok=True)
    model = new_model(TEXT_ENCODERS, params)
    started = time.perf_counter()

    def on_epoch(r: dict) -> None:
        log(f"seed {seed} {r['part']} epoch {r['epoch']}: train loss {r['train_loss']:.4f}, valid weighted-F1 "
            f"{r['valid_weighted_f1']:.4f} (macro {r['valid_macro_f1']:.4f})")

    fit(model, train, valid, None, None, params, on_epoch=on_epoch)
    minutes = (time.perf_counter() - started) / 60
    history = model.info.pop("history")
    model.save(folder)
    pd.DataFrame(history).to_csv(out / "encoder_history.csv", index=False, float_format="%.6f")
    record.write_text(json.dumps({"train_minutes": minutes, "info": model.info, "text_encoder": settings}, indent=1,
                                 default=str))
    return model, minutes


class TextViews:
    """``text_views`` of the seed's ensemble for any context windows, each (member, table, window)
    computed once and cached in that member's seed folder; assembled encoder-major like the library's."""

    def __init__(self, members: list[ErcModel], folders: list[Path], tables: dict[str, pd.DataFrame]):
        self.members, self.folders, self.tables = members, folders, tables

    def _member(self, k: int, name: str, window: tuple[int, int]) -> tuple:
        model, cfg = self.members[k], self.members[k].config.encoder
        trained = (cfg.past_turns, cfg.future_turns)
        suffix = "" if window == trained else f"_window{window[0]}-{window[1]}"
        path = self.folders[k] / f"views_{name}{suffix}.npz"
        if not path.exists():
            reader = ErcModel(replace(model.config, encoder=replace(cfg, past_turns=window[0], future_turns=window[1]),
                                      windows=[]), model.encoders, model.tokenizer)
            logits, pooled = text_views(reader, self.tables[name], 64, select_device("auto"))
            np.savez(path, logits=np.stack(logits), pooled=np.stack(pooled))
        saved = np.load(path)
        return list(saved["logits"]), list(saved["pooled"])

    def get(self, name: str, windows: list[tuple[int, int]]) -> tuple:
        """The views of table ``name`` through every encoder, each reading ``windows`` (encoder-major)."""
        logits, pooled = [], []
        for k in range(len(self.members)):
            per_window = [self._member(k, name, w) for w in windows]
            for e in range(len(per_window[0][0])):
                for lg, pl in per_window:
                    logits.append(lg[e])
                    pooled.append(pl[e])
        return logits, pooled

    def probs(self, name: str, windows: list[tuple[int, int]]) -> np.ndarray:
        """``text_finetune``'s probabilities on table ``name``: every view's softmax, averaged."""
        logits, _pooled = self.get(name, windows)
        return mean_probabilities([softmax(lg) for lg in logits])

    def for_model(self, model: ErcModel) -> dict[str, tuple]:
        """What ``model.fit`` and prediction would read: train through the training window alone."""
        windows = model.config.reading_windows
        return {"train": self.get("train", windows[:1]), "valid": self.get("valid", windows),
                "dev": self.get("dev", windows)}


def ensemble_for(seed: int, params: Params, tables: dict[str, pd.DataFrame],
                 root: Path) -> tuple[ErcModel, TextViews, float]:
    """The seed's ``members`` encoders and their text views on ``tables``.

    Member k of seed s is exactly what one member of seed s + k trains (``fit_encoders``
    seeds encoder k with s + k), so each member is fitted and cached once in ``root/seed<s+k>/``
    and shared by every seed and ``members`` setting that uses it."""
    enc = params.text_encoder
    single = replace(params, text_encoder=replace(enc, members=1))
    members, minutes = [], 0.0
    for k in range(enc.members):
        part_params = replace(single, train=replace(params.train, seed=seed + k))
        model, part_minutes = encoders_for(seed + k, part_params, tables["train"], tables["valid"],
                                           root / f"seed{seed + k}")
        members.append(model)
        minutes += part_minutes
    first = members[0]
    reports = [m.info[f"encoder{j}"] for m in members for j in range(m.config.n_encoders)]
    info = {f"encoder{i}": report for i, report in enumerate(reports)}
    model = ErcModel(replace(first.config, members=enc.members), [e for m in members for e in m.encoders],
                     first.tokenizer, info=info)
    return model, TextViews(members, [root / f"seed{seed + k}" for k in range(enc.members)], tables), minutes


def variants(params: Params) -> list[tuple[str, ObjectiveConfig]]:
    final = params.objectives["final"]
    return [
        ("final, fine-tuned text, no dialogue context", replace(final, dialogue="none")),
        ("final + past-only dialogue context", replace(final, dialogue="past")),
        ("final + bidirectional dialogue context", replace(final, dialogue="bidirectional")),
        ("  ablation: past-only, the training window alone", replace(final, dialogue="past", windows=[])),
        ("  ablation: bidirectional, not residual", replace(final, dialogue="bidirectional", residual=False)),
        ("  ablation: bidirectional, no triplet term", replace(final, dialogue="bidirectional", aux_loss="none",
                                                                aux_weight=0.0)),
        ("  ablation: bidirectional, 2 dialogue layers", replace(final, dialogue="bidirectional", dialogue_layers=2)),
        ("  ablation: bidirectional, full inverse-frequency class weights",
         replace(final, dialogue="bidirectional", class_weight_power=1.0)),
        ("  ablation: bidirectional, label smoothing 0.1",
         replace(final, dialogue="bidirectional", label_smoothing=0.1)),
    ]


def run_seed(seed: int, params: Params, train: pd.DataFrame, valid: pd.DataFrame, dev: pd.DataFrame,
             root: Path, only: list[str] | None) -> list[dict]:
    params = replace(params, train=replace(params.train, seed=seed))
    labels = list(params.labels)
    encoders, cached_views, encoder_minutes = ensemble_for(seed, params, {"train": train, "valid": valid, "dev": dev},
                                                         root)
    log(f"seed {seed}: {encoders.config.n_encoders} encoder(s) ready ({encoder_minutes:.1f} min)")
    windows = new_model(params.objectives["text_finetune"], params).config.reading_windows

    readings = [(f"text_finetune ({encoders.config.n_encoders} encoder(s), {len(windows)} window(s))", windows)]
    if len(windows) > 1:
        readings.append(("  ablation: text_finetune, the training window alone", windows[:1]))
    rows = []
    for name, read in readings:
        rows.append(row(name, seed, dev, cached_views.probs("dev", read), labels, encoder_minutes,
                        metrics_of(valid, cached_views.probs("valid", read), labels)["weighted_f1"]))
        log(f"seed {seed}: {name.strip()}: dev weighted-F1 {rows[-1]['weighted_f1']:.4f}; "
            f"valid {rows[-1]['valid_weighted_f1']:.4f}")
    features = {name: absent_media(t) for name, t in (("train", train), ("valid", valid), ("dev", dev))}
    for name, objective in variants(params):
        if only and not any(key in name for key in only):
            continue
        started = time.perf_counter()
        model = new_model(objective, params, {"text": 1, **MEDIA_DIMS})
        views = cached_views.for_model(model)
        fit(model, train, valid, features["train"], features["valid"], params, encoders_from=encoders,
            progress=False, views={"train": views["train"], "valid": views["valid"]})
        head_minutes = (time.perf_counter() - started) / 60
        probs = predict_proba(model, dev, features["dev"], 256, views=views["dev"])
        rows.append(row(name, seed, dev, probs, labels, encoder_minutes + head_minutes,
                        model.info["best_valid_weighted_f1"]))
        log(f"seed {seed}: {name}: dev weighted-F1 {rows[-1]['weighted_f1']:.4f} (macro {rows[-1]['macro_f1']:.4f}); "
            f"valid {model.info['best_valid_weighted_f1']:.4f} at head epoch {model.info['head']['best_epoch']}; "
            f"head {head_minutes:.1f} min")
    return rows



def intervals(rows: list[dict], dev: pd.DataFrame, labels: list[str], resamples: int = 1000) -> dict[str, tuple]:
    """Per row name: the 95 % interval of its seed-mean dev weighted-F1 and of its paired difference to
    ``text_finetune`` on the same seeds (None without one), over bootstrap resamples of dev's dialogues."""
    y = np.array([labels.index(str(v)) for v in dev["label"]])
    scores = bootstrap_weighted_f1(y, [r["predicted"] for r in rows], context.dialogue_ids(dev), len(labels),
                                   resamples)
    reference = {r["seed"]: i for i, r in enumerate(rows) if r["name"].startswith("text_finetune")}
    out = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        members = [i for i, r in enumerate(rows) if r["name"] == name]
        mean = scores[:, members].mean(1)
        paired = [(i, reference[rows[i]["seed"]]) for i in members if rows[i]["seed"] in reference]
        delta = (scores[:, [i for i, _ in paired]] - scores[:, [j for _, j in paired]]).mean(1) \
            if len(paired) == len(members) else None
        out[name] = (np.percentile(mean, [2.5, 97.5]), None if delta is None else
                     (float(np.mean([rows[i]["weighted_f1"] - rows[j]["weighted_f1"] for i, j in paired])),
                      np.percentile(delta, [2.5, 97.5])))
    return out


def table_markdown(rows: list[dict], labels: list[str], dev: pd.DataFrame | None = None) -> str:
    """The table, mean over seeds per row name; with ``dev``, the dialogue-bootstrap 95 % intervals too."""
    spans = intervals(rows, dev, labels) if dev is not None else {}
    head = ["model", "seeds", "weighted-F1", *(["dev 95% CI", "vs text_finetune (95% CI)"] if spans else []),
            "accuracy", "macro-F1", *labels, "valid wF1", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        ci = []
        if spans:
            (low, high), delta = spans[name]
            ci = [f"{low:.3f}–{high:.3f}", "-" if delta is None else "(reference)" if name.startswith(
                "text_finetune") else f"{delta[0]:+.3f} ({delta[1][0]:+.3f}, {delta[1][1]:+.3f})"]
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("weighted_f1", "accuracy", "macro_f1",
                                                                   "valid_weighted_f1", "train_minutes")}
        seeds = "/".join(str(r["seed"]) for r in group)
        spread = f" ± {np.std([r['weighted_f1'] for r in group]):.3f}" if len(group) > 1 else ""
        lines.append("| " + " | ".join([
            name.strip(), seeds, f"{mean['weighted_f1']:.3f}{spread}", *ci, f"{mean['accuracy']:.3f}",
            f"{mean['macro_f1']:.3f}", *(f"{np.mean([r['per_class_f1'][c] for r in group]):.3f}" for c in labels),
            f"{mean['valid_weighted_f1']:.3f}", f"{mean['train_minutes']:.1f}"]) + " |")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict:
    """``a.b=value`` items as a nested mapping (values parsed as YAML, numbers first)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set wants key=value, got {item!r}")
        key, value = item.split("=", 1)
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            for cast in (int, float):
                try:
                    parsed = cast(parsed)
                    break
                except ValueError:
                    continue
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def merged(base: dict, over: dict) -> dict:
    return {**base, **{k: merged(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in over.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MELD train/dev CSVs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the cache, table.md and results.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--quick", action="store_true", help="a few hundred rows, 1 encoder epoch (smoke run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override, repeatable (e.g. --set text_encoder.epochs=5)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="fit only the variants whose name contains one of these")
    args = parser.parse_args(argv)

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    overrides = parse_overrides(args.overrides)
    if args.quick:
        overrides = merged({"text_encoder": {"epochs": 1, "min_steps": 0}, "train": {"epochs": 3}}, overrides)
    params = params_from_dict(merged(raw, overrides)) if overrides else load_params(REPO / "params.yaml")
    train, valid, dev = load_splits(args.data, args.quick)
    log(f"train {len(train)} rows / {train['dialogue'].nunique()} dialogues, valid {len(valid)}, dev {len(dev)}; "
        f"text_encoder {asdict(params.text_encoder)}")
    majority = train["label"].value_counts().idxmax()
    def constant(table: pd.DataFrame) -> np.ndarray:
        return np.eye(len(params.labels))[[params.labels.index(majority)] * len(table)]

    rows = [row("majority class", 0, dev, constant(dev), list(params.labels), 0.0,
                metrics_of(valid, constant(valid), list(params.labels))["weighted_f1"])]
    for seed in args.seeds:
        rows += run_seed(seed, params, train, valid, dev, args.out, args.only)
        table = table_markdown(rows, list(params.labels), dev)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
        (args.out / "results.json").write_text(json.dumps({"quick": args.quick, "rows": rows, "overrides": overrides},
                                                          indent=1), encoding="utf-8")
    print("\n" + table + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
