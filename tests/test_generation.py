"""Answers from a saved checkpoint: left-padded batches, resume after a crash, context limits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from omegaconf import DictConfig, OmegaConf

from phasedsft.data.graded import generate_suite
from phasedsft.evaluate.generation import (
    Checkpoint,
    HFGenerator,
    Lengths,
    answers_for,
    discover_runs,
)
from phasedsft.evaluate.sets import EvalSet
from phasedsft.records import DataError

RUN_CONFIG = OmegaConf.create({"prompt": {"_target_": "phasedsft.prompts.AlpacaTemplate"}})


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, tiny_tokenizer):
    """A saved random-init tiny Llama + its tokenizer, laid out like a finished stage."""
    from phasedsft.models import BuildContext, scratch_llama

    d = tmp_path_factory.mktemp("run") / "stage_1_all"
    ctx = BuildContext(d, 0, list)
    model = scratch_llama(ctx, tiny_tokenizer, 32, 64, 2, 2, 2, max_position_embeddings=512)
    torch.manual_seed(0)
    with (
        torch.no_grad()
    ):  # larger random weights: varied greedy answers instead of one repeated token
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(d / "model")
    tiny_tokenizer.save_pretrained(d / "model")
    return d


def checkpoint(stage_dir, order="o1") -> Checkpoint:
    return Checkpoint("run-a", 1, "all", 1, stage_dir, order)


def eval_set(n=10) -> EvalSet:
    items = generate_suite(n, seed=3, split="eval").examples
    return EvalSet("held_out", items, ["level"])


def fresh(stage_dir):
    for f in (stage_dir / "generations").glob("*.json"):
        f.unlink()


def test_batched_left_padded_answers_equal_one_at_a_time(stage_dir):
    fresh(stage_dir)
    es = eval_set(12)
    one = answers_for(
        checkpoint(stage_dir, "a"), es, HFGenerator(max_new_tokens=8, batch_size=1), RUN_CONFIG
    )
    many = answers_for(
        checkpoint(stage_dir, "b"), es, HFGenerator(max_new_tokens=8, batch_size=5), RUN_CONFIG
    )
    assert [it["id"] for it in many.items] == [ex.id for ex in es.items]  # the set's order
    assert len({len(it["instruction"]) for it in many.items}) > 1  # prompts of different lengths
    assert [it["output"] for it in many.items] == [it["output"] for it in one.items]
    assert any(it["output"] for it in many.items)
    saved = json.loads(many.path.read_text())
    assert saved["complete"] and saved["checkpoint"] == "run-a/stage_1_all"


class Crash(RuntimeError):
    pass


class CrashingGenerator(HFGenerator):
    """Dies after ``survive`` chunks, like a preempted job."""

    def __init__(self, survive: int, **kw):
        super().__init__(**kw)
        self.survive, self.calls, self.prompts = survive, 0, 0

    def generate(self, model, tokenizer, prompts, budgets=None):
        if self.calls >= self.survive:
            raise Crash("killed")
        self.calls += 1
        self.prompts += len(prompts)
        return super().generate(model, tokenizer, prompts, budgets)


def test_a_crash_loses_at_most_one_chunk_and_resume_repeats_nothing(stage_dir):
    fresh(stage_dir)
    es = eval_set(10)
    opts = dict(max_new_tokens=6, batch_size=2, save_every=2)  # chunks of 4 prompts
    reference = answers_for(checkpoint(stage_dir, "ref"), es, HFGenerator(**opts), RUN_CONFIG)

    first = CrashingGenerator(survive=2, **opts)
    with pytest.raises(Crash):
        answers_for(checkpoint(stage_dir, "c"), es, first, RUN_CONFIG)
    partial = next(p for p in (stage_dir / "generations").glob("*.json") if p != reference.path)
    saved = json.loads(partial.read_text())
    assert not saved["complete"] and len(saved["items"]) == 8

    second = CrashingGenerator(survive=99, **opts)
    resumed = answers_for(checkpoint(stage_dir, "c"), es, second, RUN_CONFIG)
    assert second.prompts == 2  # only what was missing
    assert [it["output"] for it in resumed.items] == [it["output"] for it in reference.items]

    third = CrashingGenerator(survive=0, **opts)  # complete file: nothing generated, nothing loaded
    again = answers_for(checkpoint(stage_dir, "c"), es, third, RUN_CONFIG)
    assert again.items == resumed.items


def test_key_tracks_generation_settings_and_weights(stage_dir):
    es = eval_set(4)
    paths = {
        answers_for(
            checkpoint(stage_dir, order), es, HFGenerator(max_new_tokens=n), RUN_CONFIG
        ).path.name
        for order, n in [("k1", 4), ("k1", 5), ("k2", 4)]
    }
    assert len(paths) == 3


def test_long_prompts_keep_their_last_tokens_and_are_flagged(stage_dir, tiny_tokenizer):
    es = eval_set(6)
    long = es.items[0]
    es.items[0] = type(long)(
        long.id, long.instruction + " apple" * 600, long.input, long.output, meta=long.meta
    )
    out = answers_for(checkpoint(stage_dir, "long"), es, HFGenerator(max_new_tokens=8), RUN_CONFIG)
    first = out.items[0]
    assert first["prompt_truncated"] and first["prompt_tokens"] == 512 - 8
    assert not any(it["prompt_truncated"] for it in out.items[1:])
    assert json.loads(out.path.read_text())["prompts_truncated"] == 1
    with pytest.raises(DataError, match="leaves no room for a prompt"):
        answers_for(checkpoint(stage_dir, "x"), es, HFGenerator(max_new_tokens=510), RUN_CONFIG)


def test_discover_runs_needs_finished_stages(tmp_path):
    with pytest.raises(DataError, match="sweep_dir not found"):
        discover_runs(tmp_path / "nope")
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "run.json").write_text(
        json.dumps({"stages": [{"index": 1, "name": "all", "order_sha256": "x"}]})
    )
    (tmp_path / "r1" / "config.yaml").write_text("ordering: {name: one_off}\n")
    with pytest.raises(DataError, match=r"no finished training run .* \(1 unfinished\)"):
        discover_runs(tmp_path)
    stage = tmp_path / "r1" / "stage_1_all"
    (stage / "model").mkdir(parents=True)
    (stage / "stage.json").write_text(json.dumps({"status": "done"}))
    [run] = discover_runs(tmp_path)
    assert run.ordering == "one_off" and run.final.label == "r1/stage_1_all"


# ------------------------------------------------------------------ answer length per test set


def test_total_length_stops_where_transformers_max_length_does(stage_dir):
    """max_length = prompt + answer tokens, as the authors' model.generate(input_ids,
    max_length=1024) (xubuvd/PhasedSFT generation/generation_v2.py:148-151): batched and
    left-padded, each prompt stops where a lone transformers call with max_length stops."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phasedsft.evaluate.generation import _prompt_ids
    from phasedsft.prompts import AlpacaTemplate

    fresh(stage_dir)
    es = eval_set(8)
    model = AutoModelForCausalLM.from_pretrained(stage_dir / "model").eval()
    tok = AutoTokenizer.from_pretrained(stage_dir / "model")
    prompts = [_prompt_ids(ex, AlpacaTemplate(), tok) for ex in es.items]
    total = max(len(p) for p in prompts) + 3  # budgets from 3 to (longest - shortest + 3)
    assert len({total - len(p) for p in prompts}) > 1
    out = answers_for(
        checkpoint(stage_dir, "len"),
        es,
        HFGenerator(max_length=total, batch_size=3, device="cpu"),
        RUN_CONFIG,
    )
    reached = 0
    for ex, p, item in zip(es.items, prompts, out.items, strict=True):
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([p]), max_length=total, do_sample=False, pad_token_id=tok.pad_token_id
            )[0, len(p) :]
        assert len(ref) <= total - len(p)
        reached += len(ref) == total - len(p)
        assert item["output"] == tok.decode(ref, skip_special_tokens=True).strip(), ex.id
        assert item["max_answer_tokens"] == total - len(p)
    assert reached >= 2  # the limit, not an end-of-sequence token, stopped most answers


def test_a_sets_lengths_apply_unless_the_generator_gives_one():
    open_ended = {"max_length": 1024, "max_new_tokens": None}
    g = HFGenerator().lengths(open_ended)
    assert (g.max_length, g.max_new_tokens) == (1024, None)
    assert [g.budget(n, 4096) for n in (24, 1000, 1024, 2000)] == [1000, 24, 1, 1]
    assert g.budget(24, 512) == 488  # the context still applies
    assert HFGenerator().lengths({"max_new_tokens": 32}) == Lengths(32, None)
    # a value on the generator (generator.max_new_tokens=6) applies to every set; both limits hold
    both = HFGenerator(max_new_tokens=6).lengths(open_ended)
    assert both == Lengths(6, 1024) and both.budget(1020, None) == 4
    assert HFGenerator().lengths({}) == Lengths(512, None)  # nobody says: the default
    with pytest.raises(DataError, match="unknown generation setting 'max_tokens'"):
        HFGenerator().lengths({"max_tokens": 5})
    with pytest.raises(DataError, match="positive integer"):
        HFGenerator().lengths({"max_length": 0})


def test_answers_file_key_follows_the_sets_lengths(stage_dir):
    es = eval_set(3)
    keys = set()
    for generation in ({"max_new_tokens": 4}, {"max_length": 200}, {"max_length": 201}):
        es.generation = generation
        keys.add(answers_for(checkpoint(stage_dir, "k3"), es, HFGenerator(), RUN_CONFIG).path.name)
    assert len(keys) == 3
    # the same effective settings, from the set or from the generator: the same file
    es.generation = {}
    same = answers_for(checkpoint(stage_dir, "k3"), es, HFGenerator(max_new_tokens=4), RUN_CONFIG)
    assert same.path.name in keys


# ------------------------------------------------------------------ a process per checkpoint


def one_group(*runs):
    """generate_all's groups: the first run is the baseline, the others its candidates."""
    group = ("graded", "tiny", 0)
    return group, {group: (runs[0], list(runs[1:]))}


def hf_config(**options) -> DictConfig:
    target = "phasedsft.evaluate.generation.HFGenerator"
    return OmegaConf.create(
        {"generator": {"_target_": target, **options}, "export_alpacaeval": False}
    )


def test_generator_vllm_without_vllm_says_how_to_install_it(stage_dir, tmp_path):
    import importlib.util

    from hydra.utils import instantiate

    from phasedsft.evaluate.generation import Run
    from phasedsft.evaluate.run import generate_all

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    cfg = compose(["generator=vllm"], "evaluate")
    generator = instantiate(cfg.generator)
    assert generator.own_process  # vLLM: a process per checkpoint unless told otherwise
    with pytest.raises(DataError, match=r"pip install phasedsft\[vllm\]"):
        generator.load(stage_dir / "model")
    # evaluate.py says so before any checkpoint loads and before any process starts
    group, groups = one_group(Run(stage_dir.parent, RUN_CONFIG, [checkpoint(stage_dir, "v")]))
    job = OmegaConf.create({"generator": cfg.generator, "export_alpacaeval": False})
    with pytest.raises(DataError, match=r"pip install phasedsft\[vllm\]") as e:
        generate_all(job, groups, {group: [eval_set(2)]}, "final", tmp_path)
    assert "own process" not in str(e.value)


@pytest.mark.integration
def test_each_checkpoint_generates_in_a_process_of_its_own(
    stage_dir, tmp_path, monkeypatch, caplog
):
    """The mechanics vLLM uses (generator.own_process), driving generator=hf: the answers
    come back through the answers files, the same as generated here."""
    import logging
    import os
    import re

    from phasedsft.evaluate.generation import Run
    from phasedsft.evaluate.run import generate_all

    fresh(stage_dir)
    sets = [eval_set(6), EvalSet("other", generate_suite(4, seed=5, split="eval").examples)]
    opts = dict(max_new_tokens=6, batch_size=3, device="cpu")
    here = {
        s.name: answers_for(checkpoint(stage_dir, "here"), s, HFGenerator(**opts), RUN_CONFIG)
        for s in sets
    }

    def not_here(self, model_dir):
        raise AssertionError("a model was loaded in the evaluating process")

    monkeypatch.setattr(HFGenerator, "load", not_here)  # only a child process can generate now
    a = Run(stage_dir.parent, RUN_CONFIG, [Checkpoint("run-a", 1, "all", 1, stage_dir, "p1")])
    b = Run(stage_dir.parent, RUN_CONFIG, [Checkpoint("run-b", 1, "all", 1, stage_dir, "p2")])
    group, groups = one_group(a, b)
    with caplog.at_level(logging.INFO, logger="phasedsft.evaluate.generation"):
        got = generate_all(
            hf_config(**opts, own_process=True), groups, {group: sets}, "final", tmp_path
        )
    assert sorted(got) == sorted(
        (r, s.name) for r in ("run-a/stage_1_all", "run-b/stage_1_all") for s in sets
    )
    for (_, name), answers in got.items():
        assert [it["output"] for it in answers.items] == [it["output"] for it in here[name].items]
        assert json.loads(answers.path.read_text())["complete"]
    pids = [int(p) for p in re.findall(r"in its own process \(pid (\d+)\)", caplog.text)]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # one process per checkpoint

    caplog.clear()  # every answer is there: no process is started again
    with caplog.at_level(logging.INFO, logger="phasedsft.evaluate.generation"):
        again = generate_all(
            hf_config(**opts, own_process=True), groups, {group: sets}, "final", tmp_path
        )
    assert "own process" not in caplog.text
    assert {k: v.items for k, v in again.items()} == {k: v.items for k, v in got.items()}


@pytest.mark.integration
def test_a_failure_in_a_checkpoints_own_process_is_a_plain_error_naming_it(stage_dir, tmp_path):
    from phasedsft.evaluate.generation import checkpoint_answers

    fresh(stage_dir)
    too_long = HFGenerator(max_new_tokens=510, own_process=True, device="cpu")
    with pytest.raises(
        DataError,
        match=r"generating answers for run-a/stage_1_all failed in its own process: "
        r"max_new_tokens=510 leaves no room for a prompt",
    ):
        checkpoint_answers(checkpoint(stage_dir, "f1"), [eval_set(2)], too_long, RUN_CONFIG)

    broken = tmp_path / "run-x" / "stage_1_all"
    (broken / "model").mkdir(parents=True)  # no weights, no tokenizer: the child crashes
    with pytest.raises(
        DataError, match=r"generating answers for run-x/stage_1_all failed in its own process: \w+"
    ) as e:
        checkpoint_answers(
            Checkpoint("run-x", 1, "all", 1, broken, "f2"),
            [eval_set(2)],
            HFGenerator(max_new_tokens=4, own_process=True),
            RUN_CONFIG,
        )
    assert "its traceback is above" in str(e.value)
