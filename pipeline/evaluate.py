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
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="also log the model as an MLflow pyfunc model and register it as NAME with its "
                             "metrics (off by default; the headline stage registers the headline model)")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.training.stages import evaluate_stage

        params = load_params(args.params)
        metrics, report = evaluate_stage(params, args.model, args.tables, args.features,
                                         args.split, args.metrics, args.plots)
        if args.register:
            from mlflow.exceptions import MlflowException

            from hlm12erc.pyfunc import log_pyfunc_model

            try:
                info = log_pyfunc_model(args.model, metrics, registered_name=args.register, extract=params.extract)
            except MlflowException as error:
                message = str(error.message).strip()
                reason = message.splitlines()[0] if message else type(error).__name__
                print(f"evaluate: metrics are in {args.metrics}, but registering the model as '{args.register}' "
                      f"failed: {reason}; check the MLflow store (HLM12ERC_MLFLOW_URI or ./mlflow.db) and rerun "
                      "this stage", file=sys.stderr)
                return 2
            print(f"registered {args.register} version {info.registered_model_version} "
                  f"(models:/{args.register}/{info.registered_model_version})")
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
