import pytest

from phasedsft.prompts import IGNORE_INDEX, AlpacaTemplate, ChatTemplate, encode, pad_batch
from phasedsft.records import DataError, Example
from phasedsft.train.stage import Collator

WITH_INPUT = Example("a", "Add the two numbers.", "3 4", "7")
NO_INPUT = Example("b", "Say hello.", "", "hello there")


def test_alpaca_template_text():
    t = AlpacaTemplate()
    assert t.prompt_text(WITH_INPUT).endswith("### Input:\n3 4\n\n### Response:\n")
    assert "### Input" not in t.prompt_text(NO_INPUT)
    assert t.prompt_text(NO_INPUT).endswith("### Instruction:\nSay hello.\n\n### Response:\n")


@pytest.mark.parametrize("ex", [WITH_INPUT, NO_INPUT])
def test_labels_mask_exactly_the_prompt(tiny_tokenizer, ex):
    tok = tiny_tokenizer
    t = AlpacaTemplate()
    prompt_ids = [tok.bos_token_id, *tok(t.prompt_text(ex), add_special_tokens=False)["input_ids"]]
    output_ids = tok(ex.output, add_special_tokens=False)["input_ids"]
    enc = encode(ex, t, tok, max_length=512)
    assert enc is not None
    assert enc.input_ids == prompt_ids + output_ids + [tok.eos_token_id]
    # every prompt token masked, every output token (+ EOS) trained on
    assert enc.labels.count(IGNORE_INDEX) == len(prompt_ids)
    assert enc.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert enc.labels[len(prompt_ids) :] == [*output_ids, tok.eos_token_id]
    assert enc.n_target == len(output_ids) + 1


def test_collator_masks_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    t = AlpacaTemplate()
    a, b = encode(WITH_INPUT, t, tok, 512), encode(NO_INPUT, t, tok, 512)
    assert a is not None and b is not None
    batch = Collator(tok.pad_token_id)(
        [
            {"input_ids": a.input_ids, "labels": a.labels, "position": 0},
            {"input_ids": b.input_ids, "labels": b.labels, "position": 1},
        ]
    )
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    for row, enc in enumerate((a, b)):
        pad = width - len(enc.input_ids)
        labels = batch["labels"][row].tolist()
        assert labels.count(IGNORE_INDEX) == enc.labels.count(IGNORE_INDEX) + pad
        assert batch["attention_mask"][row].tolist() == [1] * len(enc.input_ids) + [0] * pad
        assert labels[len(enc.input_ids) :] == [IGNORE_INDEX] * pad
    assert batch["positions"].tolist() == [0, 1]


def test_left_padding_for_generation():
    out = pad_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_id=0, side="left")
    assert out["input_ids"] == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"] == [[1, 1, 1], [0, 0, 1]]


def test_truncation_keeps_prompt_and_drops_what_cannot_fit(tiny_tokenizer):
    t = AlpacaTemplate()
    long = Example("l", "Repeat.", "", " ".join(["apple"] * 200))
    prompt, _completion = t.split_ids(long, tiny_tokenizer)
    enc = encode(long, t, tiny_tokenizer, max_length=len(prompt) + 5)
    assert enc is not None and len(enc.input_ids) == len(prompt) + 5 and enc.n_target == 5
    assert enc.truncated and not encode(long, t, tiny_tokenizer, max_length=1000).truncated
    assert encode(long, t, tiny_tokenizer, max_length=len(prompt)) is None


def test_chat_template_masks_the_generation_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        ChatTemplate().split_ids(NO_INPUT, tok)
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    try:
        prompt, completion = ChatTemplate().split_ids(WITH_INPUT, tok)
        assert tok.decode(prompt) == "<s>user: Add the two numbers.\n\n3 4</s><s>assistant: "
        assert tok.decode(completion) == "7</s>"
    finally:
        tok.chat_template = None


@pytest.mark.parametrize("ex", [WITH_INPUT, NO_INPUT])
def test_authors_template_layout_and_mask(tiny_tokenizer, ex):
    """prompt=authors: <bos>User: {instruction}\\n{input}<eos>\\nAssistant: {output}<eos>."""
    from phasedsft.prompts import UserAssistantTemplate

    tok, t = tiny_tokenizer, UserAssistantTemplate()
    body = ex.instruction + (f"\n{ex.input}" if ex.input else "")
    assert t.prompt_text(ex, tok) == f"<s>User: {body}</s>\nAssistant: "

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt = [tok.bos_token_id, *ids(f"User: {body}"), tok.eos_token_id, *ids("\nAssistant: ")]
    enc = encode(ex, t, tok, max_length=512)
    assert enc is not None
    assert enc.input_ids == [*prompt, *ids(ex.output), tok.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + [*ids(ex.output), tok.eos_token_id]
