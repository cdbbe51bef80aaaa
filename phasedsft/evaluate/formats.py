"""Pairwise judgment files as other tools write them: read into :class:`~.folding.Judged`
items, and written beside our own by ``evaluate.py``.

    replay      ours (:func:`~.folding.read_replay`): JSONL, one object per item: ``id``,
                ``review_ab`` (answer A shown first), ``review_ba``; optional ``instruction``,
                ``answer_a``, ``answer_b``, ``category``.
    fastchat    FastChat llm_judge pairwise judgments (``model_judgment/<judge>_pair.jsonl``):
                JSONL, per line ``question_id``, ``model_1``, ``model_2``, ``g1_winner``,
                ``g2_winner``, ``judge``, ``turn`` (+ ``g1_judgment``, ``g2_judgment``: the raw
                replies). Game g1 shows model_1's answer first, g2 the answers swapped; a
                winner names a *model* ("model_1", "model_2"), or is "tie" or "error".
                FastChat's ``show_result.py`` drops rows with an "error" and counts a win only
                when both games name the same model: our ``--rule fastchat``, the default for
                these files (:func:`default_rule`). A row with an "error" is left out here too
                (counted as unparsed). One item per (question, turn); in a file of several
                turns (MT-bench) each item also gets the category ``turn`` (``--by turn``).
                FastChat's own figures are printed too (:class:`FastChatFigures`).
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
                (AlpacaEval's "discrete" win rate). AlpacaEval's own figures (its
                ``win_rate``: the mean preference; ``discrete_win_rate``; and
                ``length_controlled_winrate`` where the file carries it) are printed too
                (:class:`AlpacaEvalFigures`).

FastChat and AlpacaEval files name their models: A and B are the file's only pair (A =
model_1, or generator_2), or the two given with ``--models A B``. Their verdicts carry no
scores, so ``--rule authors`` (which re-parses "score score" lines) does not apply to them.

Every error names the file and the line (for a JSON document: the line its item starts on).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from phasedsft.evaluate.folding import (
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
    # AlpacaEval files, one per item: the preference from A's side (AlpacaEval's scale, 1..2,
    # 2 = A preferred; the legacy draw 0 read as 1.5; None: null) and the row's fitted
    # ``glm_preference`` from A's side (0..1; None where the row has none)
    preferences: list[float | None] | None = None
    glm_preferences: list[float | None] | None = None
    a_is_generator_2: bool = True  # in every row (AlpacaEval reports generator_2's side)


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
    items: list[Judged] = []
    prefs: list[float | None] = []
    glms: list[float | None] = []
    every_a_is_2 = True
    for where, i, r in rows:
        if {r["generator_1"], r["generator_2"]} != {a, b}:
            continue
        item_id = str(r.get("id", i))
        if item_id in first_line:
            raise ReplayError(f"{where}: duplicate id {item_id!r} (first at {first_line[item_id]})")
        first_line[item_id] = where
        items.append(_alpacaeval_item(r, item_id, a))
        a_is_2 = r["generator_2"] == a
        every_a_is_2 = every_a_is_2 and a_is_2
        pref, glm = r["preference"], r["glm_preference"]
        if pref is not None:
            pref = 1.5 if pref == 0 else float(pref)
            pref = pref if a_is_2 else 3.0 - pref  # mirrored: 2 <-> 1, 1.5 stays
        prefs.append(pref)
        glms.append(None if glm is None else glm if a_is_2 else 1.0 - glm)
    return Judgments("alpacaeval", items, (a, b), prefs, glms, every_a_is_2)


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
    glm = r.get("glm_preference")  # written by AlpacaEval when it recomputes its LC metrics
    if glm is not None and (not isinstance(glm, int | float) or isinstance(glm, bool)):
        raise ReplayError(f"{where}: glm_preference must be a number or null, got {glm!r}")
    if glm is not None and math.isnan(glm):
        glm = None
    if glm is not None and not 0 <= glm <= 1:
        raise ReplayError(
            f"{where}: glm_preference must be between 0 and 1 (a probability), got {glm:g}"
        )
    category = checked_category(r.get("category"), where)
    return {**r, "preference": pref, "glm_preference": glm, "category": category}


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


# ------------------------------------------------------------------ the owners' own figures

# Why an AlpacaEval annotations file alone gives no length-controlled win rate, as the
# command says it (the details: AlpacaEvalFigures)
LC_NEEDS = (
    "its GLM (alpaca_eval metrics/glm_winrate.py, length_controlled_v1) is fitted with data "
    "an annotations file does not hold: each instruction's difficulty and the annotations of "
    "AlpacaEval's 'gamed' baselines, from AlpacaEval's own dataset (df_gamed.csv, by the "
    "instruction's place among its 805; no other instruction has a difficulty)"
)
LC_WHY_NOT = (
    LC_NEEDS + "; and no row carries the glm_preference AlpacaEval writes when it "
    "recomputes its metrics"
)


@dataclass
class AlpacaEvalFigures:
    """AlpacaEval's own figures for A against B, computed as tatsu-lab/alpaca_eval computes
    them (our code, checked against theirs):

    - ``win_rate``: ``get_winrate`` (``src/alpaca_eval/metrics/winrate.py:12-20``, commit
      7d16c262) is ``AbsoluteScoringRule().describe_head2head`` (``metrics/helpers.py:45-73``,
      commit d483da3e): the legacy draw 0 becomes 1.5 (``:51``, ``:92-95``), a null (or a
      value outside 1..2, ``utils.validate_alpacaeval_preference``; our reader stops on one
      instead) is dropped, and ``win_rate`` is the mean of ``(preference - 1) * 100``: the
      *mean preference*, so a weighted annotator's 1.8 adds 0.8 of a win and 1.2 adds 0.2.
      ``standard_error``: that mean's standard error (pandas ``sem``: the n - 1 standard
      deviation over sqrt(n)) times 100; none with one preference. ``n_wins`` /
      ``n_wins_base`` / ``n_draws``: preferences above / below / at 1.5; ``n_total``: all.
    - ``discrete_win_rate``: the same through ``ZeroOneScoringRule`` (``helpers.py:122-123``):
      1.5 (or 0) is a draw and every other preference is rounded to 1 or 2 first, so it is
      ``100 * (W + D/2) / N`` with wins above 1.5, draws at 1.5. These W / D / L are the
      command's win / tie / lose, so ``discrete_win_rate - 50`` is the paper's figure.
    - ``length_controlled_winrate``: ``get_length_controlled_winrate``
      (``metrics/glm_winrate.py``, commit 19866ff8) fits a logistic GLM of the preference on
      the length difference, the instruction's difficulty and a model term, and reports the
      mean predicted preference with no length difference times 100 (``:117``) and its
      standard error (``lc_standard_error``, ``:118``). The fit needs data the file lacks
      (:data:`LC_WHY_NOT`: ``_get_featurized_data`` downloads ``df_gamed.csv`` from
      AlpacaEval's Hugging Face dataset, with ``instruction_difficulty`` per instruction
      index, and regularizes towards those gamed baselines' annotations), so it is not
      refitted here. Where every row carries the fitted ``glm_preference`` (AlpacaEval writes
      it into the annotations when it recomputes the metrics of saved annotations,
      ``:114-115`` and ``main.py``'s ``is_recompute_metrics_only``), the figure is read from
      the file: ``100 * mean(glm_preference)`` over the rows, with its standard error.

    All from A's side: AlpacaEval reports generator_2's side, and where A is generator_1 a
    row's preference is mirrored (3 - p) and its glm_preference too (1 - g). AlpacaEval's
    command prints its table with ``%.2f`` (``utils.print_leaderboard``), its leaderboard.csv
    keeps the figures unrounded: :meth:`lines` prints ``%.2f``, the JSON is unrounded.
    """

    win_rate: float
    standard_error: float | None
    discrete_win_rate: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int
    length_controlled_winrate: float | None
    lc_standard_error: float | None
    length_controlled_note: str  # where the LC figure comes from, or why there is none
    a_is_generator_2: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        side = (
            "A = generator_2, the side AlpacaEval reports"
            if self.a_is_generator_2
            else "A's side: rows where A is generator_1 mirrored, AlpacaEval reports generator_2's"
        )
        se = (
            f"  (standard_error {self.standard_error:.2f})"
            if self.standard_error is not None
            else ""
        )
        if self.length_controlled_winrate is None:
            lc = f"not computed: {self.length_controlled_note}"
        else:
            lc = f"{self.length_controlled_winrate:.2f}" + (
                f"  (lc_standard_error {self.lc_standard_error:.2f})"
                if self.lc_standard_error is not None
                else ""
            )
            lc += f"  ({self.length_controlled_note})"
        return [
            "AlpacaEval's own figures, A against B (alpaca_eval metrics/winrate.py "
            f"get_winrate; {side}; 0..100, printed %.2f as AlpacaEval prints them):",
            f"  win_rate (the mean preference, (preference - 1) * 100): {self.win_rate:.2f}{se}",
            "  discrete_win_rate (1.5 a draw, other preferences rounded to 1 or 2): "
            f"{self.discrete_win_rate:.2f}",
            f"  n_wins {self.n_wins}, n_wins_base {self.n_wins_base}, n_draws {self.n_draws}, "
            f"n_total {self.n_total}",
            f"  length_controlled_winrate: {lc}",
        ]


def _sem(values: Sequence[float]) -> float | None:
    """pandas' ``Series.sem()``: the n - 1 standard deviation over sqrt(n) (none for n < 2)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def alpacaeval_figures(found: Judgments) -> AlpacaEvalFigures | None:
    """See :class:`AlpacaEvalFigures`; ``None`` when no row has a preference."""
    prefs = [p for p in found.preferences or [] if p is not None]
    if not prefs:
        return None
    shifted = [p - 1.0 for p in prefs]  # AlpacaEval works in 0..1 (helpers.py:58)
    # ZeroOneScoringRule: 1.5 a draw, anything else rounded, so above 1.5 a win (2), below a loss
    discrete = [0.5 if p == 1.5 else 1.0 if p > 1.5 else 0.0 for p in prefs]
    se = _sem(shifted)
    glms = found.glm_preferences or []
    carried = [g for g in glms if g is not None]
    lc = lc_se = None
    if carried and len(carried) == len(glms):
        lc = 100.0 * statistics.fmean(carried)
        lc_sem = _sem(carried)
        lc_se = None if lc_sem is None else 100.0 * lc_sem
        note = f"the mean of the {len(carried)} rows' glm_preference, as AlpacaEval fitted it"
    elif carried:
        note = (
            f"only {len(carried)} of {len(glms)} rows carry a glm_preference (AlpacaEval's "
            "figure is the mean over all of them), and " + LC_NEEDS
        )
    else:
        note = LC_WHY_NOT
    return AlpacaEvalFigures(
        win_rate=100.0 * statistics.fmean(shifted),
        standard_error=None if se is None else 100.0 * se,
        discrete_win_rate=100.0 * statistics.fmean(discrete),
        n_wins=sum(p > 1.5 for p in prefs),
        n_wins_base=sum(p < 1.5 for p in prefs),
        n_draws=sum(p == 1.5 for p in prefs),
        n_total=len(prefs),
        length_controlled_winrate=lc,
        lc_standard_error=lc_se,
        length_controlled_note=note,
        a_is_generator_2=found.a_is_generator_2,
    )


@dataclass
class FastChatFigures:
    """FastChat's own figures for A against B, as ``fastchat/llm_judge/show_result.py``
    ``display_result_pairwise`` computes them (lm-sys/FastChat, commit 02d4581b; our code):
    rows with an "error" in either game are dropped (``:50``); a row is a tie when g1 says
    "tie" or the two games disagree, else a win for the model both games name (``:65-76``);
    then, per model, ``win_rate = win / (win + loss + tie)``, ``loss_rate = loss / (...)`` and
    ``win_rate_adjusted = (win + 0.5 * tie) / (...)`` (``:85-90``): fractions of 1, printed in
    a pandas table (``:93``: at most 6 decimals). Always FastChat's own rule, whatever
    ``--rule`` says; ``100 * win_rate_adjusted - 50`` is the paper's figure under
    ``--rule fastchat``."""

    win: int
    loss: int
    tie: int
    win_rate: float
    loss_rate: float
    win_rate_adjusted: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            "FastChat's own figures, A against B (llm_judge/show_result.py "
            "display_result_pairwise, always by FastChat's rule; fractions of 1, to at most 6 "
            "decimals as its pandas table prints them):",
            f"  win {self.win}, loss {self.loss}, tie {self.tie}; win_rate "
            f"{_pandas_float(self.win_rate)}, loss_rate {_pandas_float(self.loss_rate)}, "
            f"win_rate_adjusted {_pandas_float(self.win_rate_adjusted)}",
        ]


def _pandas_float(x: float) -> str:
    """A float as pandas prints it in a table: 6 decimals, trailing zeros dropped (0.2, 0.5)."""
    text = f"{x:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def fastchat_figures(found: Judgments) -> FastChatFigures | None:
    """See :class:`FastChatFigures`; ``None`` when every row has an "error"."""
    outcomes = [outcome_of(j, "fastchat") for j in found.items]
    win, tie, loss = (outcomes.count(v) for v in (WIN, TIE, LOSE))
    n = win + tie + loss
    if not n:
        return None
    return FastChatFigures(win, loss, tie, win / n, loss / n, (win + 0.5 * tie) / n)


def owner_figures(found: Judgments) -> AlpacaEvalFigures | FastChatFigures | None:
    """The figures the file's own tool reports (FastChat, AlpacaEval); ``None`` for others."""
    if found.format == "alpacaeval":
        return alpacaeval_figures(found)
    if found.format == "fastchat":
        return fastchat_figures(found)
    return None


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


# the folding rule a file is counted by when none is asked for: a FastChat file as FastChat
# counts it (show_result.py), everything else by the paper's rule
DEFAULT_RULE = {"fastchat": "fastchat"}


def default_rule(fmt: str) -> str:
    return DEFAULT_RULE.get(fmt, "paper")


def rule_applies(fmt: str, rule: str) -> str | None:
    """Why ``rule`` cannot be used on a file of ``fmt`` (``None``: it can)."""
    if rule == AUTHORS and fmt in NO_SCORES:
        return (
            "--rule authors re-parses the judge's 'score score' first lines, and a "
            f"{fmt} file holds verdicts, not scores; use --rule paper or fastchat"
        )
    return None
