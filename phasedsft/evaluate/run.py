"""``python evaluate.py``: the paper's evaluation over a sweep of training runs.

    runs:     the finished training runs under sweep_dir, grouped by their whole identity
              (the saved config but the ordering: data source, subsample size and seed, model,
              seed, prompt, trainer, scorer, segmentation); in each group the run with
              ordering == baseline is the reference (:func:`groups_of`)
    generate: answers to every test set from every compared checkpoint (final, or every stage)
    judge:    each candidate's answers against the baseline's final answers, in both orders
    report:   win / tie / lose folded per item -> win rate with CI, sign test, position
              consistency, answer lengths; table.md/.csv, categories.md, figure1_stages.png
              and .pdf, AlpacaEval model outputs; beside each comparison's replay file, the
              same judgments as FastChat pair judgments and AlpacaEval annotations; where a
              comparison exists under several training seeds, its mean, spread and t-interval
              over seeds (table.md "Across seeds", seeds.csv, summary.json: :mod:`.seeds`)

Everything expensive is cached: answers files beside the checkpoints (resumable), judge
replies in the shared SQLite cache; rerunning the same command redoes no work.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from phasedsft.evaluate.answers import Answers, prepare
from phasedsft.evaluate.comparison import Comparison
from phasedsft.evaluate.folding import (
    Judged,
    WinRate,
    by_category,
    judge_item,
    length_view,
    summarize,
)
from phasedsft.evaluate.generation import checkpoint_answers
from phasedsft.evaluate.judges import MarksAnswers, Pair, Reviews, checked_judge
from phasedsft.evaluate.report import (
    plot_stage_curves,
    write_alpacaeval,
    write_categories,
    write_judgment_exports,
    write_tables,
)
from phasedsft.evaluate.runs import Checkpoint, Run, discover_runs
from phasedsft.evaluate.seeds import AcrossSeeds, across_seeds, seed_free
from phasedsft.evaluate.sets import EvalSet, build_eval_set
from phasedsft.evaluate.tracking import log_win_rates
from phasedsft.io import atomic_write_json, atomic_write_text, sha256_json
from phasedsft.llm.cache import ScoreCache
from phasedsft.llm.engine import RequestsAborted
from phasedsft.records import DataError
from phasedsft.report import write_report
from phasedsft.rundir import stage_name

log = logging.getLogger(__name__)
# (data label, model, seed): the label is the dataset's name, plus what tells its group apart
# from other groups of the same name, model and seed ("alpaca [max_examples=100]")
Group = tuple[str, str, int]
LABEL_MAX = 80  # longer descriptions of what differs become a hash: "alpaca #1a2b3c4d"


def load_sets(cfg: DictConfig, run: Run) -> list[EvalSet]:
    if not cfg.eval_sets:
        raise DataError(
            "no test set chosen: pick one with eval_set=held_out (or eval_set=paper, ...)"
        )
    sets = []
    for key, sc in sorted(cfg.eval_sets.items()):
        if sc.source is None:
            if not run.config.dataset.get("eval"):
                raise DataError(
                    f"eval_set={key}: run {run.name} has no held-out data (dataset.eval) in its config"
                )
            loaded = instantiate(run.config.dataset.eval)
        else:
            loaded = instantiate(sc.source)
        es = build_eval_set(
            sc.name, loaded, list(sc.categories), sc.max_items, sc.get("generation") or {}
        )
        if sc.expected_items and not sc.max_items and len(es.items) != sc.expected_items:
            log.warning(
                "eval set %s has %d items; the paper's copy has %d",
                sc.name,
                len(es.items),
                sc.expected_items,
            )
        sets.append(es)
    return sets


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, Mapping) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True, default=str)}


def _shown(value: str | None) -> str:
    """A flattened value as a label shows it: strings bare, anything else as JSON, absent '-'."""
    if value is None:
        return "-"
    v = json.loads(value)
    return v if isinstance(v, str) else value


def _pick(identity: dict[str, Any], key: str) -> Any:
    """``identity``'s value at the dotted ``key`` (None where absent)."""
    node: Any = identity
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _without(identity: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``identity`` less ``keys`` (dotted: ``trainer.stage_policy``)."""
    out = dict(identity)
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                break
            node[p] = child = dict(child)  # a copy: the identity itself stays whole
            node = child
        else:
            node.pop(leaf, None)
    return out


def group_labels(identities: dict[str, dict[str, Any]]) -> dict[str, Group]:
    """Readable group keys: (dataset name, model name, seed), the dataset name extended with
    what differs between identities that share those three ("alpaca [max_examples=100]")."""
    first = {
        key: (
            str((i.get("dataset") or {}).get("name", "?")),
            str((i.get("model") or {}).get("name", "?")),
            int(i.get("seed") or 0),
        )
        for key, i in identities.items()
    }
    out: dict[str, Group] = {}
    for key, (name, model, seed) in first.items():
        same = [k for k, v in first.items() if v == (name, model, seed)]
        if len(same) == 1:
            out[key] = (name, model, seed)
            continue
        flats = {k: _flat(identities[k]) for k in same}
        paths = sorted({p for f in flats.values() for p in f})
        differ = [p for p in paths if len({f.get(p) for f in flats.values()}) > 1]
        mine = flats[key]
        # a node whose name differs is shown by its name alone: "scorer=length"
        named = {p.removesuffix(".name") for p in differ if p.endswith(".name")}
        parts = []
        for p in differ:
            node = next((n for n in named if p.startswith(n + ".")), None)
            if node is None:
                parts.append(f"{p.removeprefix('dataset.')}={_shown(mine.get(p))}")
            elif p == node + ".name":
                parts.append(f"{node.removeprefix('dataset.')}={_shown(mine.get(p))}")
        text = f"{name} [{', '.join(parts)}]"
        out[key] = (text if len(text) <= LABEL_MAX else f"{name} #{key[:8]}", model, seed)
    seen = defaultdict(list)
    for key, group in out.items():
        seen[group].append(key)
    for group, keys in seen.items():  # never two groups under one label
        if len(keys) > 1:
            for key in keys:
                out[key] = (f"{first[key][0]} #{key[:8]}", group[1], group[2])
    return out


def groups_of(runs: list[Run], baseline: str) -> dict[Group, tuple[Run, list[Run]]]:
    """The baseline run and the runs compared with it, per group of comparable runs.

    Runs compared with each other share their whole :attr:`~Run.identity` (the saved config
    but the ordering): same data source, subsample size and seed, model, seed, prompt,
    trainer, scorer and segmentation. So Alpaca and Alpaca-cleaned in one sweep, or a
    ``dataset.max_examples`` sweep, give one group each, each with its own baseline.

    The baseline is the run with ordering == ``baseline`` and the same identity; where there
    is none, the one whose identity agrees on everything its ordering reads (a one-off run
    reads no scores and no stages: its scorer and segment settings may differ, e.g. when it
    was trained on its own without naming the phased runs' scorer; a one-phase run reads no
    replay and no stage policy). Several such runs: the ones that differ in the fewest of those
    settings; still several, an error naming them.
    """
    bases = [r for r in runs if r.ordering == baseline]
    if not bases:
        raise DataError(
            f"no group of runs has a baseline run with ordering={baseline}; "
            f"orderings found: {sorted({r.ordering for r in runs})}"
        )
    ident_of = {id(r): r.identity for r in runs}
    key_of = {id(r): sha256_json(ident_of[id(r)]) for r in runs}
    by: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.ordering != baseline:
            by[key_of[id(r)]].append(r)

    matched: dict[str, tuple[Run, list[Run]]] = {}
    for key, members in by.items():
        ident = ident_of[id(members[0])]
        exact = [b for b in bases if key_of[id(b)] == key]
        found = exact or [
            b for b in bases if _without(ident_of[id(b)], b.unused) == _without(ident, b.unused)
        ]
        if not found:
            log.warning(
                "runs %s have no run with ordering=%s and the same data, model, seed and "
                "settings: left out",
                sorted(r.name for r in members),
                baseline,
            )
            continue
        if len(found) > 1:  # the ones that agree on the most of what they do not read

            def apart(b: Run, ident: dict[str, Any] = ident) -> int:
                return sum(_pick(ident_of[id(b)], k) != _pick(ident, k) for k in b.unused)

            fewest = min(map(apart, found))
            found = [b for b in found if apart(b) == fewest]
        if len(found) > 1:
            raise DataError(
                f"runs {sorted(r.name for r in members)} match {len(found)} runs with "
                f"ordering={baseline}: {sorted(r.name for r in found)}; narrow the choice with "
                "select=[...]"
            )
        matched[key] = (found[0], members)
    used = {id(b) for b, _ in matched.values()}
    for b in bases:  # a baseline nothing is compared with still gets its answers
        if id(b) not in used:
            key = key_of[id(b)]
            if key in matched:
                raise DataError(
                    f"{len([x for x in bases if key_of[id(x)] == key])} runs with "
                    f"ordering={baseline} and the same settings: "
                    f"{sorted(x.name for x in bases if key_of[id(x)] == key)}; narrow the choice "
                    "with select=[...]"
                )
            matched[key] = (b, [])
    labels = group_labels(
        {key: ident_of[id(members[0] if members else b)] for key, (b, members) in matched.items()}
    )
    out = {labels[key]: matched[key] for key in sorted(matched, key=lambda k: labels[k])}
    if not any(cands for _, cands in out.values()):
        log.warning("no run to compare with a run of ordering=%s", baseline)
    for group, (b, cands) in out.items():
        log.info("group %s: %s against %s", group, [r.name for r in cands], b.name)
    return out


def seeds_key_of(run: Run) -> str:
    """The same for runs that are one experiment under different seeds: the run's identity and
    its ordering's settings, the seed set aside (:func:`~.seeds.seed_free`), hashed."""
    ordering = OmegaConf.to_container(run.config.ordering, resolve=True)
    return sha256_json(seed_free({**run.identity, "ordering": ordering}))


def items_sha(pairs: Sequence[Pair]) -> str:
    """The test items as judged (ids, questions, inputs, references), hashed: equal when two
    comparisons judged the same questions."""
    return sha256_json([[p.id, p.instruction, p.input, p.reference] for p in pairs])


def checkpoints_of(run: Run, which: str) -> list[Checkpoint]:
    return list(run.checkpoints) if which == "every_stage" else [run.final]


def pairs_for(cand: Answers, base: Answers, es: EvalSet) -> list[Pair]:
    """Instruction and input kept apart: the judge joins them as its prompt style does."""
    a, b = cand.by_id(), base.by_id()
    return [
        Pair(
            ex.id,
            ex.instruction,
            a[ex.id]["output"],
            b[ex.id]["output"],
            reference=ex.output,
            category=es.category(ex),
            input=ex.input,
        )
        for ex in es.items
    ]


def category_accuracy(judge: Any, pairs: list[Pair]) -> dict[str, dict[str, dict[str, float]]]:
    """Exact-match accuracy of both sides per category value (known-answer sets)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in pairs:
        for key, value in p.category.items():
            cell = out.setdefault(key, {}).setdefault(
                str(value), {"n": 0, "candidate": 0.0, "baseline": 0.0}
            )
            cell["n"] += 1
            cell["candidate"] += judge.correct(p.answer_a, p.reference)
            cell["baseline"] += judge.correct(p.answer_b, p.reference)
    for groups in out.values():
        for cell in groups.values():
            cell["candidate"] /= cell["n"]
            cell["baseline"] /= cell["n"]
    return out


def write_replay(
    path: Path, pairs: list[Pair], reviews: list[Reviews], judged: list[Judged], judge: Any
) -> None:
    """The comparison in the replay format of ``python -m phasedsft.evaluate.winrate`` (+ parsed fields);
    ``instruction`` is the question as the judge was shown it."""
    lines = []
    for p, r, j in zip(pairs, reviews, judged, strict=True):
        row: dict[str, Any] = {
            "id": p.id,
            "instruction": judge.question(p),
            "answer_a": p.answer_a,
            "answer_b": p.answer_b,
            "review_ab": r.review_ab,
            "review_ba": r.review_ba,
            "category": p.category,
            "scores_ab": j.scores_ab,
            "scores_ba": j.scores_ba,
        }
        for key, first in (("first_review_ab", r.first_ab), ("first_review_ba", r.first_ba)):
            if first is not None:  # asked again: the first reply, as the authors' script keeps it
                row[key] = first
        if r.errors or j.error:
            row["errors"] = [*r.errors, *([j.error] if j.error else [])]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Find the runs -> generate answers from their checkpoints -> judge each candidate
    checkpoint against the baseline's final weights, both orders -> tables and figures."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rule, which = _value(cfg.rule), _value(cfg.checkpoints)
    runs = discover_runs(cfg.sweep_dir, list(cfg.select))
    if cfg.across_selections:  # selection arms against the baseline ordering on all the data
        runs = [replace(r, across_selections=True) for r in runs]
    groups = groups_of(runs, cfg.baseline)
    judge = checked_judge(instantiate(cfg.judge))
    cache = ScoreCache(Path(cfg.cache_dir) / "judgments.sqlite")
    log.info(
        "%d groups; comparing %s against %s",
        len(groups),
        ", ".join(r.name for _, (_, cands) in groups.items() for r in cands),
        cfg.baseline,
    )

    # --- generate: every compared checkpoint, every test set
    sets_of = {group: load_sets(cfg, base) for group, (base, _) in groups.items()}
    answers = generate_all(cfg, groups, sets_of, which, out)
    if cfg.generate_only:
        print(
            f"answers written beside each checkpoint ({len(answers)} files); stopping (generate_only)"
        )
        return {"answers": {f"{k[0]}:{k[1]}": str(v.path) for k, v in answers.items()}}

    # --- judge: candidate checkpoint vs the baseline's final weights, both orders
    todo = comparisons_to_judge(groups, sets_of, answers, which)
    if cfg.dry_run:
        return estimate_judging(judge, todo, cache, out)
    judged = judge_all(cfg, judge, cache, todo, rule, out)

    # --- report
    figure, seeds, tracked = report(cfg, out, judged, groups, rule)
    summary = {
        "out_dir": str(out),
        "judge": judge.name,
        "rule": rule,
        "checkpoints": which,
        "baseline": cfg.baseline,
        "comparisons": len(judged.comparisons),
        "of": len(todo),
        "judge_requests": {"requests": judged.requests, "cost_usd": judged.cost_usd},
        "figure": str(figure) if figure else None,
        "figure_pdf": str(figure.with_suffix(".pdf")) if figure else None,
        "stopped": str(judged.aborted) if judged.aborted else None,
        "across_seeds": [a.to_json() for a in seeds],
        "wandb_runs_updated": tracked,
    }
    summary["report"] = str(out / "report.html")
    atomic_write_json(out / "summary.json", summary)
    try:  # one self-contained page: figures, tables, every judged item
        write_report(out, cfg.sweep_dir)
        print(f"report: {summary['report']}", flush=True)
    except Exception as e:  # the figures above are written: a report failure must not hide them
        log.warning(
            "report.html was not written (%s: %s); the tables and figures are; retry with "
            "python -m phasedsft.report %s",
            type(e).__name__,
            e,
            cfg.sweep_dir,
        )
    if judged.aborted:
        print(f"error: {judged.aborted}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    return summary


@dataclass
class Judging:
    """What :func:`judge_all` got: every comparison judged, each one's items, what it cost."""

    comparisons: list[Comparison] = field(default_factory=list)
    judged_of: list[list[Judged]] = field(default_factory=list)  # per comparison (seeds)
    pooled_items: dict[tuple, list[Judged]] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    cost_usd: float = 0.0
    aborted: RequestsAborted | None = None  # judging stopped (budget, failures): what it got


def judge_all(
    cfg: DictConfig, judge: Any, cache: ScoreCache, todo: Sequence[Any], rule: str, out: Path
) -> Judging:
    """Judge every comparison in turn, both orders; a stop keeps the ones already judged."""
    got = Judging()
    for task in todo:
        try:
            comp, judged, stats = judge_comparison(cfg, judge, cache, task, rule, out)
        except RequestsAborted as e:
            got.aborted = e
            break
        got.requests += stats.get("requests", 0)
        got.cost_usd += stats.get("cost_usd", 0)
        got.comparisons.append(comp)
        got.judged_of.append(judged)
        got.pooled_items[comp.row].extend(judged)
    return got


def report(
    cfg: DictConfig, out: Path, got: Judging, groups: dict[Any, Any], rule: str
) -> tuple[Path | None, list[AcrossSeeds], list[str]]:
    """Tables (pooled, by length, across seeds), categories, Figure 1, win rates into the
    training runs' W&B runs: the figure, the across-seed rows, the W&B runs updated."""
    comparisons = got.comparisons
    pooled: dict[tuple, WinRate] = {
        k: summarize(v, rule, cfg.bootstrap, cfg.seed) for k, v in got.pooled_items.items()
    }
    pooled_lengths = {
        k: length_view(v, rule, resamples=cfg.bootstrap, seed=cfg.seed)
        for k, v in got.pooled_items.items()
    }
    # the same comparison under several training seeds: mean, spread, t-interval over seeds
    seeds = across_seeds(
        comparisons, got.judged_of, pooled, cfg.baseline, rule, cfg.bootstrap, cfg.seed
    )
    table = (
        write_tables(out, comparisons, pooled, cfg.baseline, pooled_lengths, seeds)
        if comparisons
        else ""
    )
    write_categories(out, comparisons)
    figure = plot_stage_curves(out, comparisons, pooled, cfg.baseline) if comparisons else None
    runs = {r.name: r for b, cs in groups.values() for r in (b, *cs)}
    tracked = log_win_rates(comparisons, runs, cfg.baseline)
    print(
        "\n"
        + table
        + f"\nresults: {out}/table.md, table.csv, "
        + ("seeds.csv, " if seeds else "")
        + "categories.md, comparisons/, figure1_stages.png/.pdf"
    )
    return figure, seeds, tracked


def _value(node: Any) -> str:
    """An enum config value as its string."""
    return str(node.value if hasattr(node, "value") else node)


Groups = dict[Group, tuple[Run, list[Run]]]


@dataclass
class ToJudge:
    """One comparison: a candidate checkpoint against the baseline's final weights on one set."""

    group: Group
    run: Run
    ckpt: Checkpoint
    es: EvalSet
    base: Run
    pairs: list[Pair]

    @property
    def label(self) -> str:
        return (
            f"{self.ckpt.run}__{stage_name(self.ckpt.index, self.ckpt.stage)}__vs__{self.base.name}"
        )


def generate_all(
    cfg: DictConfig,
    groups: Groups,
    sets_of: dict[Group, list[EvalSet]],
    which: str,
    out: Path,
) -> dict[tuple[str, str], Answers]:
    """Answers of every compared checkpoint (the baseline's final one) on every test set.

    One checkpoint at a time: what its generator loads for it (the model, a server it
    started) is let go of before the next (:func:`checkpoint_answers`); the generator's
    ``prepare`` checks every checkpoint first (a server for each, vLLM installed).
    """
    generator = instantiate(cfg.generator)
    todo = [
        (group, r, ckpt)
        for group, (base, cands) in groups.items()
        for r in [base, *cands]
        for ckpt in checkpoints_of(r, "final" if r is base else which)
    ]
    prepare(generator, [ckpt for _, _, ckpt in todo])
    answers: dict[tuple[str, str], Answers] = {}
    for group, r, ckpt in todo:
        sets = sets_of[group]
        for es, got in zip(sets, checkpoint_answers(ckpt, sets, generator, r.config), strict=True):
            answers[(ckpt.label, es.name)] = got
            if cfg.export_alpacaeval:
                write_alpacaeval(out, ckpt.label, es.name, got.items)
    return answers


def comparisons_to_judge(
    groups: Groups,
    sets_of: dict[Group, list[EvalSet]],
    answers: dict[tuple[str, str], Answers],
    which: str,
) -> list[ToJudge]:
    todo = []
    for group, (base, cands) in groups.items():
        for r in cands:
            for ckpt in checkpoints_of(r, which):
                for es in sets_of[group]:
                    pairs = pairs_for(
                        answers[(ckpt.label, es.name)], answers[(base.final.label, es.name)], es
                    )
                    todo.append(ToJudge(group, r, ckpt, es, base, pairs))
    return todo


def estimate_judging(
    judge: Any, todo: list[ToJudge], cache: ScoreCache, out: Path
) -> dict[str, Any]:
    """``dry_run=true``: what judging every comparison would send and cost; no request."""
    estimate = judge.estimate([p for t in todo for p in t.pairs], cache)
    if estimate is None:
        print(f"judge={judge.name} sends no request: nothing to estimate")
        return {"estimate": None}
    atomic_write_json(out / "estimate.json", estimate)
    print("judge cost estimate: " + json.dumps(estimate, indent=2))
    return {"estimate": estimate}


def judge_comparison(
    cfg: DictConfig, judge: Any, cache: ScoreCache, t: ToJudge, rule: str, out: Path
) -> tuple[Comparison, list[Judged], dict[str, Any]]:
    """Judge one comparison in both orders, fold each item, write its replay and figures."""
    result = judge.judge_pairs(t.pairs, cache, desc=f"judge {t.es.name}")
    judged = [
        judge_item(
            p.id, rv.review_ab, rv.review_ba, p.category, p.answer_a, p.answer_b,
            rv.first_ab, rv.first_ba,
        )
        for p, rv in zip(t.pairs, result.reviews, strict=True)
    ]  # fmt: skip
    folder = out / "comparisons" / t.es.name
    write_replay(folder / f"{t.label}.jsonl", t.pairs, result.reviews, judged, judge)
    write_judgment_exports(
        folder,
        t.label,
        judged,
        rule,
        questions=[judge.question(p) for p in t.pairs],
        answers_a=[p.answer_a for p in t.pairs],
        answers_b=[p.answer_b for p in t.pairs],
        model_a=t.ckpt.label,
        model_b=t.base.final.label,
        judge=judge.name,
        dataset=t.es.name,
    )
    win = summarize(judged, rule, cfg.bootstrap, cfg.seed)
    lengths = length_view(judged, rule, resamples=cfg.bootstrap, seed=cfg.seed)
    # The authors' script reads two 1-10 scores and calls an item with a score <= 0 void: a judge
    # that marks answers right (1) or wrong (0) would make every wrong answer void, so their
    # accounting is shown only for judges that score both answers (report.AUTHORS_ABSENT says so).
    # It is computed on the judge's first reply in each order, as their script, which never asks
    # again, records it: Table 2 can be compared number for number.
    authors = (
        None
        if isinstance(judge, MarksAnswers)
        else summarize(judged, "authors", cfg.bootstrap, cfg.seed)
    )
    accuracy = None
    if t.es.has_references and isinstance(judge, MarksAnswers):
        n = len(t.pairs)
        accuracy = {
            "candidate": sum(judge.correct(p.answer_a, p.reference) for p in t.pairs) / n,
            "baseline": sum(judge.correct(p.answer_b, p.reference) for p in t.pairs) / n,
        }
    cat_acc = category_accuracy(judge, t.pairs) if accuracy is not None else {}
    comp = Comparison(
        t.group,
        t.run.ordering,
        t.run.name,
        t.ckpt.index,
        t.ckpt.n_stages,
        t.es.name,
        t.base.name,
        win,
        by_category(judged, rule, cfg.bootstrap, cfg.seed) if t.es.categories else {},
        accuracy,
        cat_acc,
        authors,
        lengths,
        seeds_key=seeds_key_of(t.run),
        items_sha=items_sha(t.pairs),
        judge=judge.name,
    )
    atomic_write_json(
        folder / f"{t.label}.json",
        {
            **win.to_json(),
            "candidate": t.ckpt.label,
            "baseline": t.base.final.label,
            "judge": judge.name,
            "by_category": {
                k: {v: w.to_json() for v, w in g.items()} for k, g in comp.categories.items()
            },
            "accuracy": accuracy,
            "category_accuracy": cat_acc,
            "judge_run": result.stats,
            "authors_rule": authors.to_json() if authors else None,
            "lengths": lengths.to_json() if lengths else None,
        },
    )
    return comp, judged, result.stats
