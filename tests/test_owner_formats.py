"""Users' rows in their owners' exact layouts, every field used as its owner means it or refused
by name: LLaMA-Factory's alpaca (system, history, tools, images) and ShareGPT (function_call,
observation, tools), OpenAI's chat fine-tuning lines (developer, content parts, tool_calls,
tool turns, weight, tools, the legacy functions), TRL's prompt-completion. Masks are checked
token by token: the loss on every trained assistant turn, tool calls included, never on a tool
result, a weight-0 turn or a prompt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from phasedsft.data.loaders import load_data
from phasedsft.prompts import IGNORE_INDEX, AlpacaTemplate, ChatTemplate, PlainTemplate, encode
from phasedsft.records import DataError, Example, Message, ToolCall
from phasedsft.score.run import scored_rows

# A plain ChatML template: renders role and content only (SmolLM2's shape), so it drops tools.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = ChatTemplate(chat_template="chatml_tools")


def write(path: Path, rows: list[dict], as_list: bool = False) -> str:
    if as_list:  # LLaMA-Factory's files are JSON lists
        path.write_text(json.dumps(rows, indent=2))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trained_spans(tokenizer, enc) -> list[str]:
    """Each run of trained tokens, decoded; every trained label is its token."""
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


@pytest.fixture
def chatml(tiny_tokenizer):
    tiny_tokenizer.chat_template = CHATML
    yield tiny_tokenizer
    tiny_tokenizer.chat_template = None


# ---------------------------------------------------------------- LLaMA-Factory alpaca


LF_ALPACA = {
    "instruction": "Translate to French.",
    "input": "Good night",
    "output": "Bonne nuit",
    "system": "You are a translator.",
    "history": [["Translate to French: hello", "Bonjour"], ["And 'thanks'?", "Merci"]],
}


def test_llamafactory_alpaca_system_and_history_are_the_conversation(tmp_path, chatml):
    ex = load_data(write(tmp_path / "lf.json", [LF_ALPACA], as_list=True)).examples[0]
    # LLaMA-Factory's data README: system prompt first, history as earlier rounds, the prompt
    # "instruction\ninput", the output last
    assert [(m.role, m.content) for m in ex.messages] == [
        ("system", "You are a translator."),
        ("user", "Translate to French: hello"),
        ("assistant", "Bonjour"),
        ("user", "And 'thanks'?"),
        ("assistant", "Merci"),
        ("user", "Translate to French.\nGood night"),
        ("assistant", "Bonne nuit"),
    ]
    # what the scorer and Table 1 read holds the system prompt and the history
    assert ex.instruction.startswith("System: You are a translator.\n\nUser: Translate to French")
    assert "Assistant: Merci" in ex.instruction and ex.output == "Bonne nuit"
    # the history's answers are learned too ("will also be learned by the model")
    enc = encode(ex, ChatTemplate(), chatml, 10_000)
    assert trained_spans(chatml, enc) == [
        f"{a}<|im_end|>\n" for a in ("Bonjour", "Merci", "Bonne nuit")
    ]
    with pytest.raises(
        DataError, match=r"6-turn conversation with a system message; prompt=alpaca"
    ):
        encode(ex, AlpacaTemplate(), chatml, 10_000)
    # empty system / history (as LLaMA-Factory files often hold) leave a plain triplet
    plain = {**LF_ALPACA, "system": "", "history": []}
    t = load_data(write(tmp_path / "plain.json", [plain], as_list=True)).examples[0]
    assert (t.instruction, t.input, t.output, t.messages) == (
        "Translate to French.",
        "Good night",
        "Bonne nuit",
        None,
    )


def test_llamafactory_alpaca_bad_history_and_images_are_named(tmp_path):
    bad = {**LF_ALPACA, "history": [["only one"]]}
    with pytest.raises(DataError, match=r"bad\.json:1: field 'history' must be a list of"):
        load_data(write(tmp_path / "bad.json", [bad]))
    rows = [
        {"instruction": "Describe it.", "output": "A cat.", "images": ["cat.jpg"]},
        {"instruction": "Say hi.", "output": "hi", "images": []},
    ]
    path = write(tmp_path / "mm.jsonl", rows)
    with pytest.raises(DataError, match=r"mm\.jsonl:1: column 'images' holds non-text content"):
        load_data(path)
    loaded = load_data(path, on_error="skip")
    assert [e.id for e in loaded.examples] == ["1"]
    assert loaded.skips.summary()["by_reason"] == {
        "column 'images' holds non-text content; this run is text-only": 1
    }


# ---------------------------------------------------------------- LLaMA-Factory ShareGPT + tools

AREA_TOOLS = [
    {
        "name": "calculate_area",
        "description": "Calculate the area of a given shape",
        "parameters": {
            "type": "object",
            "properties": {"shape": {"type": "string"}, "dimensions": {"type": "array"}},
            "required": ["shape", "dimensions"],
        },
    }
]
# rows in the layout of LLaMA-Factory's data/glaive_toolcall_en_demo.json
GLAIVE = [
    {
        "conversations": [
            {"from": "human", "value": "What is AR?"},
            {"from": "gpt", "value": "Augmented reality."},
        ],
        "tools": "[]",
    },
    {
        "conversations": [
            {"from": "human", "value": "Area of a 5 by 3 rectangle?"},
            {
                "from": "function_call",
                "value": json.dumps(
                    {
                        "name": "calculate_area",
                        "arguments": {"shape": "rectangle", "dimensions": [5, 3]},
                    }
                ),
            },
            {"from": "observation", "value": '{"area": 15}'},
            {"from": "gpt", "value": "It is 15 square units."},
        ],
        "tools": json.dumps(AREA_TOOLS),
    },
]


def test_llamafactory_tool_calling_rows_are_all_read(tmp_path):
    plain, calls = load_data(
        write(tmp_path / "g.json", GLAIVE, as_list=True), format="sharegpt"
    ).examples
    assert plain.messages is None and plain.tools is None  # "tools": "[]" is no tools
    assert [m.role for m in calls.messages] == ["user", "assistant", "tool", "assistant"]
    assert calls.messages[1].tool_calls == (
        ToolCall("calculate_area", '{"shape": "rectangle", "dimensions": [5, 3]}'),
    )
    assert calls.messages[2] == Message("tool", '{"area": 15}', name="calculate_area")
    # the tools in OpenAI's layout, as chat templates take them
    assert json.loads(calls.tools) == [{"type": "function", "function": AREA_TOOLS[0]}]
    assert calls.instruction.startswith('Tools: [{"type": "function"')
    assert "[calls calculate_area(" in calls.instruction
    assert 'Tool (calculate_area): {"area": 15}' in calls.instruction


def test_llamafactory_system_and_tools_columns_are_used(tmp_path, tiny_tokenizer):
    """ShareGPT's ``system`` column (or a leading "system" turn) is the system turn; an alpaca
    row's ``tools`` column (LLaMA-Factory's ``tools`` attribute) makes it a tool conversation."""
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    rows = [
        {"conversations": turns, "system": "Be brief."},
        {"conversations": [{"from": "system", "value": "Be brief."}, *turns]},
    ]
    by_column, by_turn = load_data(
        write(tmp_path / "s.json", rows, as_list=True), format="sharegpt"
    ).examples
    expected = [("system", "Be brief."), ("user", "hi"), ("assistant", "hello")]
    for ex in (by_column, by_turn):
        assert [(m.role, m.content) for m in ex.messages] == expected
    both = [{"conversations": [{"from": "system", "value": "x"}, *turns], "system": "y"}]
    with pytest.raises(DataError, match=r"both\.json:\d+: both a 'system' field and a system turn"):
        load_data(write(tmp_path / "both.json", both, as_list=True), format="sharegpt")
    row = {"instruction": "Area of a 5 by 3 rectangle?", "input": "", "output": "15.",
           "tools": json.dumps(AREA_TOOLS)}  # fmt: skip
    ex = load_data(write(tmp_path / "a.json", [row], as_list=True)).examples[0]
    assert json.loads(ex.tools) == [{"type": "function", "function": AREA_TOOLS[0]}]
    assert [m.role for m in ex.messages] == ["user", "assistant"]
    text = tiny_tokenizer.decode(encode(ex, TOOLS, tiny_tokenizer, 10_000).input_ids)
    assert '{"name": "calculate_area", "description"' in text  # offered to the model


def test_tool_calls_are_trained_and_tool_results_are_not(tmp_path, tiny_tokenizer):
    calls = load_data(write(tmp_path / "g.json", GLAIVE), format="sharegpt").examples[1]
    enc = encode(calls, TOOLS, tiny_tokenizer, 10_000)
    text = tiny_tokenizer.decode(enc.input_ids)
    assert '{"name": "calculate_area", "description"' in text  # the tools, in the system turn
    assert '<tool_response>\n{"area": 15}\n</tool_response>' in text
    assert trained_spans(tiny_tokenizer, enc) == [
        '<tool_call>{"name": "calculate_area", "arguments": {"shape": "rectangle", '
        '"dimensions": [5, 3]}}</tool_call><|im_end|>\n',
        "It is 15 square units.<|im_end|>\n",
    ]


def test_a_template_that_drops_tools_is_refused_by_name(tmp_path, chatml):
    calls = load_data(write(tmp_path / "g.json", GLAIVE), format="sharegpt").examples[1]
    with pytest.raises(DataError) as e:
        encode(calls, ChatTemplate(), chatml, 10_000)
    message = str(e.value)
    assert "the tools on offer, the call to calculate_area" in message
    assert "prompt.chat_template=chatml_tools" in message
    with pytest.raises(DataError, match="no packaged template of that name"):
        encode(calls, ChatTemplate(chat_template="nope"), chatml, 10_000)


# ---------------------------------------------------------------- OpenAI fine-tuning lines

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
OPENAI_ROW = {
    "messages": [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": "Let me look.", "weight": 0},
        {"role": "user", "content": "Go on."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "18C and sunny.", "weight": 1},
    ],
    "tools": [WEATHER_TOOL],
    "parallel_tool_calls": False,
}


def test_openai_rows_use_every_field(tmp_path, tiny_tokenizer):
    ex = load_data(write(tmp_path / "ft.jsonl", [OPENAI_ROW]), format="messages").examples[0]
    m = ex.messages
    assert m[0] == Message("system", "Answer in one line.")  # developer is the system role
    assert m[1] == Message("user", "Weather in Paris?")  # text parts
    assert not m[2].trained and m[4].trained and m[6].trained  # weight 0 / absent / 1
    assert m[4].tool_calls == (ToolCall("get_weather", '{"city": "Paris"}', "call_1"),)
    assert m[5] == Message("tool", "18C and sunny", name="get_weather", tool_call_id="call_1")
    assert json.loads(ex.tools) == [WEATHER_TOOL]
    enc = encode(ex, TOOLS, tiny_tokenizer, 10_000)
    # the weight-0 answer is context: in the input, not in the loss
    assert "Let me look.<|im_end|>" in tiny_tokenizer.decode(enc.input_ids)
    assert trained_spans(tiny_tokenizer, enc) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
        "<|im_end|>\n",
        "18C and sunny.<|im_end|>\n",
    ]


def test_openai_legacy_functions_are_tools(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"role": "function", "name": "get_weather", "content": "18C"},
            {"role": "assistant", "content": "18C."},
        ],
        "functions": [WEATHER_TOOL["function"]],
    }
    ex = load_data(write(tmp_path / "legacy.jsonl", [row]), format="messages").examples[0]
    assert ex.messages[1].tool_calls == (ToolCall("get_weather", '{"city": "Paris"}'),)
    assert ex.messages[2] == Message("tool", "18C", name="get_weather")
    assert json.loads(ex.tools) == [WEATHER_TOOL]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({1: {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}},
         "messages turn 2 has non-text content (image_url); this run is text-only"),
        ({2: {"role": "assistant", "content": "Let me look.", "weight": 0.5}}, "weight is 0 or 1"),
        ({1: {"role": "user", "content": "q", "weight": 1}}, "only assistant turns take one"),
        ({4: {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}},
         "tool call 1 arguments is not valid JSON"),
        ({5: {"role": "user", "content": "18C"}}, "turn 5 calls a tool, but turn 6 is 'user'"),
        ({4: {"role": "assistant", "content": "ok"}}, "turn 6 is a tool result, but turn 5 calls no tool"),
        ({2: {"role": "assistant", "content": "y", "weight": 0}, 4: {**OPENAI_ROW["messages"][4], "weight": 0},
          6: {"role": "assistant", "content": "x", "weight": 0}}, "every assistant turn has weight 0"),
    ],
)  # fmt: skip
def test_openai_rows_the_format_does_not_allow_are_named(tmp_path, change, words):
    row = json.loads(json.dumps(OPENAI_ROW))
    for i, turn in change.items():
        row["messages"][i] = turn
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: ") as e:
        load_data(path, format="messages")
    assert words in str(e.value)
    skipped = load_data(path, format="messages", on_error="skip")
    assert len(skipped.examples) == 1 and skipped.skips.count == 1


# ---------------------------------------------------------------- TRL prompt-completion


def test_trl_conversational_prompt_completion_trains_the_completion_only(tmp_path, chatml):
    row = {
        "prompt": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"},
        ],
        "completion": [{"role": "assistant", "content": "Green."}],
    }
    ex = load_data(write(tmp_path / "pc.jsonl", [row]), format="prompt_completion").examples[0]
    enc = encode(ex, ChatTemplate(), chatml, 10_000)
    assert "Blue.<|im_end|>" in chatml.decode(enc.input_ids)
    assert trained_spans(chatml, enc) == ["Green.<|im_end|>\n"]


def test_trl_standard_prompt_completion_is_verbatim_with_prompt_plain(tmp_path, tiny_tokenizer):
    """TRL concatenates a standard row's prompt and completion as written, no template; the
    loss on the completion and the EOS appended to it."""
    tok = tiny_tokenizer
    row = {"prompt": "The sky is", "completion": " blue."}
    ex = load_data(write(tmp_path / "pc.jsonl", [row]), format="prompt_completion").examples[0]
    assert (ex.instruction, ex.output, ex.messages) == ("The sky is", " blue.", None)
    enc = encode(ex, PlainTemplate(), tok, 10_000)
    n_prompt = len(tok("The sky is")["input_ids"])
    assert enc.input_ids == tok("The sky is blue.")["input_ids"] + [tok.eos_token_id]
    assert enc.labels == [IGNORE_INDEX] * n_prompt + enc.input_ids[n_prompt:]
    assert tok.decode(enc.input_ids[n_prompt:]) == " blue." + tok.eos_token
    # the Alpaca template wraps the same row in its instruction text: not what TRL trains
    assert "### Instruction:" in tok.decode(encode(ex, AlpacaTemplate(), tok, 10_000).input_ids)


# ---------------------------------------------------------------- nothing disappears unseen


def test_columns_and_fields_not_trained_on_are_listed_once(tmp_path, caplog):
    rows = [
        {**OPENAI_ROW, "metadata": {"k": 1}, "category": "weather"},
        {
            "messages": [
                {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": "Hello", "refusal": None, "audio": {"id": "a"}},
            ],
            "metadata": {"k": 2},
        },
    ]
    with caplog.at_level(logging.WARNING):
        loaded = load_data(write(tmp_path / "x.jsonl", rows), format="messages")
    assert loaded.unused_fields == {
        "messages[].audio": 1,
        "messages[].name (a participant's name, which chat templates do not show)": 1,
        "messages[].refusal": 1,
        "metadata": 2,
    }
    warnings = [r.getMessage() for r in caplog.records if "not used for training" in r.getMessage()]
    assert len(warnings) == 1 and "metadata (2 rows)" in warnings[0]
    assert loaded.examples[0].meta["category"] == "weather"  # kept: eval categories read it


# ---------------------------------------------------------------- score.py writes it back


def test_a_scored_tool_conversation_reads_back_unchanged(tmp_path):
    glaive = [{**row, "id": f"g{i}"} for i, row in enumerate(GLAIVE)]
    original = load_data(write(tmp_path / "ft.jsonl", [OPENAI_ROW]), format="messages").examples
    originals = original + load_data(write(tmp_path / "g.json", glaive), format="sharegpt").examples
    rows, _ = scored_rows(originals, [2.0] * len(originals), [None] * len(originals), ())
    # the written conversation is an OpenAI fine-tuning line: weight 0 kept, arguments as JSON text
    assert rows[0]["messages"][2]["weight"] == 0
    assert rows[0]["messages"][4]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    back = load_data(write(tmp_path / "scored.jsonl", rows)).examples
    key = lambda e: (e.id, e.instruction, e.output, e.messages, e.tools)  # noqa: E731
    assert [key(e) for e in back] == [key(e) for e in originals]
    assert [e.score for e in back] == [2.0] * len(originals)


def test_examples_stay_hashable():
    ex = Example("1", "q", "", "a", messages=(Message("user", "q"), Message("assistant", "a")))
    assert len({ex, ex}) == 1


# ---------------------------------------------------------------- SmolLM2's real tokenizer


@pytest.mark.integration
def test_smollm2_refuses_tools_and_trains_them_through_chatml_tools(tmp_path, smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = load_data(write(tmp_path / "ft.jsonl", [OPENAI_ROW]), format="messages").examples[0]
    # SmolLM2's own template renders role and content only: tools and calls would vanish
    with pytest.raises(
        DataError, match="does not render the tools on offer, the call to get_weather"
    ):
        encode(ex, ChatTemplate(), tok, 10_000)
    enc = encode(ex, TOOLS, tok, 10_000)
    messages = [m.as_dict() for m in ex.messages]
    text = tok.apply_chat_template(
        messages, tools=json.loads(ex.tools), chat_template=TOOLS._template(tok), tokenize=False
    )
    assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    # expected labels token by token: the ids of each trained answer, -100 elsewhere
    expected = [IGNORE_INDEX] * len(enc.input_ids)
    for answer in (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        "18C and sunny.",
    ):
        piece = tok(f"{answer}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        starts = [
            i for i in range(len(enc.input_ids)) if enc.input_ids[i : i + len(piece)] == piece
        ]
        assert len(starts) == 1, answer
        expected[starts[0] : starts[0] + len(piece)] = piece
    assert enc.labels == expected


def test_hints_for_conversations_name_options_that_work(tmp_path, tiny_tokenizer):
    """No circle: prompt=alpaca and prompt=chat (on a tokenizer without a chat template) both
    point at a chat model that exists offline."""
    ex = load_data(write(tmp_path / "lf.json", [LF_ALPACA])).examples[0]
    for template in (AlpacaTemplate(), ChatTemplate()):
        with pytest.raises(DataError) as e:
            encode(ex, template, tiny_tokenizer, 10_000)
        assert "model=smollm2_135m" in str(e.value), str(e.value)
