"""Config nodes checked against what they call, before a job does anything.

The schemas (``phasedsft/config.py``) check every key Hydra composes except inside the nodes
that name a ``_target_`` (a dataset's ``source``, a model's ``loader``, ...): those are
checked here against the signature of what they call, so a misspelt key in a user's own
dataset option (``pth:``, ``fromat:``) or a value left unset (``path: ???``) is a plain error
naming the key, its file's node and the keys it takes, instead of a traceback mid-job.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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
