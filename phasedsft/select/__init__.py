"""Which examples to train on (``selection=...``), applied after scoring and before segmentation
and ordering: the rules (:mod:`.rules`), their schemas (:mod:`.config`) and the one call the
jobs make (:func:`select`). docs/selection.md: each rule, its paper, the test that checks it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from phasedsft.records import DataError, Example
from phasedsft.select.rules import SCORE, Rule, Selection, Tokens, check_rule

log = logging.getLogger(__name__)


def rule_of(node: Any) -> Rule | None:
    """The configured rule (``cfg.selection``), or None for ``selection=none``."""
    if node is None:
        return None
    from hydra.utils import instantiate

    return check_rule(instantiate(node))


def needs_scores(rule: Rule | None) -> bool:
    """Does the rule read the difficulty score (so the run's scorer must score first)?"""
    return rule is not None and SCORE in rule.columns()


def select(
    rule: Rule, examples: Sequence[Example], tokens: Tokens | None = None
) -> tuple[list[Example], dict[str, Any]]:
    """The examples ``rule`` keeps, in data order, and the record of it (rule, counts, ids)."""
    chosen = rule.select(examples, tokens)
    log.info("%s", chosen.line())
    if examples and chosen.kept == 0:
        raise DataError(f"the selection keeps no example of {len(examples)}: {chosen.line()}")
    return chosen.apply(examples), {**chosen.record(examples), "line": chosen.line()}


__all__ = ["Rule", "Selection", "Tokens", "needs_scores", "rule_of", "select"]
