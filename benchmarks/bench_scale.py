"""How the pipeline's cost grows with the data: 10K / 100K / 1M generated Alpaca-like rows.

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--rounds 3] [--json FILE]
    python benchmarks/bench_scale.py --sizes 100000 --steps segment --rounds 1   # one cell

Each size's data is generated once (seeded) into a temporary folder: Alpaca-like rows
(instruction 5-30 words, ``input`` on a third of them, output 10-200 words, skewed short, a GPT-4-like
score on the 1-5 scale: means of four ratings on a 0.25 grid), one JSON object a line. Then,
each in its own Python process (``sys.executable``, the checkout's entrypoints):

- ``score``: ``score.py scorer=length`` (a computed scorer: token length by rank, no requests)
  on that file, writing ``scored.jsonl``;
- ``segment``: ``segment.py`` on the generated file (its scores, ``scorer=oracle``): stage
  manifest, Table 1 (tokens counted with ``model=tiny``'s BPE), sensitivity, density plot;
- ``select``: the same ``segment.py`` with ``selection=alpagasus`` (keep score >= 4.5 first);
- ``plan``: ``train.py plan_only=true`` on the same file with ``ordering=1-2-3``.

Every step runs with the same ``run.cache_dir`` per size, warmed by an untimed first run of
each step (the BPE tokenizer that ``model=tiny`` trains on the texts is cached by content, as
in a user's second run), and then in interleaved rounds: each round runs every (size, step)
once. Per cell: wall seconds and the child's peak resident memory (``ru_maxrss`` of the
child, from ``os.wait4``), median [min-max] over rounds; seconds per row; and per step the
time per row at the largest size over the smallest, within one round.

Targets (issue #25): time per row within 1.5x from 10K to 1M rows (``<step>/per_row_ratio``),
peak memory at 1M rows below 3x the input file's size (``<step>/<n>/peak_over_file``),
``segment.py`` on 1M rows under 60 s on a 2-core box. ``--json FILE`` writes every
measurement, for ``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import median_range, write_json

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("score", "segment", "select", "plan")
WORDS = (
    "the a of to and in is that for it as with was on be by this are or an at from which "
    "model data answer question value list write explain number text describe give example "
    "following sentence word create generate summarize translate classify identify find "
    "article story poem paragraph function code python program table city country history "
    "science energy water health food music color animal plant computer network language"
).split()


def generate(path: Path, n: int, seed: int = 0) -> None:
    """``n`` Alpaca-like rows with a score, one JSON object a line, into ``path``."""
    rng = random.Random(seed)
    choice, randint = rng.choice, rng.randint

    def words(lo: int, hi: int) -> str:
        return " ".join(choice(WORDS) for _ in range(randint(lo, hi)))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            levels = [choice((1, 1, 1, 1, 1, 2, 2, 3, 4, 5)) for _ in range(4)]
            row = {
                "id": str(i),
                "instruction": words(5, 30).capitalize() + ".",
                "input": words(3, 20) if i % 3 == 0 else "",
                "output": words(10, 10 + int(190 * rng.random() ** 2)).capitalize() + ".",
                "score": round(sum(levels) / 4 * 4) / 4,
            }
            f.write(json.dumps(row) + "\n")


def command(step: str, data: Path, out: Path, cache: Path) -> list[str]:
    common = [f"dataset.source.path={data}", f"run.root={out}", f"run.cache_dir={cache}"]
    if step == "score":
        return [sys.executable, "score.py", "scorer=length", "dataset=jsonl", *common]
    if step == "segment":
        return [sys.executable, "segment.py", "dataset=jsonl", *common]
    if step == "select":  # the same, on the examples AlpaGasus's rule keeps (score >= 4.5)
        return [sys.executable, "segment.py", "dataset=jsonl", "selection=alpagasus", *common]
    return [
        sys.executable, "train.py", "plan_only=true", "dataset=jsonl", "scorer=oracle",
        "ordering=1-2-3", *common,
    ]  # fmt: skip


def timed(cmd: list[str], log: Path) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of ``cmd`` run as a child (its output to ``log``)."""
    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return seconds, usage.ru_maxrss * 1024  # Linux: kilobytes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000", help="rows, comma-separated")
    p.add_argument("--steps", default=",".join(STEPS), help=f"some of {','.join(STEPS)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-warmup", action="store_true", help="time the first (cold-cache) runs")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data here (else a temp)")
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [s for s in args.steps.split(",") if s]
    if unknown := set(steps) - set(STEPS):
        p.error(f"unknown steps {sorted(unknown)}; known: {', '.join(STEPS)}")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        files: dict[int, Path] = {}
        file_bytes: dict[int, int] = {}
        for n in sizes:
            files[n] = work / f"rows_{n}.jsonl"
            generate(files[n], n)
            file_bytes[n] = files[n].stat().st_size
            print(f"{n} rows: {file_bytes[n] / 1e6:.1f} MB", flush=True)

        def once(n: int, step: str, tag: str) -> tuple[float, int]:
            out = work / f"out_{n}_{step}_{tag}"
            return timed(command(step, files[n], out, work / f"cache_{n}"), work / f"{tag}.log")

        if not args.no_warmup:  # caches (BPE tokenizer, manifests) as a second run finds them
            for n in sizes:
                for step in steps:
                    once(n, step, "warm")
        seconds: dict[str, list[float]] = {}
        peak: dict[str, list[int]] = {}
        for r in range(args.rounds):
            for n in sizes:
                for step in steps:
                    s, m = once(n, step, f"r{r}")
                    seconds.setdefault(f"{step}/{n}", []).append(s)
                    peak.setdefault(f"{step}/{n}", []).append(m)
                    print(f"round {r + 1}: {step} {n}: {s:.1f} s, {m / 1e6:.0f} MB", flush=True)

    per_round: dict[str, list[float]] = {}
    for key, values in seconds.items():
        rows = int(key.split("/")[1])
        per_round[f"{key}/s_per_row"] = [v / rows for v in values]
        per_round[f"{key}/peak_mb"] = [b / 1e6 for b in peak[key]]
        per_round[f"{key}/peak_over_file"] = [b / file_bytes[rows] for b in peak[key]]
    lo, hi = min(sizes), max(sizes)
    if lo != hi:
        for step in steps:
            per_round[f"{step}/per_row_ratio"] = [
                (b / hi) / (a / lo)
                for a, b in zip(seconds[f"{step}/{lo}"], seconds[f"{step}/{hi}"], strict=True)
            ]
    summary = {k: median_range(v) for k, v in per_round.items()}

    print(f"\n{args.rounds} interleaved rounds, median [min-max]")
    print(
        f"{'step':<9}{'rows':>9}{'file MB':>9}{'seconds':>22}{'us/row':>9}{'peak MB':>20}{'x file':>8}"
    )
    for step in steps:
        for n in sizes:
            t, mb = median_range(seconds[f"{step}/{n}"]), summary[f"{step}/{n}/peak_mb"]
            print(
                f"{step:<9}{n:>9}{file_bytes[n] / 1e6:>9.1f}"
                f"{t['median']:>10.1f} [{t['min']:.1f}-{t['max']:.1f}]"
                f"{t['median'] / n * 1e6:>9.0f}"
                f"{mb['median']:>9.0f} [{mb['min']:.0f}-{mb['max']:.0f}]"
                f"{summary[f'{step}/{n}/peak_over_file']['median']:>8.2f}"
            )
        if lo != hi:
            ratio = summary[f"{step}/per_row_ratio"]
            print(
                f"{step}: time per row at {hi} over {lo}: {ratio['median']:.2f}"
                f" [{ratio['min']:.2f}-{ratio['max']:.2f}]   (target <= 1.5)"
            )
    print("targets: per-row ratio <= 1.5; peak at 1M rows < 3x file; segment 1M rows < 60 s")
    write_json(
        args.json,
        {
            "bench": "scale",
            "sizes": sizes,
            "steps": steps,
            "rounds": args.rounds,
            "file_bytes": file_bytes,
            "seconds": seconds,
            "peak_bytes": peak,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
