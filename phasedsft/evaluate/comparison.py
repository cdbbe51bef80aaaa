"""The comparison type: one candidate checkpoint against its group's baseline on one test set.

What :mod:`.run` builds and :mod:`.report` and :mod:`.seeds` read (below both, so neither
imports the other for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phasedsft.evaluate.folding import LengthView, WinRate


@dataclass
class Comparison:
    """One candidate checkpoint against its group's baseline on one test set."""

    group: tuple[str, str, int]  # dataset, model, seed
    ordering: str
    run: str
    stage_index: int
    n_stages: int
    eval_set: str
    baseline: str
    result: WinRate
    categories: dict[str, dict[str, WinRate]] = field(default_factory=dict)
    accuracy: dict[str, float] | None = None  # known-answer sets: candidate, baseline
    # known-answer sets: {"level": {"3": {"candidate": 0.4, "baseline": 0.2, "n": 12}}}
    category_accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    authors: WinRate | None = None  # the same items under rule=authors (their script's figure)
    lengths: LengthView | None = None  # answer lengths (A = candidate, B = baseline)
    # the candidate run's identity with its seed set aside (:func:`.seeds.seed_free`), hashed:
    # equal for the same comparison under another seed (None: compare by group label)
    seeds_key: str | None = None
    items_sha: str | None = None  # the test items as judged (ids, questions, references)
    judge: str | None = None  # the judge's name

    @property
    def row(self) -> tuple[str, str, int, str, int]:
        return (*self.group, self.ordering, self.stage_index)
