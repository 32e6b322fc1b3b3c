"""Stage headline: the model that params.yaml's `model` names, as models/headline + metrics/headline.json.

    python pipeline/headline.py --params params.yaml --model models/final --metrics metrics/final.json \
        --out models/headline --metrics-out metrics/headline.json

No training and no evaluation: `train@<model>` and `evaluate@<model>` already did both, so this
copies their outputs (byte for byte) under the stable headline names that `hlm12erc predict`,
`hlm12erc register` (which puts it into the MLflow registry) and `dvc metrics diff` use. `model`
is checked first and the outputs are replaced only at the end
(they are `persist: true` in dvc.yaml, so DVC does not delete them before this runs): a bad
name fails in one line and leaves the previous headline in place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from hlm12erc import workers
from hlm12erc.config import ConfigError, load_params
from hlm12erc.metrics import read_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="the trained model folder of params `model`, models/<model>")
    parser.add_argument("--metrics", required=True, help="its evaluation, metrics/<model>.json")
    parser.add_argument("--out", default="models/headline")
    parser.add_argument("--metrics-out", default="metrics/headline.json")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)  # an unknown `model` fails here, listing the known names
        params.objective(params.model)
        model, metrics_path = Path(args.model), Path(args.metrics)
        if model.name != params.model:
            raise ConfigError(f"--model {model} is not the folder of params model={params.model}; "
                              "dvc.yaml passes models/${model}")
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model}/config.json not found; train it first (`dvc repro train@{params.model}`)")
        metrics = read_metrics(metrics_path)
        if metrics.get("objective") not in (None, params.model):
            raise ConfigError(f"{metrics_path} scores objective '{metrics['objective']}', not {params.model}; "
                              f"re-run `dvc repro evaluate@{params.model}`")
        out, metrics_out = Path(args.out), Path(args.metrics_out)
        workers.write_aside(out, lambda folder: shutil.copytree(model, folder))
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = metrics_out.with_name(f".{metrics_out.name}.tmp")
        tmp.write_bytes(metrics_path.read_bytes())
        os.replace(tmp, metrics_out)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as error:
        print(f"headline: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"headline = {params.model}: {model} -> {out}, {metrics_path} -> {metrics_out} "
          f"(test weighted-F1 {metrics['weighted_f1']:.4f})")
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
