"""Featurize throughput per audio/visual encoder, and the projected time for full MELD.

    python benchmarks/featurize_encoders.py [--tables data/tables] [--utterances 60] [--threads 1]

Each encoder setting runs in a fresh process (so peak RSS is that encoder's, torch import
included): load the encoder, one warm-up pass over 5 rows, then a timed pass over
``--utterances`` rows of the tables (train, valid, test, in order, rows with that modality).
Prints a table: wall utterances/s, CPU ms per utterance (user + system time of the timed pass:
robust to other jobs sharing the cores, unlike wall time), encoder load seconds, peak RSS, and
the projected featurize time for MELD's 13,708 clips with both cores busy (CPU time x clips / 2;
audio scaled by MELD's mean clip length of 3.2 s over the benchmark clips' mean length, since
Whisper's cost grows with the window). ``--quick`` runs 2 rows of each for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MELD_CLIPS = 13708
MELD_MEAN_SECONDS = 3.2  # MELD utterance clips: about 3.2 s on average

SETTINGS = {  # name -> (modality, features params section overrides)
    "audio: logmel (old default)": ("audio", {"encoder": "logmel"}),
    "audio: whisper tiny.en": ("audio", {"encoder": "whisper", "whisper_size": "tiny.en"}),
    "audio: whisper base (default)": ("audio", {"encoder": "whisper", "whisper_size": "base"}),
    "visual: efficientnet_lite0 only": ("visual", {"encoder": "efficientnet_lite0", "faces": "none"}),
    "visual: haar + fer faces only": ("visual", {"encoder": "stats", "faces": "haar"}),
    "visual: mtcnn + fer faces only": ("visual", {"encoder": "stats", "faces": "mtcnn"}),
    "visual: efficientnet_lite0 + mtcnn + fer (default)": ("visual", {}),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(spec: dict) -> dict:
    import pandas as pd
    import soundfile
    import torch

    torch.set_num_threads(spec["threads"])
    from hlm12erc.config import AudioFeatureParams, VisualFeatureParams
    from hlm12erc.features.audio import audio_features, build_audio_encoder
    from hlm12erc.features.visual import visual_features

    tables = Path(spec["tables"])
    frames = [pd.read_csv(tables / f"{s}.csv", keep_default_na=False) for s in ("train", "valid", "test")
              if (tables / f"{s}.csv").exists()]
    table = pd.concat(frames, ignore_index=True)
    column = "x_audio" if spec["modality"] == "audio" else "x_visual"
    table = table[table[column].astype(str) != ""].copy()
    table[column] = [str((tables / p).resolve()) for p in table[column]]
    rows = table.head(spec["utterances"] + 5)
    warm, timed = rows.head(5), rows.iloc[5:].reset_index(drop=True)
    start = time.perf_counter()
    if spec["modality"] == "audio":
        params = AudioFeatureParams(**spec["overrides"])
        encoder = build_audio_encoder(params)
        load = time.perf_counter() - start
        audio_features(warm, params, encoder, progress=False)
        seconds = sum(soundfile.info(p).duration for p in timed["x_audio"])
        cpu0 = _cpu()
        start = time.perf_counter()
        audio_features(timed, params, encoder, progress=False)
    else:
        params = VisualFeatureParams(**spec["overrides"])
        visual_features(warm, params, progress=False)  # builds the encoders (cached after the first call)
        load = time.perf_counter() - start
        seconds = 0.0
        cpu0 = _cpu()
        start = time.perf_counter()
        visual_features(timed, params, progress=False)
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"n": len(timed), "elapsed": elapsed, "cpu": usage.ru_utime + usage.ru_stime - cpu0, "load": load,
            "clip_seconds": seconds / max(1, len(timed)),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        print(f"{args.tables}/train.csv not found; run `dvc repro tables` (or pass --tables)", file=sys.stderr)
        return 2
    utterances = 2 if args.quick else args.utterances
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    results = []
    wanted = [w for w in args.only.split(",") if w]
    for name, (modality, overrides) in SETTINGS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        spec = {"tables": args.tables, "modality": modality, "overrides": overrides,
                "utterances": utterances, "threads": args.threads}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, env=env)
        if proc.returncode:
            print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = result["n"] / result["elapsed"]
        cpu_ms = 1000 * result["cpu"] / result["n"]
        scale = MELD_MEAN_SECONDS / result["clip_seconds"] if modality == "audio" and result["clip_seconds"] else 1.0
        meld_minutes = MELD_CLIPS * cpu_ms / 1000 * scale / 2 / 60  # CPU time spread over the 2 cores
        results.append((name, result, rate, cpu_ms, meld_minutes))
        print(f"done: {name}", file=sys.stderr)
    print(f"\n{utterances} utterances per setting, {args.threads} torch thread(s), tables {args.tables}\n")
    print("| encoder | utt/s (wall) | CPU ms/utt | load s | peak RSS MiB | mean clip s "
          "| full MELD (13,708) min, 2 cores |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result, rate, cpu_ms, meld_minutes in results:
        clip = f"{result['clip_seconds']:.2f}" if result["clip_seconds"] else "-"
        print(f"| {name} | {rate:.2f} | {cpu_ms:.0f} | {result['load']:.2f} | {result['rss_mib']:.0f} | "
              f"{clip} | {meld_minutes:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
