"""Writes the information-plane report of one or more runs.

Usage::

    python -m experiments.report DIR [DIR ...] [--out OUT]

Each DIR is a run directory (with summary.json) or a comparison directory
(one run directory per training mode). The report (report.md and figures/,
each PNG with its CSV) goes to OUT. Without --out: a single DIR receives its own
report; with several DIRs, the first DIR if it is a comparison directory, else
the deepest directory containing all of them (their common parent).

A missing or invalid DIR exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hsicib import report


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def default_out(dirs: Sequence[str | os.PathLike]) -> Path:
    """Where the report goes when --out is not given (see the module docstring)."""
    paths = [Path(d) for d in dirs]
    if len(paths) == 1 or report.is_comparison_dir(paths[0]):
        return paths[0]
    return Path(os.path.commonpath([p.resolve().parent for p in paths]))


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv``, writes the report, returns the exit status."""
    parser = _Parser(
        prog="python -m experiments.report",
        description="Tables, figures and findings from hsicib run directories.",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="run or comparison directory"
    )
    parser.add_argument("--out", default=None, help="output directory")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not Path(d).is_dir():
            parser.exit(2, f"{parser.prog}: error: {d!r} is not a directory\n")
    out = Path(args.out) if args.out else default_out(args.dirs)
    try:
        path = report.write_report(args.dirs, out)
    except (ValueError, OSError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
