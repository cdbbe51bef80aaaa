"""report.html with tens of thousands of judged items: time to open and to filter-and-draw.

    python benchmarks/bench_report.py [--items 20000,50000] [--rounds 3] [--json FILE]

Per size: a generated sweep as evaluate.py writes it (``tests/test_report.py``'s
``make_sweep``: 5 comparisons on each of 2 test sets, answers and reviews of real length, the
baseline's answers shared across comparisons), its page written by ``write_report`` (not
timed in the rounds: build seconds and page MB reported once). Then interleaved rounds, each
opening every size's page afresh in Debian's headless Chromium (``/usr/bin/chromium``) and
applying the same filters, as a user picks them in the page's controls. Measured in the page
(``performance.now()``, style and layout included; ``window.__report``): parse + first page,
and each filter-and-draw; and the wall seconds to open the file. Target: every filter-and-draw
under 100 ms, parse + first page under 1 s, at 20,000 items (median over rounds).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compare import median_range, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_report import CHROMIUM, choose, chromium, load, make_sweep  # noqa: E402

from phasedsft.report import write_report  # noqa: E402

STEPS = [
    ("f-cmp", "*"),
    ("f-verdict", "loss"),
    ("f-cat", "level=3"),
    ("f-sort", "ldiff-desc"),
    ("f-size", "100"),
    ("f-verdict", "inconsistent"),
    ("f-set", "koala"),
]


def one_round(tools: Any, url: str) -> dict[str, float]:
    got: dict[str, float] = {}
    t = time.perf_counter()
    load(tools, url)
    got["open_wall_s"] = time.perf_counter() - t
    got["parse_first_page_ms"] = tools.js("window.__report.loadMs")
    for control, value in STEPS:
        before = tools.js("window.__report.renders")
        choose(tools, control, value)
        tools.wait(f"window.__report.renders > {before}")
        got[f"{control}={value}_ms"] = tools.js("window.__report.lastMs")
    before = tools.js("window.__report.renders")
    tools.js("var q=document.getElementById('f-q'); q.value='question 7'; q.form.requestSubmit()")
    tools.wait(f"window.__report.renders > {before}")
    got["search_ms"] = tools.js("window.__report.lastMs")
    if tools.errors():
        raise SystemExit(f"console errors: {tools.errors()}")
    return got


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", default="20000,50000", help="judged items per page, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is absent: apt-get install -y chromium (Debian's package)")
    sizes = [int(x) for x in args.items.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        run(args, sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, sizes: list[int], work: Path) -> None:
    pages: dict[int, Path] = {}
    built: dict[int, dict[str, float]] = {}
    for n in sizes:
        sweep = make_sweep(work / str(n), per_comparison=n // 10, seed=1, long_texts=True)
        t = time.perf_counter()
        pages[n] = write_report(sweep / "evaluation" / "reference", sweep)
        built[n] = {"build_s": time.perf_counter() - t, "page_mb": pages[n].stat().st_size / 1e6}
        judged = sweep / "evaluation" / "reference" / "comparisons"
        items = sum(f.read_bytes().count(b"\n") for f in judged.glob("*/*.jsonl"))
        assert items == n, (items, n)  # the size is what it says

    rounds: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
    with chromium() as tools:
        for n in sizes:  # untimed warm-up
            one_round(tools, pages[n].as_uri())
        for _ in range(args.rounds):  # interleaved: every size once per round
            for n in sizes:
                for k, v in one_round(tools, pages[n].as_uri()).items():
                    rounds[n].setdefault(k, []).append(v)
    summary: dict[str, Any] = {}
    for n in sizes:
        per_round = rounds[n]
        per_round["slowest_filter_ms"] = [
            max(
                v[r]
                for k, v in per_round.items()
                if k.endswith("_ms") and k != "parse_first_page_ms"
            )
            for r in range(args.rounds)
        ]
        summary[str(n)] = {k: median_range(v) for k, v in per_round.items()}

    print(f"report.html, {args.rounds} interleaved rounds, median [min-max]")
    for n in sizes:
        b = built[n]
        print(f"\n{n} items: page {b['page_mb']:.1f} MB, written in {b['build_s']:.1f} s (once)")
        for k, m in summary[str(n)].items():
            print(f"  {k:<28}{m['median']:>9.1f} [{m['min']:.1f}-{m['max']:.1f}]")
    for n in sizes:
        s = summary[str(n)]
        ok = s["slowest_filter_ms"]["median"] < 100 and s["parse_first_page_ms"]["median"] < 1000
        print(
            f"target at {n} items (filter < 100 ms, parse + first page < 1 s): "
            f"{'met' if ok else 'NOT met'}"
        )
    write_json(
        args.json,
        {
            "bench": "report",
            "items": sizes,
            "rounds": args.rounds,
            "built": {str(n): built[n] for n in sizes},
            "per_round": {str(n): rounds[n] for n in sizes},
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
