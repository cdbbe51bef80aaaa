"""generator=authors: the authors' prompt ids (two BOS with a tokenizer that adds one), their
answer split, and their generation call, checked against their script's steps done here by hand."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from omegaconf import OmegaConf

from phasedsft.evaluate.authors_generation import (
    AuthorsGenerator,
    authors_answer,
    authors_prompt,
    authors_prompt_ids,
)
from phasedsft.evaluate.generation import Checkpoint, answers_for
from phasedsft.evaluate.sets import EvalSet
from phasedsft.records import DataError, Example

RUN_CONFIG = OmegaConf.create({"prompt": {"_target_": "phasedsft.prompts.UserAssistantTemplate"}})
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:.,?!0123456789"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Llama tokenizer that adds BOS (as Llama-2's does), one token per character (no
    merges: the expected ids can be written down by hand), saved and read back as the
    generator reads it."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁" + CHARS:
        vocab.setdefault(ch, len(vocab))
    d = tmp_path_factory.mktemp("llama-tok")
    LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_tok(llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    assert tok("a")["input_ids"][0] == tok.bos_token_id == 1  # it adds a BOS of its own
    return tok


def by_hand(tok, text: str) -> list[int]:
    """``text``'s ids one character at a time: a space is "▁", a newline its byte token."""
    table = {" ": "▁", "\n": "<0x0A>"}
    return [tok.convert_tokens_to_ids(table.get(c, c)) for c in text]


# (set, instruction, input, the text between "<s>" and "</s>": generation_v2.py:132-142)
CASES = [
    ("self_instruct", "Fix it.", "a b", "User: Fix it.\na b"),
    ("self_instruct", "Fix it.", "", "User: Fix it."),
    ("oasst", "Say hi", "", "User: Say hi\n"),  # prompt_input always: "\n" + an empty input
    ("anthropic", "Say hi", "", "User: Say hi\n"),
    ("anthropic", "Say hi", "to me", "User: Say hi\nto me"),
    ("koala", "Why?", "", "User: Why?"),
    ("vicuna", "Why?", "", "User: Why?"),
    ("wizardlm", "Why?", "", "User: Why?"),
    ("held_out", "Add", "1 2", "User: Add\n1 2"),  # not theirs: the input kept when given
]


@pytest.mark.parametrize(("eval_set", "instruction", "input", "user"), CASES)
def test_prompt_ids_carry_two_bos_with_a_tokenizer_that_adds_one(
    llama_tok, eval_set, instruction, input, user
):
    ex = Example("1", instruction, input, "")
    text = authors_prompt(ex, eval_set)
    assert text == f"<s>{user}</s>\nAssistant:"  # no space after the colon
    bos, eos = llama_tok.bos_token_id, llama_tok.eos_token_id
    # the tokenizer's BOS, then the literal "<s>" read as BOS, the user turn, the literal
    # "</s>" read as EOS, then "\nAssistant:"
    expected = [bos, bos, *by_hand(llama_tok, user), eos, *by_hand(llama_tok, "\nAssistant:")]
    assert authors_prompt_ids(text, llama_tok) == expected


def test_a_tokenizer_that_adds_no_bos_gets_one_from_the_text(tiny_tokenizer):
    text = authors_prompt(Example("1", "Add 2 and 3", "", ""), "koala")
    ids = authors_prompt_ids(text, tiny_tokenizer)
    plain = tiny_tokenizer("User: Add 2 and 3", add_special_tokens=False)["input_ids"]
    tail = tiny_tokenizer("\nAssistant:", add_special_tokens=False)["input_ids"]
    assert ids == [tiny_tokenizer.bos_token_id, *plain, tiny_tokenizer.eos_token_id, *tail]


def test_special_text_from_the_tokenizer_replaces_the_literal_markers():
    ex = Example("1", "Hi", "", "")
    assert authors_prompt(ex, "koala", bos="<|b|>", eos="<|e|>") == "<|b|>User: Hi<|e|>\nAssistant:"
    assert AuthorsGenerator(special_text="tokenizer").special(None) == ("", "")
    with pytest.raises(DataError, match="special_text"):
        AuthorsGenerator(special_text="chatml")


def test_the_answer_is_what_follows_the_first_assistant_mark():
    assert authors_answer("User: Hi\nAssistant: Hello there. ") == " Hello there. "
    # a second "Assistant:" (the model starting another turn) ends the answer
    assert (
        authors_answer("User: Hi\nAssistant: One.\nUser: x\nAssistant: Two.") == " One.\nUser: x\n"
    )
    # a prompt that holds the mark itself: the answer is part of the prompt, as in their script
    assert authors_answer("User: Human: a Assistant: b\nAssistant: c") == " b\n"
    assert authors_answer("User: Hi") is None  # their script: IndexError


def authors_script(model_dir, prompts: list[str], max_length: int) -> list[tuple[str, str]]:
    """generation_v2.py's steps, written out here: the model built from its config in bf16
    and the weights loaded into it (:85-91, no generation_config.json read), each prompt
    tokenised alone (:144), generate with max_length alone (:148-151), decode the whole
    sequence (:153-156), split (:159)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(3517)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=False)
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generate_ids = model.generate(input_ids, max_length=max_length)
        raw = tokenizer.batch_decode(
            generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        out.append((raw.split("Assistant:")[1], raw))
    return out


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, llama_tok, llama_dir):
    """A random tiny Llama over the BOS-adding tokenizer, laid out like a finished stage, with
    a generation_config.json that samples hot (what from_pretrained would pick up)."""
    from transformers import GenerationConfig

    from phasedsft.models import BuildContext, scratch_llama

    d = tmp_path_factory.mktemp("run") / "stage_1_all"
    model = scratch_llama(BuildContext(d, 0, list), llama_tok, 32, 64, 2, 2, 2, 256)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: varied answers
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=5.0, top_p=1.0, top_k=0, bos_token_id=1, eos_token_id=2
    )
    model.save_pretrained(d / "model")
    llama_tok.save_pretrained(d / "model")
    return d


def test_answers_are_the_authors_script_answers(stage_dir):
    items = [
        Example("a", "Say hi", "", ""),
        Example("b", "Name a color", "red or blue", ""),
        Example("c", "Count", "", ""),
    ]
    es = EvalSet("oasst", items, generation={"max_length": 64})
    ckpt = Checkpoint("run-a", 1, "all", 1, stage_dir, "o1")
    got = answers_for(ckpt, es, AuthorsGenerator(device="cpu", save_every=2), RUN_CONFIG)
    expected = authors_script(
        stage_dir / "model", [authors_prompt(ex, "oasst") for ex in items], max_length=64
    )
    assert [(it["output"], it["raw_output"]) for it in got.items] == expected
    assert [it["id"] for it in got.items] == ["a", "b", "c"]  # the set's order
    first = got.items[0]
    assert first["raw_output"].startswith("User: Say hi\n\nAssistant:")  # "\n" + empty input
    assert first["prompt_tokens"] + first["max_answer_tokens"] == 64
    saved = json.loads(got.path.read_text())
    assert saved["complete"] and saved["generator"]["backend"] == "authors"
    assert set(first) == {
        "id",
        "instruction",
        "input",
        "output",
        "prompt_tokens",
        "prompt_truncated",
        "max_answer_tokens",
        "raw_output",
    }

    # the checkpoint's generation_config.json (hot sampling) decides only when asked to
    sampled = answers_for(
        ckpt, es, AuthorsGenerator(device="cpu", generation_config="checkpoint"), RUN_CONFIG
    )
    assert sampled.path != got.path
    assert [it["output"] for it in sampled.items] != [it["output"] for it in got.items]


def test_complete_answers_are_read_not_generated_again(stage_dir, monkeypatch):
    long = Example("l", "Why " * 10, "", "")  # 60 prompt tokens, more than max_length
    es = EvalSet("koala", [Example("k", "Why?", "", ""), long], generation={"max_length": 30})
    ckpt = Checkpoint("run-a", 1, "all", 1, stage_dir, "o2")
    first = answers_for(ckpt, es, AuthorsGenerator(device="cpu"), RUN_CONFIG)
    # transformers 4.x (theirs) warned and generated one token past a max_length the prompt
    # already reached; 5.x refuses, so the call asks for prompt + 1
    assert [(it["prompt_tokens"], it["max_answer_tokens"]) for it in first.items] == [
        (24, 6),
        (60, 1),
    ]

    def no_load(self, model_dir):
        raise AssertionError("loaded again")

    monkeypatch.setattr(AuthorsGenerator, "load", no_load)
    again = answers_for(ckpt, es, AuthorsGenerator(device="cpu"), RUN_CONFIG)
    assert again.items == first.items


@pytest.mark.integration
def test_evaluate_with_generator_authors_on_a_tiny_sweep(tiny_sweep):
    from helpers import run_command

    out = tiny_sweep / "evaluation" / "authors"
    run_command(
        [
            sys.executable,
            "evaluate.py",
            f"sweep_dir={tiny_sweep}",
            "generator=authors",
            "generator.max_new_tokens=6",
            "generator.device=cpu",
            f"out_dir={out}",
        ]
    )
    table = json.loads((out / "table.json").read_text())
    assert sorted(r["ordering"] for r in table) == ["1-2-3", "random"]
    answers = [
        json.loads(p.read_text())
        for p in tiny_sweep.glob("*/stage_*/generations/held_out.*.json")
        if json.loads(p.read_text())["generator"].get("backend") == "authors"
    ]
    assert len(answers) == 3  # the final weights of the three runs
    for saved in answers:
        assert saved["complete"]
        for it in saved["items"]:
            assert it["raw_output"].startswith(f"User: {it['instruction']}")
            assert it["output"] == it["raw_output"].split("Assistant:")[1]
