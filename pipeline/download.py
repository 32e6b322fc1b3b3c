"""Stage `download`: MELD from data.source (demo | kaggle | local) -> <out>/meld.json.

    python pipeline/download.py --params params.yaml --out data/raw
"""

from __future__ import annotations

import argparse
import sys
import time

from hlm12erc import workers
from hlm12erc.config import ConfigError, load_params
from hlm12erc.data import sources
from hlm12erc.data.meld import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/raw")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        start = time.perf_counter()
        desc = sources.download(params.data, args.out)
    except (ConfigError, DataError, OSError) as exc:
        print(f"download: {exc}", file=sys.stderr)
        return 2
    print(sources.describe(desc))
    for split, entry in desc["splits"].items():
        print(f"  {split:5s} csv={entry['csv']} clips={entry['clips'] or '-'}")
    if desc.get("demo_broken"):
        print(f"  deliberately broken demo clips: {desc['demo_broken']}")
    print(f"wrote {args.out}/{sources.DESCRIPTOR} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
