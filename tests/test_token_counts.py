"""Batched token counting and its content-keyed cache count exactly as the tokenizer does."""

from __future__ import annotations

from phasedsft.data.tokens import cache_path, token_counts
from phasedsft.records import Example
from phasedsft.score.base import apply_scores

TEXTS = [
    "Write a poem.\n\nRoses are red",
    "",
    "Explain 1234 + 5678\nin words\nIt is 6912.",
    "Write a poem.\n\nRoses are red",  # a repeat
    "naïve café – ünïcödé ✓",
]


def reference(tokenizer, texts):
    return [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def test_counts_match_the_tokenizer_in_any_batch_size(tiny_tokenizer):
    texts = TEXTS * 7
    want = reference(tiny_tokenizer, texts)
    for batch in (1, 3, 2048):
        assert token_counts(tiny_tokenizer, texts, batch_size=batch) == want
    assert token_counts(tiny_tokenizer, iter(texts)) == want  # a stream works too
    assert token_counts(tiny_tokenizer, []) == []


def test_cache_reuses_counts_by_content_and_tokenizer(tiny_tokenizer, tmp_path):
    want = reference(tiny_tokenizer, TEXTS)
    assert token_counts(tiny_tokenizer, TEXTS, tmp_path, batch_size=2) == want
    path = cache_path(tiny_tokenizer, tmp_path)
    assert path is not None and path.exists()

    class Counting:  # the same tokenizer, recording what it still has to encode
        is_fast = True

        def __init__(self) -> None:
            self.backend_tokenizer = self
            self.truncation = self.padding = None
            self.seen: list[str] = []

        def to_str(self) -> str:
            return tiny_tokenizer.backend_tokenizer.to_str()

        def encode_batch_fast(self, batch, add_special_tokens):
            self.seen += batch
            return tiny_tokenizer.backend_tokenizer.encode_batch_fast(
                batch, add_special_tokens=add_special_tokens
            )

    tok = Counting()
    assert cache_path(tok, tmp_path) == path  # keyed by the tokenizer's definition
    more = [*TEXTS, "a new text"]
    assert token_counts(tok, more, tmp_path) == reference(tiny_tokenizer, more)
    assert tok.seen == ["a new text"]  # everything else came from the cache


def test_a_damaged_cache_is_recounted(tiny_tokenizer, tmp_path):
    path = cache_path(tiny_tokenizer, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a cache")
    assert token_counts(tiny_tokenizer, TEXTS, tmp_path) == reference(tiny_tokenizer, TEXTS)


def test_slow_tokenizer_is_counted_through_its_call_and_not_cached(tiny_tokenizer, tmp_path):
    class Slow:
        is_fast = False

        def __call__(self, texts, add_special_tokens):
            return tiny_tokenizer(texts, add_special_tokens=add_special_tokens)

    assert token_counts(Slow(), TEXTS, tmp_path) == reference(tiny_tokenizer, TEXTS)
    assert cache_path(Slow(), tmp_path) is None
    assert not (tmp_path / "token_counts").exists()


def test_truncating_backend_is_counted_through_the_tokenizer_call(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.enable_truncation(max_length=3)  # __call__ turns it off
    long = ["one two three four five six seven"]
    assert token_counts(tok, long) == reference(tiny_tokenizer, long)


def test_apply_scores_keeps_examples_that_already_carry_the_score():
    a, b = Example("a", "q", "", "x", score=2.0), Example("b", "q", "", "y", score=1.0)
    out = apply_scores([a, b], [2.0, 3.0], "test")
    assert out[0] is a and out[1] == Example("b", "q", "", "y", score=3.0)


def test_table1_counts_each_stages_instruction_input_and_output(tiny_tokenizer, tmp_path):
    """Table 1's mean tokens per stage: instruction, input and output of each example, counted
    as the tokenizer counts them, the same with the count cache cold and warm."""
    from phasedsft.segment.run import stage_table, table_text

    exs = [
        Example(
            str(i), f"Task {i}: {TEXTS[i % 5]}", "some input" if i % 2 else "", f"Answer {i}.", s
        )
        for i, s in enumerate([1.0, 2.0, 4.5, 1.5, 3.0, 5.0])
    ]
    assert table_text(exs[1]) == "Task 1: \nsome input\nAnswer 1."
    stages = [["0", "3"], ["1", "4"], ["2", "5"]]
    by_id = {e.id: e for e in exs}
    want = [
        sum(reference(tiny_tokenizer, [table_text(by_id[x]) for x in ids])) / len(ids)
        for ids in stages
    ]
    for cache in (None, tmp_path, tmp_path):  # uncached, then a cold and a warm cache
        rows = stage_table(exs, stages, tiny_tokenizer, cache)
        assert [r["mean_tokens"] for r in rows] == want
        assert [r["count"] for r in rows] == [2, 2, 2]
        assert [r["mean_difficulty"] for r in rows] == [1.25, 2.5, 4.75]
