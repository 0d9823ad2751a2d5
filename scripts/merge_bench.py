"""Merge bench reports into one table: ``python scripts/merge_bench.py OUT.md A/bench.json [B/bench.json ...]``.

Writes OUT.md (the markdown table with its footnotes) and OUT.json (the merged report) next to it. Baseline rows
come once, from the first report that has them; each selfspec / assisted row keeps the speed-up measured against
the target in its own run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from selfspec.decode.bench.render import merge_reports, render_markdown
from selfspec.utils import SelfspecError, atomic_write_json, atomic_write_text, setup_logging

logger = logging.getLogger("selfspec.merge_bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="markdown file to write (a .json is written beside it)")
    parser.add_argument("reports", nargs="+", type=Path, help="bench.json files")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        merged = merge_reports(args.reports)
    except SelfspecError as e:
        logger.error("%s", e)
        return 2
    atomic_write_json(args.out.with_suffix(".json"), merged)
    atomic_write_text(args.out, render_markdown(merged, args.title))
    logger.info("wrote %s and %s", args.out, args.out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
