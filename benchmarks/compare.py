"""Compare two benchmark runs: each measured value's change, flagged where it left the old spread.

    python benchmarks/compare.py OLD.json NEW.json [--strict]
    python benchmarks/compare.py --merge OUT.json PART.json ...   (what ``make bench`` runs)

A file is either one bench's ``--json`` output (``{"bench": NAME, "summary": {...}}``) or a
merged run (``{"benches": {NAME: ...}}``, written by ``--merge``). Every entry of a bench's
``summary`` is ``{"median", "min", "max"}`` over its interleaved rounds; an entry is flagged
(``!``) when the new median lies outside the old run's [min-max]. ``--strict``: exit 1 when
anything is flagged. The benches import :func:`median_range` and :func:`write_json` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def median_range(values: list[float]) -> dict[str, float]:
    """Median and min-max of one measurement's rounds."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1]}


def num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def fmt(m: dict[str, float]) -> str:
    return f"{num(m['median'])} [{num(m['min'])}-{num(m['max'])}]"


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"  measurements: {path}")


def benches(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    if "benches" in data:
        return dict(data["benches"])
    if "bench" in data:
        return {data["bench"]: data}
    raise SystemExit(f"{path}: neither a bench's --json output nor a merged run")


def machine() -> dict[str, Any]:
    """Where the run happened: enough to tell two runs' machines apart."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_merge"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return info


def merge(out: Path, parts: list[Path]) -> None:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(benches(part))
    write_json(
        out,
        {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "benches": merged,
        },
    )


def settings(bench: dict[str, Any]) -> dict[str, Any]:
    """A bench's scalar settings (top level, and its ``settings`` if it has them)."""
    flat = {**bench, **bench.get("settings", {})}
    return {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool, type(None)))}


def compare(old_path: Path, new_path: Path) -> int:
    """Print every shared summary entry's change; return how many left the old [min-max]."""
    old, new = benches(old_path), benches(new_path)
    flagged = 0
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            print(f"{name}: only in {'NEW' if name in new else 'OLD'}")
            continue
        print(f"{name}:")
        changed = settings(old[name]).items() ^ settings(new[name]).items()
        for key in sorted({k for k, _ in changed}):
            a, b = settings(old[name]).get(key, "-"), settings(new[name]).get(key, "-")
            print(f"  (settings differ: {key} {a} -> {b})")
        o_sum, n_sum = old[name].get("summary", {}), new[name].get("summary", {})
        keys = [k for k in o_sum if k in n_sum]
        width = max((len(k) for k in keys), default=0)
        for key in keys:
            o, n = o_sum[key], n_sum[key]
            if o is None or n is None:
                print(f"  {key:<{width}}  {'n/a' if o is None else fmt(o)} -> ", end="")
                print("n/a" if n is None else fmt(n))
                continue
            change = (n["median"] - o["median"]) / abs(o["median"]) * 100 if o["median"] else 0.0
            outside = not o["min"] <= n["median"] <= o["max"]
            flagged += outside
            print(
                f"  {key:<{width}}  {fmt(o):>24} -> {fmt(n):<24} {change:+7.1f} %"
                + ("  ! outside the old min-max" if outside else "")
            )
        for key in sorted(set(o_sum) ^ set(n_sum)):
            print(f"  {key:<{width}}  only in {'NEW' if key in n_sum else 'OLD'}")
    print(f"\n{flagged} value(s) outside the old run's min-max")
    return flagged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--merge", type=Path, metavar="OUT", help="merge the files into OUT")
    p.add_argument("--strict", action="store_true", help="exit 1 when a value is flagged")
    args = p.parse_args()
    if args.merge:
        merge(args.merge, args.files)
        return
    if len(args.files) != 2:
        p.error("give OLD.json NEW.json")
    flagged = compare(*args.files)
    sys.exit(1 if flagged and args.strict else 0)


if __name__ == "__main__":
    main()
