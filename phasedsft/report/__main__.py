"""``python -m phasedsft.report SWEEP_DIR [--out FILE]``: the sweep's HTML report(s).

SWEEP_DIR is a sweep (``runs/demo``: one report per ``evaluation/<judge>/`` in it) or one
evaluation folder (``runs/demo/evaluation/reference``). Each report is written beside its
evaluation as ``report.html`` unless ``--out`` names the file (one evaluation only).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from phasedsft.report import write_report
from phasedsft.report.build import evaluation_dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m phasedsft.report",
        description="One self-contained HTML report per evaluated sweep: Figure 1 and the "
        "tables, the data and the plan, every judged item side by side, provenance.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep (runs/demo) or one evaluation folder")
    parser.add_argument(
        "--out", type=Path, help="the HTML file (default: <evaluation>/report.html)"
    )
    parser.add_argument(
        "--runs", type=Path, help="where the training runs are (default: the sweep folder)"
    )
    args = parser.parse_args(argv)
    found = evaluation_dirs(args.sweep_dir)
    if not found:
        print(
            f"error: no evaluation in {args.sweep_dir}: neither table.csv nor comparisons/ there, "
            "nor in evaluation/<judge>/ below it (run evaluate.py first)",
            file=sys.stderr,
        )
        return 2
    if args.out is not None and len(found) > 1:
        print(
            f"error: {len(found)} evaluations in {args.sweep_dir} "
            f"({', '.join(p.name for p in found)}): --out needs one; name its folder instead",
            file=sys.stderr,
        )
        return 2
    command = shlex.join(
        ["python", "-m", "phasedsft.report", *(argv if argv is not None else sys.argv[1:])]
    )
    for eval_dir in found:
        sweep = args.runs or (args.sweep_dir if eval_dir != args.sweep_dir else None)
        path = write_report(eval_dir, sweep, args.out, command=command)
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
