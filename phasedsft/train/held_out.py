"""Evaluation that runs inside a training run: held-out loss and judged answers.

After each stage the recipe asks the Trainer for the held-out loss, overall and per
difficulty level (see :func:`eval_datasets`). At the end it generates greedy answers
for the held-out set with the final weights and lets the judge mark them, reporting
accuracy per difficulty level and per task family.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from phasedsft.judging import MarksAnswers  # the judge contract, shared with evaluate
from phasedsft.prompts import Encoded, PromptTemplate, pad_batch
from phasedsft.records import Example
from phasedsft.train.stage import SequenceDataset


def level_of(ex: Example) -> str:
    level = ex.meta.get("level", ex.score)
    return f"level{int(level)}" if level is not None else "all"


def eval_datasets(
    examples: Sequence[Example], encoded: Mapping[str, Encoded], by_task: bool = False
) -> dict[str, SequenceDataset]:
    """Held-out sets for the Trainer: ``all`` plus one per difficulty level when levels are known
    (and, ``by_task``, one per task family: ``task-<name>``)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for ex in examples:
        if ex.id in encoded:
            groups["all"].append(ex.id)
            if (name := level_of(ex)) != "all":
                groups[name].append(ex.id)
            if by_task and ex.meta.get("task"):
                groups[f"task-{ex.meta['task']}"].append(ex.id)
    return {name: SequenceDataset(encoded, ids) for name, ids in sorted(groups.items())}


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers, batched with left padding, decoded without special tokens."""
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="generate", unit="batch"):
        chunk = examples[start : start + batch_size]
        prompts = [{"input_ids": template.split_ids(ex, tokenizer)[0]} for ex in chunk]
        batch = pad_batch(prompts, tokenizer.pad_token_id, side="left")
        input_ids = torch.tensor(batch["input_ids"], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.tensor(batch["attention_mask"], device=device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in out[:, input_ids.shape[1] :]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True))
    return answers


EVALUATE_PACKAGE = "phasedsft.evaluate."  # pairwise judges: evaluate.py's, never imported here


def marking_judge(node: Any) -> MarksAnswers | None:
    """The configured judge if it marks answers right or wrong (``phasedsft.judging``'s
    reference judge, or a user's own :class:`MarksAnswers`); ``None`` for a judge that compares
    two models (evaluate.py's: recognised by its ``_target_``, and never imported by training)."""
    from hydra.utils import instantiate

    from phasedsft.identity import current_target

    if current_target(str(node.get("_target_", ""))).startswith(EVALUATE_PACKAGE):
        return None
    judge = instantiate(node)
    return judge if isinstance(judge, MarksAnswers) else None


def judge_answers(
    judge: MarksAnswers, examples: Sequence[Example], answers: Sequence[str]
) -> dict[str, Any]:
    """Accuracy overall, per difficulty level and per task family, plus every item."""
    items: list[dict[str, Any]] = []
    by: dict[str, list[bool]] = defaultdict(list)
    for ex, answer in zip(examples, answers, strict=True):
        ok = bool(judge.correct(answer, ex.output))
        items.append(
            {
                "id": ex.id,
                "level": level_of(ex),
                "task": ex.meta.get("task"),
                "answer": answer,
                "reference": ex.output,
                "correct": ok,
            }
        )
        by["all"].append(ok)
        by[level_of(ex)].append(ok)
        if ex.meta.get("task"):
            by[f"task:{ex.meta['task']}"].append(ok)
    accuracy = {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(by.items())}
    return {"judge": judge.name, "accuracy": accuracy, "items": items}
