"""Training one stage with the Hugging Face Trainer, in exactly the planned data order.

The recipe hands each stage the exact sequence of example ids to feed (the epochs are
already unrolled there, each a seeded shuffle of the stage, or a fixed order), so the
Trainer reads the data sequentially. Every rank appends what it actually fed to a log of
its own, one line per micro-batch with the optimizer step and the planned positions and
ids: ``fed_ids.jsonl`` for rank 0 (the only log of a single-process run),
``fed_ids.rank<r>.jsonl`` for rank r > 0. After training, rank 0 audits the union of the
logs against the plan (:mod:`phasedsft.train.audit`, which also describes how the Trainer shares
the order among ranks); a stage whose fed order differs from the plan fails with
:class:`AuditError` on every rank and is not marked done. A resumed stage truncates every
log at the step it resumes from, so the logs stay a consistent record.

A stage is complete when its ``stage.json`` says so; that file is written last,
after the model directory is in place. Until then a rerun resumes the stage from its
last complete Trainer checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from phasedsft.io import (
    atomic_write_json,
    atomic_write_text,
    follow_umask,
    replace_dir,
    sha256_lines,
)
from phasedsft.prompts import Encoded, pad_batch
from phasedsft.records import DataError
from phasedsft.train.audit import (
    AuditError,
    FedLog,
    FeedShape,
    audit_fed,
    fed_log_path,
    fed_log_ranks,
    stage_train_loss,
)
from phasedsft.train.distributed import rank, world_size
from phasedsft.train.packing import PackedCollator, PackedDataset, flat_layout, stage_packs
from phasedsft.train.precision import guard_master_weights, resolve_half
from phasedsft.train.tracking import tensorboard_dir

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


class SequenceDataset(torch.utils.data.Dataset):
    """Items in the planned order; each carries its position so the fed order can be logged."""

    def __init__(self, encoded: Mapping[str, Encoded], sequence: Sequence[str]):
        self.encoded = encoded
        self.sequence = list(sequence)

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.encoded[self.sequence[i]]
        return {"input_ids": e.input_ids, "labels": e.labels, "position": i}


@dataclass
class Collator:
    pad_token_id: int

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        padded = pad_batch(batch, self.pad_token_id, side="right")
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in padded.items()}
        out["positions"] = torch.tensor([b["position"] for b in batch], dtype=torch.long)
        return out


OPTIMIZER_FILE = "optimizer_state.pt"  # a stage's final optimizer state, for the next stage


@dataclass(frozen=True)
class Continuity:
    """How one stage continues from the one before (``trainer.stage_policy``).

    ``span``: (optimizer steps of the stages before this one, steps of all stages): the stage
    follows one schedule spanning every stage, from where the previous stage left it.
    ``optimizer_from``: the previous stage's final optimizer state (its moments) to start from.
    ``keep_optimizer``: save this stage's final optimizer state for the next stage.
    """

    warmup: bool = True
    span: tuple[int, int] | None = None
    optimizer_from: Path | None = None
    keep_optimizer: bool = False


class CurriculumTrainer(Trainer):
    """``Trainer`` that logs, on every rank, the planned positions of every training micro-batch
    it trains on, with the loss it reported for it (the record a resumed stage's whole-stage
    ``train_loss`` is computed from), and continues the optimizer and the learning-rate
    schedule from the previous stage as ``continuity`` says."""

    def __init__(
        self,
        *args: Any,
        fed_log: FedLog | None = None,
        continuity: Continuity | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.fed_log = fed_log
        self.continuity = continuity or Continuity()

    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(*([model] if model is not None else []))
        source = self.continuity.optimizer_from
        if source is not None:  # a resumed stage then loads its own checkpoint's state over it
            carry_optimizer_state(optimizer, source / OPTIMIZER_FILE)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.continuity.span is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from transformers import get_scheduler

        before, total = self.continuity.span
        optimizer = optimizer or self.optimizer
        kwargs = self.args.lr_scheduler_kwargs  # a dict once TrainingArguments has parsed it
        whole = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=self.args.get_warmup_steps(total),
            num_training_steps=total,
            scheduler_specific_kwargs=kwargs if isinstance(kwargs, dict) else None,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, spanning_factor(whole.lr_lambdas[0], before)
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None):
        positions = inputs["positions"].tolist()
        step = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.fed_log is not None:  # the micro-batch's share of the step's loss, as HF sums it
            self.fed_log.record(step, positions, float(loss))
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("positions", None)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """Newest ``checkpoint-N`` whose trainer state (written last by the Trainer) exists."""
    if not checkpoints.is_dir():
        return None
    complete = [
        d
        for d in checkpoints.glob("checkpoint-*")
        if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda d: int(d.name.split("-")[-1]), default=None)


def deepspeed_config(node: Any) -> dict[str, Any] | None:
    """The DeepSpeed config as a plain dict (the Trainer fills its "auto" fields)."""
    if node is None:
        return None
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(plain, dict):
        raise TypeError(f"trainer.deepspeed must be a mapping, got {type(plain).__name__}")
    return {str(k): v for k, v in plain.items()} or None


def training_arguments(
    tcfg: Any, output_dir: Path, seed: int, report_to: list[str]
) -> TrainingArguments:
    extra = dict(tcfg.extra or {})
    bf16, fp16 = resolve_half(tcfg.bf16, tcfg.fp16, tcfg.use_cpu)
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=tcfg.learning_rate,
        num_train_epochs=1,  # epochs are unrolled in the planned sequence
        max_steps=tcfg.max_steps,
        per_device_train_batch_size=tcfg.per_device_train_batch_size,
        per_device_eval_batch_size=tcfg.per_device_eval_batch_size,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        weight_decay=tcfg.weight_decay,
        warmup_steps=tcfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=tcfg.lr_scheduler_type,
        optim=tcfg.optim,
        adam_beta1=tcfg.adam_beta1,
        adam_beta2=tcfg.adam_beta2,
        adam_epsilon=tcfg.adam_epsilon,
        max_grad_norm=tcfg.max_grad_norm,
        logging_steps=tcfg.logging_steps,
        save_strategy="steps",
        save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit,
        report_to=report_to or "none",
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=tcfg.gradient_checkpointing,
        dataloader_num_workers=tcfg.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available() and not tcfg.use_cpu,
        use_cpu=tcfg.use_cpu,
        deepspeed=deepspeed_config(tcfg.deepspeed),
        **extra,
    )


@dataclass
class StageSpec:
    index: int  # 1-based position in the run
    name: str  # e.g. difficulty-3, random-1, all, sorted
    ids: Sequence[str]  # the stage's examples
    sequence: Sequence[str]  # the planned fed order (epochs unrolled)
    dir: Path
    packs: Sequence[Sequence[int]] | None = None  # trainer.packing: the rows, as plan positions
    continuity: Continuity = Continuity()  # trainer.stage_policy: how it follows the stage before

    @property
    def order_hash(self) -> str:
        return sha256_lines(self.sequence)


def read_stage(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / STAGE_FILE
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def feed_shape(trainer: Trainer, spec: StageSpec) -> FeedShape:
    """How this trainer feeds the stage's plan (its ranks, batches, sampler, packs)."""
    acc = trainer.accelerator
    return FeedShape(
        n_planned=len(spec.packs) if spec.packs is not None else len(spec.sequence),
        units=spec.packs,
        ranks=acc.num_processes,
        batch_size=trainer.args.per_device_train_batch_size,
        grad_accum=trainer.args.gradient_accumulation_steps,
        even_batches=bool(getattr(acc, "even_batches", True)),
        split_batches=bool(getattr(acc, "split_batches", False)),
        drop_last=trainer.args.dataloader_drop_last,
    )


def audit_stage(trainer: Trainer, spec: StageSpec) -> dict[str, Any]:
    """After training, on every rank: rank 0 checks every rank's fed log against the plan.

    All ranks first wait for each other (every log is complete), then rank 0 audits and sends
    its verdict to the others, so either every rank returns the audit's record for
    ``stage.json`` or every rank raises :class:`AuditError`: no rank is left waiting.
    """
    n_ranks = trainer.accelerator.num_processes
    shape = feed_shape(trainer, spec)
    max_steps = trainer.args.max_steps
    n_steps = max_steps if max_steps > 0 else len(shape.steps())
    logs = {r: FedLog(fed_log_path(spec.dir, r), spec.sequence, r) for r in range(n_ranks)}
    verdict: dict[str, Any] | str | None = None
    if n_ranks > 1:
        trainer.accelerator.wait_for_everyone()
    if trainer.args.process_index == 0:
        try:
            result = audit_fed(logs, shape, n_steps)
            if result.ok:
                verdict = {**result.record(), "train_loss": stage_train_loss(logs, n_steps)}
            else:
                verdict = f"the data fed differs from the plan at {result.problem}"
        except Exception as e:  # an unreadable log: the stage cannot be vouched for either
            verdict = f"could not read the fed logs: {type(e).__name__}: {e}"
    if n_ranks > 1:
        from accelerate.utils import broadcast_object_list

        verdict = broadcast_object_list([verdict], from_process=0)[0]
    if isinstance(verdict, dict):
        return verdict
    fed = logs[0].path.name + (" (rank 0), fed_ids.rank<r>.jsonl (rank r)" if n_ranks > 1 else "")
    raise AuditError(
        f"stage {spec.index} ({spec.name}): {verdict}. In {spec.dir}: the plan data_order.txt, "
        f"what was fed {fed}. The stage is not marked done: find the cause, then delete that "
        "directory to train the stage again from its start."
    )


@dataclass
class StageInputs:
    """What every stage of a run trains with (the same for each stage: same hyper-parameters)."""

    load_model: Callable[[], Any]  # the previous stage's weights (or the base model)
    tokenizer: Any
    encoded: Mapping[str, Encoded]  # every example of the run, by id
    eval_datasets: Mapping[str, torch.utils.data.Dataset]  # held-out loss after the stage
    tcfg: Any  # the trainer config node
    seed: int
    report_to: list[str]
    export: Callable[[Path, Path], None] | None = None  # lays out what the Trainer saved


def train_stage(spec: StageSpec, inputs: StageInputs) -> dict[str, Any]:
    """Train one stage (or resume it, or skip it if done); return its record.

    Done stages are skipped; a stage in progress resumes from its last complete checkpoint;
    the Trainer feeds the planned order and the audit checks it did; the weights are saved
    (``inputs.export(saved_dir, stage_dir)`` lays them out, by default as ``stage_dir/model``),
    then ``stage.json`` marks the stage done, and every rank writes its completion marker.
    """
    done = finished_record(spec)
    if done is not None:
        return done
    if inputs.tcfg.packing:
        spec = replace(spec, packs=stage_packs(inputs.tcfg, inputs.encoded, spec.sequence))
    resume, fed_log = prepare_stage_dir(spec)
    trainer = stage_trainer(spec, inputs, fed_log)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    audit = audit_stage(trainer, spec)  # every rank; raises AuditError on every rank on a mismatch
    save_stage_model(trainer, spec, inputs)
    if spec.continuity.keep_optimizer:
        save_optimizer_state(trainer, spec)
    record = stage_record(trainer, spec, inputs, result, audit, resume)
    mark_stage_done(trainer, spec, inputs, record)
    return record


def finished_record(spec: StageSpec) -> dict[str, Any] | None:
    """The record of a stage already done (same planned order), or ``None`` to train it."""
    done = read_stage(spec.dir)
    if done is None or done.get("status") != "done":
        return None
    if done.get("order_sha256") != spec.order_hash:
        raise RuntimeError(
            f"{spec.dir / STAGE_FILE}: this stage was trained on a different data order "
            "(data or config changed under the same run directory); use a new run.name"
        )
    log.info("stage %d (%s) already done: skipping", spec.index, spec.name)
    return done


def prepare_stage_dir(spec: StageSpec) -> tuple[Path | None, FedLog]:
    """The stage's folder with its plan; the checkpoint to resume from; this rank's fed log
    with what follows that checkpoint forgotten (it is about to be redone)."""
    spec.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.dir / "data_order.txt", "".join(f"{i}\n" for i in spec.sequence))
    resume = last_complete_checkpoint(spec.dir / "checkpoints")
    my_rank, n_ranks = rank(), world_size()
    fed_log = FedLog(fed_log_path(spec.dir, my_rank), spec.sequence, my_rank)
    step = 0
    if resume is not None:
        step = int(json.loads((resume / "trainer_state.json").read_text())["global_step"])
        log.info("stage %d (%s): resuming from %s", spec.index, spec.name, resume)
    fed_log.truncate(step)  # every rank its own log: what follows ``step`` is about to be redone
    if my_rank == 0:  # logs of ranks this run does not have (another world size) are not its record
        for r in fed_log_ranks(spec.dir):
            if r >= n_ranks:
                fed_log_path(spec.dir, r).unlink(missing_ok=True)
    return resume, fed_log


def spanning_factor(whole: Callable[[int], float], before: int) -> Callable[[int], float]:
    """The learning-rate factor at a stage's step: the spanning schedule's at the run's step
    ``before + step``. A plain function, so the scheduler's checkpoint stores none of it (a
    callable object's attributes would be pickled into ``scheduler.pt``, which a resume loads
    with ``weights_only=True``); a resumed stage rebuilds the same function."""

    def factor(step: int) -> float:
        return float(whole(before + step))

    return factor


def carry_optimizer_state(optimizer: Any, path: Path) -> None:
    """Start ``optimizer`` from the moments saved at ``path`` (its own hyper-parameters kept)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    fresh = optimizer.state_dict()
    shapes = [len(g["params"]) for g in fresh["param_groups"]]
    if [len(g["params"]) for g in saved["param_groups"]] != shapes:
        raise DataError(
            f"{path}: the previous stage's optimizer state has other parameter groups "
            f"({[len(g['params']) for g in saved['param_groups']]} vs {shapes}); "
            "trainer.stage_policy.optimizer_state=carried needs the same trainable parameters"
        )
    optimizer.load_state_dict({**fresh, "state": saved["state"]})


def save_optimizer_state(trainer: Trainer, spec: StageSpec) -> None:
    """The stage's final optimizer state, for a next stage that carries it (rank 0)."""
    if trainer.args.should_save and trainer.optimizer is not None:
        path = spec.dir / OPTIMIZER_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(trainer.optimizer.state_dict(), tmp)
        os.replace(tmp, path)


def stage_trainer(spec: StageSpec, inputs: StageInputs, fed_log: FedLog) -> CurriculumTrainer:
    """A Trainer over the stage's planned order, from the previous weights (fp32 masters)."""
    tcfg = inputs.tcfg
    bf16, fp16 = resolve_half(tcfg.bf16, tcfg.fp16, tcfg.use_cpu)
    model = guard_master_weights(
        inputs.load_model(),
        deepspeed=deepspeed_config(tcfg.deepspeed),
        bf16=bf16,
        fp16=fp16,
        upcast=tcfg.upcast_half_weights,
    )
    dataset: torch.utils.data.Dataset = SequenceDataset(inputs.encoded, spec.sequence)
    collator: Any = Collator(inputs.tokenizer.pad_token_id)
    if spec.packs is not None:
        dataset = PackedDataset(inputs.encoded, spec.sequence, spec.packs)
        flat = flat_layout(tcfg.packing_layout, model)
        log.info("packed rows reach the model %s", "as one sequence a batch" if flat else "padded")
        collator = PackedCollator(inputs.tokenizer.pad_token_id, unpacked=collator, flat=flat)
    args = training_arguments(tcfg, spec.dir / "checkpoints", inputs.seed, inputs.report_to)
    if not spec.continuity.warmup:
        args.warmup_steps = 0
    trainer = CurriculumTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=inputs.tokenizer,
        fed_log=fed_log,
        continuity=spec.continuity,
    )
    if "tensorboard" in inputs.report_to:  # one TensorBoard run per stage, beside the others
        from transformers.integrations import TensorBoardCallback

        callback = next(
            c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)
        )
        callback.logging_dir = str(tensorboard_dir(spec.dir))
    return trainer


def save_stage_model(trainer: Trainer, spec: StageSpec, inputs: StageInputs) -> None:
    """Every rank saves (ZeRO-3 gathers the weights); rank 0 writes and moves them into place."""
    final, tmp = spec.dir / "model", spec.dir / "model.tmp"
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.args.should_save:
        inputs.tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)  # the weights file is written 0600 by transformers
        if inputs.export is None:
            replace_dir(tmp, final)
        else:
            inputs.export(tmp, spec.dir)


def stage_record(
    trainer: Trainer,
    spec: StageSpec,
    inputs: StageInputs,
    result: Any,
    audit: dict[str, Any],
    resume: Path | None,
) -> dict[str, Any]:
    """``stage.json``: what the stage trained on, what it fed (the audit), its losses, metrics."""
    metrics: dict[str, Any] = {"train": dict(result.metrics)}
    # HF's train_loss covers this process's steps only (after a resume, the steps since it);
    # the fed logs hold every step's loss, so the stage's figure is the same either way
    whole = audit.pop("train_loss", None)
    if whole is not None:
        metrics["train"]["train_loss_this_run"] = metrics["train"].get("train_loss")
        metrics["train"]["train_loss"] = whole
    if inputs.eval_datasets:
        metrics["eval"] = trainer.evaluate(eval_dataset=dict(inputs.eval_datasets))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "status": "done",
        "index": spec.index,
        "name": spec.name,
        "n_examples": len(spec.ids),
        "n_target_tokens": sum(inputs.encoded[i].n_target for i in spec.sequence),
        "packed_rows": len(spec.packs) if spec.packs is not None else None,
        "order_sha256": spec.order_hash,
        **audit,
        "global_step": trainer.state.global_step,
        "resumed_from": resume.name if resume else None,
        "continuity": {  # trainer.stage_policy, as it applied to this stage
            "warmup": spec.continuity.warmup,
            "span": list(spec.continuity.span) if spec.continuity.span else None,
            "optimizer_from": spec.continuity.optimizer_from.name
            if spec.continuity.optimizer_from
            else None,
        },
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "metrics": metrics,
        "log_history": trainer.state.log_history,
    }


def mark_stage_done(
    trainer: Trainer, spec: StageSpec, inputs: StageInputs, record: dict[str, Any]
) -> None:
    """``stage.json`` last (rank 0), then each rank's completion marker."""
    if trainer.args.should_save:
        atomic_write_json(spec.dir / "metrics.json", record["metrics"])
        atomic_write_json(spec.dir / STAGE_FILE, record)  # the completion marker: written last
        if not inputs.tcfg.keep_checkpoints:
            shutil.rmtree(spec.dir / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # the next stage loads what rank 0 just wrote
    # Per-rank completion marker: multi-process runs are judged by these, not by exit codes alone
    # (a process may still abort while tearing down after a successful stage).
    atomic_write_json(
        spec.dir / "ranks" / f"{trainer.args.process_index}.json",
        {
            "status": "done",
            "global_step": trainer.state.global_step,
            "world_size": trainer.args.world_size,
        },
    )
