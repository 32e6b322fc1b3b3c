"""Benchmark: text-encoder fine-tuning cost: s/step per encoder and precision, and samples/s at 1 and 2 processes.

Steps, a fresh process (its own peak RSS) per ``--encoders`` x ``--precisions``: the library's text
encoder (``build_text_encoder(EncoderConfig(encoder, precision=...))``: its forward autocasts),
``--batch`` dialogue-context pairs of the training rows cut to ``--tokens`` tokens, cross-entropy,
AdamW on every core; the median of ``--steps`` steps after one warm-up, and bf16 over fp32 per
encoder. Missing wheels skip an encoder in one line; without bf16 units the row says it ran fp32.

Processes (``--nproc``, none to skip): torchrun with N ranks splitting the cores, each fine-tuning
one encoder (the ``text_encoder`` params) for one epoch on ``--rows`` seeded rows of whole
dialogues; samples/s = rows / epoch seconds (a 32-row valid set scored), peak RSS per process.

  .venv/bin/python benchmarks/train_throughput.py --steps 3 --encoders minilm mpnet --precisions fp32 bf16
  .venv/bin/python benchmarks/train_throughput.py --encoders --nproc 1 2 --rows 512    # processes only
  .venv/bin/python benchmarks/train_throughput.py --data data/tables    # the demo's rows (default: MELD's)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import common

VALID_ROWS = 32


def load_train(data: Path):
    """Training rows: MELD's train_sent_emo.csv if ``data`` holds it, else a 1NF ``train.csv``."""
    from hlm12erc.data import meld

    if (data / "train_sent_emo.csv").exists():
        return meld.to_table(meld.read_meld_csv(data / "train_sent_emo.csv"), "train", "train")
    if (data / "train.csv").exists():
        return meld.load_table(data / "train.csv")
    raise SystemExit(f"error: no training rows in {data}: pass --data with MELD's train_sent_emo.csv "
                     "(e.g. ../shared/meld-text) or a tables folder with train.csv (run `make demo` first)")


def step_child(spec: dict) -> dict:
    """Median s/step of forward + backward + AdamW for one encoder and precision."""
    import torch

    from hlm12erc.data import context
    from hlm12erc.models import text_encoder as te
    from hlm12erc.runtime import effective_precision

    torch.manual_seed(0)
    device = torch.device("cpu")
    table = load_train(Path(spec["data"]))
    labels = sorted(table["label"].astype(str).unique())
    tokenizer = te.load_tokenizer(te.encoder_path(spec["encoder"]))
    pairs = context.text_pairs(table.head(20 * spec["batch"]), tokenizer, spec["tokens"], 3, 1)
    pairs = sorted(pairs, key=lambda p: -len(p["input_ids"]))[: spec["batch"]]  # full-length pairs first
    batch = te.collate_pairs(pairs, tokenizer.pad_token_id)
    target = torch.as_tensor([labels.index(v) for v in table["label"].astype(str).head(len(pairs))])
    encoder = te.build_text_encoder(te.EncoderConfig(encoder=spec["encoder"], precision=spec["precision"],
                                                     max_tokens=spec["tokens"]), len(labels)).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=5e-5)
    seconds = []
    for _ in range(spec["steps"] + 1):
        with common.timed() as t:
            loss = torch.nn.functional.cross_entropy(encoder(**batch).logits, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds.append(t.seconds)
    return {"s_per_step": statistics.median(seconds[1:]), "ran": effective_precision(spec["precision"], device),
            "shape": list(batch["input_ids"].shape), "threads": torch.get_num_threads()}


def step_rows(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """One row per encoder x precision that could run; one note per skipped encoder."""
    from hlm12erc.features.weights import text_model_path

    rows, skipped = [], []
    for encoder in args.encoders:
        try:
            text_model_path(encoder)
        except (ImportError, FileNotFoundError, ValueError) as error:
            skipped.append(f"{encoder}: skipped ({error})")
            common.log(skipped[-1])
            continue
        for precision in args.precisions:
            spec = {"data": str(args.data), "encoder": encoder, "precision": precision, "steps": args.steps,
                    "batch": args.batch, "tokens": args.tokens}
            common.log(f"steps: {encoder} {precision} ...")
            proc, _, peak = common.run_measured([sys.executable, __file__, "--child", json.dumps(spec)])
            if proc.returncode:
                raise SystemExit(f"error: the {encoder} {precision} step benchmark failed: "
                                 f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            rows.append({**spec, **json.loads(proc.stdout.strip().splitlines()[-1]), "peak_rss_mib": peak})
    return rows, skipped


def steps_markdown(rows: list[dict]) -> str:
    table = common.markdown_table(
        ["encoder", "precision", "ran as", "batch x tokens", "threads", "s/step", "peak RSS MiB"],
        [[r["encoder"], r["precision"], r["ran"], "x".join(map(str, r["shape"])), r["threads"],
          f"{r['s_per_step']:.2f}", f"{r['peak_rss_mib']:.0f}"] for r in rows], "lllrrrr")
    by = {(r["encoder"], r["precision"]): r["s_per_step"] for r in rows}
    ratios = [[e, f"{by[e, 'fp32']:.2f}", f"{by[e, 'bf16']:.2f}", f"{by[e, 'bf16'] / by[e, 'fp32']:.2f}",
               f"{by[e, 'fp32'] / by[e, 'bf16']:.2f}x"]
              for e in dict.fromkeys(r["encoder"] for r in rows) if (e, "fp32") in by and (e, "bf16") in by]
    if ratios:
        table += "\n\n" + common.markdown_table(["encoder", "fp32 s/step", "bf16 s/step", "bf16 / fp32",
                                                 "speed-up"], ratios)
    return table


def worker(args: argparse.Namespace) -> None:
    """One rank: fine-tune one text encoder for one epoch, write ``rank<R>.json`` with its timings and peak memory."""
    from hlm12erc.config import TEXT_ENCODERS
    from hlm12erc.runtime import select_device
    from hlm12erc.training.fit import dialogue_subset, fit_encoders, new_model

    params = common.params_with({"text_encoder": {"members": 1, "epochs": 1, "min_steps": 0, "patience": 1,
                                                  "max_train_rows": args.rows},
                                 "train": {"seed": 42, "device": args.device}})
    table = load_train(Path(args.data))
    valid = dialogue_subset(table, VALID_ROWS, seed=1)
    model = new_model(TEXT_ENCODERS, params)
    device = select_device(args.device)
    assert fit_encoders(model, table.drop(valid.index), valid, params, device, progress=False), "no epoch ran"
    rank = int(os.environ.get("RANK", "0"))
    record = {"rows": model.info["encoder0"]["n_train"], "epoch_seconds": model.timings["encoder0_epoch_seconds"],
              "device": str(device), "peak_rss_mib": common.peak_rss_mib()}
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(record))


def process_row(nproc: int, args: argparse.Namespace, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common.log(f"processes: {nproc} ...")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", "--data", str(args.data), "--rows", str(args.rows), "--device", args.device,
               "--out", str(out)]
    proc, _, _ = common.run_measured(command, env={"OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(f"error: torchrun with {nproc} process(es) failed: {proc.stderr.strip()[-2000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    seconds = max(r["epoch_seconds"] for r in ranks)
    return {"processes": nproc, "rows": ranks[0]["rows"], "epoch_s": seconds,
            "samples_per_s": ranks[0]["rows"] / seconds,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks), "device": ranks[0]["device"]}


def processes_markdown(rows: list[dict]) -> str:
    base = rows[0]["samples_per_s"]
    return common.markdown_table(
        ["processes", "device", "rows", "epoch s", "samples/s", "speed-up", "peak RSS / process (MiB)"],
        [[r["processes"], r["device"], r["rows"], f"{r['epoch_s']:.1f}", f"{r['samples_per_s']:.1f}",
          f"{r['samples_per_s'] / base:.2f}x", f"{r['peak_rss_mib']:.0f}"] for r in rows], "rlrrrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=common.MELD_TEXT if common.MELD_TEXT.exists()
                        else common.REPO / "data" / "tables")
    parser.add_argument("--encoders", nargs="*", default=["minilm", "mpnet"], help="minilm | mpnet | a HF folder")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps per setting (after one warm-up)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=80, help="tokens per pair (longest pairs of the rows)")
    parser.add_argument("--nproc", type=int, nargs="*", default=[1, 2], help="process counts of the DDP epoch")
    parser.add_argument("--rows", type=int, default=512, help="training rows of the DDP epoch (whole dialogues)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (the DDP epoch)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and the ranks' records")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(step_child(json.loads(args.child))))
        return 0
    if args.worker:
        worker(args)
        return 0
    load_train(args.data)  # fail fast
    out = args.out or Path(tempfile.mkdtemp(prefix="train_bench_"))
    steps, skipped = step_rows(args)
    processes = [process_row(n, args, out / f"nproc{n}") for n in args.nproc]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"steps": steps, "processes": processes}, indent=2))
    parts = []
    if steps:
        parts.append(f"Forward + backward + AdamW, median of {args.steps} steps after one warm-up:\n\n"
                     + steps_markdown(steps))
    if processes:
        parts.append(f"One epoch of {args.rows} training rows under torchrun (the text_encoder params):\n\n"
                     + processes_markdown(processes))
    notes = f"Training rows: `{common.repo_relative(str(args.data))}`." + "".join(f"\n{s}." for s in skipped)
    common.write_page(__file__, "Text-encoder fine-tuning throughput", "\n\n".join(parts), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
