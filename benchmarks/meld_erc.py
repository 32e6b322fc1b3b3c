"""Benchmark: the fine-tuned text encoders and the heads on them, on real MELD text.

Protocol (the pipeline's for a folder with MELD's train and dev CSVs only): a seeded 10 % of train
dialogues (seed 42) is valid and selects every model; dev is only reported; audio and video are
absent (masked). Per seed, the ``text_encoder`` params' encoders are fine-tuned once with the
library's ``fit`` (member k of seed s is the single encoder of seed s + k, cached once under
--out/seed<N>/), then every variant of ``final`` in VARIANTS is fitted on their vectors.

Columns, mean over the seeds: dev weighted-F1, its dialogue-bootstrap 95 % range and the paired
difference to ``text_finetune`` of the same settings and seeds, macro-F1, per-class F1, the valid
weighted-F1 that selected the row, the encoder and the precision that ran, encoder s/step (epoch
seconds, valid scoring included, over its optimiser steps), minutes (fine-tunes + head) and peak
RSS (this process's peak when the row was done, or its encoders' fine-tune, the larger).

  .venv/bin/python benchmarks/meld_erc.py --out /tmp/meld_erc --seeds 42 43
  ... --quick                        # a few hundred rows, 1 epoch: a smoke run in minutes
  ... --set text_encoder.precision=bf16 --set text_encoder.encoder=mpnet   # any params.yaml key (repeatable)
  ... --also /tmp/meld_erc_default   # that run's rows join this run's table (one page for several settings)
A second run on the same --out only fits heads; one with other text_encoder params is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from dataclasses import replace
from pathlib import Path

import common
import numpy as np
import pandas as pd
import yaml

from hlm12erc.config import TEXT_ENCODERS, Params
from hlm12erc.data import context, meld
from hlm12erc.features.store import FeatureSet
from hlm12erc.metrics import bootstrap_weighted_f1, compute_metrics
from hlm12erc.models.erc import ErcModel, mean_probabilities, predict_proba, softmax, text_views
from hlm12erc.runtime import effective_precision, select_device
from hlm12erc.training.fit import dialogue_subset, fit, new_model

DEFAULT_DATA = common.MELD_TEXT
MEDIA_DIMS = {"audio": 16, "visual": 16}  # absent in every row: the width only sizes a masked projection
QUICK = {"text_encoder": {"epochs": 1, "min_steps": 0}, "train": {"epochs": 3}}
VARIANTS = {  # row name -> overrides of objectives.final
    "final, fine-tuned text, no dialogue context": {"dialogue": "none"},
    "final + past-only dialogue context": {"dialogue": "past"},
    "final + bidirectional dialogue context": {"dialogue": "bidirectional"},
    "  ablation: past-only, the training window alone": {"dialogue": "past", "windows": []},
    "  ablation: bidirectional, not residual": {"dialogue": "bidirectional", "residual": False},
    "  ablation: bidirectional, no triplet term": {"dialogue": "bidirectional", "aux_loss": "none", "aux_weight": 0.0},
    "  ablation: bidirectional, 2 dialogue layers": {"dialogue": "bidirectional", "dialogue_layers": 2},
    "  ablation: bidirectional, full inverse-frequency class weights": {"dialogue": "bidirectional",
                                                                         "class_weight_power": 1.0},
    "  ablation: bidirectional, label smoothing 0.1": {"dialogue": "bidirectional", "label_smoothing": 0.1},
}


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
        valid_f1: float, **extra) -> dict:
    """Dev metrics of ``probs``, next to the valid weighted-F1 that selected the model (``extra``: the run's
    setting, encoder, precision, step_s, peak_rss_mib)."""
    metrics = metrics_of(dev, probs, labels)
    return {"name": name, "seed": seed, "weighted_f1": metrics["weighted_f1"], "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
            "train_minutes": minutes, "valid_weighted_f1": valid_f1, "predicted": probs.argmax(1).tolist(), **extra}


def encoders_for(seed: int, params: Params, train: pd.DataFrame, valid: pd.DataFrame,
                 out: Path) -> tuple[ErcModel, dict]:
    """The seed's encoder (one member), fitted once and cached in ``out``, and its record (minutes, s/step, RSS)."""
    folder, path = out / "text_encoder", out / "text_encoder.json"
    settings = common.fields_of(params.text_encoder)
    if (folder / "config.json").exists() and path.exists():
        record = json.loads(path.read_text())
        saved, defaults = record.get("text_encoder", {}), common.fields_of(type(params.text_encoder)())
        changed = sorted(k for k, v in settings.items() if saved.get(k, defaults.get(k)) != v)  # a key newer than
        if changed:                                                                            # the record: default
            raise SystemExit(f"error: {folder} holds encoders trained with other text_encoder params "
                             f"({', '.join(changed)}); pass another --out for these settings")
        return ErcModel.load(folder), record
    out.mkdir(parents=True, exist_ok=True)
    model = new_model(TEXT_ENCODERS, params)

    def on_epoch(r: dict) -> None:
        common.log(f"seed {seed} {r['part']} epoch {r['epoch']}: train loss {r['train_loss']:.4f}, valid "
                   f"weighted-F1 {r['valid_weighted_f1']:.4f} (macro {r['valid_macro_f1']:.4f})")

    with common.timed() as t:
        fit(model, train, valid, None, None, params, on_epoch=on_epoch)
    enc = params.text_encoder
    steps = math.ceil(math.ceil(model.info["encoder0"]["n_train"] / enc.batch_size) / enc.grad_accum)
    pd.DataFrame(model.info.pop("history")).to_csv(out / "encoder_history.csv", index=False, float_format="%.6f")
    model.save(folder)
    record = {"train_minutes": t.seconds / 60, "step_seconds": model.timings["encoder0_epoch_seconds"] / steps,
              "peak_rss_mib": common.peak_rss_mib(), "info": model.info, "text_encoder": settings}
    path.write_text(json.dumps(record, indent=1, default=str))
    return model, record


class TextViews:
    """The text views of a seed's members on each table through every one of ``windows`` (the training window
    first), computed once per (member, table) and cached in the member's seed folder; encoder-major as the
    library's ``text_views``."""

    def __init__(self, members: list[ErcModel], folders: list[Path], tables: dict[str, pd.DataFrame],
                 windows: list[tuple[int, int]]):
        self.members, self.folders, self.tables, self.windows = members, folders, tables, windows
        self.cache: dict[tuple[int, str], dict[str, np.ndarray]] = {}

    def _member(self, k: int, name: str) -> dict[str, np.ndarray]:
        if (k, name) not in self.cache:
            path = self.folders[k] / f"views_{name}_{'_'.join(f'{p}-{f}' for p, f in self.windows)}.npz"
            if not path.exists():
                model = self.members[k]
                reader = ErcModel(replace(model.config, windows=[list(w) for w in self.windows[1:]]),
                                  model.encoders, model.tokenizer)
                assert reader.config.reading_windows == self.windows, "the training window must come first"
                logits, pooled = text_views(reader, self.tables[name], 64, select_device("auto"))
                np.savez(path, logits=np.stack(logits), pooled=np.stack(pooled))
            self.cache[k, name] = dict(np.load(path))
        return self.cache[k, name]

    def get(self, name: str, windows: list[tuple[int, int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(logits, pooled)`` of table ``name`` through every member, each reading ``windows``."""
        saved = [self._member(k, name) for k in range(len(self.members))]
        picks = [(s, self.windows.index(tuple(w))) for s in saved for w in windows]
        return [s["logits"][i] for s, i in picks], [s["pooled"][i] for s, i in picks]

    def probs(self, name: str, windows: list[tuple[int, int]]) -> np.ndarray:
        """``text_finetune``'s probabilities on table ``name``: every view's softmax, averaged."""
        return mean_probabilities([softmax(lg) for lg in self.get(name, windows)[0]])

    def for_model(self, model: ErcModel) -> dict[str, tuple]:
        """What ``fit`` and prediction read: train through the training window alone."""
        windows = model.config.reading_windows
        return {"train": self.get("train", windows[:1]), "valid": self.get("valid", windows),
                "dev": self.get("dev", windows)}


def ensemble_for(seed: int, overrides: dict, tables: dict[str, pd.DataFrame],
                 root: Path) -> tuple[ErcModel, TextViews, dict]:
    """The seed's ``members`` encoders, their text views on ``tables``, and their total minutes, mean s/step
    and peak RSS. Member k of seed s is the single encoder of seed s + k, cached in ``root/seed<s+k>/``."""
    params = common.params_with(overrides)
    members, records = [], []
    for k in range(params.text_encoder.members):
        single = common.params_with(common.merged(overrides, {"text_encoder": {"members": 1},
                                                              "train": {"seed": seed + k}}))
        model, record = encoders_for(seed + k, single, tables["train"], tables["valid"], root / f"seed{seed + k}")
        members.append(model)
        records.append(record)
    first = members[0]
    info = {f"encoder{i}": m.info["encoder0"] for i, m in enumerate(members)}
    model = ErcModel(replace(first.config, members=len(members)), [e for m in members for e in m.encoders],
                     first.tokenizer, info=info)
    enc = params.text_encoder
    windows = list(dict.fromkeys([(enc.past_turns, enc.future_turns)] + [
        tuple(w) for name in ("text_finetune", "final") for w in params.objectives[name].windows]))
    steps = [r["step_seconds"] for r in records if r.get("step_seconds")]
    peaks = [r["peak_rss_mib"] for r in records if r.get("peak_rss_mib")]
    summary = {"minutes": sum(r["train_minutes"] for r in records), "step_s": float(np.mean(steps)) if steps else None,
               "peak_rss_mib": max(peaks, default=0.0)}
    return model, TextViews(members, [root / f"seed{seed + k}" for k in range(len(members))], tables, windows), summary


def run_seed(seed: int, overrides: dict, setting: str, tables: dict[str, pd.DataFrame], root: Path,
             only: list[str] | None) -> list[dict]:
    seeded = common.merged(overrides, {"train": {"seed": seed}})
    params = common.params_with(seeded)
    labels, (train, valid, dev) = list(params.labels), (tables["train"], tables["valid"], tables["dev"])
    encoders, views, summary = ensemble_for(seed, overrides, tables, root)
    common.log(f"seed {seed}: {encoders.config.n_encoders} encoder(s) ready ({summary['minutes']:.1f} min)")
    precision = effective_precision(params.text_encoder.precision, select_device(params.train.device))

    def extra() -> dict:
        return {"setting": setting, "encoder": params.text_encoder.encoder, "precision": precision,
                "step_s": summary["step_s"], "peak_rss_mib": max(summary["peak_rss_mib"], common.peak_rss_mib())}

    windows = new_model(params.objectives["text_finetune"], params).config.reading_windows
    readings = [(f"text_finetune ({encoders.config.n_encoders} encoder(s), {len(windows)} window(s))", windows)]
    if len(windows) > 1:
        readings.append(("  ablation: text_finetune, the training window alone", windows[:1]))
    rows = []
    for name, read in readings:
        rows.append(row(name, seed, dev, views.probs("dev", read), labels, summary["minutes"],
                        metrics_of(valid, views.probs("valid", read), labels)["weighted_f1"], **extra()))
        common.log(f"seed {seed}: {name.strip()}: dev weighted-F1 {rows[-1]['weighted_f1']:.4f}; "
                   f"valid {rows[-1]['valid_weighted_f1']:.4f}")
    features = {name: absent_media(t) for name, t in tables.items()}
    for name, changes in VARIANTS.items():
        if only and not any(key in name for key in only):
            continue
        objective = common.params_with(common.merged(seeded, {"objectives": {"final": changes}})).objectives["final"]
        with common.timed() as t:
            model = new_model(objective, params, {"text": 1, **MEDIA_DIMS})
            seen = views.for_model(model)
            fit(model, train, valid, features["train"], features["valid"], params, encoders_from=encoders,
                progress=False, views={"train": seen["train"], "valid": seen["valid"]})
        probs = predict_proba(model, dev, features["dev"], 256, views=seen["dev"])
        rows.append(row(name, seed, dev, probs, labels, summary["minutes"] + t.seconds / 60,
                        model.info["best_valid_weighted_f1"], **extra()))
        common.log(f"seed {seed}: {name.strip()}: dev weighted-F1 {rows[-1]['weighted_f1']:.4f} (macro "
                   f"{rows[-1]['macro_f1']:.4f}); valid {model.info['best_valid_weighted_f1']:.4f} at head epoch "
                   f"{model.info['head']['best_epoch']}; head {t.seconds / 60:.1f} min")
    return rows


def key(r: dict) -> tuple[str, str]:
    return r.get("setting", ""), r["name"]


def intervals(rows: list[dict], dev: pd.DataFrame, labels: list[str], resamples: int = 1000) -> dict[tuple, tuple]:
    """Per (setting, row name): the 95 % interval of its seed-mean dev weighted-F1 and of its paired difference to
    ``text_finetune`` of the same setting and seeds (None without one), over bootstrap resamples of dev's
    dialogues."""
    y = np.array([labels.index(str(v)) for v in dev["label"]])
    scores = bootstrap_weighted_f1(y, [r["predicted"] for r in rows], context.dialogue_ids(dev), len(labels),
                                   resamples)
    reference = {(key(r)[0], r["seed"]): i for i, r in enumerate(rows) if r["name"].startswith("text_finetune")}
    out = {}
    for group in dict.fromkeys(map(key, rows)):
        members = [i for i, r in enumerate(rows) if key(r) == group]
        paired = [(i, reference[group[0], rows[i]["seed"]]) for i in members
                  if (group[0], rows[i]["seed"]) in reference]
        delta = None
        if len(paired) == len(members):
            diff = (scores[:, [i for i, _ in paired]] - scores[:, [j for _, j in paired]]).mean(1)
            delta = (float(np.mean([rows[i]["weighted_f1"] - rows[j]["weighted_f1"] for i, j in paired])),
                     np.percentile(diff, [2.5, 97.5]))
        out[group] = (np.percentile(scores[:, members].mean(1), [2.5, 97.5]), delta)
    return out


def table_markdown(rows: list[dict], labels: list[str], dev: pd.DataFrame | None = None) -> str:
    """The table, mean over seeds per (setting, row name); with ``dev``, the dialogue-bootstrap 95 % intervals too."""
    spans = intervals(rows, dev, labels) if dev is not None else {}
    head = ["model", "seeds", "weighted-F1", *(["dev 95% CI", "vs text_finetune (95% CI)"] if spans else []),
            "macro-F1", *labels, "valid wF1", "encoder", "precision", "encoder s/step", "minutes", "peak RSS MiB",
            "settings"]
    body = []
    for group in dict.fromkeys(map(key, rows)):
        rs = [r for r in rows if key(r) == group]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("weighted_f1", "macro_f1", "valid_weighted_f1",
                                                                "train_minutes")}
        ci = []
        if spans:
            (low, high), delta = spans[group]
            ci = [f"{low:.3f}–{high:.3f}", "-" if delta is None else "(reference)" if group[1].startswith(
                "text_finetune") else f"{delta[0]:+.3f} ({delta[1][0]:+.3f}, {delta[1][1]:+.3f})"]
        spread = f" ± {np.std([r['weighted_f1'] for r in rs]):.3f}" if len(rs) > 1 else ""
        step, peak = rs[0].get("step_s"), max(r.get("peak_rss_mib") or 0.0 for r in rs)
        body.append([group[1].strip(), "/".join(str(r["seed"]) for r in rs), f"{mean['weighted_f1']:.3f}{spread}",
                     *ci, f"{mean['macro_f1']:.3f}",
                     *(f"{np.mean([r['per_class_f1'][c] for r in rs]):.3f}" for c in labels),
                     f"{mean['valid_weighted_f1']:.3f}", rs[0].get("encoder", "-"), rs[0].get("precision", "-"),
                     f"{step:.2f}" if step else "-", f"{mean['train_minutes']:.1f}", f"{peak:.0f}" if peak else "-",
                     group[0]])
    return common.markdown_table(head, body, "l" + "r" * (len(head) - 7) + "llrrrl")


def parse_overrides(items: list[str]) -> dict:
    """``a.b=value`` items as a nested mapping (values parsed as YAML; ``5e-5``, a string in YAML 1.1, as a float)."""
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set wants key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        node = out
        *parents, leaf = name.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MELD train/dev CSVs")
    parser.add_argument("--out", type=Path, required=True, help="folder for the cache and results.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--quick", action="store_true", help="a few hundred rows, 1 encoder epoch (smoke run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override, repeatable (e.g. --set text_encoder.precision=bf16)")
    parser.add_argument("--only", nargs="*", default=None, help="fit only the variants whose name holds one of these")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="--out folders of earlier runs whose rows "
                        "join the table")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    if args.quick:
        overrides = common.merged(QUICK, overrides)
    params = common.params_with(overrides)
    setting = " ".join(args.overrides) or "params.yaml"
    setting += " (--quick)" if args.quick else ""
    earlier = [json.loads((d / "results.json").read_text(encoding="utf-8")) for d in args.also]
    if any(e["quick"] != args.quick for e in earlier):
        raise SystemExit("error: --also names a run with another --quick setting (another dev subset); drop it")
    train, valid, dev = load_splits(args.data, args.quick)
    tables = {"train": train, "valid": valid, "dev": dev}
    common.log(f"train {len(train)} rows / {train['dialogue'].nunique()} dialogues, valid {len(valid)}, dev "
               f"{len(dev)}; text_encoder {common.fields_of(params.text_encoder)}")
    labels = list(params.labels)
    majority = np.eye(len(labels))[labels.index(train["label"].value_counts().idxmax())]
    rows = [row("majority class", 0, dev, np.tile(majority, (len(dev), 1)), labels, 0.0,
                metrics_of(valid, np.tile(majority, (len(valid), 1)), labels)["weighted_f1"], setting=setting)]
    for seed in args.seeds:
        rows += run_seed(seed, overrides, setting, tables, args.out, args.only)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"quick": args.quick, "rows": rows, "overrides": overrides},
                                                          indent=1), encoding="utf-8")
    table = table_markdown([r for e in earlier for r in e["rows"]] + rows, labels, dev)
    notes = (f"Real MELD text (`{common.repo_relative(str(args.data))}`): train {len(train)} rows, valid (10 % of "
             f"train dialogues, seed 42) {len(valid)}, dev {len(dev)}. Minutes and peak RSS are of this machine; see "
             "the module docstring for every column.")
    common.write_page(__file__, "Real MELD text: the fine-tuned encoders and the heads on them", table, notes,
                      smoke=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
