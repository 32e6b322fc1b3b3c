"""Stage evaluate: a trained model on one split -> metrics JSON, confusion CSV/PNG, predictions CSV."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hlm12erc import workers  # noqa: E402
from hlm12erc.config import ConfigError, load_params  # noqa: E402
from hlm12erc.data.meld import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="model folder written by train.py")
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--split", default="test")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write, e.g. metrics/NAME.json")
    parser.add_argument("--plots", required=True, help="plots folder, e.g. plots/NAME")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.evaluation import evaluate_stage

        params = load_params(args.params)
        metrics, report = evaluate_stage(params, args.model, args.tables, args.features,
                                         args.split, args.metrics, args.plots)
    except (ConfigError, DataError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    print(f"{metrics['objective']} on {args.split} (n={metrics['n']}): accuracy {metrics['accuracy']:.4f}, "
          f"weighted-F1 {metrics['weighted_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    print(report)
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
