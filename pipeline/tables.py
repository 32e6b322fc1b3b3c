"""Stage `tables`: descriptor + media manifest -> data/tables/{train,valid,test,sample}.csv.

    python pipeline/tables.py --params params.yaml --raw data/raw --media data/media --out data/tables
"""

from __future__ import annotations

import argparse
import sys

from hlm12erc import media_manifest, workers
from hlm12erc.config import ConfigError, load_params
from hlm12erc.data import sources, tables
from hlm12erc.data.meld import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--media", default="data/media")
    parser.add_argument("--out", default="data/tables")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        desc = sources.read_descriptor(args.raw)
        manifest = media_manifest.read_manifest(args.media)
        plan = tables.split_plan(desc)
        built = tables.build_tables(desc, manifest, params.data, params.tables, params.labels,
                                    media_dir=args.media, table_dir=args.out)
        tables.write_tables(built, args.out)
    except (ConfigError, DataError, OSError) as exc:
        print(f"tables: {exc}", file=sys.stderr)
        return 2
    print(sources.describe(desc))
    print(tables.describe_plan(plan, params.data))
    print(tables.summarise(built, params.labels))
    print(f"wrote {', '.join(f'{args.out}/{name}.csv' for name in built)}")
    return 0


if __name__ == "__main__":
    workers.end_with_parent()  # a killed dvc ends this stage too
    sys.exit(main())
