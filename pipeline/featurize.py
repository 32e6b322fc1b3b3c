"""Stage featurize: data/tables/<split>.csv -> data/features/<split>/{text,audio,visual,mask,face_found}.npy
+ index.csv."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hlm12erc import workers  # noqa: E402
from hlm12erc.config import ConfigError, load_params  # noqa: E402
from hlm12erc.data.meld import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--out", default="data/features")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.features.featurize import featurize_stage

        featurize_stage(load_params(args.params), args.tables, args.out)
    except (ConfigError, DataError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"featurize: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
