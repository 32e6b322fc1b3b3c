"""Stage report: metrics/<objective>.json of several objectives -> a markdown table, a CSV and a bar plot."""

from __future__ import annotations

import argparse
import os
import sys


from hlm12erc.config import ConfigError, load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="for each objective's modalities/fusion/loss")
    parser.add_argument("--metrics", default="metrics", help="folder of <objective>.json")
    parser.add_argument("--objectives", nargs="+", required=True)
    parser.add_argument("--out", default="metrics/objectives.md")
    parser.add_argument("--csv", default="metrics/objectives.csv")
    parser.add_argument("--plot", default="plots/objectives.png")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.training.stages import markdown_table, report_stage

        table = report_stage(load_params(args.params), args.metrics, args.objectives, args.out, args.csv, args.plot)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
