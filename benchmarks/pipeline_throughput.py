"""Predict latency of a conversation: the ``hlm12erc predict`` CLI cold, and the library's Predictor warm.

    python benchmarks/pipeline_throughput.py [--quick] [--out DIR]
        [--tables data/tables] [--clips data/raw/MELD.Raw] [--model models/headline]

The inputs are what ``make demo`` leaves: the conversation is the tables' first ``--turns`` rows
(speakers and texts, one dialogue), predicted text only and with one clip per turn (the first
``.mp4`` files under ``--clips`` with a video and an audio stream), by a trained model folder.
  * cold: ``hlm12erc predict`` in a subprocess, exec to exit (imports, model and MiniLM load, clip
    decoding, one prediction), median of ``--cold-repeats``;
  * warm: a fresh child process per setting: ``Predictor.load`` (load s), the first ``predict``
    (first s), one more discarded, then the median and p90 of ``--repeats`` ``predict`` calls.
Peak RSS is each process's own, imports and model loading included. Featurize throughput per
encoder is ``benchmarks/featurize_encoders.py``'s page. ``--quick``: 3 warm calls, one cold start
with clips only, and no page in docs/.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import common

SETUP_HINT = "run `make demo` first (it builds data/ and models/headline), or pass --tables/--clips/--model"
LABELS = {"text": "text only", "clips": "with clips"}


def child(spec: dict) -> dict:
    """Predictor API on one conversation: load, first call, then warm calls."""
    import pandas as pd
    import torch

    from hlm12erc.predict import Predictor
    from hlm12erc.runtime import select_device

    params = common.params_with(path=Path(spec["params"])) if spec["params"] else common.params_with()
    conversation = pd.DataFrame(spec["conversation"])
    with common.timed() as load:
        predictor = Predictor.load(spec["model"], params.extract, device=str(select_device(params.train.device)),
                                   eval_batch_size=params.runtime.eval_batch_size)
    with common.timed() as first:
        result = predictor.predict(conversation)
    predictor.predict(conversation)  # warm-up, discarded
    seconds = []
    for _ in range(spec["repeats"]):
        with common.timed() as t:
            result = predictor.predict(conversation)
        seconds.append(t.seconds)
    p90 = statistics.quantiles(seconds, n=10, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    return {"load_s": load.seconds, "first_s": first.seconds, "seconds": seconds,
            "median_s": statistics.median(seconds), "p90_s": p90, "used": sorted(set(result["used"])),
            "modalities": predictor.modalities,
            "threads": torch.get_num_threads(), "device": predictor.device}


def read_rows(tables: Path) -> list[dict]:
    paths = [tables / f"{s}.csv" for s in ("train", "valid", "test") if (tables / f"{s}.csv").is_file()]
    rows = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"error: no rows in {tables}/train.csv, valid.csv or test.csv; {SETUP_HINT}")
    return rows


def has_streams(path: Path) -> bool:
    try:
        import av

        with av.open(str(path)) as container:
            return bool(container.streams.video) and bool(container.streams.audio)
    except Exception:  # noqa: BLE001 - any unreadable clip is skipped
        return False


def pick_clips(clips_root: Path, count: int) -> list[Path]:
    """``count`` clips (cycled): the first mp4 files under ``clips_root`` with a video and an audio stream."""
    found = [p.resolve() for p in sorted(clips_root.rglob("*.mp4"))[:10 * count] if has_streams(p)][:count]
    if not found:
        raise SystemExit(f"error: no readable .mp4 clip (video + audio) under {clips_root}; {SETUP_HINT}")
    return [found[i % len(found)] for i in range(count)]


def conversation(rows: list[dict], turns: int, clips: list[Path] | None) -> list[dict]:
    """The first ``turns`` rows' speaker and text as one dialogue (cycled when the tables are shorter)."""
    return [{"speaker": rows[i % len(rows)].get("speaker", ""), "text": rows[i % len(rows)].get("x_text", ""),
             "clip": str(clips[i]) if clips else "", "dialogue": "0"} for i in range(turns)]


def cold_starts(turns: list[dict], model: Path, params: str | None, times: int, work: Path) -> list[tuple]:
    """(wall seconds, peak RSS MiB) of ``times`` runs of ``hlm12erc predict`` on ``turns``."""
    path = work / "conversation.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["speaker", "text", "clip", "dialogue"])
        writer.writeheader()
        writer.writerows(turns)
    command = [sys.executable, "-m", "hlm12erc.cli", "predict", str(path), "--model", str(model),
               "--out", str(work / "out.csv"), *(["--params", params] if params else [])]
    runs = []
    for _ in range(times):
        proc, seconds, peak = common.run_measured(command)
        if proc.returncode:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"error: `hlm12erc predict {path.name}` failed (exit {proc.returncode})")
        runs.append((seconds, peak))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=common.REPO / "data" / "tables", help="folder of 1NF tables")
    parser.add_argument("--clips", type=Path, default=common.REPO / "data" / "raw" / "MELD.Raw",
                        help="folder of .mp4 clips for the with-clips conversation (a MELD.Raw folder)")
    parser.add_argument("--model", type=Path, default=common.REPO / "models" / "headline", help="trained model folder")
    parser.add_argument("--params", default=None, help="params.yaml (default: the repo's)")
    parser.add_argument("--turns", type=int, default=10, help="turns of the predicted conversation")
    parser.add_argument("--repeats", type=int, default=None, help="warm predict calls per setting (20; quick 3)")
    parser.add_argument("--cold-repeats", type=int, default=None, help="CLI cold starts per setting (3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke setting: 3 warm calls, one CLI cold start "
                                                             "(with clips only)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json (all raw timings)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    repeats = args.repeats or (3 if args.quick else 20)
    cold_repeats = args.cold_repeats if args.cold_repeats is not None else (1 if args.quick else 3)
    rows = read_rows(args.tables)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"error: no trained model in {args.model}; {SETUP_HINT}")
    clips = pick_clips(args.clips, args.turns)
    results = []
    with tempfile.TemporaryDirectory(prefix="hlm12erc-bench-predict-") as work:
        for setting, turns in (("text", conversation(rows, args.turns, None)),
                               ("clips", conversation(rows, args.turns, clips))):
            common.log(f"warm Predictor, {LABELS[setting]}: {repeats} calls")
            spec = {"model": str(args.model.resolve()), "params": args.params, "conversation": turns,
                    "repeats": repeats}
            proc, _, peak = common.run_measured([sys.executable, __file__, "--child", json.dumps(spec)])
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"error: the warm predict child ({LABELS[setting]}) failed (exit {proc.returncode})")
            times = cold_repeats if setting == "clips" or not args.quick else 0
            common.log(f"CLI cold start, {LABELS[setting]}: {times} run(s)")
            cold = cold_starts(turns, args.model, args.params, times, Path(work))
            results.append({"setting": setting, "turns": len(turns), **json.loads(proc.stdout.strip().splitlines()[-1]),
                            "peak_rss_mib": peak, "cold": cold})
    table = common.markdown_table(
        ["conversation", "turns", "cold start s (CLI)", "CLI peak RSS MiB", "load s", "first call s",
         "warm median s", "warm p90 s", "warm turns/s", "peak RSS MiB"],
        [[LABELS[r["setting"]], r["turns"], f"{statistics.median(c[0] for c in r['cold']):.2f}" if r["cold"] else "-",
          f"{max(c[1] for c in r['cold']):.0f}" if r["cold"] else "-", f"{r['load_s']:.2f}", f"{r['first_s']:.3f}",
          f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}", f"{r['turns'] / r['median_s']:.1f}", f"{r['peak_rss_mib']:.0f}"]
         for r in results])
    first = results[0]
    notes = (f"Model `{common.repo_relative(str(args.model))}` ({'+'.join(first['modalities'])}), torch threads "
             f"{first['threads']}, device {first['device']}. load = `Predictor.load` (MiniLM loads inside the first "
             f"call); warm = median/p90 of {repeats} `Predictor.predict` calls after 2; cold = "
             f"`hlm12erc predict` in a subprocess, exec to exit, median of {cold_repeats}.")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"quick": args.quick, "clips": [str(c) for c in clips],
                                                           "predict": results}, indent=2) + "\n", encoding="utf-8")
    common.write_page(__file__, "Predict latency of a conversation", table, notes, smoke=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
