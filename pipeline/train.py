"""Stage train: one objective's tables + cached features (+ the fine-tuned text encoders) -> models/NAME/
+ plots/NAME/history.csv."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hlm12erc import workers  # noqa: E402
from hlm12erc.config import TEXT_ENCODERS, ConfigError, load_params  # noqa: E402
from hlm12erc.data.meld import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--objective", help="a key of params.yaml `objectives`")
    which.add_argument("--text-encoders", action="store_true",
                       help="stage text_encoder: only the fine-tuned text encoders (text_encoder params), read by "
                            "every objective with text: finetuned")
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--encoders", default=None,
                        help="the text_encoder stage's folder (models/text_encoder), read by objectives with "
                             "text: finetuned; without it such an objective fine-tunes its own encoders (what "
                             "stage text_encoder does; train.nproc > 1 then re-runs this script under torchrun)")
    parser.add_argument("--out", required=True, help="model folder, e.g. models/NAME")
    parser.add_argument("--plots", required=True, help="plots folder, e.g. plots/NAME")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        # unknown name: fail before importing torch
        objective = params.objective(args.objective) if args.objective else TEXT_ENCODERS
        fine_tunes = objective.text == "finetuned" and not args.encoders
        if fine_tunes and params.train.nproc > 1 and "LOCAL_RANK" not in os.environ:
            from hlm12erc.training.distributed import relaunch  # train.nproc: N processes, DDP

            return relaunch(params.train.nproc, __file__, sys.argv[1:] if argv is None else argv)
        from hlm12erc.training.stages import train_stage

        summary = train_stage(params, objective, args.tables, args.features, args.out, args.plots, args.encoders)
    except (ConfigError, DataError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    if not summary["main"]:
        return 0  # under torchrun, rank 0 reports
    print(f"train {summary['objective']}: best valid weighted-F1 {summary['best_valid_weighted_f1']:.4f} "
          f"at epoch {summary['best_epoch']} ({summary['epochs_run']} epochs run) -> {args.out}")
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
