"""Conversations and data files as users have them: messages, ShareGPT, prompt-completion;
hub ids, directories, .json / .jsonl / .parquet / .csv files; the loss on every assistant turn."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from helpers import run_command, run_dir, stage_dirs

from phasedsft.data.loaders import load_data
from phasedsft.prompts import IGNORE_INDEX, AlpacaTemplate, ChatTemplate, encode
from phasedsft.records import DataError

TURNS = [
    ("system", "Answer briefly."),
    ("user", "Name a colour."),
    ("assistant", "Blue."),
    ("user", "And another one?"),
    ("assistant", "Green, like grass."),
]


def as_messages(turns):
    return [{"role": r, "content": c} for r, c in turns]


def as_sharegpt(turns):
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": roles[r], "value": c} for r, c in turns]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_conversation_format_reads_to_the_same_example(tmp_path):
    rows = {
        "messages": {"id": "c", "messages": as_messages(TURNS)},
        "sharegpt": {"id": "c", "conversations": as_sharegpt(TURNS)},
        "prompt_completion": {
            "id": "c",
            "prompt": as_messages(TURNS[:-1]),
            "completion": as_messages(TURNS[-1:]),
        },
    }
    got = {
        fmt: load_data(str(write_jsonl(tmp_path / f"{fmt}.jsonl", [row])), format=fmt).examples[0]
        for fmt, row in rows.items()
    }
    ex = got["messages"]
    assert [(m.role, m.content) for m in ex.messages] == TURNS
    assert all(m.plain for m in ex.messages)
    assert ex.output == "Green, like grass."
    # the triplet view every text-reading step sees: the whole conversation before the answer
    assert ex.instruction == (
        "System: Answer briefly.\n\nUser: Name a colour.\n\nAssistant: Blue.\n\n"
        "User: And another one?"
    )
    assert ex.meta["turns"] == 4
    assert got["sharegpt"] == ex
    # TRL trains a prompt-completion row on its completion only: the prompt's answer is context
    pc = got["prompt_completion"]
    assert [m.trained for m in pc.messages] == [True, True, False, True, True]
    assert (pc.instruction, pc.output) == (ex.instruction, ex.output)
    # ShareGPT's separate system field (LLaMA-Factory) is the same system turn
    row = {"id": "c", "system": TURNS[0][1], "conversations": as_sharegpt(TURNS[1:])}
    path = write_jsonl(tmp_path / "sys.jsonl", [row])
    assert load_data(str(path), format="sharegpt").examples[0] == ex


def test_one_plain_exchange_is_a_triplet(tmp_path):
    rows = [
        {"messages": as_messages(TURNS[1:3])},
        {"prompt": "Name a colour.", "completion": "Blue."},
    ]
    a = load_data(str(write_jsonl(tmp_path / "a.jsonl", rows[:1])), format="messages").examples[0]
    b = load_data(str(write_jsonl(tmp_path / "b.jsonl", rows[1:])), format="prompt_completion")
    assert (a.instruction, a.input, a.output, a.messages) == ("Name a colour.", "", "Blue.", None)
    assert b.examples[0] == a


def write_every_kind(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {
        "json_list": tmp_path / "list.json",
        "json_lines": tmp_path / "lines.json",
        "jsonl": tmp_path / "data.jsonl",
        "parquet": tmp_path / "data.parquet",
        "csv": tmp_path / "data.csv",
    }
    files["json_list"].write_text(json.dumps(rows, indent=1))
    write_jsonl(files["json_lines"], rows)
    write_jsonl(files["jsonl"], rows)
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    with open(files["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return files


ALPACA_ROWS = [
    {"id": "a", "question": "Add 2 and 3.", "context": "", "answer": "5", "score": "1"},
    {"id": "b", "question": "Write two lines.", "context": "", "answer": "One,\ntwo.", "score": 4},
    {"id": "c", "question": "Sum:", "context": "1, 2", "answer": "3", "score": 2.5},
]
COLUMNS = {"instruction": "question", "input": "context", "output": "answer"}


@pytest.mark.parametrize("kind", ["json_list", "json_lines", "jsonl", "parquet", "csv"])
def test_every_file_kind_reads_alike(tmp_path, kind):
    rows = [{**r, "score": str(r["score"])} for r in ALPACA_ROWS]  # one type per column
    files = write_every_kind(tmp_path, rows)
    got = load_data(str(files[kind]), format="alpaca", columns=COLUMNS).examples
    assert [(e.id, e.instruction, e.input, e.output, e.score) for e in got] == [
        ("a", "Add 2 and 3.", "", "5", 1.0),
        ("b", "Write two lines.", "", "One,\ntwo.", 4.0),
        ("c", "Sum:", "1, 2", "3", 2.5),
    ]


def test_conversations_in_parquet_and_in_a_dataset_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": str(i), "messages": as_messages(TURNS)} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chats.parquet")
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "train.jsonl", rows)
    from_file = load_data(str(tmp_path / "chats.parquet"), format="messages").examples
    from_dir = load_data(str(tmp_path / "dir"), format="messages").examples  # through datasets
    assert from_file == from_dir and len(from_file) == 3
    assert [(m.role, m.content) for m in from_file[0].messages] == TURNS


def test_bad_conversations_are_named_by_file_and_line(tmp_path):
    good = {"messages": as_messages(TURNS)}
    cases = {
        "roles": (as_messages([("user", "q"), ("bot", "a")]), "turn 2 has role 'bot'"),
        "order": (as_messages([("user", "q"), ("user", "a")]), "turn 2 is 'user', expected"),
        "ends_with_user": (as_messages(TURNS[:4]), "must end with an assistant turn"),
        "empty_turn": (
            as_messages([("user", "q"), ("assistant", " ")]),
            "turn 2 (assistant) is empty",
        ),
        "not_a_list": ("hello", "must be a non-empty list of turns"),
    }
    for name, (messages, words) in cases.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", [good, good, {"messages": messages}])
        with pytest.raises(DataError, match=rf"{name}\.jsonl:3: field 'messages'") as e:
            load_data(str(path), format="messages")
        assert words in str(e.value), (name, str(e.value))
    # skipped on request, and counted
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [{"id": str(i), **good} for i in range(3)] + [{"messages": "x"}])
    loaded = load_data(str(path), format="messages", on_error="skip")
    assert len(loaded.examples) == 3 and loaded.skips.count == 1
    assert loaded.skips.skipped[0]["where"] == f"{path}:4"


def test_csv_errors_name_the_line_a_record_starts_on(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\n"two\nlines",fine\nq,\n')  # record 2 starts on line 4
    with pytest.raises(DataError, match=r"d\.csv:4: missing field 'output'"):
        load_data(str(path))
    path.write_text("instruction,output\nq,a,extra\n")
    with pytest.raises(DataError, match=r"d\.csv:2: more values than columns"):
        load_data(str(path))


def test_missing_columns_and_files_are_plain_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "reply": "a"}])
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: missing column 'answer' \(dataset\.source\.columns\.output\)"
    ):
        load_data(str(path), columns={"instruction": "question", "output": "answer"})
    # a local path that does not exist is not looked up on the hub
    with pytest.raises(DataError, match=r"data file not found: .*nowhere/chats\.parquet"):
        load_data(str(tmp_path / "nowhere" / "chats.parquet"), format="messages")
    with pytest.raises(DataError, match=r"unknown data file type '\.txt'"):
        (tmp_path / "d.txt").write_text("x")
        load_data(str(tmp_path / "d.txt"))


# A ChatML template in the shape of SmolLM2's (which the integration test below uses itself)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def trained_spans(tokenizer, enc) -> list[str]:
    spans, cur = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            cur.append(token)
        elif cur:
            spans.append(tokenizer.decode(cur))
            cur = []
    if cur:
        spans.append(tokenizer.decode(cur))
    return spans


def conversation(tmp_path: Path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "c7", "messages": as_messages(TURNS)}])
    return load_data(str(path), format="messages").examples[0]


def test_loss_on_every_assistant_turn_and_nothing_else(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    tok.chat_template = CHATML
    try:
        ex = conversation(tmp_path)
        enc = encode(ex, ChatTemplate(), tok, 10_000)
        assert tok.decode(enc.input_ids) == tok.apply_chat_template(
            as_messages(TURNS), tokenize=False
        )
        assert trained_spans(tok, enc) == ["Blue.<|im_end|>\n", "Green, like grass.<|im_end|>\n"]
        assert not enc.truncated
        # cut inside the second answer: its start stays in the loss, the cut is counted
        whole = len(enc.input_ids)
        short = encode(ex, ChatTemplate(), tok, whole - 3)
        assert short.truncated and short.labels == enc.labels[: whole - 3]
        # cut before any answer: nothing to learn, the example is dropped (counted by the caller)
        first_answer = next(i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX)
        assert encode(ex, ChatTemplate(), tok, first_answer) is None
        # prompt (generation, held-out, scorers): every turn before the last answer
        assert ChatTemplate().prompt_text(ex, tok) == tok.apply_chat_template(
            as_messages(TURNS[:-1]), tokenize=False, add_generation_prompt=True
        )
    finally:
        tok.chat_template = None


def test_a_template_without_turns_refuses_a_conversation_by_name(tiny_tokenizer, tmp_path):
    with pytest.raises(
        DataError,
        match=r"example 'c7' is a 4-turn conversation with a system message; prompt=alpaca .* use prompt=chat",
    ):
        encode(conversation(tmp_path), AlpacaTemplate(), tiny_tokenizer, 512)


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    # renders only the last assistant turn in full (as reasoning templates drop old thoughts)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old]"
        "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    try:
        with pytest.raises(
            DataError, match=r"example 'c7': the tokenizer's chat template renders turn 5"
        ):
            encode(conversation(tmp_path), ChatTemplate(), tok, 10_000)
    finally:
        tok.chat_template = None


# ---------------------------------------------------------------- real tokenizer, real runs


@pytest.mark.integration
def test_smollm2_chat_template_masks_token_by_token(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    ex = conversation(tmp_path)
    enc = encode(ex, ChatTemplate(), tok, 10_000)
    text = tok.apply_chat_template(as_messages(TURNS), tokenize=False)
    assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    # the expected labels, token by token: the ids of each answer and its end-of-turn marker,
    # -100 on everything else (system, user turns, the assistant headers)
    expected = [IGNORE_INDEX] * len(enc.input_ids)
    for answer in ("Blue.", "Green, like grass."):
        piece = tok(f"{answer}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        starts = [
            i
            for i in range(len(enc.input_ids))
            if enc.input_ids[i : i + len(piece)] == piece
            and tok.decode(enc.input_ids[max(0, i - 3) : i]).endswith("assistant\n")
        ]
        assert len(starts) == 1, answer
        expected[starts[0] : starts[0] + len(piece)] = piece
    assert enc.labels == expected
    assert trained_spans(tok, enc) == ["Blue.<|im_end|>\n", "Green, like grass.<|im_end|>\n"]


def hub_layout_model(tokenizer, path: Path) -> Path:
    """A tiny random Llama saved as a hub repository would hold it (config, weights, tokenizer
    with its chat template): what ``model=hf model.path=<dir>`` loads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.integration
def test_train_py_on_conversations_with_any_model_directory(smollm2_tokenizer, tmp_path):
    model_dir = hub_layout_model(smollm2_tokenizer, tmp_path / "tiny-chat-llama")
    rows = []
    for i in range(24):
        level = 1 + i % 2
        turns = [
            ("user", f"Count to {level + i % 5}."),
            ("assistant", " ".join("123456"[: level + i % 5])),
        ]
        if level == 2:
            turns += [
                ("user", "Now backwards."),
                ("assistant", " ".join("654321"[-(level + i % 5) :])),
            ]
        rows.append(
            {"id": f"c{i}", "score": level, "messages": as_messages(turns), "origin": "lab"}
        )
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    root = tmp_path / "runs"
    run_command(
        [
            sys.executable,
            "train.py",
            "model=hf",
            f"model.path={model_dir}",
            "model.loader.dtype=float32",
            "dataset=messages",
            f"dataset.source.path={data}",
            "prompt=chat",
            "ordering=1-2",
            "trainer=tiny",
            "trainer.per_device_train_batch_size=4",
            "trainer.max_seq_length=256",
            "eval.generate=false",
            f"run.root={root}",
        ],
        no_traceback=True,
    )
    run = run_dir(root, "summary.json")
    assert run.name.startswith("chats-tiny-chat-llama-1-2-s0-")
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["notes"] == {"multi_turn_conversations": 12}
    assert info["data"]["unused_fields"] == {"origin": 24}  # said, not dropped unseen
    for st, n in zip(stage_dirs(run), (12, 12), strict=True):
        record = json.loads((st / "stage.json").read_text())
        assert record["status"] == "done" and record["fed_matches_plan"] is True
        assert record["n_examples"] == n, record
    assert (stage_dirs(run)[-1] / "model" / "tokenizer_config.json").is_file()


@pytest.mark.integration
def test_score_py_keeps_conversations_for_training(tmp_path):
    """score.py sees the whole conversation and writes it back: the scored file trains as is."""
    rows = [
        {"id": f"c{i}", "messages": as_messages(TURNS if i % 2 else TURNS[1:3]), "origin": "lab"}
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    run_command(
        [
            sys.executable,
            "score.py",
            "scorer=length",
            "dataset=messages",
            f"dataset.source.path={data}",
            f"run.root={tmp_path / 'score'}",
            "run.name=chats",
        ],
        no_traceback=True,
    )
    scored = tmp_path / "score" / "chats" / "scored.jsonl"
    summary = json.loads((scored.parent / "summary.json").read_text())
    assert summary["data"]["unused_fields"] == {"origin": 6}  # said, not dropped unseen
    back = load_data(str(scored), format="alpaca").examples
    original = load_data(str(data), format="messages").examples
    assert [(e.id, e.instruction, e.output, e.messages) for e in back] == [
        (e.id, e.instruction, e.output, e.messages) for e in original
    ]
    # the length scorer read the whole conversation: the multi-turn ones are the longer, harder
    by_id = {e.id: e.score for e in back}
    assert min(by_id[f"c{i}"] for i in (1, 3, 5)) > max(by_id[f"c{i}"] for i in (0, 2, 4))


def readme_data_commands() -> list[list[str]]:
    import shlex

    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Data\n", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln.split(" #")[0].strip() for ln in block.splitlines()]
    return [shlex.split(ln)[2:] for ln in lines if ln.startswith("python train.py")]


@pytest.mark.parametrize("words", readme_data_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_data_commands_compose(words, tmp_path):
    from conftest import compose
    from omegaconf import OmegaConf

    cfg = compose([*words, f"run.root={tmp_path}"])
    OmegaConf.resolve(cfg)  # the dataset and model names come from the paths
    path = next(w.split("=", 1)[1] for w in words if w.startswith("dataset.source.path="))
    assert cfg.dataset.source.path == path
    if cfg.dataset.source._target_.endswith("load_data"):  # named after the data
        from phasedsft.config import path_name

        assert cfg.dataset.name == path_name(path) != "data"
    assert cfg.run.name.startswith(f"{cfg.dataset.name}-{cfg.model.name}-")
