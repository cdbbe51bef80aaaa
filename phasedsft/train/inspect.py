"""See what will be trained: ``python train.py inspect=N`` (``inspect_stage=K``, ``inspect_tokens=true``).

Each stage's first N examples, in the order the stage will feed them, are printed as the model
will read them (the token ids decoded, special tokens included) with the tokens the loss is on
marked: green on a terminal (as axolotl's ``check_example_labels`` colours them), else between
``[[`` and ``]]``. ``inspect_tokens=true`` adds one line per token (position, id, token, label),
as LLaMA-Factory's ``print_dataset_example`` shows ``input_ids`` beside ``label_ids``. The job
then stops as ``plan_only=true`` does: its plan line is printed, nothing is trained or written.

:func:`marked_pieces` and :func:`render` are pure: the text of an :class:`Encoded` cut where the
loss mask changes, the trained pieces exactly the decoded label tokens.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TextIO

from phasedsft.prompts import IGNORE_INDEX, Encoded
from phasedsft.records import Example, UserError

PLAIN = ("[[", "]]")  # around each run of trained tokens when the output is not a terminal
GREEN = ("\033[32m", "\033[0m")


def label_runs(enc: Encoded) -> list[tuple[int, int, bool]]:
    """``(start, end, trained)`` for each maximal run of tokens with the same loss mask."""
    runs: list[tuple[int, int, bool]] = []
    for i, label in enumerate(enc.labels):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][2] == trained:
            runs[-1] = (runs[-1][0], i + 1, trained)
        else:
            runs.append((i, i + 1, trained))
    return runs


def marked_pieces(enc: Encoded, tokenizer: Any) -> list[tuple[str, bool]]:
    """The decoded text of ``enc.input_ids`` in pieces, each with whether the loss is on it.

    A piece is the text its tokens add to the decoding of everything before them, so the pieces
    join to exactly ``tokenizer.decode(input_ids)`` (spaces a tokenizer attaches to a token's
    start stay in place); where a run boundary splits a character, the run is decoded alone.
    """
    pieces: list[tuple[str, bool]] = []
    before = ""
    for start, end, trained in label_runs(enc):
        text = str(tokenizer.decode(enc.input_ids[:end]))
        if text.startswith(before) and not before.endswith("\ufffd"):
            piece = text[len(before) :]
        else:
            piece = str(tokenizer.decode(enc.input_ids[start:end]))
        pieces.append((piece, trained))
        before = text
    return pieces


def render(enc: Encoded, tokenizer: Any, mark: tuple[str, str] = PLAIN) -> str:
    """The example's text with each run of trained tokens between ``mark[0]`` and ``mark[1]``."""
    return "".join(
        f"{mark[0]}{piece}{mark[1]}" if trained else piece
        for piece, trained in marked_pieces(enc, tokenizer)
    )


def token_table(enc: Encoded, tokenizer: Any) -> list[str]:
    """One line per token: position, id, the token's text (escaped), its label (-100: no loss)."""
    lines = [f"{'pos':>6} {'id':>8}  {'token':<24} label"]
    for pos, (tid, label) in enumerate(zip(enc.input_ids, enc.labels, strict=True)):
        token = repr(str(tokenizer.decode([tid])))
        flag = "  <- loss" if label != IGNORE_INDEX else ""
        lines.append(f"{pos:>6} {tid:>8}  {token:<24} {label}{flag}")
    return lines


@dataclass(frozen=True)
class StageView:
    """A stage as the inspection shows it: its name, its examples and the order it feeds them."""

    name: str
    ids: Sequence[str]
    order: Sequence[str]


class Tokens(NamedTuple):
    total: int  # tokens of the examples, as encoded (truncated to trainer.max_seq_length)
    target: int  # those the loss is on (labels != -100)


def stage_tokens(ids: Sequence[str], encoded: Mapping[str, Encoded]) -> Tokens:
    """Tokens and target tokens over one pass of a stage's examples."""
    return Tokens(sum(encoded[i].n_tokens for i in ids), sum(encoded[i].n_target for i in ids))


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def use_color(out: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return bool(getattr(out, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def show(
    stages: Sequence[StageView],
    examples: Mapping[str, Example],
    encoded: Mapping[str, Encoded],
    tokenizer: Any,
    n: int,
    *,
    stage: int | None = None,
    tokens: bool = False,
    out: TextIO | None = None,
) -> None:
    """Print the first ``n`` distinct examples each stage feeds (or only stage ``stage``,
    1-based), the tokens in the loss marked."""
    out = out or sys.stdout
    if n < 0:
        raise UserError(f"inspect must be a number of examples >= 0, got {n}")
    if stage is not None and not 1 <= stage <= len(stages):
        raise UserError(f"inspect_stage={stage}: this ordering has stages 1 to {len(stages)}")
    mark = GREEN if use_color(out) else PLAIN
    which = f"stage {stage}" if stage is not None else "each stage"
    print(
        f"inspect: {mark[0]}tokens in the loss{mark[1]}; the first {plural(n, 'example')} "
        f"{which} feeds",
        file=out,
    )
    for k, st in enumerate(stages, start=1):
        if stage is not None and k != stage:
            continue
        total, target = stage_tokens(st.ids, encoded)
        print(
            f"\n=== stage {k}/{len(stages)} {st.name}: {plural(len(st.ids), 'example')}, "
            f"{target} target tokens of {total}",
            file=out,
        )
        shown = list(dict.fromkeys(st.order))[:n]
        for j, ex_id in enumerate(shown, start=1):
            counted, ex = encoded[ex_id], examples.get(ex_id)
            # tokens read once (a plan's Counted encodes them again on every read)
            enc = Encoded(counted.input_ids, counted.labels, counted.truncated)
            score = f", score {ex.score:g}" if ex is not None and ex.score is not None else ""
            cut = ", output truncated" if enc.truncated else ""
            print(
                f"--- example {j}/{len(shown)} id={ex_id}{score}: {enc.n_tokens} tokens, "
                f"{enc.n_target} target{cut}",
                file=out,
            )
            print(render(enc, tokenizer, mark), file=out)
            if tokens:
                print("\n".join(token_table(enc, tokenizer)), file=out)
    out.flush()
