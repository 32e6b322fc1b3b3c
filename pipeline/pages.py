"""Stage pages: the split's table + every objective's predictions + the media -> one error-analysis page per
objective (reports/<objective>/index.html) and reports/index.html; each page goes into its evaluate run in MLflow.

The objectives are the keys of params.yaml `objectives` (the one place they are listed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hlm12erc import workers  # noqa: E402
from hlm12erc.config import ConfigError, load_params  # noqa: E402
from hlm12erc.data.meld import DataError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="objectives, their modalities, labels")
    parser.add_argument("--tables", default="data/tables")
    parser.add_argument("--split", default="test", help="the split the evaluate stages scored")
    parser.add_argument("--plots", default="plots", help="folder of <objective>/predictions.csv")
    parser.add_argument("--report", default="metrics/objectives.csv", help="the report stage's table (the scores)")
    parser.add_argument("--out", default="reports")
    parser.add_argument("--audio-budget-mb", type=float, default=None,
                        help="embed a page's audio (8 kHz 16-bit) up to this size, else link the wavs (default 4)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the pages only")
    args = parser.parse_args(argv)
    try:
        from hlm12erc.page_media import AUDIO_BUDGET
        from hlm12erc.pages import Evaluated, build_pages

        params = load_params(args.params)
        objectives = [Evaluated(name, Path(args.plots) / name / "predictions.csv",
                                tuple(params.objective(name).modalities)) for name in params.objectives]
        budget = AUDIO_BUDGET if args.audio_budget_mb is None else int(args.audio_budget_mb * 1e6)
        # The index compares each objective with the study's last one (not params `model`: switching the headline
        # with `dvc exp run -S model=...` re-runs only the headline stage).
        written, refused = build_pages(Path(args.tables) / f"{args.split}.csv", objectives, args.out, params.labels,
                                       args.split, objectives[-1].name if objectives else None,
                                       args.report, budget)
        if not args.no_mlflow:
            from hlm12erc import tracking

            for folder in written:
                tracking.log_page(folder.name, folder)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        print(f"pages: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} page(s) under {args.out}/ (open {Path(args.out) / 'index.html'})")
    if refused:
        print(f"pages: no page for {', '.join(refused)} (the line above says why)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
