"""Judges: reviews in both orders that the win-rate parser reads; request planning and keys."""

from __future__ import annotations

import pytest

from phasedsft.judges import OpenAIJudge, Pair, ReferenceJudge, judge_messages
from phasedsft.records import DataError
from phasedsft.scoring.cache import ScoreCache
from phasedsft.winrate import LOSE, TIE, WIN, judge_item, summarize

PAIRS = [
    Pair("1", "Spell 'cat' backwards.", "tac", "cat", "tac"),  # A right, B wrong
    Pair("2", "Upper-case 'a'.", "B", "A", "A"),  # A wrong, B right
    Pair("3", "Repeat 'x'.", " X \n(done)", "x", "x"),  # both right (case, spaces, 2nd line)
    Pair("4", "First word of 'b c'?", "c", "d", "b"),  # both wrong
]


def test_reference_judge_reviews_fold_to_the_expected_outcomes():
    run = ReferenceJudge().judge_pairs(PAIRS)
    judged = [judge_item(r.id, r.review_ab, r.review_ba) for r in run.reviews]
    assert [j.verdicts() for j in judged] == [(WIN, WIN), (LOSE, LOSE), (TIE, TIE), (TIE, TIE)]
    w = summarize(judged, resamples=100)
    assert (w.wins, w.ties, w.losses, w.position_consistency) == (1, 2, 1, 1.0)
    # In the review, the answer shown first is scored first.
    assert run.reviews[0].review_ab.startswith("1 0") and run.reviews[0].review_ba.startswith("0 1")


def test_reference_judge_needs_references():
    with pytest.raises(DataError, match="judge=reference needs reference answers; 1 items"):
        ReferenceJudge().judge_pairs([Pair("q", "open question", "a", "b")])


def test_prompt_shows_the_answers_in_the_asked_order():
    pair = PAIRS[0]
    ab = judge_messages(pair, "ab")[1]["content"]
    ba = judge_messages(pair, "ba")[1]["content"]
    assert ab.index("Assistant 1's Answer]\ntac") < ab.index("Assistant 2's Answer]\ncat")
    assert ba.index("Assistant 1's Answer]\ncat") < ba.index("Assistant 2's Answer]\ntac")
    assert "single line containing only two values" in ab
    assert "JSON" in judge_messages(pair, "ab", structured=True)[1]["content"]


def test_openai_judge_plans_two_requests_per_item_keyed_by_what_is_shown(tmp_path):
    judge = OpenAIJudge(price={"input_per_1k": 0.03, "output_per_1k": 0.06}, max_tokens=100)
    jobs = judge.jobs(PAIRS)
    assert len(jobs) == 8 and len({j.key for j in jobs}) == 8
    assert [j.example[1] for j in jobs[:2]] == ["ab", "ba"]
    # The same two answers shown in the same order make the same request: same cache key.
    swapped = Pair("other-id", PAIRS[0].question, PAIRS[0].answer_b, PAIRS[0].answer_a)
    assert judge.jobs([swapped])[1].key == jobs[0].key
    # Settings that change replies change the key; spending settings do not.
    assert OpenAIJudge(model="gpt-4o").jobs(PAIRS)[0].key != jobs[0].key
    assert (
        OpenAIJudge(max_tokens=100, budget_usd=1, concurrency=2).jobs(PAIRS)[0].key == jobs[0].key
    )
    est = judge.estimate(PAIRS, ScoreCache(tmp_path / "c.sqlite"))
    assert est["to_request"] == 8 and est["est_cost_usd_upper_bound"] > 0


def test_openai_judge_without_a_key_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(
        DataError, match="judge=gpt4 needs an API key in the environment variable OPENAI_API_KEY"
    ):
        OpenAIJudge(name="gpt4").judge_pairs(PAIRS, ScoreCache(tmp_path / "c.sqlite"))
