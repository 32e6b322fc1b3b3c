"""Stage report: metrics/<objective>.json of every objective -> a markdown table, a CSV and a bar plot.

The objectives are the keys of params.yaml `objectives`, in their order (the one place they are
listed); --objectives picks a subset.
"""

from __future__ import annotations

import argparse
import sys

from hlm12erc import workers
from hlm12erc.config import ConfigError, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="for each objective's modalities/fusion/loss")
    parser.add_argument("--metrics", default="metrics", help="folder of <objective>.json")
    parser.add_argument("--objectives", nargs="+", default=None,
                        help="a subset of the objectives (default: every key of params.yaml `objectives`)")
    parser.add_argument("--out", default="metrics/objectives.md")
    parser.add_argument("--csv", default="metrics/objectives.csv")
    parser.add_argument("--plot", default="plots/objectives.png")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.report import markdown_table, report_stage

        params = load_params(args.params)
        names = args.objectives or list(params.objectives)
        for name in names:
            params.objective(name)  # an unknown name fails listing the known ones
        table = report_stage(params, args.metrics, names, args.out, args.csv, args.plot)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    print(markdown_table(table))
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
