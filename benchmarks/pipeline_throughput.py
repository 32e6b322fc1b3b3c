"""Pipeline throughput: featurize utterances/s per modality, and predict latency of a conversation.

    python benchmarks/pipeline_throughput.py [--quick] [--out DIR]
        [--tables data/tables] [--media data/media] [--clips data/raw/MELD.Raw] [--model models/headline]

Inputs (the defaults are what ``make demo`` leaves in the repo): the 1NF tables of ``--splits``
(media paths resolved as the featurize stage does), a trained model folder, and a folder of
``.mp4`` clips (a MELD.Raw folder; with ``--media``'s manifest.csv only clips whose extraction
was ``ok`` are used, otherwise every clip that has a video and an audio stream).

Every measurement runs in a fresh child process, one at a time, so each one's peak memory is
its own: the peak RSS is the child's ``VmHWM`` (Linux; ``ru_maxrss`` elsewhere), imports and
model loading included.

* featurize, one child per modality: the encoders are built (``load s``), a warm-up of
  ``--warmup`` rows is run and discarded, then the first ``--utterances`` rows of the tables
  are featurized ``--featurize-repeats`` times with the library's own functions
  (``text_features`` = MiniLM over the utterance and its context, ``audio_features`` and
  ``visual_features`` with the encoders of ``--params``: Whisper, EfficientNet-Lite0 + MTCNN/FER by default); the median
  rate is reported.
* predict, a 10-turn conversation (the first rows of the tables, as one dialogue), text only
  and with one clip per turn:
  - cold: the ``hlm12erc predict`` CLI in a subprocess, wall time from exec to exit (Python
    start, imports, model + MiniLM load, clip decoding, one prediction), median of
    ``--cold-repeats``; its peak RSS from ``wait4``;
  - warm: one child per setting with the library API: ``Predictor.load`` (load s), the first
    ``predict`` (first s), one more discarded, then ``--repeats`` timed ``predict`` calls:
    median and p90 seconds per conversation, and the child's peak RSS.

Prints two markdown tables; ``--out DIR`` also writes featurize.csv, predict.csv, table.md and
results.json (all raw timings, thread counts, load averages). ``--quick``: a smoke setting
(24 utterances, 1 pass, 3 warm calls, one CLI cold start with clips only, and every in-process
measurement in one child: its peak RSS is reset between them, but MiniLM loads once, so later
load and first-call times are warm). Quote figures from a run without ``--quick``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP_HINT = "run `make demo` first (it builds data/ and models/headline), or pass --tables/--media/--clips/--model"
FEATURIZE_LABELS = {"text": "text (MiniLM + context)", "audio": "audio (params encoder)",
                    "visual": "visual (params encoders)"}  # per-encoder figures: benchmarks/featurize_encoders.py
PREDICT_LABELS = {"text": "text only", "clips": "with clips"}
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DVC_NO_ANALYTICS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TQDM_DISABLE": "1"}
RESULT_PREFIX = "BENCH-RESULT "


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without importing numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (VmHWM: per address space, reset by exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next phase's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ----------------------------------------------------------------------------- children
def child_setup(spec: dict) -> None:
    import torch

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])


def load_rows(spec: dict):
    import pandas as pd

    from hlm12erc.data.meld import load_table

    tables = [load_table(path) for path in spec["tables"]]
    return pd.concat(tables, ignore_index=True)


def child_featurize(spec: dict) -> dict:
    """Featurize the first ``n`` rows with one modality's library function."""
    rss_start = current_rss_mib()
    import torch

    from hlm12erc.config import PARAMS_FILE, FeatureParams, load_params

    child_setup(spec)
    params_path = spec["params"] or (PARAMS_FILE if Path(PARAMS_FILE).is_file() else None)
    features = load_params(params_path).features if params_path else FeatureParams()
    table = load_rows(spec)
    rows = table.iloc[: spec["n"]].reset_index(drop=True)
    warm = table.iloc[: spec["warmup"]].reset_index(drop=True)
    modality = spec["modality"]
    start = time.perf_counter()
    if modality == "text":
        from hlm12erc.features.text import TextEncoder, text_features

        encoder = TextEncoder(features.text)

        def run(t):
            return text_features(t, features.text, encoder)[0]
        device = encoder.device
    elif modality == "audio":
        from hlm12erc.features.audio import audio_features, build_audio_encoder

        encoder = build_audio_encoder(features.audio)

        def run(t):
            return audio_features(t, features.audio, encoder, progress=False)[0]
        device = "cpu"
    elif modality == "visual":
        from hlm12erc.features.visual import visual_features

        def run(t):  # builds its frame and face encoders per call, as the featurize stage does
            return visual_features(t, features.visual, progress=False)[0]
        device = "cpu"
    else:
        raise ValueError(f"unknown modality {modality}")
    load_s = time.perf_counter() - start
    if len(warm):
        run(warm)
    seconds, dim = [], 0
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        out = run(rows)
        seconds.append(time.perf_counter() - start)
        dim = int(out.shape[1])
    median = statistics.median(seconds)
    return {"kind": "featurize", "modality": modality, "utterances": len(rows), "dim": dim,
            "seconds": seconds, "utterances_per_s": len(rows) / median, "ms_per_utterance": 1000 * median / len(rows),
            "load_s": load_s, "rss_start_mib": rss_start, "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "device": device}


def child_predict(spec: dict) -> dict:
    """Predictor API on one conversation: load, first call, then warm calls."""
    rss_start = current_rss_mib()
    import pandas as pd
    import torch

    from hlm12erc.config import PARAMS_FILE, load_params, params_from_dict
    from hlm12erc.predict import Predictor
    from hlm12erc.runtime import select_device

    child_setup(spec)
    params_path = spec["params"] or (PARAMS_FILE if Path(PARAMS_FILE).is_file() else None)
    params = load_params(params_path) if params_path else params_from_dict({})
    conversation = pd.DataFrame(spec["conversation"])
    start = time.perf_counter()
    predictor = Predictor.load(spec["model"], params.extract, device=str(select_device(params.train.device)),
                               eval_batch_size=params.runtime.eval_batch_size)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    result = predictor.predict(conversation)
    first_s = time.perf_counter() - start
    predictor.predict(conversation)  # warm-up, discarded
    seconds = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        result = predictor.predict(conversation)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"kind": "predict", "setting": spec["setting"], "turns": len(conversation), "load_s": load_s,
            "first_s": first_s, "seconds": seconds, "median_s": median, "p90_s": percentile(seconds, 90),
            "turns_per_s": len(conversation) / median, "used": sorted(set(result["used"])),
            "media_status": sorted(set(result["media_status"])), "model_modalities": predictor.modalities,
            "rss_start_mib": rss_start, "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "device": predictor.device}


def child_main(specs_json: str) -> int:
    """Run the measurements in order; with several, the peak RSS is reset between them."""
    for key, value in CHILD_ENV.items():
        os.environ.setdefault(key, value)
    specs = json.loads(specs_json)
    for i, spec in enumerate(specs):
        reset = reset_peak_rss() if i else None
        result = child_featurize(spec) if spec["kind"] == "featurize" else child_predict(spec)
        result["process"] = {"shared_with": len(specs) - 1, "position": i, "peak_reset": reset}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def child_env() -> dict:
    env = dict(os.environ)
    for key, value in CHILD_ENV.items():
        env.setdefault(key, value)
    return env


def run_child(specs: list[dict]) -> list[dict]:
    """This script in a fresh interpreter running ``specs``; their results, or exit with its stderr."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(specs)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or len(lines) != len(specs):
        sys.stderr.write(proc.stderr[-4000:])
        names = ", ".join(f"{s['kind']}/{s.get('modality') or s.get('setting')}" for s in specs)
        raise SystemExit(f"error: benchmark child ({names}) failed (exit {proc.returncode})")
    return [json.loads(line[len(RESULT_PREFIX):]) for line in lines]


def run_cli(conversation_file: Path, model: Path, params: str | None, out_csv: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, wait4's ru_maxrss) of one ``hlm12erc predict`` run."""
    command = [sys.executable, "-m", "hlm12erc.cli", "predict", str(conversation_file), "--model", str(model),
               "--out", str(out_csv)]
    if params:
        command += ["--params", params]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        sys.stderr.write(stdout + stderr)
        raise SystemExit(f"error: `hlm12erc predict {conversation_file.name}` failed (exit {proc.returncode})")
    peak = usage.ru_maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else usage.ru_maxrss / 1024.0
    return seconds, peak


# ----------------------------------------------------------------------------- inputs
def table_paths(tables: Path, splits: list[str]) -> list[Path]:
    paths = [tables / f"{s}.csv" for s in splits if (tables / f"{s}.csv").is_file()]
    if not paths:
        raise SystemExit(f"error: no {'/'.join(f'{s}.csv' for s in splits)} in {tables}; {SETUP_HINT}")
    return paths


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def check_media(paths: list[Path], rows: list[dict]) -> None:
    """At least one row's audio and frames must exist (paths are relative to the table's folder)."""
    base = paths[0].parent
    audio = [r.get("x_audio", "") for r in rows if r.get("x_audio")]
    visual = [r.get("x_visual", "") for r in rows if r.get("x_visual")]
    if not any((base / a).is_file() for a in audio[:50]) or not any((base / v).is_dir() for v in visual[:50]):
        raise SystemExit(f"error: the media of {base} (x_audio / x_visual paths) are missing; {SETUP_HINT}")


def has_streams(path: Path) -> bool:
    try:
        import av

        with av.open(str(path)) as container:
            return bool(container.streams.video) and bool(container.streams.audio)
    except Exception:  # noqa: BLE001 - any unreadable clip is skipped
        return False


def pick_clips(clips_root: Path, media: Path, count: int) -> list[Path]:
    """``count`` decodable clips: the manifest's ``ok`` clips when it and a MELD layout exist, else any mp4."""
    if not clips_root.is_dir():
        raise SystemExit(f"error: clips folder {clips_root} not found; {SETUP_HINT}")
    candidates: list[Path] = []
    manifest = media / "manifest.csv"
    if manifest.is_file():
        try:
            from hlm12erc.data.sources import detect_layout

            layout = detect_layout(clips_root)
            with open(manifest, newline="", encoding="utf-8") as handle:
                for record in csv.DictReader(handle):
                    folder = (layout["splits"].get(record.get("source_split", "")) or {}).get("clips")
                    if record.get("status") == "ok" and folder:
                        candidates.append(Path(folder) / f"{record['clip_id']}.mp4")
        except Exception:  # noqa: BLE001 - not a MELD folder: fall back to every mp4
            candidates = []
    if not candidates:
        candidates = sorted(clips_root.rglob("*.mp4"))
    chosen = []
    for path in candidates:
        if path.is_file() and has_streams(path):
            chosen.append(path.resolve())
            if len(chosen) == count:
                break
    if not chosen:
        raise SystemExit(f"error: no readable .mp4 clip (video + audio) under {clips_root}; {SETUP_HINT}")
    return [chosen[i % len(chosen)] for i in range(count)]


def conversation(rows: list[dict], turns: int, clips: list[Path] | None) -> list[dict]:
    """The first ``turns`` rows' speaker and text as one dialogue (cycled when the tables are shorter)."""
    out = []
    for i in range(turns):
        row = rows[i % len(rows)]
        turn = {"speaker": row.get("speaker", ""), "text": row.get("x_text", ""), "dialogue": "0"}
        turn["clip"] = str(clips[i]) if clips else ""
        out.append(turn)
    return out


def write_conversation(turns: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["speaker", "text", "clip", "dialogue"])
        writer.writeheader()
        writer.writerows(turns)
    return path


# ----------------------------------------------------------------------------- tables
def featurize_table(rows: list[dict]) -> list[str]:
    lines = ["| modality | utterances | utt/s | ms/utt | load s | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {FEATURIZE_LABELS[r['modality']]} | {r['utterances']} | {r['utterances_per_s']:.1f} | "
                     f"{r['ms_per_utterance']:.2f} | {r['load_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    return lines


def predict_table(rows: list[dict]) -> list[str]:
    lines = ["| conversation | turns | cold start s (CLI) | CLI peak RSS MiB | load s | first call s | "
             "warm median s | warm p90 s | warm turns/s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cold = f"{r['cold_median_s']:.2f}" if r.get("cold_median_s") is not None else "-"
        cold_rss = f"{r['cold_peak_rss_mib']:.0f}" if r.get("cold_peak_rss_mib") is not None else "-"
        lines.append(f"| {PREDICT_LABELS[r['setting']]} | {r['turns']} | {cold} | {cold_rss} | {r['load_s']:.2f} | "
                     f"{r['first_s']:.3f} | {r['median_s']:.3f} | {r['p90_s']:.3f} | {r['turns_per_s']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    return lines


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=REPO / "data" / "tables", help="folder of 1NF <split>.csv")
    parser.add_argument("--splits", nargs="+", default=["train", "valid", "test"], help="tables to read, in order")
    parser.add_argument("--media", type=Path, default=REPO / "data" / "media",
                        help="extracted media folder (its manifest.csv picks the ok clips)")
    parser.add_argument("--clips", type=Path, default=REPO / "data" / "raw" / "MELD.Raw",
                        help="folder of .mp4 clips for the with-clips conversation (a MELD.Raw folder)")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "headline", help="trained model folder")
    parser.add_argument("--params", default=None, help="params.yaml (default: the repo's, else built-in defaults)")
    parser.add_argument("--utterances", type=int, default=None, help="rows featurized (default all; quick 24)")
    parser.add_argument("--warmup", type=int, default=None, help="rows featurized first and discarded (16; quick 4)")
    parser.add_argument("--featurize-repeats", type=int, default=None, help="timed passes, median (3; quick 1)")
    parser.add_argument("--turns", type=int, default=10, help="turns of the predicted conversation")
    parser.add_argument("--repeats", type=int, default=None, help="warm predict calls per setting (20; quick 3)")
    parser.add_argument("--cold-repeats", type=int, default=None, help="CLI cold starts per setting (3; quick 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the children (0 = torch's default, as the stage and CLI run)")
    parser.add_argument("--one-process", action="store_true",
                        help="run the in-process measurements in one child (quick's default): faster, but the "
                             "encoders load once, so later load/first-call times are warm; peak RSS is reset "
                             "between measurements")
    parser.add_argument("--quick", action="store_true",
                        help="smoke setting: 24 utterances, 1 pass, 3 warm calls, one child process, one CLI cold "
                             "start (with clips only)")
    parser.add_argument("--out", type=Path, default=None, help="folder for table.md, featurize.csv, predict.csv, "
                                                               "results.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)

    n = args.utterances or (24 if args.quick else 10 ** 9)
    warmup = args.warmup if args.warmup is not None else (4 if args.quick else 16)
    featurize_repeats = args.featurize_repeats or (1 if args.quick else 3)
    repeats = args.repeats or (3 if args.quick else 20)
    cold_repeats = args.cold_repeats if args.cold_repeats is not None else (1 if args.quick else 3)
    one_process = args.one_process or args.quick

    paths = table_paths(args.tables, args.splits)
    rows = read_rows(paths)
    if not rows:
        raise SystemExit(f"error: the tables in {args.tables} are empty; {SETUP_HINT}")
    check_media(paths, rows)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"error: no trained model in {args.model}; {SETUP_HINT}")
    clips = pick_clips(args.clips, args.media, args.turns)
    n = min(n, len(rows))
    load_before = os.getloadavg()
    common = {"tables": [str(p.resolve()) for p in paths], "params": args.params, "threads": args.threads}
    started = time.perf_counter()

    conversations = {"text": conversation(rows, args.turns, None), "clips": conversation(rows, args.turns, clips)}
    specs = [{**common, "kind": "featurize", "modality": m, "n": n, "warmup": min(warmup, n),
              "repeats": featurize_repeats} for m in ("text", "audio", "visual")]
    specs += [{**common, "kind": "predict", "setting": setting, "model": str(args.model.resolve()),
               "conversation": turns, "repeats": repeats} for setting, turns in conversations.items()]
    log(f"featurize: {n} utterances x {featurize_repeats} per modality (+{warmup} warm-up); predict: "
        f"{args.turns} turns x {repeats} warm calls per setting; "
        + ("all in one child process" if one_process else "one child process each"))
    if one_process:
        results = run_child(specs)
    else:
        results = []
        for spec in specs:
            log(f"{spec['kind']} {spec.get('modality') or PREDICT_LABELS[spec['setting']]}")
            results += run_child([spec])
    featurize_rows = [r for r in results if r["kind"] == "featurize"]
    predict_rows = [r for r in results if r["kind"] == "predict"]

    with tempfile.TemporaryDirectory(prefix="hlm12erc-bench-predict-") as work:
        for result in predict_rows:
            setting = result["setting"]
            times = cold_repeats if (setting == "clips" or not args.quick) else 0
            if times:
                log(f"CLI cold start, {PREDICT_LABELS[setting]}: {times} run(s)")
            conversation_file = write_conversation(conversations[setting], Path(work) / f"conversation_{setting}.csv")
            cold = [run_cli(conversation_file, args.model, args.params, Path(work) / f"out_{setting}.csv")
                    for _ in range(times)]
            result["cold_seconds"] = [c[0] for c in cold]
            result["cold_median_s"] = statistics.median(result["cold_seconds"]) if cold else None
            result["cold_peak_rss_mib"] = max(c[1] for c in cold) if cold else None

    total = time.perf_counter() - started
    lines = [f"Featurize: {n} utterances of {', '.join(p.name for p in paths)} ({args.tables}), "
             f"median of {featurize_repeats} pass(es) after a {warmup}-row warm-up; "
             f"torch threads {featurize_rows[0]['torch_threads']}, {os.cpu_count()} cores, "
             f"device {featurize_rows[0]['device']}"
             + ("; one child process for all (later loads warm)" if one_process else "; a fresh process each"),
             "", *featurize_table(featurize_rows), "",
             f"Predict: a {args.turns}-turn conversation with {args.model} "
             f"({'+'.join(predict_rows[0]['model_modalities'])}); load = Predictor.load (the fusion model; MiniLM "
             f"loads inside the first call); warm = median/p90 of {repeats} Predictor.predict calls after 2; "
             f"cold = `hlm12erc predict` subprocess, exec to exit, median of {cold_repeats}",
             "", *predict_table(predict_rows)]
    table = "\n".join(lines)
    print("\n" + table + "\n")
    load_after = os.getloadavg()
    log(f"done in {total:.0f}s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(other jobs on the cores slow every figure)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
        write_csv(args.out / "featurize.csv", featurize_rows,
                  ["modality", "utterances", "utterances_per_s", "ms_per_utterance", "load_s", "peak_rss_mib",
                   "rss_start_mib", "dim", "torch_threads", "device"])
        write_csv(args.out / "predict.csv", predict_rows,
                  ["setting", "turns", "cold_median_s", "cold_peak_rss_mib", "load_s", "first_s", "median_s", "p90_s",
                   "turns_per_s", "peak_rss_mib", "rss_start_mib", "torch_threads", "device"])
        (args.out / "results.json").write_text(json.dumps({
            "quick": args.quick, "tables": common["tables"], "model": str(args.model), "clips": [str(c) for c in clips],
            "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
            "total_s": total, "featurize": featurize_rows, "predict": predict_rows}, indent=2) + "\n",
            encoding="utf-8")
        log(f"wrote {args.out}/table.md, featurize.csv, predict.csv, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
