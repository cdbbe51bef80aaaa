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
after the model directory is in place with its manifest (:mod:`phasedsft.checksums`).
Until then a rerun resumes the stage from its newest Trainer checkpoint that verifies: a
checkpoint counts once every rank's files are written and synced and rank 0 has written its
manifest, last (:meth:`CurriculumTrainer._save_checkpoint`); a newer one that fails
verification (changed bytes, a truncated, empty or missing file, no manifest) is passed over,
named, and recorded in ``stage.json`` (:mod:`phasedsft.train.checkpoints`).

SIGTERM (what SLURM sends before a time limit or a preemption) during a stage does not kill
it: the step in progress finishes, a verified checkpoint is saved, and the process exits with
code 143 (:data:`EXIT_REQUEUE`), the stage not marked done, so a requeue or a rerun of the same
command resumes from that checkpoint (:class:`StopRequest`). Under submitit its own preemption
signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) is handled the same way, then handed to
submitit, which requeues the job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from phasedsft import rundir
from phasedsft.checksums import fsync_path, sync_tree, verify, write_manifest
from phasedsft.distributed import rank
from phasedsft.io import (
    atomic_write_json,
    atomic_write_text,
    follow_umask,
    replace_dir,
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
from phasedsft.train.checkpoints import Resume, choose_resume, superseded
from phasedsft.train.packed import PackedCollator, PackedDataset
from phasedsft.train.packing import flat_layout, stage_packs
from phasedsft.train.precision import guard_master_weights, resolve_half
from phasedsft.train.stage_spec import Continuity, StageSpec
from phasedsft.train.tracking import tensorboard_dir

log = logging.getLogger(__name__)

STAGE_FILE = rundir.STAGE_RECORD
EXIT_REQUEUE = 143  # 128 + SIGTERM: saved a checkpoint on a stop signal; rerun / requeue resumes


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

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, complete only once its manifest is written, last.

        A directory of the same step left by an earlier try is replaced whole. Every rank
        writes its files (DeepSpeed: its shards; several ranks: its RNG state) and syncs them;
        after a barrier rank 0 syncs every file, writes the manifest (sha256 and size of every
        file under the checkpoint) and only then deletes older checkpoints, keeping the newest
        ``save_total_limit`` with a manifest (the Trainer's own rotation would run before the
        manifest exists, and could leave none that verifies)."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and folder.exists():
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotation waits for the manifest
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if not self.args.should_save:
            sync_tree(folder)  # this rank's (node's) writes; rank 0 syncs everything again
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_manifest(folder)
            for old in superseded(folder.parent, folder, limit):
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def any_rank(self, flag: bool) -> bool:
        """``flag`` on any rank (every rank must call it at the same point)."""
        if self.accelerator.num_processes == 1:
            return flag
        votes = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(votes, reduction="sum").item() > 0)


class StopRequest:
    """SIGTERM during a stage: finish the step in progress, save a checkpoint, then exit.

    While installed (the ``with`` block), SIGTERM only sets :attr:`signum`, and so does
    submitit's preemption signal when submitit handles it (``SUBMITIT_PREEMPT_SIGNAL``,
    USR2 by default). :class:`StopAtStepEnd` turns it into a save and a stop at the end of the
    step; :meth:`hand_over` passes a submitit signal on to submitit's own handler (which
    requeues the job and exits). The previous handlers are put back on leaving, unless the
    process is exiting for a requeue (:attr:`exiting`): then a further signal is ignored
    while it tears down (torchrun sends SIGTERM to the ranks still running when one exits),
    so every rank ends with its own exit code.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.exiting = False

    @staticmethod
    def signals() -> list[int]:
        """SIGTERM, and submitit's preemption signal inside a submitit job that handles it."""
        out = [int(signal.SIGTERM)]
        if os.environ.get("SUBMITIT_FOLDER"):
            name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
            sig = getattr(signal, f"SIG{name.upper().removeprefix('SIG')}", None)
            if sig is not None and callable(signal.getsignal(sig)) and int(sig) not in out:
                out.append(int(sig))
        return out

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals():
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            if self.exiting:
                handler = signal.SIG_IGN
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "SIGTERM"

    def hand_over(self) -> None:
        """A submitit preemption signal goes on to submitit's handler (it requeues, exits)."""
        handler = self.previous.get(self.signum) if self.signum is not None else None
        if self.signum != signal.SIGTERM and callable(handler):
            self.__exit__()
            handler(self.signum, None)


class StopAtStepEnd(TrainerCallback):
    """At the end of every optimizer step: if a stop signal came (on any rank), save a
    checkpoint now and stop training (every rank agrees: a save is collective)."""

    def __init__(self, request: StopRequest, any_rank: Callable[[bool], bool]):
        self.request, self.any_rank = request, any_rank
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is None and self.any_rank(self.request.signum is not None):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


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
    with StopRequest() as stop:
        fed_log = prepare_stage_dir(spec)
        trainer = stage_trainer(spec, inputs, fed_log)
        stopper = StopAtStepEnd(stop, trainer.any_rank)
        trainer.add_callback(stopper)
        resume = resume_point(trainer, spec, fed_log)
        ckpt = resume.checkpoint
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        if stopper.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
            exit_for_requeue(trainer, spec, stop)
        audit = audit_stage(trainer, spec)  # every rank; AuditError on every rank on a mismatch
        save_stage_model(trainer, spec, inputs)
        if spec.continuity.keep_optimizer:
            save_optimizer_state(trainer, spec)
        record = stage_record(trainer, spec, inputs, result, audit, resume)
        mark_stage_done(trainer, spec, inputs, record)
        if trainer.any_rank(stop.signum is not None):  # it came after the last step
            exit_for_requeue(trainer, spec, stop, done=True)
    return record


def exit_for_requeue(
    trainer: CurriculumTrainer, spec: StageSpec, stop: StopRequest, done: bool = False
) -> None:
    """After a stop signal: say what was saved, hand a submitit signal to submitit (it
    requeues), and exit with :data:`EXIT_REQUEUE` on every rank."""
    trainer.accelerator.wait_for_everyone()
    if trainer.args.process_index == 0:
        if done:
            saved = f"stage {spec.index} ({spec.name}) is done"
        else:
            folder = spec.dir / "checkpoints" / f"checkpoint-{trainer.state.global_step}"
            problem = verify(folder, hashes=False)
            saved = f"saved {folder.name} " + (
                "(verified)" if problem is None else f"(but it fails verification: {problem})"
            )
        message = f"{stop.name}: {saved}; exiting for requeue (the same command resumes)"
        log.info(message)
        print(message, file=sys.stderr, flush=True)
    stop.hand_over()
    stop.exiting = True
    raise SystemExit(EXIT_REQUEUE)


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


def prepare_stage_dir(spec: StageSpec) -> FedLog:
    """The stage's folder with its plan; this rank's fed log."""
    spec.dir.mkdir(parents=True, exist_ok=True)
    if rank() == 0:  # the plan, once (every rank feeds from spec.sequence itself)
        atomic_write_text(spec.dir / "data_order.txt", "".join(f"{i}\n" for i in spec.sequence))
    return FedLog(fed_log_path(spec.dir, rank()), spec.sequence, rank())


def resume_point(trainer: CurriculumTrainer, spec: StageSpec, fed_log: FedLog) -> Resume:
    """The newest checkpoint that verifies, chosen by rank 0 (which alone reads and hashes
    them) and sent to every rank; each rank's fed log forgets what follows it (about to be
    redone). Checkpoints passed over are said, with their problem, and kept for stage.json."""
    resume: Resume | None = None
    what = f"stage {spec.index} ({spec.name})"
    if trainer.args.process_index == 0:
        resume = choose_resume(spec.dir / "checkpoints")
        message = resume.message(what)
        if message:
            log.warning(message)
        elif resume.checkpoint is not None:
            log.info("%s: resuming from %s (verified)", what, resume.checkpoint.name)
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        resume = broadcast_object_list([resume], from_process=0)[0]
    assert resume is not None
    fed_log.truncate(resume.step)  # every rank its own log
    n_ranks = trainer.accelerator.num_processes
    if trainer.args.process_index == 0:  # logs of ranks this run lacks (another world size)
        for r in fed_log_ranks(spec.dir):
            if r >= n_ranks:
                fed_log_path(spec.dir, r).unlink(missing_ok=True)
    return resume


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
    final, tmp = spec.dir / rundir.MODEL_DIR, spec.dir / f"{rundir.MODEL_DIR}.tmp"
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.args.should_save:
        inputs.tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)  # the weights file is written 0600 by transformers
        if inputs.export is None:
            write_manifest(tmp)  # the next stage and evaluate.py verify the weights against it
            replace_dir(tmp, final)
        else:
            inputs.export(tmp, spec.dir)
            for laid_out in (spec.dir / "adapter", final):
                if laid_out.is_dir():
                    write_manifest(laid_out)
        fsync_path(spec.dir)  # the rename, before stage.json says the stage is done


def stage_record(
    trainer: Trainer,
    spec: StageSpec,
    inputs: StageInputs,
    result: Any,
    audit: dict[str, Any],
    resume: Resume,
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
        "resumed_from": resume.checkpoint.name if resume.checkpoint else None,
        "checkpoints_failed_verification": resume.record(),
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
