"""Benchmark: fine-tuning throughput (training samples/s) at 1 and 2 processes, and peak memory.

Each setting runs ``torchrun --standalone --nproc_per_node=N`` on this file's worker, which
trains one text encoder (the ``text_encoder`` settings of params.yaml: 3 past + 1 future turns,
128 tokens, batch 32) for one epoch over the same seeded subset of whole dialogues. On CPU the
cores are split between the ranks (``threads: 0``), so N processes compete for the same cores
as one process with all of them: the table says what data parallelism buys on this machine.

samples/s = training rows / epoch seconds (the epoch includes scoring a 32-row valid set);
peak RSS is per process (``ru_maxrss``), the job's total is N times about that.

Usage (from the repo root):
  .venv/bin/python benchmarks/train_throughput.py                  # real MELD train rows if ../shared/meld-text exists
  .venv/bin/python benchmarks/train_throughput.py --rows 256 --nproc 1 2 --out /tmp/train_bench
  .venv/bin/python benchmarks/train_throughput.py --data data/tables   # the demo tables (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MELD = REPO.parent / "shared" / "meld-text"
VALID_ROWS = 32


def load_train(data: Path, labels: list[str]):
    """Training rows: MELD's train_sent_emo.csv if ``data`` holds it, else a 1NF ``train.csv``."""
    from hlm12erc.data import meld

    if (data / "train_sent_emo.csv").exists():
        return meld.to_table(meld.read_meld_csv(data / "train_sent_emo.csv"), "train", "train")
    if (data / "train.csv").exists():
        return meld.load_table(data / "train.csv", labels)
    raise SystemExit(f"error: no training rows in {data}: pass --data with MELD's train_sent_emo.csv "
                     "(e.g. ../shared/meld-text) or a tables folder with train.csv (run `make demo` first)")


def worker(args: argparse.Namespace) -> None:
    """One rank: train one text encoder for one epoch, write ``rank<R>.json`` with its timings and peak memory."""
    from dataclasses import replace

    from hlm12erc.config import ObjectiveConfig, load_params
    from hlm12erc.runtime import select_device
    from hlm12erc.training.fit import dialogue_subset, fit_encoders, new_model

    params = load_params(REPO / "params.yaml")
    params = replace(params, text_encoder=replace(params.text_encoder, epochs=1, min_steps=0, patience=1,
                                                  max_train_rows=args.rows),
                     train=replace(params.train, seed=42, device=args.device))
    table = load_train(Path(args.data), params.labels)
    valid = dialogue_subset(table, VALID_ROWS, seed=1)
    train = table.drop(valid.index)
    model = new_model(ObjectiveConfig(name="text_finetune", text="finetuned", fusion="none"), params)
    device = select_device(args.device)
    history = fit_encoders(model, train, valid, params, device, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "nproc": int(os.environ.get("WORLD_SIZE", "1")), "rows": model.info["encoder0"]["n_train"],
              "epoch_seconds": model.timings["encoder0_epoch_seconds"], "device": str(device),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    assert history, "no epoch ran"
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(record))


def run_setting(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", "--data", str(args.data), "--rows", str(args.rows), "--device", args.device,
               "--out", str(out)]
    print(f"running {nproc} process(es) ...", flush=True)
    subprocess.run(command, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    seconds = max(r["epoch_seconds"] for r in ranks)
    return {"processes": nproc, "rows": ranks[0]["rows"], "epoch_s": seconds,
            "samples_per_s": ranks[0]["rows"] / seconds,
            "peak_rss_mib_per_process": max(r["peak_rss_mib"] for r in ranks), "device": ranks[0]["device"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| processes | device | rows | epoch s | samples/s | speed-up | peak RSS / process (MiB) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    base = rows[0]["samples_per_s"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['device']} | {r['rows']} | {r['epoch_s']:.1f} | "
                     f"{r['samples_per_s']:.1f} | {r['samples_per_s'] / base:.2f}x | "
                     f"{r['peak_rss_mib_per_process']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=DEFAULT_MELD if DEFAULT_MELD.exists() else REPO / "data" / "tables")
    parser.add_argument("--rows", type=int, default=512, help="training rows (whole dialogues, seeded)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json / results.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    load_train(args.data, ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"])  # fail fast
    out = args.out or Path(tempfile.mkdtemp(prefix="train_bench_"))
    rows = [run_setting(n, args, out / f"nproc{n}") for n in args.nproc]
    table = markdown(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(table + "\n")
    print(f"\nfine-tuning throughput ({args.data}, {os.cpu_count()} cores):\n{table}\n-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
