"""Pairwise judgment files as other tools write them: read into :class:`~.winrate.Judged`
items, and written beside our own by ``evaluate.py``.

    replay      ours (:func:`~.winrate.read_replay`): JSONL, one object per item: ``id``,
                ``review_ab`` (answer A shown first), ``review_ba``; optional ``instruction``,
                ``answer_a``, ``answer_b``, ``category``.
    fastchat    FastChat llm_judge pairwise judgments (``model_judgment/<judge>_pair.jsonl``):
                JSONL, per line ``question_id``, ``model_1``, ``model_2``, ``g1_winner``,
                ``g2_winner``, ``judge``, ``turn`` (+ ``g1_judgment``, ``g2_judgment``: the raw
                replies). Game g1 shows model_1's answer first, g2 the answers swapped; a
                winner names a *model* ("model_1", "model_2"), or is "tie" or "error".
                FastChat's ``show_result.py`` drops rows with an "error" and counts a win only
                when both games name the same model: our ``--rule fastchat``. A row with an
                "error" is left out here too (counted as unparsed). One item per (question,
                turn); in a file of several turns (MT-bench) each item also gets the
                category ``turn`` (``--by turn``).
    cherry      the GPT-4 review logs of AlpaGasus / Cherry LLM: one JSON document,
                ``{"Meta_Info": {...}, "data": [...]}`` (or the bare list), per item
                ``Answer1``, ``Answer2``, ``review`` (Answer1 shown first: its first line is
                "score1 score2"), ``review_reverse`` (Answer2 shown first). A = Answer1; the
                raw reviews go through the same parsers as ours, so every rule applies.
    alpacaeval  AlpacaEval annotations (``annotations.json``): one JSON list, per item
                ``instruction``, ``output_1``, ``generator_1`` (the baseline), ``output_2``,
                ``generator_2`` (the model compared), ``annotator``, ``preference``: 1 =
                output_1 preferred, 2 = output_2 preferred, 1.5 (or the old 0) a draw, null =
                no annotation (left out, as AlpacaEval does). One preference per item,
                already decided: ``--rule`` does not change it. A weighted annotator's value
                between 1 and 2 counts as a win for the side it leans to, a draw at 1.5
                (AlpacaEval's "discrete" win rate).

FastChat and AlpacaEval files name their models: A and B are the file's only pair (A =
model_1, or generator_2), or the two given with ``--models A B``. Their verdicts carry no
scores, so ``--rule authors`` (which re-parses "score score" lines) does not apply to them.

Every error names the file and the line (for a JSON document: the line its item starts on).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.evaluate.winrate import (
    AUTHORS,
    LOSE,
    TIE,
    WIN,
    Judged,
    ReplayError,
    checked_category,
    json_object,
    judge_item,
    optional_text,
    outcome_of,
    read_replay,
    verdict,
    words,
)

FORMATS = ("replay", "fastchat", "cherry", "alpacaeval")
NO_SCORES = ("fastchat", "alpacaeval")  # verdicts only: rule=authors cannot re-parse them
FASTCHAT_FIELDS = ("question_id", "model_1", "model_2", "g1_winner", "g2_winner")
FASTCHAT_WINNERS = ("model_1", "model_2", "tie", "error")
ALPACAEVAL_FIELDS = ("generator_1", "generator_2", "preference")
PREFERENCE = {WIN: 2.0, LOSE: 1.0, TIE: 1.5}  # A = output_2 (generator_2)


@dataclass
class Judgments:
    """What a judgment file holds: its format, the items, the models it compares (A, B)."""

    format: str
    items: list[Judged]
    models: tuple[str, str] | None = None


# ------------------------------------------------------------------ reading


def read_judgments(
    path: str | Path, fmt: str | None = None, models: Sequence[str] | None = None
) -> Judgments:
    """Read a judgment file of any format in :data:`FORMATS` (``None``: told from the content)."""
    p = Path(path)
    text = read_text(p)
    fmt = fmt or detect_format(p, text)
    if fmt not in FORMATS:
        raise ReplayError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if models is not None and fmt not in NO_SCORES:
        raise ReplayError(
            f"{p}: --models chooses the models of a fastchat or alpacaeval file; "
            f"a {fmt} file compares answer A with answer B"
        )
    if fmt == "replay":
        return Judgments(fmt, read_replay(p))
    if fmt == "cherry":
        return Judgments(fmt, read_cherry(p, text))
    if fmt == "fastchat":
        return read_fastchat(p, text, models)
    return read_alpacaeval(p, text, models)


def read_text(p: Path) -> str:
    if not p.is_file():
        raise ReplayError(f"{p}: file not found")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        raise ReplayError(
            f"{p}:{line}: not UTF-8 text (byte {e.start - start + 1} of the line)"
        ) from None


def detect_format(p: Path, text: str) -> str:
    """The format, from the first line (JSONL) or from the whole document (JSON)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    row = _loads(first)
    if isinstance(row, dict):
        if "g1_winner" in row or "g2_winner" in row:
            return "fastchat"
        if "data" in row or "Meta_Info" in row:
            return "cherry"  # a review log written on one line
        if "score" in row and "model" in row:
            raise ReplayError(
                f"{p}:1: FastChat single-answer grades (model, score), not pairwise judgments: "
                "nothing to count wins in"
            )
        return "replay"
    doc = _loads(text) if first.strip()[:1] in ("{", "[") else None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return "cherry"
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        keys = doc[0]
        if "preference" in keys:
            return "alpacaeval"
        if "review" in keys or "review_reverse" in keys:
            return "cherry"
        if "output" in keys and "instruction" in keys:
            raise ReplayError(
                f"{p}: AlpacaEval model outputs (instruction, output, generator), not "
                "annotations: no preference to count"
            )
    if doc is None:
        return "replay"  # its reader names the line that is not JSON
    raise ReplayError(
        f"{p}: not a judgment file this command reads ({', '.join(FORMATS)}); "
        "name its format with --format"
    )


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_cherry(p: Path, text: str) -> list[Judged]:
    """An AlpaGasus / Cherry LLM review log: A = Answer1, ``review`` shows Answer1 first."""
    doc = _document(p, text)
    if isinstance(doc, dict) and not isinstance(doc.get("data"), list):
        raise ReplayError(f'{p}:1: a review log holds its items in a list under "data"')
    if not isinstance(doc, dict | list):
        raise ReplayError(f"{p}:1: expected a JSON object or list, got {type(doc).__name__}")
    items = []
    for i, (line, r) in enumerate(json_items(text, "data" if isinstance(doc, dict) else None)):
        where = f"{p}:{line}"
        if not isinstance(r, dict):
            raise ReplayError(f"{where}: item {i} is not a JSON object")
        missing = [k for k in ("review", "review_reverse") if k not in r]
        if missing:
            raise ReplayError(f"{where}: item {i} lacks field(s) {', '.join(missing)}")
        reviews = {k: optional_text(r, k, where) for k in ("review", "review_reverse")}
        answer = {k: optional_text(r, k, where) for k in ("Answer1", "Answer2")}
        items.append(
            judge_item(
                str(i),
                reviews["review"],
                reviews["review_reverse"],
                answer_a=answer["Answer1"],
                answer_b=answer["Answer2"],
            )
        )
    if not items:
        raise ReplayError(f"{p}: no items")
    return items


def read_fastchat(p: Path, text: str, models: Sequence[str] | None) -> Judgments:
    rows = [(where, _fastchat_row(row, where)) for where, row in _jsonl(p, text)]
    if not rows:
        raise ReplayError(f"{p}: no items")
    a, b = choose_pair(p, [(r["model_1"], r["model_2"]) for _, r in rows], models)
    chosen = [(where, r) for where, r in rows if {r["model_1"], r["model_2"]} == {a, b}]
    turns = len({r["turn"] for _, r in chosen}) > 1
    first_line: dict[tuple[str, int], str] = {}
    items = []
    for where, r in chosen:
        key = (str(r["question_id"]), r["turn"])
        if key in first_line:
            raise ReplayError(
                f"{where}: a second judgment of question {key[0]} turn {key[1]} for {a} vs "
                f"{b} (the first is at {first_line[key]})"
            )
        first_line[key] = where
        items.append(_fastchat_item(r, a, turns))
    return Judgments("fastchat", items, (a, b))


def _fastchat_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in FASTCHAT_FIELDS if k not in row]
    if missing:
        raise ReplayError(f"{where}: missing field(s) {', '.join(missing)}")
    for k in ("g1_winner", "g2_winner"):
        if row[k] not in FASTCHAT_WINNERS:
            raise ReplayError(
                f"{where}: {k} must be one of {', '.join(FASTCHAT_WINNERS)}; got {row[k]!r}"
            )
    for k in ("model_1", "model_2"):
        if not isinstance(row[k], str) or not row[k]:
            raise ReplayError(f"{where}: {k} must be a model's name, got {row[k]!r}")
    if row["model_1"] == row["model_2"]:
        raise ReplayError(f"{where}: model_1 and model_2 are both {row['model_1']!r}")
    turn = row.get("turn", 1)
    if not isinstance(turn, int) or isinstance(turn, bool):
        raise ReplayError(f"{where}: turn must be a whole number, got {turn!r}")
    for k in ("g1_judgment", "g2_judgment"):
        optional_text(row, k, where)
    return {**row, "turn": turn, "category": checked_category(row.get("category"), where)}


def _fastchat_item(r: dict[str, Any], a: str, turns: bool) -> Judged:
    """A's verdicts: g1 shows model_1 first, so for A = model_2 the A-first game is g2."""
    mine, other = ("model_1", "model_2") if r["model_1"] == a else ("model_2", "model_1")
    a_first, b_first = ("g1", "g2") if mine == "model_1" else ("g2", "g1")

    def seen_by_a(winner: str) -> str:
        return WIN if winner == mine else LOSE if winner == other else TIE

    errors = [
        f"{g}_winner is 'error' (the judge's reply named no winner)"
        for g in ("g1", "g2")
        if r[f"{g}_winner"] == "error"
    ]
    given = (
        None if errors else (seen_by_a(r[f"{a_first}_winner"]), seen_by_a(r[f"{b_first}_winner"]))
    )
    category = dict(r["category"] or {})
    if turns:
        category.setdefault("turn", r["turn"])
    qid = str(r["question_id"])
    return Judged(
        f"{qid}/turn{r['turn']}" if turns else qid,
        None,
        None,
        "; ".join(errors) or None,
        category,
        r.get(f"{a_first}_judgment"),
        r.get(f"{b_first}_judgment"),
        given=given,
    )


def read_alpacaeval(p: Path, text: str, models: Sequence[str] | None) -> Judgments:
    doc = _document(p, text)
    if not isinstance(doc, list):
        raise ReplayError(f"{p}:1: AlpacaEval annotations are a JSON list of objects")
    rows = []
    for i, (line, r) in enumerate(json_items(text)):
        where = f"{p}:{line}"
        rows.append((where, i, _alpacaeval_row(r, i, where)))
    if not rows:
        raise ReplayError(f"{p}: no items")
    a, b = choose_pair(p, [(r["generator_2"], r["generator_1"]) for _, _, r in rows], models)
    first_line: dict[str, str] = {}
    items = []
    for where, i, r in rows:
        if {r["generator_1"], r["generator_2"]} != {a, b}:
            continue
        item_id = str(r.get("id", i))
        if item_id in first_line:
            raise ReplayError(f"{where}: duplicate id {item_id!r} (first at {first_line[item_id]})")
        first_line[item_id] = where
        items.append(_alpacaeval_item(r, item_id, a))
    return Judgments("alpacaeval", items, (a, b))


def _alpacaeval_row(r: Any, i: int, where: str) -> dict[str, Any]:
    if not isinstance(r, dict):
        raise ReplayError(f"{where}: item {i} is not a JSON object")
    missing = [k for k in ALPACAEVAL_FIELDS if k not in r]
    if missing:
        raise ReplayError(f"{where}: item {i} lacks field(s) {', '.join(missing)}")
    for k in ("generator_1", "generator_2"):
        if not isinstance(r[k], str) or not r[k]:
            raise ReplayError(f"{where}: {k} must be a model's name, got {r[k]!r}")
    if r["generator_1"] == r["generator_2"]:
        raise ReplayError(f"{where}: generator_1 and generator_2 are both {r['generator_1']!r}")
    pref = r["preference"]
    if pref is not None and (not isinstance(pref, int | float) or isinstance(pref, bool)):
        raise ReplayError(f"{where}: preference must be a number or null, got {pref!r}")
    if pref is not None and math.isnan(pref):
        pref = None
    if pref is not None and pref != 0 and not 1 <= pref <= 2:
        raise ReplayError(
            f"{where}: preference must be between 1 (output_1 preferred) and 2 (output_2 "
            f"preferred), 1.5 or 0 for a draw, or null; got {pref:g}"
        )
    for k in ("output_1", "output_2"):
        optional_text(r, k, where)
    category = checked_category(r.get("category"), where)
    return {**r, "preference": pref, "category": category}


def _alpacaeval_item(r: dict[str, Any], item_id: str, a: str) -> Judged:
    a_is_2 = r["generator_2"] == a
    pref = r["preference"]
    if pref is None:
        outcome = None
    elif pref in (0, 1.5):
        outcome = TIE
    else:
        outcome = WIN if (pref > 1.5) == a_is_2 else LOSE
    out_a, out_b = ("output_2", "output_1") if a_is_2 else ("output_1", "output_2")
    return Judged(
        item_id,
        None,
        None,
        None if outcome else "preference is null (no annotation)",
        dict(r["category"] or {}),
        outcome=outcome,
        length_a=words(r.get(out_a)),
        length_b=words(r.get(out_b)),
    )


def choose_pair(
    p: Path, pairs: Sequence[tuple[str, str]], models: Sequence[str] | None
) -> tuple[str, str]:
    """(A, B): the ``models`` asked for, or the file's only pair as its first row orders it."""
    distinct: dict[frozenset[str], tuple[str, str]] = {}
    for pair in pairs:
        distinct.setdefault(frozenset(pair), pair)
    shown = ", ".join(f"{x} vs {y}" for x, y in list(distinct.values())[:6])
    if models is not None:
        a, b = models
        if frozenset((a, b)) not in distinct:
            raise ReplayError(f"{p}: no judgment compares {a} with {b}; the file compares {shown}")
        return a, b
    if len(distinct) > 1:
        raise ReplayError(
            f"{p}: judgments of {len(distinct)} model pairs ({shown}); choose one with "
            "--models MODEL_A MODEL_B"
        )
    return next(iter(distinct.values()))


def _jsonl(p: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{p}:{number}"
        yield where, json_object(line, where)


def _document(p: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReplayError(f"{p}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None


_WS = re.compile(r"[ \t\n\r]*")


def json_items(text: str, key: str | None = None) -> list[tuple[int, Any]]:
    """(line, value) of each element of a valid JSON document's list: the top-level list, or
    the list under ``key`` of the top-level object (its last occurrence, as ``json.loads``)."""
    dec = json.JSONDecoder()

    def skip(i: int) -> int:
        m = _WS.match(text, i)
        assert m is not None
        return m.end()

    i = skip(0)
    if key is not None:  # walk the object's members to the list under key
        found, i = i, skip(i + 1)
        while text[i] != "}":
            name, i = dec.raw_decode(text, i)
            i = skip(skip(i) + 1)  # past the ":"
            if name == key:
                found = i
            _, i = dec.raw_decode(text, i)
            i = skip(i)
            if text[i] == ",":
                i = skip(i + 1)
        i = found
    out: list[tuple[int, Any]] = []
    line, last = 1, 0
    i = skip(i + 1)  # past the "["
    while text[i] != "]":
        line, last = line + text.count("\n", last, i), i
        value, i = dec.raw_decode(text, i)
        out.append((line, value))
        i = skip(i)
        if text[i] == ",":
            i = skip(i + 1)
    return out


# ------------------------------------------------------------------ writing


def fastchat_rows(
    judged: Sequence[Judged], model_a: str, model_b: str, judge: str
) -> list[dict[str, Any]]:
    """FastChat pair judgments of A (model_1) against B (model_2): g1 shows A first.

    An order whose reply we could not parse is an "error" (FastChat's show_result.py then
    drops the row). ``judge`` is ``[judge name, "phasedsft"]``: the prompt was ours, not one
    of FastChat's; rows carry no timestamp (a rerun writes the same bytes) and add the
    item's ``category`` where it has one.
    """
    names = {WIN: "model_1", LOSE: "model_2", TIE: "tie", None: "error"}
    rows = []
    for j in judged:
        g1, g2 = _order_verdicts(j)
        row: dict[str, Any] = {
            "question_id": j.id,
            "model_1": model_a,
            "model_2": model_b,
            "g1_winner": names[g1],
            "g2_winner": names[g2],
            "judge": [judge, "phasedsft"],
            "g1_judgment": j.review_ab or "",
            "g2_judgment": j.review_ba or "",
            "turn": 1,
        }
        if j.category:
            row["category"] = j.category
        rows.append(row)
    return rows


def _order_verdicts(j: Judged) -> tuple[str | None, str | None]:
    """A's verdict when shown first and when shown second (``None``: no parsed scores)."""
    if j.given is not None:
        return j.given
    first = verdict(*j.scores_ab) if j.scores_ab is not None else None
    second = verdict(j.scores_ba[1], j.scores_ba[0]) if j.scores_ba is not None else None
    return first, second


def alpacaeval_rows(
    judged: Sequence[Judged],
    rule: str,
    *,
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    model_a: str,
    model_b: str,
    annotator: str,
    dataset: str,
) -> list[dict[str, Any]]:
    """AlpacaEval annotations: output_1 / generator_1 the baseline (B), output_2 /
    generator_2 the candidate (A); ``preference`` the item's outcome under ``rule`` (2: A
    won, 1: B won, 1.5: a tie), null where the item is left out (or void, rule=authors)."""
    rows = []
    for j, q, a, b in zip(judged, questions, answers_a, answers_b, strict=True):
        outcome = outcome_of(j, rule)
        row: dict[str, Any] = {
            "id": j.id,
            "dataset": dataset,
            "instruction": q,
            "output_1": b,
            "generator_1": model_b,
            "output_2": a,
            "generator_2": model_a,
            "annotator": annotator,
            "preference": None if outcome is None else PREFERENCE[outcome],
        }
        if j.category:
            row["category"] = j.category
        rows.append(row)
    return rows


def jsonl_text(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def json_text(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), ensure_ascii=False, indent=1) + "\n"


def rule_applies(fmt: str, rule: str) -> str | None:
    """Why ``rule`` cannot be used on a file of ``fmt`` (``None``: it can)."""
    if rule == AUTHORS and fmt in NO_SCORES:
        return (
            "--rule authors re-parses the judge's 'score score' first lines, and a "
            f"{fmt} file holds verdicts, not scores; use --rule paper or fastchat"
        )
    return None
