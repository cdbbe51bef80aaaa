"""Render the report model (:func:`.build.build_model`) as one self-contained HTML page.

Static sections (headline, data and plan, provenance) are rendered here, escaped, so they
read and print without JavaScript; the judged items travel as one JSON blob that the page's
script filters, sorts and paginates (:mod:`.assets`). Figures are embedded as ``data:`` URIs;
a Content-Security-Policy lets the page load nothing from anywhere and run only its own
script (by hash), so an answer holding ``<script>`` is text, never code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from phasedsft.report.assets import CSS, JS
from phasedsft.report.svg import Point, stage_chart

SECTIONS = [
    ("headline", "Headline"),
    ("plan", "Data and plan"),
    ("judged", "Every judged item"),
    ("provenance", "Provenance"),
]


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` (so no
    ``</script>`` can end it early) and no U+2028 / U+2029."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, sub in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, sub)
    return text


def number(text: str) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def shown(column: str, raw: str) -> str:
    """A CSV cell as the page shows it: win rates signed with 2 decimals, integers as they
    are, other numbers to 3 significant digits; text as it is."""
    x = number(raw)
    if x is None or raw.strip() == "":
        return raw
    if raw.lstrip("+-").isdigit():
        return raw
    if (
        "win_rate" in column
        or "ci_" in column
        or column in {"mean", "min", "max", "t_low", "t_high"}
    ):
        return f"{x:+.2f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.3g}"


def integer(text: Any) -> int:
    """A table cell's integer (0 where there is none): seeds and stages sort as numbers."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def short(sha: str | None, n: int = 12) -> str:
    return (sha or "-")[:n]


def tint(win_rate: float | None) -> str:
    """A cell's background: green above parity, red below, stronger further from 0."""
    if win_rate is None:
        return ""
    a = min(abs(win_rate) / 50, 1) * 0.45
    rgb = "46,160,67" if win_rate > 0 else "214,39,40"
    return f' style="background:rgba({rgb},{a:.2f})"'


def table(
    caption: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    table_id: str = "",
    raw: Sequence[Sequence[str]] | None = None,
    row_header: int = 0,
    sortable: bool = True,
    cls: str = "",
    note: str = "",
) -> str:
    """A table with a short caption (markup), an optional note above it (markup, tied to the
    table by ``aria-describedby``) and scoped headers; ``raw`` (same shape as ``rows``): each
    cell's value as written in the source file (``data-value``), for tests and copying."""
    attrs = f' id="{e(table_id)}"' if table_id else ""
    head = ""
    if note:
        note_id = f"{table_id or 't' + hashlib.sha1(note.encode()).hexdigest()[:8]}-note"
        head = f'<p class="tnote" id="{e(note_id)}">{note}</p>'
        attrs += f' aria-describedby="{e(note_id)}"'
    classes = " ".join(c for c in ("data", "sortable" if sortable else "", cls) if c)
    out = [
        f'{head}<div class="scroll"><table{attrs} class="{classes}"><caption>{caption}</caption><thead><tr>'
    ]
    out += [f'<th scope="col">{e(c)}</th>' for c in columns]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        out.append("<tr>")
        for j, cell in enumerate(row):
            value = f' data-value="{e(raw[i][j])}"' if raw is not None else ""
            num = " num" if number(raw[i][j] if raw is not None else str(cell)) is not None else ""
            if j < row_header:
                out.append(f'<th scope="row"{value}>{e(cell)}</th>')
            else:
                out.append(f'<td class="{num.strip()}"{value}>{e(cell)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure_html(
    fig: dict[str, Any] | None, alt: str, caption: str, made_by: str, fig_id: str
) -> str:
    if not fig:
        return ""
    if fig.get("src"):
        body = f'<img src="{fig["src"]}" alt="{e(alt)}" loading="eager">'
    else:
        body = f'<p class="note">Not embedded (too large): <code>{e(fig["path"])}</code></p>'
    return (
        f'<figure id="{e(fig_id)}">{body}<figcaption>{caption}'
        f'<span class="made-by">Made by: {made_by}; file <code>{e(fig["path"])}</code> '
        f"(sha256 {e(short(fig.get('sha256')))})</span></figcaption></figure>"
    )


# ---------------------------------------------------------------- headline


def table_dicts(tab: dict[str, Any] | None) -> list[dict[str, str]]:
    if not tab:
        return []
    return [dict(zip(tab["columns"], r, strict=False)) for r in tab["rows"]]


def runs_made_by(model: dict[str, Any], names: set[str]) -> str:
    by = {r["name"]: r for r in model["runs"]}
    parts = [
        f"<code>{e(n)}</code> (config {e(by[n]['config_hash'] if n in by else '?')})"
        for n in sorted(names)
    ]
    return (
        "runs "
        + ", ".join(parts)
        + f"; judge <code>{e(model['judge'])}</code>, rule <code>{e(model['rule'])}</code>"
    )


def pivot(model: dict[str, Any]) -> str:
    """The paper's Table 2/3 shape: rows dataset x model x seed x ordering x stage, columns
    test sets (+ all sets pooled); cells win rate [95 % CI] and W/T/L of N."""
    rows = table_dicts(model["table"])
    if not rows:
        return '<p class="note">No table.csv in this evaluation.</p>'
    sets = sorted({r["eval_set"] for r in rows if r["eval_set"] != "all sets"})
    if any(r["eval_set"] == "all sets" for r in rows):
        sets.append("all sets")
    keys: dict[tuple, dict[str, dict[str, str]]] = {}
    for r in rows:
        key = (
            r["dataset"],
            r["model"],
            integer(r["seed"]),
            r["ordering"],
            integer(r["stage"]),
            r["n_stages"],
        )
        keys.setdefault(key, {})[r["eval_set"]] = r
    out = [
        '<p class="tnote" id="table-pivot-note">Each cell: the win rate against '
        f"<code>{e(model['baseline'])}</code> under the <code>{e(model['rule'])}</code> rule "
        "(100 × (W + T/2) / N − 50; 0 = parity, −50 .. +50), the paired bootstrap 95 % CI, "
        "then wins / ties / losses of N. Stage i/k: the run's weights after its i-th of k "
        "stages. Click a column's header to sort.</p>"
        '<div class="scroll"><table id="table-pivot" class="data sortable pivot" '
        'aria-describedby="table-pivot-note"><caption>'
        f"Table 2. Win rate against <code>{e(model['baseline'])}</code> per test set</caption><thead><tr>"
    ]
    out += [f'<th scope="col">{c}</th>' for c in ("dataset", "model", "seed", "ordering", "stage")]
    out += [f'<th scope="col">{e(s)}</th>' for s in sets]
    out.append("</tr></thead><tbody>")
    for key in sorted(keys):
        dataset, mdl, seed, ordering, stage, n_stages = key
        out.append(
            f"<tr><td>{e(dataset)}</td><td>{e(mdl)}</td><td class=num>{seed}</td>"
            f'<th scope="row">{e(ordering)}</th><td class=num>{stage}/{e(n_stages)}</td>'
        )
        for s in sets:
            got = keys[key].get(s)
            wr = number(got["win_rate"]) if got else None
            if got is None or wr is None:
                out.append(
                    "<td>-</td>"
                    if got is None
                    else f"<td>n/a ({e(got.get('unparsed'))} unparsed)</td>"
                )
                continue
            lo, hi = number(got["ci_low"]), number(got["ci_high"])
            ci = f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None and hi is not None else ""
            out.append(
                f'<td class="num cell" data-value="{e(got["win_rate"])}"{tint(wr)}>'
                f"<strong>{wr:+.1f}</strong><span class=ci>{ci}</span>"
                f"<span class=wtl>{e(got['wins'])}/{e(got['ties'])}/{e(got['losses'])} of {e(got['n'])}</span></td>"
            )
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def set_charts(model: dict[str, Any]) -> str:
    """Figure 1 per test set (inline SVG), where the evaluation has several sets."""
    rows = table_dicts(model["table"])
    sets = sorted({r["eval_set"] for r in rows})
    if len([s for s in sets if s != "all sets"]) < 2:
        return ""
    panels = []
    for k, s in enumerate(sets):
        groups: dict[tuple, dict[str, list[Point]]] = {}
        for r in rows:
            wr = number(r["win_rate"])
            if r["eval_set"] != s or wr is None:
                continue
            g = (r["dataset"], r["model"], r["seed"])
            groups.setdefault(g, {}).setdefault(r["ordering"], []).append(
                (integer(r["stage"]), wr, number(r["ci_low"]), number(r["ci_high"]))
            )
        for j, (g, lines) in enumerate(sorted(groups.items())):
            title = f"{s}: {g[0]} / {g[1]} (seed {g[2]})"
            panels.append(
                f'<div class="panel">{stage_chart(lines, title, model["baseline"], f"chart-{k}-{j}")}'
                f"<p>{e(title)}</p></div>"
            )
    names = {r["run"] for r in rows} | {r["baseline"] for r in rows}
    return (
        '<figure id="figure-per-set" class="charts"><div class="panels">'
        + "".join(panels)
        + "</div><figcaption>Figure 1 per test set: win rate against "
        f"<code>{e(model['baseline'])}</code> after each stage, one line per ordering, 95 % CI "
        "(hover a point for its figures)."
        f'<span class="made-by">Made by: {runs_made_by(model, names)}; from table.csv</span>'
        "</figcaption></figure>"
    )


def seeds_table(model: dict[str, Any]) -> str:
    rows = table_dicts(model["seeds"])
    if not rows:
        return (
            '<p class="note">One training seed per comparison: no statistics across seeds '
            "(a sweep over <code>seed=0,1,2</code> adds them).</p>"
        )
    cols = [
        "ordering",
        "stage",
        "set",
        "per seed",
        "mean ± sd",
        "range",
        "95 % t-interval",
        "pooled [CI]; W/T/L",
        "verdict",
    ]
    body = []
    for r in rows:
        seeds = r.get("seeds", "").split()
        rates = r.get("per_seed_win_rates", "").split()
        per = ", ".join(
            f"s{s} {('-' if w == '-' else f'{float(w):+.1f}')}"
            for s, w in zip(seeds, rates, strict=False)
        )

        def f(key: str, fmt: str = "+.1f", r: dict[str, str] = r) -> str:
            x = number(r.get(key, ""))
            return "-" if x is None else format(x, fmt)

        body.append(
            [
                r.get("ordering", ""),
                f"{r.get('stage', '')}/{r.get('n_stages', '')}",
                r.get("eval_set", ""),
                per,
                f"{f('mean')} ± {f('std', '.1f')}",
                f"{f('min')} .. {f('max')}",
                f"[{f('t_low')}, {f('t_high')}]",
                f"{f('pooled_win_rate')} [{f('pooled_ci_low')}, {f('pooled_ci_high')}]; "
                f"{r.get('pooled_wins', '')}/{r.get('pooled_ties', '')}/{r.get('pooled_losses', '')}",
                r.get("verdict", ""),
            ]
        )
    return table(
        "Table 3. Across training seeds (seeds.csv)",
        cols,
        body,
        table_id="table-seeds",
        row_header=1,
        note="The same comparison under several training seeds: per-seed win rates, mean ± sd "
        "(n − 1), range, the 95 % Student t-interval over seeds, and the pooled figure with its "
        "item bootstrap CI. <strong>Within seed noise</strong>: the t-interval contains 0, or "
        "the seeds are not all on one side of 0.",
    )


def full_numbers(model: dict[str, Any]) -> str:
    tab = model["table"]
    if not tab:
        return ""
    cols = tab["columns"]
    rows = [[shown(c, v) for c, v in zip(cols, r, strict=False)] for r in tab["rows"]]
    return (
        '<details class="numbers" open><summary>Every figure of table.csv '
        f"({len(rows)} rows)</summary>"
        + table(
            "table.csv",
            cols,
            rows,
            table_id="table-csv",
            raw=tab["rows"],
            cls="compact",
            note="As evaluate.py wrote it: one row per comparison (and per pooled row), every "
            "figure in its own column, rounded for reading (each cell's exact value is in its "
            "<code>data-value</code>).",
        )
        + "</details>"
    )


def categories_html(model: dict[str, Any]) -> str:
    if not model["categories"]:
        return ""
    parts = [
        "<h3 id=categories>Per category</h3><p>From categories.md: win rate per category value "
        "after each stage (WizardLM Skill / Difficulty, Vicuna category, graded level / task), "
        "and exact-match accuracy where the test set has known answers.</p>"
    ]
    for k, t in enumerate(model["categories"]):
        parts.append(
            table(
                e(t["title"] or "categories.md"),
                t["columns"],
                t["rows"],
                table_id=f"cat-{k}",
                row_header=1,
                cls="compact",
            )
        )
    return "".join(parts)


def headline(model: dict[str, Any]) -> str:
    rows = table_dicts(model["table"])
    names = {r["run"] for r in rows} | {r["baseline"] for r in rows}
    sets = sorted({r["eval_set"] for r in rows if r["eval_set"] != "all sets"})
    what = "all sets pooled" if len(sets) > 1 else (sets[0] if sets else "")
    fig = figure_html(
        model["figure1"],
        f"Figure 1: win rate against {model['baseline']} after each stage, one line per "
        f"ordering, with 95 % confidence intervals ({what}).",
        f"Figure 1. Win rate against <code>{e(model['baseline'])}</code> after each stage, one line "
        f"per ordering ({e(what)}; 95 % CI; y from −50, the baseline always wins, to +50).",
        runs_made_by(model, names),
        "figure1",
    )
    stopped = (
        f'<p class="warn" role="alert">This evaluation stopped early: {e(model["stopped"])}</p>'
        if model.get("stopped")
        else ""
    )
    return (
        stopped
        + (fig or '<p class="note">No figure1_stages.png in this evaluation.</p>')
        + set_charts(model)
        + pivot(model)
        + "<h3 id=seeds>Across seeds</h3>"
        + seeds_table(model)
        + full_numbers(model)
        + categories_html(model)
    )


# ---------------------------------------------------------------- data and plan


def segment_html(seg: dict[str, Any], k: int) -> str:
    t1 = seg.get("table1")
    t1_html = ""
    if t1:
        cols = t1["columns"]
        shown_rows = []
        for r in t1["rows"]:
            rec = dict(zip(cols, r, strict=False))
            shown_rows.append(
                [
                    rec.get("stage", ""),
                    rec.get("count", ""),
                    f"{float(rec['share']):.1%}"
                    if number(rec.get("share", "")) is not None
                    else rec.get("share", ""),
                    shown("", rec.get("mean_difficulty", "")),
                    shown("", rec.get("mean_tokens", "")),
                ]
            )
        t1_html = table(
            "Table 1. The stages (table1.csv)",
            ["stage", "count", "share", "mean difficulty", "mean tokens"],
            shown_rows,
            table_id=f"table1-{k}",
            raw=[
                [
                    dict(zip(cols, r, strict=False)).get(c, "")
                    for c in ("stage", "count", "share", "mean_difficulty", "mean_tokens")
                ]
                for r in t1["rows"]
            ],
            row_header=1,
            note="Per stage: examples, their share, mean difficulty, mean tokens of "
            "instruction + input + output.",
        )
    thresholds = ", ".join(f"{t:g}" for t in seg.get("thresholds") or []) or "-"
    made = (
        f"segment run <code>{e(seg['path'])}</code>, method {e(seg['method'])}, manifest "
        f"{e(short(seg.get('manifest_hash')))}"
    )
    sens = "".join(
        table(
            "Sensitivity: examples that change stage under each method (sensitivity.md)",
            t["columns"],
            t["rows"],
            row_header=1,
            cls="compact",
        )
        for t in seg.get("sensitivity") or []
    )
    return (
        f'<h3 id="segment-{k}">Segmentation: {e(seg["name"])}</h3>'
        f"<p>{e(seg.get('examples') or '?')} examples; thresholds <strong>{e(thresholds)}</strong>; "
        f"method {e(seg['method'])}; stage manifest {e(short(seg.get('manifest_hash')))}.</p>"
        + figure_html(
            seg.get("density"),
            f"Density of the difficulty scores with the CDF, thresholds {thresholds} and the stages shaded (the paper's Figure 2).",
            "Figure 2. Difficulty scores: histogram, kernel density and CDF, thresholds and stages.",
            made,
            f"density-{k}",
        )
        + t1_html
        + sens
        + (
            f"<p>Train on it: <code>{e(seg['train_command'])}</code></p>"
            if seg.get("train_command")
            else ""
        )
    )


def runs_html(model: dict[str, Any]) -> str:
    runs = model["runs"]
    if not runs:
        return '<p class="note">No run directory found under the sweep.</p>'
    summary = table(
        "The sweep's runs",
        [
            "run",
            "ordering",
            "seed",
            "config",
            "git",
            "manifest",
            "stage policy",
            "replay",
            "final accuracy (held-out)",
            "in this evaluation",
        ],
        [
            [
                r["name"],
                r["ordering"],
                "" if r["seed"] is None else str(r["seed"]),
                r["config_hash"] or "-",
                r["git"] or "-",
                short(r["manifest_hash"]),
                r["stage_policy"],
                r["replay"],
                "-" if r["final_accuracy"] is None else f"{r['final_accuracy']:.1%}",
                "yes" if r["in_evaluation"] else "no",
            ]
            for r in runs
        ],
        table_id="table-runs",
        row_header=1,
        cls="compact",
        note="Per run: its ordering and seed, the config hash its directory is named by, the "
        "code's git revision, the stage manifest, how each stage continues from the one before "
        "(<code>trainer.stage_policy</code>) and the replay of earlier stages "
        "(<code>replay</code>). Each run's stages follow.",
    )
    parts = [summary]
    for k, r in enumerate(runs):
        stages = table(
            f"Stages of {e(r['name'])}",
            [
                "stage",
                "name",
                "examples",
                "tokens",
                "target tokens",
                "steps",
                "data order sha256",
                "mixture",
                "audit",
            ],
            [
                [
                    str(s["index"]),
                    str(s["name"]),
                    "" if s["examples"] is None else str(s["examples"]),
                    "" if s["tokens"] is None else str(s["tokens"]),
                    "" if s["target_tokens"] is None else str(s["target_tokens"]),
                    "-" if s["steps"] is None else str(s["steps"]),
                    short(s["order_sha256"], 16),
                    ", ".join(f"{a}: {b}" for a, b in (s["mixture"] or {}).items()) or "-",
                    "fed = plan"
                    if s["fed_matches_plan"]
                    else ("unfinished" if not s["finished"] else "-"),
                ]
                for s in r["stages"]
            ],
            table_id=f"stages-{k}",
            row_header=1,
            sortable=False,
            cls="compact",
        )
        forgetting = ""
        if r["forgetting"]:
            f = r["forgetting"]
            forgetting = table(
                f"Forgetting matrix of {e(r['name'])} (forgetting.csv)",
                f["columns"],
                [
                    [shown(c, v) for c, v in zip(f["columns"], row, strict=False)]
                    for row in f["rows"]
                ],
                raw=f["rows"],
                note="Held-out loss of each group (columns) after each stage (rows): a column "
                "that rises after its own stage is forgetting, one that falls before it transfer."
                + (
                    " Forgetting per group (loss after the last stage minus its lowest): "
                    + ", ".join(f"{e(g)} {v:+.3g}" for g, v in r["forgetting_by_group"].items())
                    + "."
                    if r["forgetting_by_group"]
                    else ""
                ),
                table_id=f"forgetting-{k}",
                row_header=2,
                sortable=False,
                cls="compact",
            )
        fig = figure_html(
            r["forgetting_png"],
            f"Held-out loss per group after each stage of run {r['name']}.",
            f"Forgetting: held-out loss per group after each stage of <code>{e(r['name'])}</code>.",
            f"run <code>{e(r['name'])}</code> (config {e(r['config_hash'])})",
            f"forgetting-fig-{k}",
        )
        parts.append(
            f'<details class="run" id="run-{k}"{" open" if r["in_evaluation"] else ""}>'
            f'<summary><span class="h4">{e(r["name"])}</span> {e(r["ordering"])}, '
            f"{len(r['stages'])} stage(s){'' if r['finished'] else ', unfinished'}</summary>"
            f"<p><code>{e(r['path'])}</code>; stage policy: {e(r['stage_policy'])}; replay: {e(r['replay'])}</p>"
            + stages
            + forgetting
            + fig
            + "</details>"
        )
    return "".join(parts)


def growth_html(model: dict[str, Any]) -> str:
    g = model.get("growth")
    if not g:
        return ""
    tab = g.get("csv")
    return (
        "<h3 id=growth>Growth curves</h3>"
        + figure_html(
            g.get("png"),
            "Final held-out loss and accuracy against the number of training examples, one line per configuration.",
            "Growth: final held-out figures by training-set size (growth.csv).",
            "the sweep's runs (python -m phasedsft.train.curves growth)",
            "growth",
        )
        + (
            table(
                "growth.csv",
                tab["columns"],
                [
                    [shown(c, v) for c, v in zip(tab["columns"], r, strict=False)]
                    for r in tab["rows"]
                ],
                raw=tab["rows"],
                table_id="table-growth",
                cls="compact",
            )
            if tab
            else ""
        )
    )


def plan(model: dict[str, Any]) -> str:
    segs = "".join(segment_html(s, k) for k, s in enumerate(model["segments"])) or (
        '<p class="note">No segment run found (no density.png / table1.csv beside the runs\' '
        "stage manifest or under <code>segment/</code>).</p>"
    )
    return segs + "<h3 id=runs>Runs and their stages</h3>" + runs_html(model) + growth_html(model)


# ---------------------------------------------------------------- judged items


JUDGED = """
<p>Each item: the question, both answers side by side (A = the candidate checkpoint, B = the
baseline's final weights), both reviews (A shown first, then B shown first) with their scores,
and the verdict the two fold into under the <code>{rule}</code> rule. <em>Position-inconsistent</em>:
the two orders disagree. The address bar holds the view (a permalink); each item has its own.</p>
<noscript><p class="warn">The item browser needs JavaScript; the items are in
<code>comparisons/&lt;set&gt;/&lt;label&gt;.jsonl</code>.</p></noscript>
<form id="j-controls" class="controls">
  <label>Test set <select id="f-set"></select></label>
  <label>Comparison <select id="f-cmp"></select></label>
  <label>Verdict <select id="f-verdict">
    <option value="">all</option><option value="win">win</option><option value="tie">tie</option>
    <option value="loss">loss</option><option value="inconsistent">position-inconsistent</option>
    <option value="unparsed">unparsed / void</option></select></label>
  <label>Category <select id="f-cat"></select></label>
  <label>Search <input id="f-q" type="search" placeholder="words in question or answers"></label>
  <label>Sort <select id="f-sort">
    <option value="file">as judged</option>
    <option value="ldiff-desc">length A − B, largest first</option>
    <option value="ldiff-asc">length A − B, smallest first</option>
    <option value="labs-desc">|length A − B|, largest first</option></select></label>
  <label>Per page <select id="f-size"><option>10</option><option selected>25</option>
    <option>50</option><option>100</option></select></label>
</form>
<div id="j-summary" class="counts" aria-live="polite"></div>
<p id="j-status" class="status" role="status" aria-live="polite"></p>
<nav id="j-pages-top" class="pages" aria-label="Pages of judged items (top)"></nav>
<div id="j-list"></div>
<nav id="j-pages" class="pages" aria-label="Pages of judged items"></nav>
"""


def judged(model: dict[str, Any]) -> str:
    n = len(model["items"])
    mismatch = [c for c in model["comparisons"] if c.get("counts_match") is False]
    warn = ""
    if mismatch:
        warn = (
            '<p class="warn">The verdicts re-folded here differ from the figures evaluate.py '
            "wrote for: "
            + ", ".join(f"<code>{e(c['set'])}/{e(c['label'])}</code>" for c in mismatch)
            + " (the <code>authors</code> rule parses reviews its own way).</p>"
        )
    if not n:
        return warn + '<p class="note">No judged item (no comparisons/&lt;set&gt;/*.jsonl).</p>'
    return warn + JUDGED.format(rule=e(model["rule"]))


# ---------------------------------------------------------------- provenance


def provenance(model: dict[str, Any]) -> str:
    cmds = model["commands"]
    runs = [r for r in model["runs"] if r["in_evaluation"]]
    rows = [
        [
            r["name"],
            r["config_hash"] or "-",
            short(r["config_sha256"]),
            r["git"] or "-",
            short(r["manifest_hash"]),
        ]
        for r in runs
    ]
    sources = [[s["path"], short(s["sha256"], 16)] for s in model["sources"]]
    return (
        "<p>Regenerate this page:</p>"
        f'<pre id="cmd-report"><code>{e(cmds["report"])}</code></pre>'
        + (
            "<p>The evaluation it reads was made by:</p>"
            f'<pre id="cmd-evaluate"><code>{e(cmds["evaluate"])}</code></pre>'
            if cmds.get("evaluate")
            else ""
        )
        + f"<p>Judge <code>{e(model['judge'])}</code>, folding rule <code>{e(model['rule'])}</code>, "
        f"baseline ordering <code>{e(model['baseline'])}</code>, checkpoints "
        f"<code>{e(model.get('checkpoints') or '-')}</code>; evaluation folder "
        f"<code>{e(model['eval_dir'])}</code> (its config sha256 {e(short(model.get('evaluation_config_sha256')))}); "
        f"sweep <code>{e(model['sweep_dir'])}</code>.</p>"
        + table(
            "Runs in this evaluation: config hash (the run's name), sha256 of its config.yaml, "
            "git revision, stage manifest",
            ["run", "config hash", "config.yaml sha256", "git", "manifest"],
            rows,
            table_id="table-provenance",
            row_header=1,
            cls="compact",
        )
        + table(
            "Files read (sha256)",
            ["file", "sha256"],
            sources,
            table_id="table-sources",
            row_header=1,
            sortable=False,
            cls="compact",
        )
        + f'<p class="note">Generated {e(model.get("generated", ""))} by phasedsft '
        f"{e(model.get('version', ''))}; one file: figures embedded, no network access "
        "(the page's security policy allows none).</p>"
    )


# ---------------------------------------------------------------- the page


def script_hash(js: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()


def render(model: dict[str, Any]) -> str:
    """The whole page as one string."""
    data = {
        k: model[k]
        for k in ("comparisons", "items", "strings", "item_fields", "verdicts", "rule", "baseline")
    }
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src '{script_hash(JS)}'; base-uri 'none'; form-action 'none'"
    )
    nav = "".join(
        f'<li><a href="#{sid}">{k}. {e(name)}</a></li>' for k, (sid, name) in enumerate(SECTIONS, 1)
    )
    bodies = {
        "headline": headline(model),
        "plan": plan(model),
        "judged": judged(model),
        "provenance": provenance(model),
    }
    sections = "".join(
        f'<section id="{sid}" aria-labelledby="{sid}-h"><h2 id="{sid}-h">{k}. {e(name)}</h2>{bodies[sid]}</section>'
        for k, (sid, name) in enumerate(SECTIONS, 1)
    )
    n_items = len(model["items"])
    n_cmp = len(model["comparisons"])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(model['title'])}</title><style>{CSS}</style></head><body>"
        '<a class="skip" href="#judged">Skip to the judged items</a>'
        f"<header><h1>{e(model['title'])}</h1>"
        f'<p class="meta">Judge <strong>{e(model["judge"])}</strong> · rule '
        f"<strong>{e(model['rule'])}</strong> · baseline <strong>{e(model['baseline'])}</strong> · "
        f"{n_cmp} comparisons · {n_items} judged items · sweep <code>{e(model['sweep_dir'])}</code></p>"
        f'<nav aria-label="Sections"><ol>{nav}</ol></nav></header>'
        f"<main>{sections}</main>"
        f'<script type="application/json" id="report-data">{json_for_script(data)}</script>'
        f"<script>{JS}</script></body></html>\n"
    )
