"""Config nodes checked against what they call, and numbers against their ranges, before a
job does anything (:func:`check_config`, run by every entrypoint through ``cli.plain_errors``).

The schemas (``phasedsft/config.py``) check every key Hydra composes except inside the nodes
that name a ``_target_`` (a dataset's ``source``, a model's ``loader``, ...): those are
checked here against the signature of what they call, so a misspelt key in a user's own
dataset option (``pth:``, ``fromat:``) or a value left unset (``path: ???``) is a plain error
naming the key, its file's node and the keys it takes, instead of a traceback mid-job.

Every number is checked against the range its option declares beside the code that reads
it (:mod:`phasedsft.ranges`): ``error: scorer.concurrency=0: must be >= 1 (requests in
flight at once)``. Thresholds must fall inside the scores' range, named by value.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from phasedsft.ranges import Range, nested_schemas, ranges_of, show_value
from phasedsft.records import UserError

# Hydra's own keys in a _target_ node, not arguments of the callable
HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_convert_", "_partial_", "_args_"})
EXAMPLES = {"path": "=data/train.jsonl"}  # how the commonest unset value is set


class ConfigError(UserError, ValueError):
    """A key the callable does not take, or a value that must be set and is not."""


def target_nodes(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node under ``node`` (itself included) that names a ``_target_``, with its key."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for k in node:
            name = str(k)
            if not OmegaConf.is_missing(node, name) and not _is_interpolation(node, name):
                yield from target_nodes(node[name], f"{key}.{name}" if key else name)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_missing(node, i):
                yield from target_nodes(node[i], f"{key}[{i}]")


def _is_interpolation(node: DictConfig, key: str) -> bool:
    return OmegaConf.is_interpolation(node, key)


def _callable(target: str) -> Any:
    from hydra.utils import get_method

    try:
        return get_method(target)
    except Exception:  # a target that does not import fails in Hydra's own words later
        return None


def check_node(key: str, node: DictConfig) -> None:
    """One ``_target_`` node: every key an argument its callable takes, every value set."""
    unset = [str(k) for k in node if OmegaConf.is_missing(node, k)]
    if unset:
        name = f"{key}.{unset[0]}" if key else unset[0]
        raise ConfigError(
            f"{name} is not set: add {name}{EXAMPLES.get(unset[0], '=...')} to the command, "
            "or set it in the config file"
        )
    target = node.get("_target_")
    fn = _callable(str(target)) if isinstance(target, str) else None
    if fn is None:
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [str(k) for k in node if str(k) not in HYDRA_KEYS and str(k) not in params]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, takes, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        where = f"{key}.{bad}" if key else bad
        raise ConfigError(
            f"{where}: {target} takes no argument '{bad}' ({hint}it takes: {', '.join(takes)})"
        )


def check_targets(cfg: Any, roots: Sequence[str] | None = None) -> None:
    """Check every ``_target_`` node of ``cfg`` (under ``roots`` only, when given)."""
    if not isinstance(cfg, DictConfig):
        return
    keys = [str(k) for k in cfg if str(k) != "hydra"] if roots is None else list(roots)
    for root in keys:
        if root not in cfg or OmegaConf.is_missing(cfg, root) or _is_interpolation(cfg, root):
            continue
        for key, node in target_nodes(cfg[root], root):
            check_node(key, node)


def check_config(cfg: Any) -> None:
    """Everything a job checks before it starts: ``_target_`` keys, ranges, thresholds."""
    check_targets(cfg)
    check_ranges(cfg)
    check_thresholds(cfg)


# ------------------------------------------------------------------ ranges

# Ranges of options read by code in modules that declare none yet (their classes and
# functions take them as plain parameters): by ``_target_``, then option. They belong beside
# that code (``ranged(...)`` on the field, ``Annotated[..., Range(...)]`` on the parameter);
# a class's entry applies to its subclasses too.
_POS = Range(ge=1)
RANGES_ELSEWHERE: dict[str, dict[str, Range]] = {
    "phasedsft.data.graded.generate_suite": {
        "n": Range(ge=1, why="examples generated"),
        "seed": Range(ge=0),
        "level_weights": Range(ge=0, why="each level's share"),
        "exclude_seed": Range(ge=0),
        "exclude_n": Range(ge=0),
    },
    "phasedsft.data.loaders.load_data": {"score_range": Range(why="[low, high] of the scale")},
    "phasedsft.data.loaders.load_hub": {"score_range": Range(why="[low, high] of the scale")},
    "phasedsft.data.loaders.load_json": {"score_range": Range(why="[low, high] of the scale")},
    "phasedsft.data.loaders.load_jsonl": {"score_range": Range(why="[low, high] of the scale")},
    "phasedsft.models.scratch_llama": {
        "hidden_size": _POS,
        "intermediate_size": _POS,
        "num_hidden_layers": _POS,
        "num_attention_heads": _POS,
        "num_key_value_heads": _POS,
        "max_position_embeddings": Range(ge=1, why="the longest sequence the model takes"),
    },
    "phasedsft.models.train_bpe_tokenizer": {
        "vocab_size": Range(ge=1, why="tokens in the vocabulary"),
        "min_frequency": Range(ge=1),
    },
    "phasedsft.evaluate.generation.HFGenerator": {
        "max_new_tokens": Range(ge=1, why="answer tokens; null: each test set's own"),
        "max_length": Range(ge=1, why="prompt + answer tokens; null: each test set's own"),
        "batch_size": Range(ge=1, why="prompts per generate call"),
        "temperature": Range(ge=0, why="0: greedy"),
        "top_p": Range(gt=0, le=1, why="nucleus sampling mass"),
        "repetition_penalty": Range(gt=0, why="1: none"),
        "seed": Range(ge=0),
        "save_every": Range(ge=1, why="batches between saves of the answers file"),
    },
    "phasedsft.evaluate.generation.VLLMGenerator": {
        "gpu_memory_utilization": Range(gt=0, le=1, why="the share of GPU memory vLLM may use"),
        "tensor_parallel_size": Range(ge=1, why="GPUs per engine"),
    },
    "phasedsft.evaluate.generation.OpenAIGenerator": {
        "parse_retries": Range(ge=0, why="asking again when a reply is not a completion"),
        "start_timeout": Range(gt=0, why="seconds for a started server to answer"),
        "stop_timeout": Range(ge=0, why="seconds after SIGTERM before SIGKILL"),
        "context_length": Range(ge=1, why="the server's context; null: the checkpoint's"),
        "max_new_tokens": Range(ge=1, why="answer tokens; null: each test set's own"),
        "max_length": Range(ge=1, why="prompt + answer tokens; null: each test set's own"),
        "top_p": Range(gt=0, le=1, why="nucleus sampling mass"),
    },
    "phasedsft.train.curricula.Replay": {
        "fraction": Range(gt=0, le=1, why="earlier stages' examples per stage, as a share of it"),
        "seed": Range(ge=0),
    },
    "phasedsft.train.curricula.Paced": {
        "start": Range(gt=0, le=1, why="the share of the data available at the first step"),
        "full_at": Range(gt=0, le=1, why="the share of training after which all data is in"),
        "growth": Range(gt=1, why="geometric pacing: factor per increment"),
        "steps": Range(ge=1, why="step pacing: increments"),
        "epochs": Range(gt=0, why="passes over the data"),
        "seed": Range(ge=0),
    },
    "phasedsft.train.curricula.Interleaved": {
        "stages": Range(ge=1, why="difficulty stages, from 1"),
        "epochs": Range(gt=0, why="passes over the data"),
        "seed": Range(ge=0),
    },
    "phasedsft.train.curricula.SelfPaced": {"stages": Range(ge=1, why="difficulty stages, from 1")},
    "phasedsft.train.ordering.Phased": {"stages": Range(ge=1, why="difficulty stages, from 1")},
    "phasedsft.train.ordering.RandomPhased": {"stages": Range(ge=1, why="random stages, from 1")},
    "phasedsft.train.ordering.Sorted": {"seed": Range(ge=0)},
    "phasedsft.train.adapters.LoraSettings": {
        "r": Range(ge=1, why="the adapters' rank"),
        "alpha": Range(gt=0, why="LoRA scaling numerator"),
        "dropout": Range(ge=0, lt=1),
    },
}


def declared_ranges(fn: Any, target: str | None = None) -> dict[str, Range]:
    """The ranges a callable's options declare (its own, then :data:`RANGES_ELSEWHERE`)."""
    out = ranges_of(fn)
    names = [target] if target else []
    for klass in getattr(fn, "__mro__", ()):
        names.append(f"{klass.__module__}.{klass.__qualname__}")
    if fn is not None and not isinstance(fn, type):
        names.append(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}")
    for name in reversed(names):  # the most specific last
        out.update(RANGES_ELSEWHERE.get(name, {}))
    return out


def _node_schema(node: DictConfig) -> Any:
    try:
        kind = OmegaConf.get_type(node)
    except Exception:
        return None
    return kind if isinstance(kind, type) and kind is not dict else None


def node_ranges(
    node: DictConfig, schema: type | None = None
) -> tuple[dict[str, Range], dict[str, type]]:
    """The ranges of ``node``'s keys and the schemas of its nested nodes: from its typed
    schema (or ``schema``, the parent's declaration), and from its ``_target_``'s callable."""
    target = node.get("_target_") if "_target_" in node else None
    return _ranges_for(schema, _node_schema(node), target if isinstance(target, str) else None)


@functools.lru_cache(maxsize=512)
def _ranges_for(
    schema: type | None, kind: type | None, target: str | None
) -> tuple[dict[str, Range], dict[str, type]]:
    ranges: dict[str, Range] = {}
    nested: dict[str, type] = {}
    for k in (schema, kind):
        if k is not None:
            ranges.update(ranges_of(k))
            nested.update(nested_schemas(k))
    if target is not None:
        fn = _callable(target)
        ranges.update(declared_ranges(fn, target))
        nested.update(nested_schemas(fn))
    return ranges, nested


def numeric_options(
    cfg: Any, skip: Sequence[str] = ("hydra",)
) -> Iterator[tuple[str, Any, Range | None]]:
    """Every option of ``cfg`` whose value is a number, a list of numbers or a mapping to
    numbers (or an unset option that declares a range): key, value, its declared range."""
    from phasedsft.ranges import is_number

    def walk(node: Any, key: str, schema: type | None) -> Iterator[tuple[str, Any, Range | None]]:
        if not isinstance(node, DictConfig):
            return
        ranges, nested = node_ranges(node, schema)
        for k in node:
            name = str(k)
            full = f"{key}.{name}" if key else name
            if (not key and name in skip) or OmegaConf.is_missing(node, name):
                continue
            interp = _is_interpolation(node, name)
            if interp and name not in ranges:
                continue
            try:
                value = node[name]
            except Exception:  # an interpolation that resolves only in the job
                continue
            plain = (
                OmegaConf.to_container(value, resolve=True)
                if isinstance(value, (DictConfig, ListConfig))
                else value
            )
            numbers = (
                list(plain.values())
                if isinstance(plain, dict)
                else plain
                if isinstance(plain, list)
                else [plain]
            )
            if name in ranges:  # its range covers it whole (each value of a list or mapping)
                yield full, plain, ranges[name]
                continue
            if not isinstance(plain, dict) and numbers and all(is_number(v) for v in numbers):
                yield full, plain, None
            if isinstance(value, DictConfig) and not interp:
                yield from walk(value, full, nested.get(name))
            elif isinstance(value, ListConfig) and not interp:
                for i, item in enumerate(value):
                    yield from walk(item, f"{full}[{i}]", None)

    if isinstance(cfg, DictConfig):
        yield from walk(cfg, "", None)


def range_problem(value: Any, rng: Range) -> str | None:
    """Why ``value`` (a number, or each number of a list or mapping) is out of ``rng``."""
    values = list(value.values()) if isinstance(value, dict) else value
    if isinstance(values, list):
        for v in values:
            problem = rng.problem(v)
            if problem is not None:
                return f"{show_value(v)} {problem}" if len(values) > 1 else problem
        return None
    return rng.problem(value)


def check_ranges(cfg: Any) -> None:
    """Every number of ``cfg`` within its declared range, else :class:`ConfigError` naming
    the key, the value and what it means: ``scorer.concurrency=0: must be >= 1 (...)``."""
    for key, value, rng in numeric_options(cfg):
        if rng is None:
            continue
        problem = range_problem(value, rng)
        if problem is not None:
            raise ConfigError(f"{key}={show_value(value)}: {problem}")


# ------------------------------------------------------------------ thresholds

MANUAL = "phasedsft.segment.methods.ManualThresholds"
DEFAULT_SCALE = (1.0, 5.0)


def score_scale(cfg: DictConfig) -> tuple[float, float] | None:
    """The scores' range: ``dataset.source.score_range`` where the source has one (None: any
    number, nothing to check against), else 1-5."""
    source = OmegaConf.select(cfg, "dataset.source", default=None)
    if isinstance(source, DictConfig) and "score_range" in source:
        scale = source.score_range
        if scale is None:
            return None
        try:
            low, high = (float(x) for x in scale)
        except (TypeError, ValueError):
            return None  # the loader says what is wrong with it
        return low, high
    return DEFAULT_SCALE


def threshold_lists(cfg: DictConfig) -> Iterator[tuple[str, Any]]:
    """Every list of thresholds in ``cfg``: ManualThresholds nodes and score.py's plot lines."""
    for root in [str(k) for k in cfg if str(k) != "hydra"]:
        if OmegaConf.is_missing(cfg, root) or _is_interpolation(cfg, root):
            continue
        if root == "thresholds" and isinstance(cfg[root], ListConfig):
            yield root, cfg[root]
            continue
        for key, node in target_nodes(cfg[root], root):
            if node.get("_target_") == MANUAL and "thresholds" in node:
                yield f"{key}.thresholds", node.thresholds


def check_thresholds(cfg: Any) -> None:
    """Each threshold inside the scores' range (``> low`` and ``<= high``): one outside would
    leave a stage empty, so say so by value before anything runs."""
    if not isinstance(cfg, DictConfig):
        return
    scale = score_scale(cfg)
    if scale is None:
        return
    low, high = scale
    for key, values in threshold_lists(cfg):
        try:
            ts = [float(t) for t in values]
        except (TypeError, ValueError):
            continue
        for t in ts:
            if not low < t <= high:
                side = "below" if t <= low else "above"
                raise ConfigError(
                    f"{key}={show_value(ts)}: {show_value(t)} is outside the scores' range "
                    f"{show_value(low)}-{show_value(high)} (a stage {side} it would be empty); "
                    f"each threshold must be > {show_value(low)} and <= {show_value(high)}"
                )
