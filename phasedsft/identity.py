"""Run identity: what of a config names a run, and what makes finished runs comparable.

The hash in run names (:func:`config_hash`, the ``cfg_hash`` resolver) and the comparison
identity evaluate groups finished runs by (:func:`comparison_identity`) read a config the
same way (:func:`semantic_part`): settings that do not change what a run computes are left
out (:data:`NON_SEMANTIC_KEYS`, :data:`NON_SEMANTIC_SCORER_KEYS`), every ``_target_`` is
named where its code first lived (:data:`MOVED_MODULES`, :data:`MOVED_TARGETS`), and options
added later are left out at their neutral value (:data:`NEUTRAL_DEFAULTS`). Moving code or
adding an option never renames a run (``tests/test_identity.py``). :mod:`phasedsft.config`
re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from phasedsft.io import sha256_json

# Top-level keys that do not change what a run computes: left out of the run's hash,
# so the same experiment keeps its run directory whatever launcher or logger it uses.
NON_SEMANTIC_KEYS = (
    "hydra",
    "run",
    "launcher",
    "logger",
    "publish",  # where finished stages are copied: adding it to a finished run retrains nothing
    "dry_run",
    "plan_only",
    "inspect",  # inspect=N: print N examples per stage, trained tokens marked; trains nothing
    "inspect_stage",
    "inspect_tokens",
    "thresholds",
    "plot_bandwidth",
)
# A scorer's spending and pacing settings do not change its scores either: raising a budget
# and rerunning continues the same scoring run.
NON_SEMANTIC_SCORER_KEYS = (
    "budget_usd",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "max_retries",
    "timeout",
    "retry_failed",
    "price",
    "api_key_env",
    "batch_size",
)


# Modules that moved (old name -> new name). Run identity (the hash in run names, and the
# comparison identity of saved configs) names every ``_target_`` by its module's *first*
# name, so that a run made before a move is found, resumed and compared after it; saved
# configs that name an old module are read through the new one. A move adds a line here.
MOVED_MODULES = {
    "phasedsft.scorers": "phasedsft.score.base",
    "phasedsft.scoring.api": "phasedsft.score.api",
    "phasedsft.scoring.local": "phasedsft.score.local",
    "phasedsft.segmentation": "phasedsft.segment.methods",
    "phasedsft.stages": "phasedsft.segment.manifest",
    "phasedsft.ordering": "phasedsft.train.ordering",
    "phasedsft.plan": "phasedsft.train.plan",
    "phasedsft.adapters": "phasedsft.train.adapters",
    "phasedsft.tracking": "phasedsft.train.tracking",
    "phasedsft.judges": "phasedsft.evaluate.judges",
    "phasedsft.evaluation.generation": "phasedsft.evaluate.generation",
    "phasedsft.evaluation.sets": "phasedsft.evaluate.sets",
}
# Components that moved to another module than their own module's (old -> new target).
MOVED_TARGETS = {
    "phasedsft.stages.ManualThresholds": "phasedsft.segment.methods.ManualThresholds",
    # below both steps, as train.py marks answers with it (first: phasedsft.judges)
    "phasedsft.judges.ReferenceJudge": "phasedsft.judging.ReferenceJudge",
}
_FIRST_NAMES = {new: old for old, new in MOVED_MODULES.items()}
_FIRST_TARGETS = {new: old for old, new in MOVED_TARGETS.items()}


def _rename(target: str, targets: dict[str, str], modules: dict[str, str]) -> str:
    if target in targets:
        return targets[target]
    module, _, name = target.rpartition(".")
    return f"{modules.get(module, module)}.{name}" if module else target


def first_target(target: str) -> str:
    """``target`` under the name it had first (for run identity)."""
    return _rename(target, _FIRST_TARGETS, _FIRST_NAMES)


def current_target(target: str) -> str:
    """``target`` under its current name (to load an old saved config)."""
    return _rename(target, MOVED_TARGETS, MOVED_MODULES)


def with_first_targets(node: Any) -> Any:
    """A plain container with every ``_target_`` value named as in :func:`first_target`."""
    if isinstance(node, dict):
        return {
            k: first_target(v) if k == "_target_" and isinstance(v, str) else with_first_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [with_first_targets(v) for v in node]
    return node


# Options added after run identity was first defined, with the value that means "as before".
# At that value an option is left out of run identity (the hash in run names, the comparison
# identity), so adding an option renames no existing run; any other value is hashed as usual.
# An option added later adds a line here (tests/test_identity.py holds the names to keep).
NEUTRAL_DEFAULTS: dict[str, Any] = {
    "trainer.packing": False,
    "trainer.packing_max_tokens": None,
    "trainer.packing_layout": "auto",
    "model.path": None,
    "replay": None,
    "eval.by_task": False,
    "prompt.chat_template": None,
    "ordering.rescore_last_stage": True,
    "across_selections": False,  # evaluate.py: selections compared like orderings  # self_paced before it: re-scored its last stage too
    "selection": None,  # selection=none: every example (phasedsft/select)
    "extra_scorers": {},  # score.py: no score column beside the scorer's own
    "trainer.stage_policy": {
        "schedule": "per_stage",
        "optimizer_state": "fresh",
        "warmup_each_stage": True,
    },
}


def without_neutral_options(container: dict[str, Any]) -> dict[str, Any]:
    """``container`` less the options of :data:`NEUTRAL_DEFAULTS` that are at that value."""
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node: Any = container
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    return container


def semantic_part(
    container: dict[Any, Any], skip: Sequence[str] = NON_SEMANTIC_KEYS
) -> dict[Any, Any]:
    """``container`` (a plain config) as run identity reads it: every ``_target_`` by its first
    name (:data:`MOVED_MODULES`), options at their neutral value left out
    (:data:`NEUTRAL_DEFAULTS`), the top-level keys ``skip`` and the scorer's spending settings
    (:data:`NON_SEMANTIC_SCORER_KEYS`) removed."""
    out = with_first_targets(container)
    assert isinstance(out, dict)
    without_neutral_options(out)
    for key in skip:
        out.pop(key, None)
    scorers = [out.get("scorer")]
    if isinstance(out.get("extra_scorers"), dict):  # score.py's side-by-side columns
        scorers += list(out["extra_scorers"].values())
    for scorer in scorers:
        if isinstance(scorer, dict):
            for key in NON_SEMANTIC_SCORER_KEYS:
                scorer.pop(key, None)
    return out


def config_hash(*, _root_: DictConfig) -> str:
    """Short hash of everything that changes what a run computes (see NON_SEMANTIC_KEYS).

    Components are named by where their code first lived (:data:`MOVED_MODULES`) and options
    added later are left out at their neutral value (:data:`NEUTRAL_DEFAULTS`): moving code or
    adding an option never renames a run.
    """
    container = OmegaConf.to_container(_root_, resolve=False)
    assert isinstance(container, dict)
    return sha256_json(semantic_part(container))[:8]


# score.py and segment.py composed ``trainer: paper`` (+ ``trainer/for_model/<model>``) until
# 0.2: unused by them, but hashed into their run names. The node is gone from their configs; its
# values then stay in their hash (:func:`data_job_hash`), so no finished score or segment run is
# renamed and no paid answer orphaned (tests/test_identity.py), and editing the trainer presets
# never renames a score run again.
DATA_JOB_TRAINER: dict[str, Any] = {
    "learning_rate": 5e-06,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "weight_decay": 0.1,
    "warmup_ratio": 0.1,
    "lr_scheduler_type": "cosine",
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "max_grad_norm": 1.0,
    "max_seq_length": 2048,
    "shuffle": "once",
    "bf16": None,
    "gradient_checkpointing": True,
}
DATA_JOB_TRAINER_FOR_MODEL: dict[str, dict[str, Any]] = {  # by model.name
    "tiny": {
        "learning_rate": 0.001,
        "max_seq_length": 160,
        "gradient_checkpointing": False,
        "save_steps": 50,
        "logging_steps": 20,
    },
}


def data_job_hash(*, _root_: DictConfig) -> str:
    """:func:`config_hash` of a score.py or segment.py job, with the trainer node those jobs
    composed until 0.2 (:data:`DATA_JOB_TRAINER`) put back, as their run names have hashed it."""
    container = OmegaConf.to_container(_root_, resolve=False)
    assert isinstance(container, dict)
    # trainer/for_model/<option> was merged by the model *option*: tiny's is the from-scratch
    # model (a hub directory that happens to be named "tiny" never had it)
    name = OmegaConf.select(_root_, "model.name", default=None)
    loader = OmegaConf.select(_root_, "model.loader._target_", default=None)
    own = DATA_JOB_TRAINER_FOR_MODEL.get(str(name), {})
    if loader != "phasedsft.models.scratch_llama":
        own = {}
    container["trainer"] = {**DATA_JOB_TRAINER, **own}
    return sha256_json(semantic_part(container))[:8]


# Parts of a training run's saved config left out of its comparison identity (what makes
# finished runs comparable, :func:`comparison_identity`): the ordering (what a sweep compares),
# in-run evaluation (eval, judge) and what does not change the weights (NON_SEMANTIC_KEYS; the
# scorer's spending settings; trainer bookkeeping).
COMPARISON_SKIP = (*NON_SEMANTIC_KEYS, "ordering", "eval", "judge")
TRAINER_BOOKKEEPING_KEYS = (
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "dataloader_num_workers",
    "per_device_eval_batch_size",
)


def comparison_identity(saved: dict[str, Any]) -> dict[str, Any]:
    """What makes finished runs comparable: a run's saved config (resolved, plain) but the
    ordering and what does not change the weights (:data:`COMPARISON_SKIP`,
    :data:`TRAINER_BOOKKEEPING_KEYS`), read as :func:`semantic_part` reads it (a run saved
    before an option existed, or before a component moved, compares the same)."""
    ident = semantic_part(saved, COMPARISON_SKIP)
    if isinstance(ident.get("trainer"), dict):
        for key in TRAINER_BOOKKEEPING_KEYS:
            ident["trainer"].pop(key, None)
    return {str(k): v for k, v in ident.items()}
