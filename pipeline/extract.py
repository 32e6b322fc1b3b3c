"""Stage `extract`: every clip -> K letterboxed PNG frames + a 16 kHz mono wav, and manifest.csv.

    python pipeline/extract.py --params params.yaml --raw data/raw --out data/media

Declare the DVC output with `persist: true`: clips already done (same params, same source
file) are skipped, so a re-run after an interruption only does the rest.
"""

from __future__ import annotations

import argparse
import sys
import time

from hlm12erc import media, media_manifest, workers
from hlm12erc.config import ConfigError, load_params, resolve_jobs
from hlm12erc.data import sources
from hlm12erc.data.meld import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/media")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        desc = sources.read_descriptor(args.raw)
        print(sources.describe(desc))
        start = time.perf_counter()
        manifest, worked = media.run_extract(desc, args.out, params.extract, progress=not args.no_progress,
                                              jobs=params.runtime.jobs)
    except (ConfigError, DataError, OSError) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"extracted {worked} clip(s), {len(manifest) - worked} already done or text-only, "
          f"in {seconds:.1f}s with {resolve_jobs(params.runtime.jobs)} job(s)")
    print(media_manifest.summarise(manifest))
    print(f"wrote {args.out}/{media_manifest.MANIFEST}")
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
