"""Judges: reviews in both orders that the win-rate parser reads; request planning and keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import compose

from phasedsft.evaluate.judges import (
    OpenAIJudge,
    Pair,
    ReferenceJudge,
    format_question,
    judge_messages,
)
from phasedsft.evaluate.winrate import LOSE, TIE, WIN, judge_item, summarize
from phasedsft.llm.cache import ScoreCache
from phasedsft.records import DataError

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
    swapped = Pair("other-id", PAIRS[0].instruction, PAIRS[0].answer_b, PAIRS[0].answer_a)
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


# ------------------------------------------------------------------ the authors' judge

# What xubuvd/PhasedSFT evaluation/eval.py sends GPT-4, written out by hand from the file:
# system prompt :58; user template :59 "[Question]\n{question}\n\n[The Start of Assistant 1's
# Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's
# Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n[System]\n{criteria}\n\n";
# criteria :61; question :142-153 = "{instruction} Input: {input}" when the item has an input;
# messages [system, user] :158-162; request: temperature 0.0, max_tokens (256 from
# run_gpt4_scoring.sh:15/17, eval.py:92 default), top_p 1.0 (:179-181), model gpt-4-0613
# (run_gpt4_scoring.sh:12); answer 1 = the -i1 file (:155), both orders by swapping files.
AUTHORS_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
AUTHORS_USER_SINSTRUCT = (
    "[Question]\nRewrite the sentence in the passive voice. Input: The cat chased the mouse.\n\n"
    "[The Start of Assistant 1's Answer]\nThe mouse was chased by the cat.\n\n"
    "[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\nThe cat was chasing.\n\n"
    "[The End of Assistant 2's Answer]\n\n"
    "[System]\nWe would like to request your feedback on the performance of two AI assistants "
    "in response to the user question displayed above.\nPlease rate the helpfulness, relevance, "
    "accuracy, level of details of their responses. Each assistant receives an overall score on "
    "a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease only "
    "output a single line containing only two values indicating the scores for Assistant 1 and "
    "2, respectively. The two scores are separated by a space. Do not explain for your scores."
    "\n\n"
)
SINSTRUCT = Pair(
    "user_oriented_task_7",
    "Rewrite the sentence in the passive voice.",
    "The mouse was chased by the cat.",
    "The cat was chasing.",
    input="The cat chased the mouse.",
)


def test_authors_style_sends_exactly_the_authors_messages():
    assert judge_messages(SINSTRUCT, "ab", style="authors") == [
        {"role": "system", "content": AUTHORS_SYSTEM},
        {"role": "user", "content": AUTHORS_USER_SINSTRUCT},
    ]
    # the other order: the answers swap, nothing else changes
    ba = judge_messages(SINSTRUCT, "ba", style="authors")[1]["content"]
    assert ba == AUTHORS_USER_SINSTRUCT.replace("The mouse was chased by the cat.", "@").replace(
        "The cat was chasing.", "The mouse was chased by the cat."
    ).replace("@", "The cat was chasing.")
    # no input (Koala, Vicuna, WizardLM, LIMA; OASST / Anthropic rows without one): the
    # instruction alone (eval.py:145, :151, :153)
    assert format_question(Pair("k", "Tell a joke.", "a", "b"), "authors") == "Tell a joke."
    # ours: the input in its own paragraph
    assert format_question(SINSTRUCT, "vicuna") == (
        "Rewrite the sentence in the passive voice.\n\nThe cat chased the mouse."
    )


class FakeCompletions:
    def __init__(self):
        self.calls = []

    async def create(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content="8 6"))],
            usage=SimpleNamespace(prompt_tokens=100, completion_tokens=2),
        )


def test_judge_gpt4_composes_to_the_authors_request(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    cfg = compose(["eval_set=paper", "judge=gpt4"], config_name="evaluate")
    assert (cfg.judge.style, cfg.judge.max_tokens, cfg.judge.temperature) == ("authors", 256, 0.0)
    assert (cfg.judge.model, cfg.judge.top_p, cfg.judge.seed) == ("gpt-4-0613", 1.0, None)
    judge = instantiate(cfg.judge)
    fake = FakeCompletions()
    monkeypatch.setattr(
        judge, "client", lambda role: SimpleNamespace(chat=SimpleNamespace(completions=fake))
    )
    run = judge.judge_pairs([SINSTRUCT], ScoreCache(tmp_path / "c.sqlite"))
    assert [r.review_ab for r in run.reviews] == ["8 6"]
    first = next(
        c
        for c in fake.calls
        if "chased by the cat.\n\n[The End of Assistant 1" in c["messages"][1]["content"]
    )
    assert first == {
        "model": "gpt-4-0613",
        "messages": [
            {"role": "system", "content": AUTHORS_SYSTEM},
            {"role": "user", "content": AUTHORS_USER_SINSTRUCT},
        ],
        "max_tokens": 256,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    assert len(fake.calls) == 2


def test_our_vicuna_judge_stays_available_and_styles_do_not_share_replies():
    ours = compose(["judge=gpt4_vicuna"], config_name="evaluate").judge
    assert (ours.style, ours.max_tokens, ours.model) == ("vicuna", 512, "gpt-4-0613")
    assert compose(["judge=gpt4", "judge.style=vicuna"], config_name="evaluate").judge.style == (
        "vicuna"
    )
    local = compose(["judge=local"], config_name="evaluate").judge
    assert (local.style, local.structured) == ("vicuna", True)
    # same settings but the prompt: different cache keys
    a = OpenAIJudge(style="authors").jobs([SINSTRUCT])
    v = OpenAIJudge(style="vicuna").jobs([SINSTRUCT])
    assert {j.key for j in a}.isdisjoint(j.key for j in v)
    assert (
        "Do not explain"
        in judge_messages(SINSTRUCT, "ab", structured=True, style="authors")[1]["content"]
    )
    with pytest.raises(DataError, match=r"unknown judge\.style 'authrs'"):
        OpenAIJudge(style="authrs")


def test_vicuna_cache_keys_did_not_change():
    """Replies cached before the styles existed stay reusable (same identity, same question)."""
    from phasedsft.io import sha256_json

    judge = OpenAIJudge(max_tokens=512)
    ident = {
        "judge": "pairwise",
        "model": "gpt-4-0613",
        "prompt": "pairwise-v1",
        "temperature": 0.0,
        "max_tokens": 512,
        "seed": 0,
        "structured": False,
    }
    question = "Rewrite the sentence in the passive voice.\n\nThe cat chased the mouse."
    key = sha256_json({"judge": ident, "shown": [question, SINSTRUCT.answer_a, SINSTRUCT.answer_b]})
    assert judge.jobs([SINSTRUCT])[0].key == key


class ScriptedCompletions(FakeCompletions):
    """Replies in turn: the first unparseable, then a usable one."""

    def __init__(self, replies):
        super().__init__()
        self.replies = list(replies)

    async def create(self, **kwargs):
        self.calls.append(kwargs)
        text = self.replies.pop(0) if self.replies else "8 6"
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content=text))],
            usage=SimpleNamespace(prompt_tokens=100, completion_tokens=2),
        )


def test_the_authors_accounting_reads_the_first_reply_as_their_script_records_it(
    tmp_path, monkeypatch
):
    """#23 item 6: their script never asks again, so an unparseable first reply is void for it
    (kept in N); ours asks again at another temperature. The review is the usable reply, the
    first reply is kept beside it, and the authors' figure reads the first."""
    from hydra.utils import instantiate

    judge = instantiate(compose(["eval_set=paper", "judge=gpt4"], config_name="evaluate").judge)
    fake = ScriptedCompletions(["Both are good.", "8 6"])  # order ab: asked twice; ba: "8 6"
    monkeypatch.setattr(
        judge, "client", lambda role: SimpleNamespace(chat=SimpleNamespace(completions=fake))
    )
    cache = ScoreCache(tmp_path / "c.sqlite")
    [rv] = judge.judge_pairs([SINSTRUCT], cache).reviews
    assert (rv.review_ab, rv.first(0)) == ("8 6", "Both are good.")
    assert rv.first(1) == rv.review_ba == "8 6"
    assert fake.calls[1]["temperature"] > 0  # the retry, at another temperature
    item = judge_item(rv.id, rv.review_ab, rv.review_ba, first_ab=rv.first_ab)
    assert summarize([item], "paper", 10).n == 1
    authors = summarize([item], "authors", 10)
    assert (authors.n, authors.wins, authors.ties, authors.losses) == (1, 0, 0, 0)  # void, in N
    # a rerun reads both from the cache: nothing asked again
    [again] = judge.judge_pairs([SINSTRUCT], cache).reviews
    assert (again.review_ab, again.first(0)) == ("8 6", "Both are good.") and len(fake.calls) == 3
