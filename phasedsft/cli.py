"""What the entrypoints share: user errors in plain words, without a traceback.

Bad input ends a job with ``error: ...`` and exit code 2, also when Hydra's ``instantiate``
wrapped the error; a bad row names the exact override that skips and counts bad rows for
the data source that failed, as this job's config spells it. Ctrl-C ends it with what was
kept and exit code 130.
"""

from __future__ import annotations

import functools
import gc
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from phasedsft.config_check import check_config
from phasedsft.nospace import is_no_space, no_space_error
from phasedsft.records import DataError, UserError

F = TypeVar("F", bound=Callable[..., Any])

# DataError, ModelError, PrecisionError, AuditError, ...: whatever the steps define on UserError
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


INTERRUPTED = (
    "interrupted: everything finished so far is kept (scores and judgments cached, answers "
    "saved, stages checkpointed); rerun the same command to continue"
)
# what each entrypoint keeps (Hydra's job name is the script's name)
KEPT = {
    "score": "every answer received is cached",
    "train": "finished stages are kept, and the stage in progress continues from its last "
    "Trainer checkpoint (trainer.save_steps)",
    "evaluate": "answers are saved as they come (generator=hf|vllm: every generator.save_every "
    "batches; generator=authors: every generator.save_every prompts; generator=openai: each "
    "answer) and every judge reply is cached",
    "segment": "segment.py writes each file whole, so nothing half-written is left",
}


def interrupted_message(job: str | None = None) -> str:
    kept = KEPT.get(job or "")
    if kept is None:
        return INTERRUPTED
    return f"interrupted: everything finished so far is kept ({kept}); rerun the same command to continue"


def _job_name() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().job.name) if HydraConfig.initialized() else None
    except Exception:  # outside a Hydra job
        return None


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind ``e``, also when a library wrapped it (Hydra's ``instantiate``).

    A write that found the disk full (``OSError`` ENOSPC, SQLite's "database or disk is full",
    torch's or safetensors' failed write) is one too: ``no space left on <path>``
    (:func:`phasedsft.nospace.no_space_error`)."""
    seen: set[int] = set()
    chain: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, USER_ERRORS):
            return cause
        seen.add(id(cause))
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if is_no_space(cause):
            return no_space_error(cause)
    return None


_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.M)


def instantiated_at(e: BaseException) -> str | None:
    """The config key of the node whose ``instantiate`` raised ``e`` (Hydra names it
    ``full_key``); the innermost one when several wrap each other."""
    key, seen = None, set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if cause.__class__.__name__ == "InstantiationException":
            m = _FULL_KEY.search(str(cause))
            if m:
                key = m.group(1)
        cause = cause.__cause__ or cause.__context__
    return key


def skip_hint(cfg: Any, full_key: str | None) -> str | None:
    """The override that skips bad rows of the data source at ``full_key``, as this job's
    config takes it (``+key=...`` where the node has no ``on_error`` yet); ``None`` when the
    source is not part of this job's config (evaluate.py reading a training run's data)."""
    if not full_key or not isinstance(cfg, DictConfig):
        return None
    node = OmegaConf.select(cfg, full_key, default=None)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    plus = "" if "on_error" in node else "+"
    return f"{plus}{full_key}.on_error=skip"


def user_error_message(e: BaseException, found: BaseException, cfg: Any = None) -> str:
    """``found`` (the user error behind ``e``) in words; a bad row with this job's override."""
    if isinstance(found, DataError) and found.reason is not None:
        full_key = instantiated_at(e)
        override = skip_hint(cfg, full_key)
        if override:
            return f"{found.reason} (set {override} to skip and count bad rows)"
        if full_key:  # read through another config (a training run's): no override here
            return f"{found.reason} (fix the row in the file)"
    return str(found)


def plain_errors(fn: F) -> F:
    """Bad input and unavailable models end the job with ``error: ...`` and exit code 2;
    Ctrl-C with what was kept and exit code 130, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if args and isinstance(args[0], DictConfig):  # misspelt or unset keys of _target_ nodes
                check_config(args[0])
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print(f"\n{interrupted_message(_job_name())}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except Exception as e:
            found = user_error(e)
            if found is None:
                raise
            logging.getLogger("phasedsft").debug("user error", exc_info=True)
            cfg = args[0] if args else None
            print(f"error: {user_error_message(e, found, cfg)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        finally:
            end_distributed()

    return wrapper  # type: ignore[return-value]


def end_distributed() -> None:
    """Tear down the process group of a multi-process job before the interpreter exits.

    Left to interpreter shutdown, a rank can abort in gloo's or NCCL's threads ("terminate
    called without an active exception", SIGABRT) instead of exiting with its code: seen on a
    rank that had just printed its plain error, which then exited -6, not 2.
    """
    dist = sys.modules.get("torch.distributed")  # never imported for a job that did not use it
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        dist.destroy_process_group()
        release_deepspeed_groups()
    except Exception as e:  # the job's own outcome matters more than a failed teardown
        logging.getLogger("phasedsft").debug("process group teardown failed: %s", e)


def release_deepspeed_groups() -> None:
    """Drop DeepSpeed's module-level handles on the destroyed process groups and collect them
    now, while the interpreter is whole.

    ``destroy_process_group`` shuts the groups down but DeepSpeed's globals (its comm backend,
    ``deepspeed.utils.groups``) keep the objects alive until interpreter finalization, where a
    gloo group's destructor can take the GIL of a dying interpreter and abort: the SIGABRT
    ("terminate called without an active exception") of a ZeRO-3 rank that had finished its
    run, seen in CI on one rank of two, now and then.
    """
    comm = sys.modules.get("deepspeed.comm.comm")
    groups = sys.modules.get("deepspeed.utils.groups")
    if comm is None and groups is None:
        return
    if comm is not None:
        comm.cdb = None  # type: ignore[attr-defined]
    if groups is not None:
        import torch.distributed as dist

        for name, value in list(vars(groups).items()):
            if isinstance(value, dist.ProcessGroup):
                setattr(groups, name, None)
            elif isinstance(value, dict) and any(
                isinstance(v, dist.ProcessGroup) for v in value.values()
            ):
                value.clear()  # groups by name or ranks
    gc.collect()


REMOVED_IN = "0.3"  # the release that drops the old command names (CHANGELOG.md)


def old_command_name(old: str, new: str) -> None:
    """Say on stderr that ``python -m old`` is deprecated in favour of ``python -m new``."""
    print(
        f"note: python -m {old} is deprecated and goes in phasedsft {REMOVED_IN}; "
        f"use python -m {new} (same options, same output)",
        file=sys.stderr,
        flush=True,
    )
