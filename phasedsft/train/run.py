"""The Phased IFT recipe, top to bottom like the paper's algorithm.

    setup:    load data -> tokenizer -> encode -> score -> select -> segment -> phases
    uptrain:  for each phase in the ordering: train from the previous weights, checkpoint
    evaluate: held-out loss per stage (inside the loop) and judged answers at the end

Everything is written under the run directory, which is stable for a given config
(``run.name`` ends with a hash of it), so rerunning the same command resumes: finished
stages are skipped, an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from phasedsft import __version__, rundir
from phasedsft.checksums import require_verified
from phasedsft.cli import USER_ERRORS
from phasedsft.config import OptimizerState, StageSchedule
from phasedsft.data.loaders import Loaded
from phasedsft.distributed import (
    barrier,
    export_slurm_ranks,
    from_main,
    is_main,
    rank,
    world_size,
)
from phasedsft.io import (
    atomic_write_json,
    follow_umask,
    git_revision,
    replace_dir,
    sha256_lines,
)
from phasedsft.jobs import build_context, load_examples, load_tokenizer, run_dir_for, start_job
from phasedsft.llm.cache import ScoreCache
from phasedsft.locks import RunLock, held
from phasedsft.models import BuildContext
from phasedsft.prompts import Encoded, EncodedCounts, encode
from phasedsft.records import DataError, Example, UserError
from phasedsft.score.base import apply_scores, checked_scorer
from phasedsft.score.context import score_context, weights_context
from phasedsft.score.spread import spread_run
from phasedsft.segment.manifest import StageManifest, load_or_build_manifest
from phasedsft.select import Tokens, needs_scores, rule_of, select
from phasedsft.train.curves import write_forgetting
from phasedsft.train.inspect import StageView, show, stage_tokens
from phasedsft.train.ordering import (
    Phase,
    Restages,
    check_ordering,
    checked_ordering,
    group_by_length,
    rescores_now,
)
from phasedsft.train.packing import stage_units
from phasedsft.train.plan import (
    StagePlan,
    discard_fresh_run_dir,
    format_plan,
    invalid_record,
    plan_record,
    stage_steps,
)
from phasedsft.train.publish import publish_stages
from phasedsft.train.stage_spec import Continuity, StageSpec
from phasedsft.train.tracking import NullTracker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ setup steps


def encode_all(
    examples: Sequence[Example],
    template: Any,
    tokenizer: Any,
    max_length: int,
    report: dict[str, Any],
    tokens: bool = True,
) -> tuple[list[Example], Mapping[str, Encoded]]:
    """Encode every example; those whose prompt leaves no room for output are skipped and counted.

    ``tokens=False`` (a plan) keeps each example's counts only (:class:`EncodedCounts`): the
    same numbers, a tenth of the memory; an example's tokens are encoded again when read."""

    def make(ex: Example) -> Encoded | None:
        return encode(ex, template, tokenizer, max_length)

    kept: list[Example] = []
    encoded: dict[str, Encoded] = {}
    counts: tuple[array[int], array[int], array[int]] = (array("i"), array("i"), array("b"))
    too_long: list[str] = []
    truncated = 0
    for ex in examples:
        enc = make(ex)
        if enc is None:
            too_long.append(ex.id)
            continue
        truncated += enc.truncated
        if tokens:
            encoded[ex.id] = enc
        else:
            for column, value in zip(
                counts, (enc.n_tokens, enc.n_target, enc.truncated), strict=True
            ):
                column.append(value)
        kept.append(ex)
    if too_long:
        log.warning(
            "skipped %d examples whose prompt is longer than trainer.max_seq_length=%d (e.g. %s)",
            len(too_long),
            max_length,
            too_long[:3],
        )
    report["prompt_too_long_skipped"] = {"count": len(too_long), "ids": too_long[:100]}
    report["output_truncated"] = truncated
    if not kept:
        raise DataError(f"no example fits trainer.max_seq_length={max_length}")
    if not tokens:
        return kept, EncodedCounts(kept, *counts, make)
    return kept, encoded


def stage_manifest(
    cfg: DictConfig, examples: Sequence[Example], cache_dir: Path
) -> tuple[StageManifest, str]:
    if cfg.segment.manifest:
        manifest = StageManifest.load(cfg.segment.manifest)
        manifest.check_covers(examples, cfg.segment.manifest)
        return manifest, str(cfg.segment.manifest)
    segmenter = instantiate(cfg.segment.method)
    manifest, path = load_or_build_manifest(examples, segmenter, cfg.segment.random_seed, cache_dir)
    return manifest, str(path)


@dataclass
class Setup:
    examples: list[Example]
    eval_examples: list[Example]
    tokenizer: Any
    template: Any
    encoded: Mapping[str, Encoded]  # counts only in a plan (EncodedCounts)
    eval_encoded: Mapping[str, Encoded]
    phases: list[Phase]
    manifest: StageManifest | None
    manifest_path: str | None
    data_report: dict[str, Any]
    ordering: Any = None  # the instantiated ordering (a self-paced one re-stages between stages)
    own_phases: list[Phase] | None = None  # the stages before replay mixed earlier ones in
    selection: dict[str, Any] | None = None  # selection=...: the rule, the counts, the kept ids


def example_tokens(examples: Sequence[Example], encoded: Mapping[str, Encoded]) -> Tokens:
    """Each example's training tokens (all fed, and those in the loss), counted as the plan and
    run.json count a stage's (:func:`stage_tokens`): what selection=token_budget spends."""
    counts = [stage_tokens([ex.id], encoded) for ex in examples]
    return Tokens(np.array([c.total for c in counts]), np.array([c.target for c in counts]))


class UnscoredPlan(Exception):
    """A plan cannot size difficulty stages without paying for scores (API or model calls)."""


def setup(cfg: DictConfig, cache_dir: Path, plan: bool = False) -> Setup:
    train, examples = load_examples(cfg)
    held_out: Loaded | None = instantiate(cfg.dataset.eval) if cfg.dataset.eval else None
    report: dict[str, Any] = {
        "loaded": len(train.examples),
        "used": len(examples),
        "skipped_rows": train.skips.summary(),
        "notes": train.notes,
        "unused_fields": train.unused_fields,  # columns / fields the format does not train on
    }
    template = instantiate(cfg.prompt)
    tokenizer = load_tokenizer(cfg, examples)
    max_len = cfg.trainer.max_seq_length
    examples, encoded = encode_all(examples, template, tokenizer, max_len, report, tokens=not plan)
    eval_examples: list[Example] = []
    eval_encoded: Mapping[str, Encoded] = {}
    if held_out is not None:
        eval_examples = (
            held_out.examples[: cfg.eval.max_items] if cfg.eval.max_items else held_out.examples
        )
        eval_examples, eval_encoded = encode_all(
            eval_examples, template, tokenizer, max_len, {}, tokens=not plan
        )

    ordering = checked_ordering(instantiate(cfg.ordering))
    rule = rule_of(cfg.get("selection"))  # which examples to train on (none: all of them)
    manifest, manifest_path = None, None
    if ordering.needs_scores or needs_scores(rule):
        scorer = checked_scorer(instantiate(cfg.scorer))
        if plan and not scorer.costs_nothing:
            raise UnscoredPlan(
                f"stage sizes need scores from scorer={scorer.name}: score first (score.py), "
                "then plan with dataset=jsonl scorer=oracle"
            )
        scores = scorer.score(examples, score_context(cfg, cache_dir, tokenizer))
        examples = apply_scores(examples, scores, scorer.name)
    selection = None
    if rule is not None:
        examples, selection = select(rule, examples, example_tokens(examples, encoded))
    if ordering.needs_stages:
        manifest, manifest_path = stage_manifest(cfg, examples, cache_dir)
    phases = own_phases = ordering.phases(examples, manifest)
    if cfg.replay:
        phases = instantiate(cfg.replay).apply(phases, len(examples), cfg.trainer.num_train_epochs)
    return Setup(
        examples,
        eval_examples,
        tokenizer,
        template,
        encoded,
        eval_encoded,
        phases,
        manifest,
        manifest_path,
        report,
        ordering,
        list(own_phases),
        selection=selection,
    )


def model_loader(
    cfg: DictConfig, ctx: BuildContext, tokenizer: Any, previous: Path | None, adapter: Any
) -> Any:
    """Stage 1 starts from the configured model; every later stage from the previous stage's weights.

    With an adapter (LoRA), every stage loads the base model and stage 1 adds a fresh adapter;
    later stages continue the previous stage's adapter.
    """

    def base() -> Any:
        return instantiate(cfg.model.loader, context=ctx, tokenizer=tokenizer)

    def load() -> Any:
        if previous is not None:
            check_same_tokenizer(previous / rundir.MODEL_DIR, tokenizer)
        if adapter is not None:
            if previous is None:
                return adapter.wrap(base())
            require_verified(previous / "adapter", previous)  # error: ... unless it matches
            return adapter.resume(base(), previous / "adapter")
        if previous is None:
            return base()
        return load_stage_model(previous / rundir.MODEL_DIR, cfg.model.loader)

    return load


def check_same_tokenizer(model_dir: Path, tokenizer: Any) -> None:
    """A stage continues the previous stage's weights only with the tokens they were trained
    on: the vocabulary saved beside them must be this run's (a hub tokenizer revised, or
    ``model=tiny``'s BPE learnt from other texts, between a crash and its resume)."""
    saved = model_dir / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not saved.is_file():
        return  # a slow tokenizer, or weights saved without one: nothing to compare
    from tokenizers import Tokenizer

    if Tokenizer.from_file(str(saved)).get_vocab(True) != backend.get_vocab(True):
        raise UserError(
            f"{model_dir} was trained with another tokenizer than this run loads now (its "
            f"tokenizer.json has a different vocabulary), so its token ids would mean other "
            "text: resume with the tokenizer the run started with, or start a new run "
            "(run.name=...)"
        )


def adapter_export(adapter: Any, base: Any, tokenizer: Any, deepspeed: bool) -> Any:
    """How a LoRA stage lays out its saved adapter: adapter/ as saved, model/ = base + adapter merged."""

    def export(saved: Path, stage_dir: Path) -> None:
        replace_dir(saved, stage_dir / "adapter")
        if deepspeed:  # rank 0 alone builds the merged copy: no ZeRO-3 partitioning here
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        tmp = stage_dir / "model.merged.tmp"
        merged = adapter.merged(base(), stage_dir / "adapter")
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)
        replace_dir(tmp, stage_dir / rundir.MODEL_DIR)

    return export


def load_stage_model(model_dir: Path, loader_cfg: Any) -> Any:
    """A stage's saved weights, in their saved dtype, with the model config's loading options;
    first checked against their manifest (``error: ...``, exit code 2, if they do not match)."""
    from transformers import AutoModelForCausalLM

    require_verified(model_dir, model_dir.parent)

    options = {
        k: loader_cfg[k] for k in ("attn_implementation", "trust_remote_code") if loader_cfg.get(k)
    }
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", **options)


def planned_order(cfg: DictConfig, phase: Phase, encoded: Mapping[str, Encoded]) -> list[str]:
    """The exact ids a stage feeds: epochs of seeded shuffles, grouped by length if asked."""
    reshuffle = cfg.trainer.shuffle == "every_epoch"
    order = phase.sequence(float(cfg.trainer.num_train_epochs), seed=cfg.seed, reshuffle=reshuffle)
    if cfg.trainer.group_by_length:
        batch = cfg.trainer.per_device_train_batch_size * world_size()
        lengths = {i: encoded[i].n_tokens for i in phase.ids}
        order = group_by_length(order, lengths, batch, seed=cfg.seed)
    return order


def trainer_items(cfg: DictConfig, phase: Phase, encoded: Mapping[str, Encoded]) -> int:
    """What the Trainer iterates over for a stage: planned items, or packed rows of them."""
    return stage_units(cfg.trainer, encoded, planned_order(cfg, phase, encoded))


def job_environment() -> dict[str, Any]:
    """Where this run executes: host, ranks, and the SLURM job when there is one."""
    import os
    import socket

    slurm = {
        k.removeprefix("SLURM_").lower(): os.environ[k]
        for k in (
            "SLURM_JOB_ID",
            "SLURM_ARRAY_JOB_ID",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_RESTART_COUNT",
        )
        if k in os.environ
    }
    return {"host": socket.gethostname(), "world_size": world_size(), "slurm": slurm or None}


# ------------------------------------------------------------------ the recipe


def plan(cfg: DictConfig) -> dict[str, Any]:
    """``plan_only=true``: set the job up as training would, print its stages and steps, train
    nothing; ``inspect=N``: the same, after N examples per stage with the trained tokens marked."""
    run_dir = run_dir_for(cfg)
    existed = (run_dir / rundir.RUN_RECORD).exists() or held(run_dir)  # never a training run's
    try:
        check_ordering(cfg.ordering)
        s = setup(cfg, Path(cfg.run.cache_dir), plan=True)
        if cfg.inspect:
            inspect_stages(cfg, s)
        stages = [
            StagePlan(
                p.name,
                len(p.ids),
                trainer_items(cfg, p, s.encoded),
                *stage_tokens(p.ids, s.encoded),
            )
            for p in s.phases
        ]
        record = plan_record(cfg, run_dir, stages, None)
        if s.selection is not None:  # what selection=... kept, before the stages
            record["selection"] = {k: s.selection[k] for k in ("rule", "counts")}
            print(s.selection["line"], flush=True)
    except UnscoredPlan as e:
        record = plan_record(cfg, run_dir, [], str(e))
    except USER_ERRORS as e:
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            # a plan writes nothing, refused or not; never a directory a training run now holds
            discard_fresh_run_dir(run_dir, existed or held(run_dir))
            raise  # a single run ends like any run: error: ..., exit code 2
        record = invalid_record(cfg, run_dir, e)
    print("plan: " + format_plan(record), flush=True)
    discard_fresh_run_dir(run_dir, existed or held(run_dir))
    return record


def inspect_stages(cfg: DictConfig, s: Setup) -> None:
    """``inspect=N``: each stage's first N examples, in its planned order, loss tokens marked."""
    views = [StageView(p.name, p.ids, planned_order(cfg, p, s.encoded)) for p in s.phases]
    by_id = {ex.id: ex for ex in s.examples}
    show(
        views,
        by_id,
        s.encoded,
        s.tokenizer,
        cfg.inspect,
        stage=cfg.inspect_stage,
        tokens=cfg.inspect_tokens,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Setup -> for each stage of the ordering: train, checkpoint -> evaluate."""
    if cfg.plan_only or cfg.inspect:
        return plan(cfg)
    export_slurm_ranks()  # one SLURM task per GPU -> torch.distributed ranks (no-op otherwise)
    run_dir = run_dir_for(cfg)
    try:  # a run is named after what it trains: refused before anything is written
        check_ordering(cfg.ordering)
    except UserError:
        if is_main():  # the directory Hydra made for this refused command (never a run's)
            discard_fresh_run_dir(run_dir, existed=held(run_dir))
        raise
    # One writer per run directory, rank 0 holding it to the end (the other ranks wait for it);
    # a second launch stops here with "error: <run dir> is being trained by pid N on host H".
    with RunLock(run_dir, leader=is_main()):
        return train_run(cfg)


def train_run(cfg: DictConfig) -> dict[str, Any]:
    """The recipe, under the run directory's lock."""
    started = time.time()
    run_dir = start_job(cfg) if is_main() else run_dir_for(cfg)  # rank 0 writes run-level files

    # --- setup: data, tokenizer, scores, stages; the run's record; the tracker
    s = setup(cfg, Path(cfg.run.cache_dir))
    specs = stage_specs(cfg, s, run_dir)
    run_info = write_run_record(cfg, s, specs, run_dir)
    tracker = start_tracker(cfg, run_dir, run_info)

    # --- uptrain: each stage starts from the previous stage's weights, same hyper-parameters
    records = uptrain(cfg, s, specs, tracker)
    if isinstance(s.ordering, Restages) and is_main():  # the stages as they were re-cut
        run_info = write_run_record(cfg, s, specs, run_dir)
    # Every rank's collectives are finished before the others leave: a rank that tears down its
    # process group while a peer's gloo work is still in flight can abort at exit (SIGABRT,
    # "terminate called without an active exception"; seen on ZeRO-3's rank 1 in CI).
    barrier()
    if not is_main():  # rank 0 publishes, evaluates and writes the run-level files
        return {"rank": rank(), "run_dir": str(run_dir)}
    if cfg.publish:
        publish_stages(instantiate(cfg.publish), [spec.dir for spec in specs])

    # --- evaluate the final weights
    final = evaluate_last_stage(cfg, s, specs, run_dir)
    summary = summarize_run(run_info, records, final, started)
    if len(records) > 1 and any(r["metrics"].get("eval") for r in records):
        summary["forgetting"] = write_forgetting(run_dir, records)
    atomic_write_json(run_dir / "summary.json", summary)
    tracker.finish(summary)
    print_summary(summary, run_dir)
    return summary


def stage_specs(cfg: DictConfig, s: Setup, run_dir: Path) -> list[StageSpec]:
    """One spec per stage of the ordering: its examples, its planned fed order, its folder,
    and how it continues from the stage before (``trainer.stage_policy``)."""
    specs = [
        StageSpec(
            i, p.name, p.ids, planned_order(cfg, p, s.encoded), rundir.stage_dir(run_dir, i, p.name)
        )
        for i, p in enumerate(s.phases, start=1)
    ]
    return [
        replace(sp, continuity=c) for sp, c in zip(specs, continuities(cfg, s, specs), strict=True)
    ]


def continuities(cfg: DictConfig, s: Setup, specs: Sequence[StageSpec]) -> list[Continuity]:
    """Per stage: does it warm up, which spanning schedule, whose optimizer state it starts from."""
    policy = cfg.trainer.stage_policy
    spanning = policy.schedule == StageSchedule.spanning
    carried = policy.optimizer_state == OptimizerState.carried
    if carried and cfg.trainer.deepspeed:
        raise UserError(
            "trainer.stage_policy.optimizer_state=carried does not work with DeepSpeed yet "
            "(DeepSpeed owns the optimizer state); use it without trainer/deepspeed"
        )
    steps = []  # each stage's optimizer steps, for a schedule spanning them all
    for sp in specs if spanning else []:
        items = stage_units(cfg.trainer, s.encoded, sp.sequence)
        steps.append(stage_steps(items, cfg.trainer, world_size()))
    return [
        Continuity(
            warmup=spanning or k == 0 or bool(policy.warmup_each_stage),
            span=(sum(steps[:k]), sum(steps)) if spanning else None,
            optimizer_from=specs[k - 1].dir if carried and k > 0 else None,
            keep_optimizer=carried and k < len(specs) - 1,
        )
        for k in range(len(specs))
    ]


def reads_of(s: Setup) -> dict[str, bool]:
    """What the run's weights depend on, for evaluate's baseline matching: its ordering's
    reads, and the scores whenever a selection chose the examples (whatever the ordering)."""
    reads = rundir.ordering_reads(s.ordering)
    if s.selection is not None:
        reads["needs_scores"] = True
    return reads


def write_run_record(
    cfg: DictConfig, s: Setup, specs: Sequence[StageSpec], run_dir: Path
) -> dict[str, Any]:
    """``run.json`` (where, what code, which stages in which order) and the stage manifest."""
    run_info = {
        "phasedsft_version": __version__,
        "git": git_revision(),
        "run_dir": str(run_dir),
        "job": job_environment(),
        "ordering": cfg.ordering.name,
        "reads": reads_of(s),  # what evaluate needs of it
        "stage_manifest": {
            "path": s.manifest_path,
            "hash": s.manifest.hash if s.manifest else None,
        },
        "stages": [
            {
                "index": sp.index,
                "name": sp.name,
                "n_examples": len(sp.ids),
                "n_tokens": stage_tokens(sp.ids, s.encoded).total,
                "n_target_tokens": stage_tokens(sp.ids, s.encoded).target,
                "order_sha256": sp.order_hash,
                **({"mixture": dict(p.mixture)} if p.mixture else {}),
            }
            for sp, p in zip(specs, s.phases, strict=True)
        ],
        "data": s.data_report,
        "eval_examples": len(s.eval_examples),
        **({"selection": s.selection} if s.selection is not None else {}),
    }
    if is_main():  # every rank knows the record; rank 0 writes it (run.json names its host)
        atomic_write_json(run_dir / rundir.RUN_RECORD, run_info)
        if s.manifest is not None:
            atomic_write_json(run_dir / rundir.STAGE_MANIFEST, s.manifest.to_json())
    log.info("run directory: %s", run_dir)
    log.info(
        "stages: %s", ", ".join(f"{sp.index}:{sp.name} ({len(sp.ids)} examples)" for sp in specs)
    )
    return run_info


def start_tracker(cfg: DictConfig, run_dir: Path, run_info: dict[str, Any]) -> Any:
    tracker = instantiate(cfg.logger.tracker) if cfg.logger.tracker and is_main() else NullTracker()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    tracker.start({str(k): v for k, v in resolved.items()}, run_dir, run_info)
    return tracker


def uptrain(
    cfg: DictConfig, s: Setup, specs: list[StageSpec], tracker: Any
) -> list[dict[str, Any]]:
    """Train the stages in order, each from the previous stage's weights; their records.
    A self-paced ordering re-cuts the stages still to come after each (``specs`` updated)."""
    from phasedsft.train.held_out import eval_datasets  # the training stack (torch, Trainer),
    from phasedsft.train.stage import StageInputs, train_stage  # imported by training alone

    ctx = build_context(cfg, s.examples)
    evals = (
        eval_datasets(s.eval_examples, s.eval_encoded, cfg.eval.by_task)
        if cfg.eval.after_each_stage
        else {}
    )
    report_to = list(cfg.logger.report_to)
    adapter = instantiate(cfg.trainer.peft) if cfg.trainer.peft else None
    export = None
    if adapter is not None:
        export = adapter_export(
            adapter,
            lambda: instantiate(cfg.model.loader, context=ctx, tokenizer=s.tokenizer),
            s.tokenizer,
            bool(cfg.trainer.deepspeed),
        )
    records: list[dict[str, Any]] = []
    previous: Path | None = None
    for k, spec in enumerate(specs):
        inputs = StageInputs(
            model_loader(cfg, ctx, s.tokenizer, previous, adapter),
            s.tokenizer,
            s.encoded,
            evals,
            cfg.trainer,
            cfg.seed,
            report_to,
            export,
        )
        records.append(train_stage(spec, inputs))
        tracker.stage_done(records[-1])
        previous = spec.dir
        if isinstance(s.ordering, Restages) and rescores_now(s.ordering, len(specs) - k - 1):
            specs[k + 1 :] = restaged(cfg, s, spec, specs[k + 1 :])
    return records


def restaged(
    cfg: DictConfig, s: Setup, done: StageSpec, later: Sequence[StageSpec]
) -> list[StageSpec]:
    """The stages after ``done`` re-cut by the ordering's rescorer with ``done``'s weights."""
    from transformers import AutoModelForCausalLM

    def load_verified(stage_dir: Path) -> Any:
        require_verified(stage_dir / rundir.MODEL_DIR, stage_dir)  # error: ... unless they match
        return AutoModelForCausalLM.from_pretrained(stage_dir / rundir.MODEL_DIR)

    assert isinstance(s.ordering, Restages)
    by_id = {ex.id: ex for ex in s.examples}
    assert s.own_phases is not None  # each example once: a stage's own, not what replay drew
    pool = [by_id[i] for p in s.own_phases[len(s.own_phases) - len(later) :] for i in p.ids]
    ctx = weights_context(
        ScoreCache(Path(cfg.run.cache_dir) / "scores.sqlite"),
        s.tokenizer,
        lambda: load_verified(done.dir),
        f"{done.dir.parent.name}/{done.dir.name}",  # these weights, this run
    )
    rescorer = checked_scorer(s.ordering.rescorer)
    # each rank scores its share; every rank then cuts by rank 0's scores, so all cut alike
    whole, _ = spread_run(rescorer, pool, ctx)
    raw = from_main(whole.raw_scores())
    scores = apply_scores(pool, rescorer.finalize(raw), rescorer.name)
    # the stages' own examples re-cut, then replay (if any) mixed in again from the stages as cut
    assert s.own_phases is not None
    first = len(s.own_phases) - len(later)
    s.own_phases[first:] = s.ordering.restage(
        s.own_phases[first:], {ex.id: ex.score for ex in scores if ex.score is not None}
    )
    phases = s.own_phases
    if cfg.replay:
        phases = instantiate(cfg.replay).apply(
            phases, len(s.examples), cfg.trainer.num_train_epochs
        )
    s.phases[first:] = phases[first:]  # run.json's stages and mixtures: as they will be fed
    log.info("re-staged %d examples with the weights of %s", len(pool), done.dir.name)
    return [
        replace(sp, ids=p.ids, sequence=planned_order(cfg, p, s.encoded))
        for sp, p in zip(later, phases[first:], strict=True)
    ]


def evaluate_last_stage(
    cfg: DictConfig, s: Setup, specs: Sequence[StageSpec], run_dir: Path
) -> dict[str, Any] | None:
    """The in-run check of the final weights on the held-out items, when the judge can mark them."""
    if not (cfg.eval.generate and s.eval_examples and specs):
        return None
    from phasedsft.train.held_out import marking_judge

    judge = marking_judge(cfg.judge)
    if judge is None:
        log.info("judge=%s compares two models: run evaluate.py after training", cfg.judge.name)
        return None
    return evaluate_final(cfg, s, specs[-1].dir, run_dir, judge, key=specs[-1].order_hash)


def summarize_run(
    run_info: dict[str, Any],
    records: Sequence[dict[str, Any]],
    final: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    return {
        **run_info,
        "per_stage": [
            {
                "index": r["index"],
                "name": r["name"],
                "n_examples": r["n_examples"],
                "global_step": r["global_step"],
                "first_logged_loss": r["first_logged_loss"],
                "last_logged_loss": r["last_logged_loss"],
                "fed_matches_plan": r["fed_matches_plan"],
                "eval": r["metrics"].get("eval", {}),
            }
            for r in records
        ],
        "final_accuracy": final["accuracy"] if final else None,
        "wall_seconds": round(time.time() - started, 1),
    }


def evaluate_final(
    cfg: DictConfig, s: Setup, last_stage: Path, run_dir: Path, judge: Any, key: str
) -> dict[str, Any]:
    """Greedy answers from the final weights, marked by the judge; cached by the last stage's order."""
    import json

    from phasedsft.train.held_out import generate_answers, judge_answers

    out = run_dir / "eval" / "final.json"
    if out.is_file():
        cached = json.loads(out.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return dict(cached)
    if cfg.trainer.deepspeed:  # rank 0 alone: load whole weights, outside ZeRO-3's partitioning
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    model = load_stage_model(last_stage / rundir.MODEL_DIR, cfg.model.loader)
    answers = generate_answers(
        model,
        s.tokenizer,
        s.template,
        s.eval_examples,
        cfg.eval.max_new_tokens,
        cfg.eval.batch_size,
    )
    result = {
        "key": key,
        "model": str(last_stage / rundir.MODEL_DIR),
        **judge_answers(judge, s.eval_examples, answers),
    }
    atomic_write_json(out, result)
    return result


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    lines = [f"\nphasedsft: {summary['ordering']} done in {summary['wall_seconds']} s", ""]
    lines.append(
        f"{'stage':<22}{'examples':>9}{'steps':>7}{'first loss':>12}{'last loss':>11}{'eval loss':>11}"
    )
    for st in summary["per_stage"]:
        ev = st["eval"].get("eval_all_loss")
        fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else "-"  # noqa: E731
        lines.append(
            f"{st['index']}:{st['name']:<20}{st['n_examples']:>9}{st['global_step']:>7}"
            f"{fmt(st['first_logged_loss']):>12}{fmt(st['last_logged_loss']):>11}{fmt(ev):>11}"
        )
    if summary["final_accuracy"]:
        acc = summary["final_accuracy"]
        levels = [k for k in acc if k.startswith("level") or k == "all"]
        lines.append("")
        lines.append(
            "exact-match accuracy: " + "  ".join(f"{k} {acc[k]['accuracy']:.1%}" for k in levels)
        )
    lines.append(f"\nresults: {run_dir}/summary.json")
    print("\n".join(lines), flush=True)


__all__ = ["run", "setup", "sha256_lines"]
