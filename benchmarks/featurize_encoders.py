"""Featurize throughput per text/audio/visual encoder setting, and the projected time for full MELD.

    python benchmarks/featurize_encoders.py [--tables data/tables] [--utterances 60] [--threads 1] [--only ...]

Each setting runs in a fresh process (its peak RSS, imports included, is that encoder's): build the
encoder with the library's featurize functions and the ``features`` params of params.yaml (plus the
setting's overrides), one warm-up pass over 5 rows, then a timed pass over ``--utterances`` rows of
the tables (train, valid, test, in order, rows with that modality). Columns: wall utterances/s, CPU
ms per utterance (user + system time of the timed pass: robust to other jobs sharing the cores,
unlike wall time), encoder load seconds, peak RSS, and the projected featurize time for MELD's
13,708 clips with both cores busy (CPU time x clips / 2; audio scaled by MELD's mean clip length of
3.2 s over the benchmark clips' mean length, since Whisper's cost grows with the window).
``--quick`` runs 2 rows of each for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common

MELD_CLIPS = 13708
MELD_MEAN_SECONDS = 3.2  # MELD utterance clips: about 3.2 s on average
COLUMNS = {"text": "x_text", "audio": "x_audio", "visual": "x_visual"}

SETTINGS = {  # name -> (modality, features.<modality> params overrides)
    "text: minilm + 3 past turns (default)": ("text", {}),
    "audio: logmel (old default)": ("audio", {"encoder": "logmel"}),
    "audio: whisper tiny.en": ("audio", {"encoder": "whisper", "whisper_size": "tiny.en"}),
    "audio: whisper base (default)": ("audio", {"encoder": "whisper", "whisper_size": "base"}),
    "visual: efficientnet_lite0 only": ("visual", {"encoder": "efficientnet_lite0", "faces": "none"}),
    "visual: mtcnn + fer faces only": ("visual", {"encoder": "stats", "faces": "mtcnn"}),
    "visual: efficientnet_lite0 + mtcnn + fer (default)": ("visual", {}),
}


def featurizer(modality: str, params):
    """``rows -> features`` for one modality with the library's featurize functions, its encoders built."""
    if modality == "text":
        from hlm12erc.features.text import TextEncoder, text_features

        encoder = TextEncoder(params)
        return lambda rows: text_features(rows, params, encoder)
    if modality == "audio":
        from hlm12erc.features.audio import audio_features, build_audio_encoder

        encoder = build_audio_encoder(params)
        return lambda rows: audio_features(rows, params, encoder, progress=False)
    from hlm12erc.features.visual import visual_features

    return lambda rows: visual_features(rows, params, progress=False)  # builds its encoders, cached after the first


def child(spec: dict) -> dict:
    import pandas as pd
    import soundfile
    import torch

    from hlm12erc.data.meld import load_table

    torch.set_num_threads(spec["threads"])
    modality, tables = spec["modality"], Path(spec["tables"])
    table = pd.concat([load_table(tables / f"{s}.csv") for s in ("train", "valid", "test")
                       if (tables / f"{s}.csv").exists()], ignore_index=True)
    table = table[table[COLUMNS[modality]].astype(str) != ""]
    rows = table.head(spec["utterances"] + 5)
    warm, timed_rows = rows.head(5), rows.iloc[5:].reset_index(drop=True)
    params = getattr(common.params_with({"features": {modality: spec["overrides"]}}).features, modality)
    with common.timed() as load:
        run = featurizer(modality, params)
        if modality == "visual":
            run(warm)  # the visual encoders are built by the first call
    if modality != "visual":
        run(warm)
    seconds = sum(soundfile.info(p).duration for p in timed_rows["x_audio"] if Path(p).is_file()) \
        if modality == "audio" else 0.0
    cpu = common.cpu_seconds()
    with common.timed() as timed:
        run(timed_rows)
    return {"n": len(timed_rows), "elapsed": timed.seconds, "cpu": common.cpu_seconds() - cpu, "load": load.seconds,
            "clip_seconds": seconds / max(1, len(timed_rows))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--utterances", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated substrings of setting names")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if not (Path(args.tables) / "train.csv").exists():
        raise SystemExit(f"error: {args.tables}/train.csv not found; run `make demo` (or `dvc repro tables`), "
                         "or pass --tables")
    utterances = 2 if args.quick else args.utterances
    wanted = [w for w in args.only.split(",") if w]
    rows = []
    for name, (modality, overrides) in SETTINGS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        spec = {"tables": args.tables, "modality": modality, "overrides": overrides, "utterances": utterances,
                "threads": args.threads}
        proc, _, peak = common.run_measured([sys.executable, __file__, "--child", json.dumps(spec)],
                                            env={"OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode:
            raise SystemExit(f"error: {name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cpu_ms = 1000 * r["cpu"] / r["n"]
        scale = MELD_MEAN_SECONDS / r["clip_seconds"] if r["clip_seconds"] else 1.0
        meld_minutes = MELD_CLIPS * cpu_ms / 1000 * scale / 2 / 60  # CPU time spread over the 2 cores
        rows.append([name, f"{r['n'] / r['elapsed']:.2f}", f"{cpu_ms:.0f}", f"{r['load']:.2f}", f"{peak:.0f}",
                     f"{r['clip_seconds']:.2f}" if r["clip_seconds"] else "-", f"{meld_minutes:.1f}"])
        common.log(f"done: {name}")
    table = common.markdown_table(["encoder", "utt/s (wall)", "CPU ms/utt", "load s", "peak RSS MiB", "mean clip s",
                                   "full MELD (13,708) min, 2 cores"], rows)
    notes = f"{utterances} utterances per setting, {args.threads} torch thread(s), tables `{args.tables}`."
    common.write_page(__file__, "Featurize cost per encoder", table, notes, smoke=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
