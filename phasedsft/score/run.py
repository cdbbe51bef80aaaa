"""``python score.py``: score a dataset's difficulty and write a scored dataset.

setup: load data -> scorer (+ tokenizer / model if it runs one) -> cost estimate
score: every example not in the cache (dry_run=true stops after the estimate)
write: scored.jsonl (train on it with dataset=jsonl scorer=oracle), failures.jsonl,
       summary.json (it adds up: ok + failed + not_scored == examples), histogram.png
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from phasedsft.distributed import barrier, gather, is_main, join_ranks, rank
from phasedsft.io import atomic_write_json, atomic_write_text
from phasedsft.jobs import build_context, load_examples, score_cache_dir, start_job
from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.engine import RequestsAborted, RunStats, redact
from phasedsft.records import DataError, Example
from phasedsft.score.base import Scorer, checked_scorer
from phasedsft.score.context import ScoreContext, model_context
from phasedsft.score.report import (
    check_summary,
    plot_histogram,
    score_counts,
    summary_lines,
    text_histogram,
)
from phasedsft.score.spread import merged_counts, spread_run

log = logging.getLogger(__name__)


def context(
    cfg: DictConfig, scorer: Any, examples: list[Example], cache: ScoreCache
) -> ScoreContext:
    if not scorer.uses_model:
        return ScoreContext(cache=cache)
    build = build_context(cfg, examples)
    return model_context(cache, instantiate(cfg.model.tokenizer, context=build), build, cfg)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load the data -> estimate the cost (stop there on dry_run) -> score every example not in
    the cache -> write the scored data, the failures, the summary and the histogram.

    Run as N processes (torchrun, a SLURM job of N tasks), each scores its share of the
    examples for a scorer that runs a local model (phasedsft.score.spread); rank 0 writes."""
    ranks = join_ranks()
    run_dir = start_job(cfg)
    loaded, examples = load_examples(cfg)
    scorer = checked_scorer(instantiate(cfg.scorer))
    cache = ScoreCache(score_cache_dir(cfg, not scorer.costs_nothing) / "scores.sqlite")
    ctx = context(cfg, scorer, examples, cache)

    estimate = scorer.estimate(examples, ctx)
    if estimate is not None:  # the scorer spends money: what it will send and cost
        atomic_write_json(run_dir / "estimate.json", estimate)
        print("cost estimate: " + json.dumps(estimate, indent=2), flush=True)
        if cfg.dry_run and not cfg.extra_scorers:
            return {"estimate": estimate, "run_dir": str(run_dir)}

    # +scorer@extra_scorers.NAME=OPTION: more scorers' raw values, side by side in `scores`
    extras = {name: checked_scorer(instantiate(node)) for name, node in cfg.extra_scorers.items()}
    extra_ctx = {
        name: context(
            cfg,
            x,
            examples,
            ScoreCache(score_cache_dir(cfg, not x.costs_nothing) / "scores.sqlite"),
        )
        for name, x in extras.items()
    }
    for name, x in extras.items():
        extra_estimate = x.estimate(examples, extra_ctx[name])
        if extra_estimate is not None:
            atomic_write_json(run_dir / f"estimate.{name}.json", extra_estimate)
            print(f"cost estimate ({name}): " + json.dumps(extra_estimate, indent=2), flush=True)
    if cfg.dry_run and (estimate is not None or extras):
        return {"estimate": estimate, "run_dir": str(run_dir)}

    stats, aborted = score_all(scorer, examples, ctx)
    scores = scorer.finalize(stats.raw_scores())
    columns, stopped = score_columns(scorer.name, stats.raw_scores(), examples, extras, extra_ctx)
    aborted = aborted or stopped
    for c in (ctx, *extra_ctx.values()):  # for runs on other hosts sharing the cache
        c.cache.publish()
    # every rank's collectives are finished before any leaves: a rank tearing down its process
    # group while a peer's gloo work is in flight can abort at exit (as train.py's ranks do)
    barrier()
    if not is_main():  # rank 0 writes the run's files
        return {"rank": rank(), "run_dir": str(run_dir)}
    # rows cached by an older version may hold an echoed key: redact on the way out too
    secrets = scorer.secrets()
    rows = iter_scored_rows(examples, scores, stats.ordered, secrets, columns)
    ok, failures = write_scored(run_dir / "scored.jsonl", rows)  # streamed, never a list
    write_jsonl(run_dir / "failures.jsonl", failures)
    summary = job_summary(scorer, examples, scores, stats, ok, len(failures), aborted, run_dir)
    check_summary(summary)
    summary["ranks"] = ranks  # processes that shared the scoring (torchrun, SLURM tasks)
    summary["data"] = {  # what the loader skipped (on_error=skip) or did not use, as train.py says
        "skipped_rows": loaded.skips.summary(),
        "unused_fields": loaded.unused_fields,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    plot_histogram(
        scores,
        run_dir / "histogram.png",
        f"{cfg.dataset.name} scored by {scorer.name}",
        cfg.thresholds,
    )
    print("\n" + text_histogram(summary["counts"]) + "\n\n" + summary_lines(summary), flush=True)
    print(
        f"scored data: {run_dir / 'scored.jsonl'}  (train: python train.py dataset=jsonl "
        f"dataset.source.path={run_dir / 'scored.jsonl'} scorer=oracle)",
        flush=True,
    )
    if aborted:
        print(f"error: {aborted}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    return summary


def score_all(
    scorer: Scorer, examples: list[Example], ctx: ScoreContext
) -> tuple[RunStats, RequestsAborted | None]:
    """The scorer's run over every example (each rank scoring its share, then reading the
    others': phasedsft.score.spread); a stop (budget, failures) keeps what it got."""
    try:
        whole, own = spread_run(scorer, examples, ctx)
    except RequestsAborted as e:
        if not e.stats.ordered:
            e.stats.ordered = [None] * len(examples)
        return e.stats, e
    if own is not None:  # every rank's work, counted once (rank 0 writes the summary)
        whole = merged_counts(
            whole, gather({"done": own.done, "failed": own.failed, "requests": own.requests})
        )
    return whole, None


def score_columns(
    main: str,
    raw: Sequence[float | None],
    examples: Sequence[Example],
    extras: dict[str, Scorer],
    contexts: dict[str, ScoreContext],
) -> tuple[dict[str, list[float | None]], RequestsAborted | None]:
    """The ``scores`` columns of the scored file: none at all for one scorer on unscored data
    (the file as before); with extra scorers, or data whose rows already carry ``scores`` (a
    scored file scored again), every scorer's raw values by name (the main one's too)."""
    carried = any(isinstance(ex.meta.get("scores"), dict) for ex in examples)
    if not extras and not carried:
        return {}, None
    if main in extras:
        raise DataError(
            f"extra_scorers.{main}: the scorer's own column is already named {main}; "
            "name the extra scorer's column otherwise"
        )
    columns: dict[str, list[float | None]] = {main: list(raw)}
    aborted = None
    for name, x in extras.items():
        stats, stopped = score_all(x, list(examples), contexts[name])
        columns[name] = stats.raw_scores()
        aborted = aborted or stopped
    return columns, aborted


def scored_rows(
    examples: Sequence[Example],
    scores: Sequence[float | None],
    results: Sequence[Result | None],
    secrets: tuple[str, ...],
    columns: Mapping[str, Sequence[float | None]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The scored file's rows (trainable as is) and the failures' rows (reason, raw reply);
    with ``columns``, each row's ``scores``: the columns its examples carried, then these.
    (score.py streams them: :func:`iter_scored_rows`.)"""
    scored: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for row in iter_scored_rows(examples, scores, results, secrets, columns):
        (scored if "score" in row else failures).append(row)
    return scored, failures


def write_scored(path: Path, rows: Iterable[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """Write the scored rows of ``rows`` to ``path`` as they come (one at a time, never a list
    of them); return how many, and the failures' rows (set aside for failures.jsonl)."""
    failures: list[dict[str, Any]] = []
    ok = 0

    def lines() -> Iterator[str]:
        nonlocal ok
        for row in rows:
            if "score" in row:
                ok += 1
                yield json.dumps(row, ensure_ascii=False) + "\n"
            else:
                failures.append(row)

    atomic_write_text(path, lines())
    return ok, failures


def iter_scored_rows(
    examples: Sequence[Example],
    scores: Sequence[float | None],
    results: Sequence[Result | None],
    secrets: tuple[str, ...],
    columns: Mapping[str, Sequence[float | None]] | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`scored_rows`, one row at a time, in the examples' order: a scored row (it has
    ``score``) or a failure's row (``id``, ``reason``, ``raw``)."""
    for k, (ex, score, r) in enumerate(zip(examples, scores, results, strict=True)):
        if score is not None:
            row = {
                "id": ex.id,
                "instruction": ex.instruction,
                "input": ex.input,
                "output": ex.output,
                "score": score,
            }
            if ex.messages is not None:  # the conversation itself: train.py reads it back
                row["messages"] = [m.as_openai() for m in ex.messages]
            if ex.tools is not None:
                row["tools"] = json.loads(ex.tools)
            if r is not None and r.detail:
                row["score_detail"] = r.detail
            if columns:
                old = ex.meta.get("scores")
                row["scores"] = {**(old if isinstance(old, dict) else {})} | {
                    name: values[k] for name, values in columns.items() if values[k] is not None
                }
            yield row
        elif r is not None:
            yield {"id": ex.id, "reason": redact(r.error, secrets), "raw": redact(r.raw, secrets)}


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, (json.dumps(x, ensure_ascii=False) + "\n" for x in rows))  # streamed


def job_summary(
    scorer: Scorer,
    examples: Sequence[Example],
    scores: Sequence[float | None],
    stats: RunStats,
    ok: int,
    failed: int,
    aborted: RequestsAborted | None,
    run_dir: Path,
) -> dict[str, Any]:
    """summary.json: the dataset's state (adds up to the examples) and what this run did."""
    results = stats.ordered
    counts = score_counts([s for s, r in zip(scores, results, strict=True) if r is not None])
    this_run = stats.summary()  # what this run did (requests, cost, ...), not the dataset's state
    return {
        "scorer": scorer.name,
        # every example, cached or answered now: ok + failed + not_scored == examples
        "examples": len(examples),
        "ok": ok,
        "failed": failed,
        "not_scored": len(examples) - ok - failed,
        "counts": counts,
        "stopped": redact(str(aborted), scorer.secrets()) if aborted else None,
        "run_dir": str(run_dir),
        "scored_file": str(run_dir / "scored.jsonl"),
        # this run: cached + answered_this_run + not_scored == examples
        "cached": this_run["cached"],
        # of cached: recorded meanwhile by another run sharing the cache (never asked twice)
        "waited_for_other_runs": this_run.get("waited_for", 0),
        "answered_this_run": this_run["done"],
        "failed_this_run": this_run["failed"],
        "requests": this_run["requests"],  # every HTTP request sent, retries and rejections too
        # items stopped before their answer whose paid replies are kept (a rerun continues them)
        "unfinished_kept": this_run.get("unfinished", 0),
        "cost_usd": this_run["cost_usd"],
        "tokens_in": this_run["tokens_in"],
        "tokens_out": this_run["tokens_out"],
        **cost_breakdown(scorer, this_run),
        "seconds": this_run["seconds"],
    }


def cost_breakdown(scorer: Scorer, this_run: dict[str, Any]) -> dict[str, Any]:
    """Where this run's cost comes from: tokens x prices, plus the worst case charged for
    requests whose reply reported no usage (cost_usd == cost_from_tokens_usd +
    cost_unmetered_usd, checked by :func:`check_summary`)."""
    price = getattr(scorer, "price", None)
    if price is None or not hasattr(price, "cost"):
        return {}
    return {
        "cost_from_tokens_usd": price.cost(this_run["tokens_in"], this_run["tokens_out"]),
        "cost_unmetered_usd": this_run.get("cost_unmetered_usd", 0.0),
        "price": {"input_per_1k": price.input_per_1k, "output_per_1k": price.output_per_1k},
    }
