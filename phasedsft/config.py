"""Typed configuration schemas, generated config-group options and resolvers.

The primary config ``conf/train.yaml`` starts from ``train_schema`` (the
:class:`TrainConfig` dataclass below), so every value that Hydra composes is checked
against these types: a misspelt key or a value of the wrong type fails at compose
time with Hydra's message, before anything expensive starts.

The ``ordering`` group lives here too: its options are dataclass nodes, and the
permutations and subsets of the difficulty stages (``1-2-3``, ``3-2-1``, ``3-1``,
``only-3``, ...) are generated for up to :data:`MAX_GENERATED_STAGES` stages rather than
written as files. Any other sequence: ``ordering=phased ordering.stages=[5,4,3,2,1]``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from phasedsft.identity import MOVED_MODULES as MOVED_MODULES
from phasedsft.identity import MOVED_TARGETS as MOVED_TARGETS
from phasedsft.identity import NEUTRAL_DEFAULTS as NEUTRAL_DEFAULTS
from phasedsft.identity import NON_SEMANTIC_KEYS as NON_SEMANTIC_KEYS
from phasedsft.identity import NON_SEMANTIC_SCORER_KEYS as NON_SEMANTIC_SCORER_KEYS
from phasedsft.identity import config_hash, data_job_hash
from phasedsft.identity import current_target as current_target
from phasedsft.identity import first_target as first_target
from phasedsft.identity import with_first_targets as with_first_targets
from phasedsft.identity import without_neutral_options as without_neutral_options
from phasedsft.ranges import Range, ranged

MAX_GENERATED_STAGES = 4

# Run identity (what names a run, what makes runs comparable) lives in phasedsft.identity;
# its names stay importable from here.

# ----------------------------------------------------------------- schemas


@dataclass
class RunConfig:
    root: str = "runs"
    # Stable across reruns and requeues: same config -> same directory -> resume.
    name: str = "${dataset.name}-${model.name}-${ordering.name}-s${seed}-${cfg_hash:}"
    cache_dir: str = "${run.root}/.cache"


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str | None = None  # model=hf: the hub id or local directory (its loader reads it)
    tokenizer: Any = MISSING  # node with _target_ (phasedsft.models.*_tokenizer)
    loader: Any = MISSING  # node with _target_ (phasedsft.models.scratch_llama / load_pretrained)
    # LoRA targets for this model family (Llama / Mistral / SmolLM2 names by default)
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: Any = MISSING  # node with _target_ (phasedsft.data.loaders.* / graded.generate_suite)
    eval: Any = None  # optional held-out data, same kind of node
    # seeded subsample, for data-quantity sweeps
    max_examples: int | None = ranged(None, ge=1, why="examples kept; null: all")
    subsample_seed: int = ranged("${seed}", ge=0)


@dataclass
class SegmentConfig:
    method: Any = MISSING  # node with _target_ (phasedsft.segment.methods.ManualThresholds, ...)
    random_seed: int = ranged("${seed}", ge=0)
    manifest: str | None = None  # use this stage manifest instead of segmenting


class Shuffle(str, Enum):
    every_epoch = "every_epoch"
    once = "once"


class PackingLayout(str, Enum):
    auto = "auto"  # flat under flash attention (its variable-length kernels), rows otherwise
    rows = "rows"  # each row its own sequence, rows padded to the batch's longest
    flat = "flat"  # the batch's rows end to end as one sequence: nothing padded


class StageSchedule(str, Enum):
    per_stage = "per_stage"  # each stage its own warmup and decay over its own steps (the paper)
    spanning = "spanning"  # one warmup and decay over the steps of all stages


class OptimizerState(str, Enum):
    fresh = "fresh"  # each stage a new optimizer (the paper)
    carried = "carried"  # each stage starts from the previous stage's optimizer moments


@dataclass
class StagePolicy:
    """How each stage continues from the one before (``trainer/stage_policy=reset|continue|carry``;
    ``docs/curricula.md``). The default is the paper's: every stage a fresh start."""

    schedule: StageSchedule = StageSchedule.per_stage
    optimizer_state: OptimizerState = OptimizerState.fresh
    warmup_each_stage: bool = True  # per_stage: later stages warm up again (false: stage 1 only)


@dataclass
class TrainerConfig:
    """Per-stage hyper-parameters; every stage uses the same ones (paper defaults)."""

    learning_rate: float = ranged(5e-6, gt=0, why="the optimizer's peak step size")
    num_train_epochs: float = ranged(2.0, gt=0, why="passes over each stage")
    per_device_train_batch_size: int = ranged(16, ge=1, why="examples per device per step")
    per_device_eval_batch_size: int = ranged(16, ge=1, why="examples per device per batch")
    gradient_accumulation_steps: int = ranged(1, ge=1, why="batches per optimizer step")
    weight_decay: float = ranged(0.1, ge=0)
    warmup_ratio: float = ranged(0.1, ge=0, le=1, why="the share of steps warming up")
    lr_scheduler_type: str = "cosine"
    max_seq_length: int = ranged(512, ge=1, why="tokens per example")
    # per stage; -1 lets num_train_epochs decide
    max_steps: int = ranged(
        -1, ge=1, also=(-1,), why="optimizer steps per stage; -1: epochs decide"
    )
    # every_epoch: a fresh seeded shuffle of the stage per epoch; once: one shuffle, fed again
    # every epoch (the authors' code: one seeded sample at load, DataLoader shuffle=False)
    shuffle: Shuffle = Shuffle.every_epoch
    # Batches of similar lengths inside windows of the planned order (less padding, same data
    # per stage); off in the paper's recipe, which fed plain shuffled batches.
    group_by_length: bool = False
    # Padding-free packing of consecutive planned examples into rows of at most
    # packing_max_tokens tokens (null: max_seq_length), attention kept per example
    # (phasedsft/train/packing.py); off in the paper's recipe.
    packing: bool = False
    packing_max_tokens: int | None = ranged(None, ge=1, why="tokens per packed row")
    # How a batch of packed rows reaches the model (the same loss either way): flat needs a
    # kernel that skips attention across examples (flash attention's varlen); with sdpa /
    # eager its mask is dense over the whole batch, so rows is the default there.
    packing_layout: PackingLayout = PackingLayout.auto
    save_steps: int = ranged(200, ge=1, why="optimizer steps between checkpoints")
    save_total_limit: int = ranged(2, ge=1, why="checkpoints kept per stage")
    keep_checkpoints: bool = False  # keep mid-stage checkpoints after a stage completes
    logging_steps: int = ranged(10, ge=1, why="optimizer steps between log lines")
    optim: str = "adamw_torch"
    adam_beta1: float = ranged(0.9, ge=0, lt=1)
    adam_beta2: float = ranged(0.999, ge=0, lt=1)
    adam_epsilon: float = ranged(1e-8, gt=0)
    max_grad_norm: float = ranged(1.0, ge=0, why="gradient clipping norm; 0: none")
    # Mixed precision with fp32 master weights (phasedsft/train/precision.py). bf16: null = bf16
    # autocast wherever a CUDA GPU supports it, fp32 elsewhere.
    bf16: bool | None = None
    fp16: bool = False
    # Half-precision trainable weights without fp32 masters (no DeepSpeed in 16 bits): upcast
    # them to fp32 (true) or stop with a plain error (false).
    upcast_half_weights: bool = True
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = ranged(0, ge=0, why="data loading processes; 0: in the main one")
    use_cpu: bool = False
    deepspeed: Any = None  # a DeepSpeed config (trainer/deepspeed=zero2|zero3|zero3_offload); "auto" fields filled by the Trainer
    peft: Any = None  # adapter settings with _target_ (trainer/peft=lora); None: full fine-tuning
    extra: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments as is
    stage_policy: StagePolicy = field(default_factory=StagePolicy)


@dataclass
class EvalConfig:
    after_each_stage: bool = True  # held-out loss (per difficulty level) after every stage
    by_task: bool = False  # ... and per task family (meta "task"): the forgetting matrix's columns
    generate: bool = True  # greedy answers + judge at the end
    max_new_tokens: int = ranged(32, ge=1, why="answer tokens")
    batch_size: int = ranged(32, ge=1, why="prompts per generate call")
    max_items: int | None = ranged(None, ge=1, why="items answered; null: all")


@dataclass
class LoggerConfig:
    name: str = "none"
    report_to: list[str] = field(default_factory=list)  # the Trainer's integrations
    tracker: Any = (
        None  # node with _target_ (phasedsft.train.tracking.WandbTracker); None: JSON files only
    )


@dataclass
class TrainConfig:
    seed: int = ranged(0, ge=0)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    prompt: Any = MISSING
    scorer: Any = MISSING
    segment: SegmentConfig = MISSING
    ordering: Any = MISSING
    trainer: TrainerConfig = MISSING
    judge: Any = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: Any = None
    publish: Any = None  # node with _target_ (phasedsft.train.publish.*); None: not published
    replay: Any = None  # node with _target_ (phasedsft.train.curricula.Replay); None: no replay
    # which examples to train on, after scoring, before segmenting (phasedsft/select); None: all
    selection: Any = None
    # Set every job up, print its ordering, stage sizes and steps, train nothing (phasedsft/train/plan.py)
    plan_only: bool = False
    # Print N examples of each stage with the tokens in the loss marked, then stop as plan_only
    # does (phasedsft/train/inspect.py); inspect_stage=K: stage K only (1-based, training order);
    # inspect_tokens=true: also one line per token (id, token, label)
    inspect: int = ranged(0, ge=0, why="examples printed per stage; 0: none")
    inspect_stage: int | None = ranged(None, ge=1, why="the stage printed, from 1")
    inspect_tokens: bool = False


@dataclass
class ScoreRunConfig:
    root: str = "runs/score"
    name: str = "${dataset.name}-${scorer.name}-${data_job_hash:}"
    # beside the project's runs: run.root=<project>/score -> <project>/.cache, the cache
    # train.py run.root=<project> uses (one score cache for every command of a project)
    cache_dir: str = "${parent_dir:${run.root}}/.cache"


@dataclass
class DataJobConfig:
    """What every job over a dataset shares (score.py, segment.py)."""

    seed: int = ranged(0, ge=0)
    model: ModelConfig = MISSING  # local-LM scorers; the tokenizer for token counts
    dataset: DatasetConfig = MISSING
    scorer: Any = MISSING


@dataclass
class ScoreConfig(DataJobConfig):
    """``score.py``: score a dataset's difficulty."""

    dry_run: bool = False  # print the cost estimate and stop before any request
    # drawn on the histogram; inside the scores' range (config_check.check_thresholds)
    thresholds: list[float] = field(
        default_factory=lambda: [1.5, 3.5], metadata={"range": Range(why="lines drawn")}
    )
    run: ScoreRunConfig = field(default_factory=ScoreRunConfig)
    # more scorers, each written beside the scorer's own in the scored file's ``scores`` (raw
    # values, keyed by this name): python score.py scorer=gpt4 +scorer@extra_scorers.ifd=ifd
    extra_scorers: dict[str, Any] = field(default_factory=dict)


@dataclass
class SegmentRunConfig:
    root: str = "runs/segment"
    name: str = "${dataset.name}-${data_job_hash:}"
    cache_dir: str = "${parent_dir:${run.root}}/.cache"  # as score.py's: the project's cache


@dataclass
class SegmentationConfig(DataJobConfig):
    """``segment.py``: scores -> stages, with the density view, Table 1 and sensitivity."""

    plot_bandwidth: Any = None
    compare: dict[str, Any] = field(default_factory=dict)
    segment: SegmentConfig = MISSING
    selection: Any = None  # which examples to segment (phasedsft/select), as train.py selects
    run: SegmentRunConfig = field(default_factory=SegmentRunConfig)


class Checkpoints(str, Enum):
    final = "final"  # each run's last stage
    every_stage = "every_stage"  # every stage's weights (Figure 1: win rate after each stage)


class FoldRule(str, Enum):
    paper = "paper"  # win = win twice or win + tie; tie = tie twice or win + lose; ...
    fastchat = "fastchat"  # win or lose only when both orders agree; else tie
    authors = "authors"  # the authors' released win_tie_loss_stat.py (parser and N), exactly


@dataclass
class EvalSetConfig:
    name: str = MISSING
    source: Any = None  # node with _target_ (load_eval_set); None: the run's own held-out data
    categories: list[str] = field(default_factory=list)  # item fields to break results down by
    # the first N items (quick looks)
    max_items: int | None = ranged(None, ge=1, why="the first N items; null: all")
    # the paper's count: a different count is reported
    expected_items: int | None = ranged(None, ge=1, why="the items the set should have")
    # This set's answer lengths: max_new_tokens (answer tokens) and / or max_length (prompt +
    # answer tokens, the authors' setting); null = no limit of that kind. A non-null
    # generator.max_new_tokens / generator.max_length overrides them for every set.
    generation: dict[str, int | None] = field(
        default_factory=dict, metadata={"range": Range(ge=1, why="tokens")}
    )


@dataclass
class EvaluateConfig:
    """``evaluate.py``: answers from trained checkpoints, judged pairwise against a baseline."""

    sweep_dir: str = "runs"  # the training runs' run.root
    select: list[str] = field(default_factory=lambda: ["*"])  # run-name globs
    baseline: str = "one_off"  # ordering whose final weights every other run is compared with
    # true: runs that differ only in selection=... are one group, compared with the baseline
    # ordering trained on all the data; rows are labelled <ordering>+<selection> (study_selection)
    across_selections: bool = False
    checkpoints: Checkpoints = Checkpoints.final
    eval_data_dir: str = "data/eval_sets"
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=dict)
    generator: Any = MISSING
    judge: Any = MISSING
    rule: FoldRule = FoldRule.paper
    bootstrap: int = ranged(2000, ge=1, why="bootstrap resamples for the CIs")
    seed: int = ranged(0, ge=0)
    generate_only: bool = False  # stop after the answers (e.g. to judge elsewhere)
    dry_run: bool = False  # answers + the judge's cost estimate; no judge request
    export_alpacaeval: bool = True
    out_dir: str = "${sweep_dir}/evaluation/${judge.name}"
    cache_dir: str = "${sweep_dir}/.cache"


# ----------------------------------------------------------------- orderings
# The ordering group's options are built from their classes: phasedsft.train.orderings.


def stage_sequences(max_stages: int = MAX_GENERATED_STAGES) -> list[tuple[int, ...]]:
    """Every ordered selection of distinct stages from 1..max_stages (permutations and subsets)."""
    stages = range(1, max_stages + 1)
    return [p for r in range(1, max_stages + 1) for p in itertools.permutations(stages, r)]


def stages_name(stages: list[int] | tuple[int, ...]) -> str:
    """The name of an ordering training these difficulty stages: ``1-2-3``, ``only-3``."""
    seq = [int(s) for s in stages]
    return "-".join(map(str, seq)) if len(seq) > 1 else f"only-{seq[0]}"


_STAGES_NAME = re.compile(r"^(?:only-(\d+)|(\d+(?:-\d+)+))$")


def named_stages(name: str) -> tuple[int, ...] | None:
    """The stages an ordering name spells (``3-2-1`` -> (3, 2, 1), ``only-3`` -> (3,)); None
    for a name that spells none (``phased``, ``random``, ``self_paced``, ...)."""
    m = _STAGES_NAME.match(str(name))
    if m is None:
        return None
    return (int(m.group(1)),) if m.group(1) else tuple(int(s) for s in m.group(2).split("-"))


# ----------------------------------------------------------------- resolvers


NAME_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gguf")


def path_name(path: str) -> str:
    """A run-name part from a hub id, directory or file: its last component, extension dropped
    (``HuggingFaceH4/ultrachat_200k`` -> ``ultrachat_200k``, ``/data/chats.jsonl`` -> ``chats``)."""
    last = str(path).rstrip("/").rsplit("/", 1)[-1]
    for suffix in NAME_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.") or "data"


def parent_dir(path: str) -> str:
    """The folder ``path`` is in (``runs/score`` -> ``runs``; ``score`` -> ``.``)."""
    import os

    return os.path.dirname(os.path.normpath(str(path))) or "."


def _package_dir(package: str) -> str:
    from phasedsft.models import package_dir

    return package_dir(package)


def register() -> None:
    """Register schemas, generated options and resolvers (idempotent)."""
    if not OmegaConf.has_resolver("cfg_hash"):
        OmegaConf.register_new_resolver("cfg_hash", config_hash)
    if not OmegaConf.has_resolver("data_job_hash"):
        OmegaConf.register_new_resolver("data_job_hash", data_job_hash)
    if not OmegaConf.has_resolver("pkgdir"):
        OmegaConf.register_new_resolver("pkgdir", _package_dir)
    if not OmegaConf.has_resolver("path_name"):
        OmegaConf.register_new_resolver("path_name", path_name)
    if not OmegaConf.has_resolver("parent_dir"):
        OmegaConf.register_new_resolver("parent_dir", parent_dir)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="score_schema", node=ScoreConfig)
    cs.store(name="segmentation_schema", node=SegmentationConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    from phasedsft.select.config import register as register_select

    register_select(cs)


register()
