"""Gather one evaluation of a sweep into one JSON-able model: what :mod:`.html` renders.

Everything is read from disk, as ``evaluate.py``, ``segment.py`` and ``train.py`` wrote it
(see README "What a run writes", "Evaluating a sweep"); no evaluate, train or segment code
is imported, so the report also works on a copy of the folders on another machine.

    <eval_dir>/          table.csv, table.json, seeds.csv, categories.md, summary.json,
                         figure1_stages.png, .hydra/overrides.yaml (the evaluate command),
                         comparisons/<set>/<label>.jsonl (every judged item) and .json (figures)
    <sweep_dir>/<run>/   run.json, config.yaml, summary.json, stage_*/stage.json,
                         forgetting.csv / .png (multi-stage runs)
    segment run          density.png, table1.csv, summary.json, sensitivity.md: the folder of
                         the stage manifest the runs name, and any ``<sweep_dir>/segment/*/``
    <sweep_dir>/         growth.csv / growth.png (a ``dataset.max_examples`` sweep)

Each judged item gets its folded verdict under the evaluation's rule, from the two orders'
parsed scores (``scores_ab``: A shown first, as (A, B); ``scores_ba``: B shown first, as
(B, A)); the counts per comparison are checked against the comparison's own figures.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from phasedsft import rundir

WIN, TIE, LOSS, UNPARSED, VOID = "win", "tie", "loss", "unparsed", "void"
VERDICTS = (WIN, TIE, LOSS, UNPARSED, VOID)  # an item's code in the page is its index here

# A's verdict in each order -> the folded outcome (README "Folding and the figure")
FOLD: dict[str, dict[tuple[str, str], str]] = {
    "paper": {
        (WIN, WIN): WIN,
        (WIN, TIE): WIN,
        (TIE, WIN): WIN,
        (TIE, TIE): TIE,
        (WIN, LOSS): TIE,
        (LOSS, WIN): TIE,
        (LOSS, LOSS): LOSS,
        (LOSS, TIE): LOSS,
        (TIE, LOSS): LOSS,
    },
    "fastchat": {
        (a, b): (a if a == b and a != TIE else TIE)
        for a in (WIN, TIE, LOSS)
        for b in (WIN, TIE, LOSS)
    },
}
FOLD["authors"] = FOLD["paper"]  # same table; an item with a score <= 0 is void (kept in N)

PNG_MAX = 4_000_000  # bytes: a larger figure is linked, not embedded
_RUN_HASH = re.compile(r"-([0-9a-f]{8})$")
_TWO_NUMBERS = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)[\s,]+([-+]?\d+(?:\.\d+)?)\s*$")


# ---------------------------------------------------------------- small readers


def read_json(path: Path) -> Any:
    """The file's JSON, or ``None`` where it is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_csv(path: Path) -> dict[str, Any] | None:
    """``{"columns": [...], "rows": [[str, ...], ...]}`` as written (numbers kept as text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return None
    return {"columns": rows[0], "rows": rows[1:]}


def read_yaml(path: Path) -> Any:
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # absent, unreadable, or not YAML: the report shows less
        return None


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def png_data_uri(path: Path) -> str | None:
    """The PNG as a ``data:`` URI (``None``: absent, or too large to embed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) > PNG_MAX or not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path, root: Path) -> dict[str, Any] | None:
    """An image file as the page embeds it, with where it came from and its hash."""
    if not path.is_file():
        return None
    return {
        "src": png_data_uri(path),
        "path": display_path(path, root),
        "sha256": sha256_file(path),
    }


def display_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it, else as it is."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def markdown_tables(text: str) -> list[dict[str, Any]]:
    """The pipe tables of a markdown text, each with the heading above it (``### ...``)."""
    tables: list[dict[str, Any]] = []
    title = ""
    block: list[str] = []

    def flush() -> None:
        if len(block) >= 2:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
            body = [r for r in cells[1:] if not all(set(c) <= set(":-") for c in r)]
            tables.append({"title": title, "columns": cells[0], "rows": body})
        block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.startswith("#"):
            title = line.lstrip("#").strip()
    flush()
    return tables


def run_hash(name: str) -> str | None:
    """The config hash a run directory's name ends with (``...-s0-8206b42c``)."""
    m = _RUN_HASH.search(name)
    return m.group(1) if m else None


def words(text: Any) -> int:
    """An answer's length in words (whitespace-separated pieces), as evaluate counts them."""
    return len(text.split()) if isinstance(text, str) else 0


# ---------------------------------------------------------------- verdicts


def side_verdict(mine: float, other: float) -> str:
    return WIN if mine > other else LOSS if mine < other else TIE


def scores_of(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """An order's two scores as shown: the replay's parsed ``scores_ab`` / ``scores_ba``; a
    file without them: a first line of exactly two numbers in the raw review."""
    got = row.get(f"scores_{key}")
    if isinstance(got, list | tuple) and len(got) == 2:
        try:
            return float(got[0]), float(got[1])
        except (TypeError, ValueError):
            return None
    if f"scores_{key}" in row:  # evaluate parsed it and found nothing
        return None
    review = row.get(f"review_{key}")
    if isinstance(review, str) and review.strip():
        m = _TWO_NUMBERS.match(review.strip().splitlines()[0])
        if m:
            return float(m.group(1)), float(m.group(2))
    return None


def item_verdict(
    scores_ab: tuple[float, float] | None, scores_ba: tuple[float, float] | None, rule: str
) -> tuple[str, bool | None]:
    """(folded outcome for A, position-consistent?) from the two orders' scores as shown."""
    if scores_ab is None or scores_ba is None:
        return UNPARSED, None
    if rule == "authors" and not all(s > 0 for s in (*scores_ab, *scores_ba)):
        return VOID, None
    v_ab = side_verdict(scores_ab[0], scores_ab[1])  # A shown first: (A, B)
    v_ba = side_verdict(scores_ba[1], scores_ba[0])  # B shown first: (B, A)
    table = FOLD.get(rule, FOLD["paper"])
    return table[(v_ab, v_ba)], v_ab == v_ba


# ---------------------------------------------------------------- items, compacted


class Strings:
    """A table of distinct strings: a question or a baseline answer judged in many
    comparisons is stored once; items hold indices."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, text: Any) -> int:
        s = "" if text is None else text if isinstance(text, str) else json.dumps(text)
        if s not in self.index:
            self.index[s] = len(self.values)
            self.values.append(s)
        return self.index[s]


# the fields of one item in the page's JSON (arrays, not objects: tens of thousands of items)
ITEM_FIELDS = [
    "comparison",  # index into comparisons
    "id",
    "question",  # string index
    "answer_a",  # string index
    "answer_b",  # string index
    "review_ab",  # string index: A shown first
    "review_ba",  # string index: B shown first
    "scores_ab",  # [A, B] as shown, or null
    "scores_ba",  # [B, A] as shown, or null
    "verdict",  # index into VERDICTS
    "consistent",  # 1 / 0 / null (unparsed)
    "words_a",
    "words_b",
    "categories",  # string indices of "key=value"
    "error",  # string index or -1
]


def read_items(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def comparison_meta(
    eval_set: str, label: str, figures: dict[str, Any] | None, table: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """One comparison's names and figures: from its ``.json`` and its table.csv row."""
    figures = figures or {}
    row = table.get(f"{eval_set}\t{label}", {})
    candidate = figures.get("candidate") or label.split("__vs__")[0].replace("__", "/", 1)
    return {
        "set": eval_set,
        "label": label,
        "candidate": candidate,
        "baseline": figures.get("baseline") or label.split("__vs__")[-1],
        "run": row.get("run") or candidate.split("/")[0],
        "ordering": row.get("ordering", ""),
        "stage": row.get("stage", ""),
        "n_stages": row.get("n_stages", ""),
        "seed": row.get("seed", ""),
        "figures": {
            k: figures.get(k)
            for k in (
                "rule",
                "wins",
                "ties",
                "losses",
                "n",
                "unparsed",
                "win_rate",
                "ci_low",
                "ci_high",
                "position_consistency",
            )
        },
    }


def gather_items(
    eval_dir: Path, rule: str, table_rows: dict[str, dict[str, str]]
) -> tuple[list[dict[str, Any]], list[list[Any]], list[str]]:
    """Every judged item of every comparison: (comparisons, items, string table)."""
    strings = Strings()
    comparisons: list[dict[str, Any]] = []
    items: list[list[Any]] = []
    for path in sorted((eval_dir / "comparisons").glob("*/*.jsonl")):
        eval_set, label = path.parent.name, path.stem
        meta = comparison_meta(eval_set, label, read_json(path.with_suffix(".json")), table_rows)
        counts = dict.fromkeys(VERDICTS, 0)
        consistent = 0
        k = len(comparisons)
        for row in read_items(path):
            ab, ba = scores_of(row, "ab"), scores_of(row, "ba")
            outcome, same = item_verdict(ab, ba, rule)
            counts[outcome] += 1
            consistent += bool(same)
            cats = row.get("category") or {}
            error = row.get("errors") or row.get("error")
            items.append(
                [
                    k,
                    str(row.get("id", len(items))),
                    strings.add(row.get("instruction")),
                    strings.add(row.get("answer_a")),
                    strings.add(row.get("answer_b")),
                    strings.add(row.get("review_ab")),
                    strings.add(row.get("review_ba")),
                    list(ab) if ab else None,
                    list(ba) if ba else None,
                    VERDICTS.index(outcome),
                    None if same is None else int(same),
                    words(row.get("answer_a")),
                    words(row.get("answer_b")),
                    [strings.add(f"{key}={value}") for key, value in sorted(cats.items())],
                    strings.add("; ".join(map(str, error)) if isinstance(error, list) else error)
                    if error
                    else -1,
                ]
            )
        meta["counts"] = counts
        meta["items"] = sum(counts.values())
        f = meta["figures"]
        meta["counts_match"] = (
            None
            if f.get("wins") is None
            else (counts[WIN], counts[TIE], counts[LOSS]) == (f["wins"], f["ties"], f["losses"])
        )
        comparisons.append(meta)
    return comparisons, items, strings.values


# ---------------------------------------------------------------- runs, segments, growth


def stage_records(run_dir: Path) -> list[dict[str, Any]]:
    """Per stage: run.json's record (examples, tokens, order hash, mixture) with its steps
    from stage.json / summary.json where the stage finished."""
    info = read_json(run_dir / rundir.RUN_RECORD) or {}
    summary = read_json(run_dir / "summary.json") or {}
    done = {s.get("index"): s for s in summary.get("stages", []) if isinstance(s, dict)}
    out = []
    for st in info.get("stages", []):
        index, name = st.get("index"), st.get("name")
        record = (
            read_json(rundir.stage_dir(run_dir, index, name) / rundir.STAGE_RECORD)
            or done.get(index)
            or {}
        )
        out.append(
            {
                "index": index,
                "name": name,
                "examples": st.get("n_examples"),
                "tokens": st.get("n_tokens"),
                "target_tokens": st.get("n_target_tokens"),
                "steps": steps_of(record),
                "order_sha256": st.get("order_sha256"),
                "mixture": st.get("mixture"),
                "finished": bool(record),
                "fed_matches_plan": record.get("fed_matches_plan"),
            }
        )
    return out


def steps_of(record: dict[str, Any]) -> int | None:
    """A finished stage's optimizer steps, wherever its record keeps them."""
    for where in (
        record,
        record.get("metrics") or {},
        (record.get("metrics") or {}).get("train") or {},
    ):
        if not isinstance(where, dict):
            continue
        for key in ("steps", "global_step", "optimizer_steps", "max_steps"):
            value = where.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return int(value)
    return None


def short_settings(node: Any) -> str:
    """A config node as ``key=value`` pairs (nested keys dotted), ``-`` for none."""
    if node in (None, {}, []):
        return "-"
    if not isinstance(node, dict):
        return json.dumps(node)
    flat: list[str] = []

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, dict) and n:
            for k, v in n.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat.append(f"{prefix[:-1]}={n if isinstance(n, str) else json.dumps(n)}")

    walk(node, "")
    return ", ".join(f for f in flat if not f.startswith("_target_="))


def gather_run(run_dir: Path, root: Path, used: bool) -> dict[str, Any]:
    info = read_json(run_dir / rundir.RUN_RECORD) or {}
    cfg = read_yaml(run_dir / rundir.RUN_CONFIG) or {}
    trainer = cfg.get("trainer") or {} if isinstance(cfg, dict) else {}
    git = info.get("git") or {}
    manifest = info.get("stage_manifest") or {}
    forgetting = read_csv(run_dir / "forgetting.csv")
    summary = read_json(run_dir / "summary.json") or {}
    accuracy = ((summary.get("final_accuracy") or {}).get("all") or {}).get("accuracy")
    return {
        "name": run_dir.name,
        "path": display_path(run_dir, root),
        "in_evaluation": used,
        "ordering": info.get("ordering") or (cfg.get("ordering") or {}).get("name", ""),
        "seed": cfg.get("seed") if isinstance(cfg, dict) else None,
        "dataset": ((cfg.get("dataset") or {}).get("name") if isinstance(cfg, dict) else None),
        "model": ((cfg.get("model") or {}).get("name") if isinstance(cfg, dict) else None),
        "config_hash": run_hash(run_dir.name),
        "config_sha256": sha256_file(run_dir / rundir.RUN_CONFIG),
        "git": (git.get("sha") or "")[:12] + (" (dirty)" if git.get("dirty") else ""),
        "manifest_hash": manifest.get("hash"),
        "manifest_path": manifest.get("path"),
        "stage_policy": short_settings(trainer.get("stage_policy")),
        "replay": short_settings(cfg.get("replay") if isinstance(cfg, dict) else None),
        "stages": stage_records(run_dir),
        "forgetting": forgetting,
        "forgetting_png": figure(run_dir / "forgetting.png", root),
        # per group: loss after the last stage minus its lowest after any stage
        "forgetting_by_group": summary.get("forgetting") or {},
        "final_accuracy": accuracy if isinstance(accuracy, int | float) else None,
        "finished": (run_dir / "summary.json").is_file(),
    }


def method_text(method: Any) -> str:
    """segment.py's method record as words: ``manual (thresholds=[1.5, 3.5])``."""
    if not isinstance(method, dict):
        return short_settings(method)
    rest = {k: v for k, v in method.items() if k != "method"}
    name = str(method.get("method", "?"))
    return f"{name} ({short_settings(rest)})" if rest else name


def gather_segment(seg_dir: Path, root: Path) -> dict[str, Any]:
    summary = read_json(seg_dir / "summary.json") or {}
    sensitivity = (
        (seg_dir / "sensitivity.md").read_text(encoding="utf-8")
        if (seg_dir / "sensitivity.md").is_file()
        else ""
    )
    return {
        "name": seg_dir.name,
        "path": display_path(seg_dir, root),
        "density": figure(seg_dir / "density.png", root),
        "table1": read_csv(seg_dir / "table1.csv"),
        "thresholds": summary.get("thresholds"),
        "method": method_text(summary.get("method")),
        "manifest_hash": summary.get("manifest_hash"),
        "examples": (summary.get("data") or {}).get("examples"),
        "train_command": summary.get("train_command"),
        "sensitivity": markdown_tables(sensitivity),
    }


def find_runs(sweep_dir: Path, names: Iterable[str]) -> list[Path]:
    """The run directories under the sweep: those the evaluation names, then any other
    folder holding a run.json (two levels down at most; evaluation folders skipped)."""
    found: dict[str, Path] = {}
    for name in names:
        if (sweep_dir / name / rundir.RUN_RECORD).is_file():
            found[name] = sweep_dir / name
    for pattern in ("*/run.json", "*/*/run.json"):
        for p in sorted(sweep_dir.glob(pattern)):
            if "evaluation" in p.parts[len(sweep_dir.parts) :]:
                continue
            found.setdefault(p.parent.name, p.parent)
    return list(found.values())


def find_segments(sweep_dir: Path, runs: Sequence[dict[str, Any]]) -> list[Path]:
    """Segment runs: the folder of each run's stage manifest where it holds a segment.py
    summary, and ``<sweep_dir>/segment/*/``."""
    found: dict[Path, None] = {}
    for r in runs:
        path = r.get("manifest_path")
        if path:
            folder = Path(path).parent
            if not folder.is_absolute():
                folder = Path.cwd() / folder
            if (folder / "table1.csv").is_file() or (folder / "density.png").is_file():
                found[folder.resolve()] = None
    for p in sorted(sweep_dir.glob("segment/*/table1.csv")):
        found.setdefault(p.parent.resolve(), None)
    return list(found)


# ---------------------------------------------------------------- the whole model


def evaluate_command(eval_dir: Path) -> str | None:
    """The command that made the evaluation: Hydra's record of its overrides."""
    overrides = read_yaml(eval_dir / ".hydra" / "overrides.yaml")
    if not isinstance(overrides, list):
        return None
    return " ".join(["python evaluate.py", *(shell_word(str(o)) for o in overrides)])


def shell_word(word: str) -> str:
    return (
        word
        if re.fullmatch(r"[\w@%+=:,./\-\[\]]+", word)
        else "'" + word.replace("'", "'\\''") + "'"
    )


def evaluation_dirs(path: Path) -> list[Path]:
    """``path`` itself where it holds an evaluation (table.csv or comparisons/), else every
    ``<path>/evaluation/<judge>/`` that does."""
    if (path / "table.csv").is_file() or (path / "comparisons").is_dir():
        return [path]
    return sorted(
        p
        for p in (path / "evaluation").glob("*")
        if p.is_dir() and ((p / "table.csv").is_file() or (p / "comparisons").is_dir())
    )


def sweep_of(eval_dir: Path) -> Path:
    """The sweep an evaluation folder belongs to: ``<sweep>/evaluation/<judge>``."""
    return eval_dir.parent.parent if eval_dir.parent.name == "evaluation" else eval_dir.parent


def build_model(
    eval_dir: Path, sweep_dir: Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """The report's content: every number, table, figure and judged item, JSON-able."""
    eval_dir = Path(eval_dir)
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else sweep_of(eval_dir)
    summary = read_json(eval_dir / "summary.json") or {}
    table = read_csv(eval_dir / "table.csv")
    table_json = read_json(eval_dir / "table.json") or []
    rule = str(
        summary.get("rule")
        or next((r["rule"] for r in table_json if isinstance(r, dict) and r.get("rule")), "paper")
    )
    judge = summary.get("judge") or eval_dir.name
    by_label: dict[str, dict[str, str]] = {}
    if table:
        for row in table["rows"]:
            rec = dict(zip(table["columns"], row, strict=False))
            stage = rec.get("stage", "")
            by_label[f"{rec.get('eval_set')}\t{rec.get('run')}\t{stage}"] = rec
    # comparisons are named <run>__stage_<i>_<name>__vs__<baseline>: match them to table rows
    table_rows: dict[str, dict[str, str]] = {}
    for path in (eval_dir / "comparisons").glob("*/*.jsonl"):
        m = re.match(r"(.+?)__stage_(\d+)_.*__vs__", path.stem)
        if m:
            got = by_label.get(f"{path.parent.name}\t{m.group(1)}\t{m.group(2)}")
            if got:
                table_rows[f"{path.parent.name}\t{path.stem}"] = got
    comparisons, items, strings = gather_items(eval_dir, rule, table_rows)
    used = {c["run"] for c in comparisons} | {c["baseline"] for c in comparisons}
    if table:
        used |= {dict(zip(table["columns"], r, strict=False)).get("run", "") for r in table["rows"]}
        used |= {
            dict(zip(table["columns"], r, strict=False)).get("baseline", "") for r in table["rows"]
        }
    used.discard("")
    runs = [gather_run(d, sweep_dir, d.name in used) for d in find_runs(sweep_dir, sorted(used))]
    runs.sort(key=lambda r: (not r["in_evaluation"], r["name"]))
    segments: list[dict[str, Any]] = []
    for d in find_segments(sweep_dir, runs):  # a copied sweep: its own and the original's
        seg = gather_segment(d, sweep_dir)
        if seg["manifest_hash"] is None or all(
            s["manifest_hash"] != seg["manifest_hash"] for s in segments
        ):
            segments.append(seg)
    categories = (
        markdown_tables((eval_dir / "categories.md").read_text(encoding="utf-8"))
        if (eval_dir / "categories.md").is_file()
        else []
    )
    sources = [
        {"path": display_path(p, sweep_dir), "sha256": sha256_file(p)}
        for p in (
            eval_dir / "table.csv",
            eval_dir / "table.json",
            eval_dir / "seeds.csv",
            eval_dir / "categories.md",
            eval_dir / "summary.json",
        )
        if p.is_file()
    ]
    judgments = sorted((eval_dir / "comparisons").glob("*/*.jsonl"))
    if judgments:
        digest = hashlib.sha256()
        for p in judgments:
            digest.update(f"{p.parent.name}/{p.name} {sha256_file(p)}\n".encode())
        sources.append(
            {
                "path": f"{display_path(eval_dir, sweep_dir)}/comparisons/*/*.jsonl "
                f"({len(judgments)} files; sha256 of their names and hashes)",
                "sha256": digest.hexdigest(),
            }
        )
    eval_cfg = eval_dir / ".hydra" / "config.yaml"
    return {
        "title": f"Sweep {sweep_dir.resolve().name}: judge {judge}",
        "sweep_dir": str(sweep_dir),
        "eval_dir": display_path(eval_dir, sweep_dir),
        "judge": judge,
        "rule": rule,
        "baseline": summary.get("baseline") or next((c["baseline"] for c in comparisons), ""),
        "checkpoints": summary.get("checkpoints"),
        "stopped": summary.get("stopped"),
        "commands": {
            "report": command or f"python -m phasedsft.report {sweep_dir}",
            "evaluate": evaluate_command(eval_dir),
        },
        "evaluation_config_sha256": sha256_file(eval_cfg),
        "table": table,
        "seeds": read_csv(eval_dir / "seeds.csv"),
        "figure1": figure(eval_dir / "figure1_stages.png", sweep_dir),
        "categories": categories,
        "runs": runs,
        "segments": segments,
        "growth": {
            "csv": read_csv(sweep_dir / "growth.csv"),
            "png": figure(sweep_dir / "growth.png", sweep_dir),
        }
        if (sweep_dir / "growth.csv").is_file() or (sweep_dir / "growth.png").is_file()
        else None,
        "sources": sources,
        "comparisons": comparisons,
        "item_fields": ITEM_FIELDS,
        "verdicts": list(VERDICTS),
        "items": items,
        "strings": strings,
    }
