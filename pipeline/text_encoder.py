"""Stage text_encoder: the train/valid tables -> models/text_encoder/ (the cross-fitted fine-tuned text encoders).

Trained once and read by every objective with ``text: finetuned`` (so MiniLM is never fine-tuned
once per objective). ``train.nproc > 1`` re-runs this script under torchrun (DDP).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hlm12erc.config import ConfigError, load_params  # noqa: E402
from hlm12erc.data.meld import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--out", default="models/text_encoder")
    parser.add_argument("--plots", default="plots/text_encoder")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if params.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
            from hlm12erc.training.distributed import relaunch  # train.nproc: N processes, DDP

            return relaunch(params.train.nproc, __file__, sys.argv[1:] if argv is None else argv)
        from hlm12erc.training.stages import text_encoder_stage

        summary = text_encoder_stage(params, args.tables, args.out, args.plots)
    except (ConfigError, DataError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"text_encoder: {error}", file=sys.stderr)
        return 2
    if summary["main"]:
        print(f"text_encoder: {summary['epochs_run']} encoder(s), best valid weighted-F1 per encoder at epochs "
              f"{summary['best_epoch']} (best {summary['best_valid_weighted_f1']:.4f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
