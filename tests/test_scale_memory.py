"""What keeps a million rows affordable (issue #25 item 4), as structure: the sizes and times
themselves are measured by benchmarks/bench_scale.py, never here."""

from __future__ import annotations

import inspect
import json
import pickle
from array import array

import pytest

from phasedsft.llm.cache import Result
from phasedsft.llm.engine import ComputedResults, RunStats
from phasedsft.prompts import IGNORE_INDEX, Encoded
from phasedsft.records import Example
from phasedsft.score.base import OracleScorer
from phasedsft.score.run import iter_scored_rows, scored_rows, write_jsonl, write_scored


def examples(n: int) -> list[Example]:
    return [Example(str(i), f"do {i}", "", f"done {i}", score=float(1 + i % 5)) for i in range(n)]


def test_computed_results_read_as_the_list_of_results_they_replace():
    ids, scores = ["a", "b", "c"], [2.0, None, 4.5]
    lazy = ComputedResults(ids, "length", scores)
    eager = [
        Result(i, i, "length", "ok" if s is not None else "failed", s)
        for i, s in zip(ids, scores, strict=True)
    ]
    assert len(lazy) == 3 and list(lazy) == eager
    assert [lazy[k] for k in range(-3, 3)] == eager + eager
    assert lazy[1:] == eager[1:]
    with pytest.raises(IndexError):
        lazy[3]
    assert RunStats(ordered=lazy).raw_scores() == RunStats(ordered=eager).raw_scores()
    with pytest.raises(ValueError):
        ComputedResults(ids, "length", scores[:2])


def test_a_computed_scorer_keeps_no_result_object_per_example():
    stats = OracleScorer().run(examples(4), None)
    assert isinstance(stats.ordered, ComputedResults)
    assert stats.raw_scores() == [1.0, 2.0, 3.0, 4.0]
    assert [r.example_id for r in stats.ordered] == ["0", "1", "2", "3"]


def test_scored_rows_are_streamed_to_the_file_and_counted(tmp_path):
    exs = examples(5)
    scores = [1.0, None, 3.0, None, 5.0]
    results = [
        Result(ex.id, ex.id, "s", "failed" if s is None else "ok", s, error="bad" if s else None)
        for ex, s in zip(exs, scores, strict=True)
    ]
    results[3] = None  # not scored at all: neither row
    rows = iter_scored_rows(exs, scores, results, ())
    assert inspect.isgenerator(rows)  # one row at a time, never a list of every row
    ok, failures = write_scored(tmp_path / "scored.jsonl", rows)
    scored, expected_failures = scored_rows(exs, scores, results, ())
    write_jsonl(tmp_path / "listed.jsonl", scored)
    assert (tmp_path / "scored.jsonl").read_bytes() == (tmp_path / "listed.jsonl").read_bytes()
    assert ok == len(scored) == 3
    assert failures == expected_failures == [{"id": "1", "reason": None, "raw": None}]
    assert [json.loads(x)["id"] for x in (tmp_path / "scored.jsonl").open()] == ["0", "2", "4"]


def test_encoded_keeps_32_bit_arrays_and_reads_back_as_lists():
    enc = Encoded([5, 70000, 9], [IGNORE_INDEX, 70000, 9], truncated=True)
    assert isinstance(enc._ids, array) and enc._ids.itemsize == 4
    assert not hasattr(enc, "__dict__")
    assert enc.input_ids == [5, 70000, 9] and type(enc.input_ids) is list
    assert enc.labels == [IGNORE_INDEX, 70000, 9]
    assert (enc.n_tokens, enc.n_target, enc.truncated) == (3, 2, True)
    assert enc == Encoded([5, 70000, 9], [IGNORE_INDEX, 70000, 9], True)
    assert enc != Encoded([5, 70000, 9], [IGNORE_INDEX, 70000, 9], False)
    assert pickle.loads(pickle.dumps(enc)) == enc  # DataLoader workers get it pickled
    enc.input_ids.append(1)  # a copy: the encoding itself does not change
    assert enc.n_tokens == 3


def test_tinys_tokenizer_learns_from_the_first_max_texts_and_small_sets_keep_theirs(tmp_path):
    """model=tiny's BPE learns from the first ``max_texts`` texts (training on a million took
    most of a first segment.py run): the same tokenizer as trained on those texts alone, and a
    set no larger than the cap keeps the cache key (so the tokenizer) it had before the cap."""
    from phasedsft.io import sha256_lines
    from phasedsft.models import TOKENIZER_VERSION, BuildContext, ModelError, train_bpe_tokenizer

    texts = [f"example {i} says {'ab' * (i % 7)}" for i in range(20)]
    texts += [f"quux zvxw {'qz' * (i % 9)} jjkk" for i in range(40)]  # merges of their own

    def trained(cache: str, corpus: list[str], **kw):
        ctx = BuildContext(tmp_path / cache, 0, lambda: iter(corpus))
        tok = train_bpe_tokenizer(ctx, vocab_size=300, **kw)
        (key,) = [p.name for p in (tmp_path / cache / "tokenizers").iterdir()]
        return tok, key

    capped, capped_key = trained("capped", texts, max_texts=20)
    alone, alone_key = trained("alone", texts[:20])
    assert capped_key == alone_key and capped.get_vocab() == alone.get_vocab()
    whole, whole_key = trained("whole", texts)
    assert whole.get_vocab() != capped.get_vocab()  # the cap is what made the difference
    before = sha256_lines([f"v{TOKENIZER_VERSION}", "300", "2", *texts])[:16]
    assert whole_key == before  # 60 texts, under the default cap: the key of every text
    with pytest.raises(ModelError, match="max_texts=0"):
        trained("none", texts, max_texts=0)


def test_a_manifest_read_back_shares_its_id_strings_and_keeps_its_hash(tmp_path):
    """JSON gives each of an id's three occurrences (difficulty, random, equal-random stages)
    a string of its own; read back, the random stages hold the difficulty stages' strings."""
    from phasedsft.io import atomic_write_json
    from phasedsft.segment.manifest import StageManifest, build_manifest
    from phasedsft.segment.methods import ManualThresholds

    built = build_manifest(examples(300), ManualThresholds([1.5, 3.5]), random_seed=0)
    path = tmp_path / "manifest.json"
    atomic_write_json(path, built.to_json())
    read = StageManifest.load(path)  # raises if the content no longer hashes to its hash
    assert read.to_json() == built.to_json()
    first = {id(i) for stage in read.stages for i in stage}
    for groups in (read.random_stages, read.random_equal_stages):
        assert all(id(i) in first for g in groups for i in g)
    assert len(first) == 300
