"""Prompt templates and the tokenisation that masks everything but the output.

A template turns an :class:`Example` into prompt token ids and completion token ids.
:func:`encode` concatenates them and sets ``labels`` to -100 on every prompt token, so
the loss is computed on the output (and the end-of-sequence token) only; the collator
adds -100 on padding.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from phasedsft.records import DataError, Example

IGNORE_INDEX = -100

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


class PromptTemplate(Protocol):
    name: str

    def prompt_text(self, ex: Example, tokenizer: Any) -> str: ...

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]: ...


def _special_id(tokenizer: Any, attr: str) -> int | None:
    value = getattr(tokenizer, attr, None)
    return int(value) if value is not None else None


@dataclass
class AlpacaTemplate:
    """The Stanford Alpaca template (with and without input).

    Not the Phased IFT authors' template (that is :class:`UserAssistantTemplate`,
    ``prompt=authors``); kept because most Alpaca fine-tunes and test harnesses use it.
    """

    name: str = "alpaca"
    add_bos: bool = True
    add_eos: bool = True

    def prompt_text(self, ex: Example, tokenizer: Any = None) -> str:
        if ex.input.strip():
            return ALPACA_WITH_INPUT.format(instruction=ex.instruction, input=ex.input)
        return ALPACA_NO_INPUT.format(instruction=ex.instruction)

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        prompt = list(tokenizer(self.prompt_text(ex), add_special_tokens=False)["input_ids"])
        completion = list(tokenizer(ex.output, add_special_tokens=False)["input_ids"])
        bos, eos = _special_id(tokenizer, "bos_token_id"), _special_id(tokenizer, "eos_token_id")
        if self.add_bos and bos is not None:
            prompt = [bos, *prompt]
        if self.add_eos:
            if eos is None:
                raise DataError("the tokenizer has no eos_token; set one or prompt.add_eos=false")
            completion = [*completion, eos]
        return prompt, completion


@dataclass
class UserAssistantTemplate:
    """The Phased IFT authors' training layout (``prompt=authors``)::

        <bos>User: {instruction}\n{input}<eos>\nAssistant: {output}<eos>

    Read from their code (GitHub xubuvd/PhasedSFT, ``xllm/xllm_dataset.py``,
    ``PromptIterableDataset.tokenize_example``): the user turn is ``"User: " + prompt`` between
    the tokenizer's BOS and EOS, the model turn starts with the separator ``"\n"`` and
    ``"Assistant: "`` (both masked), and the output ends with EOS (in the loss). Their scored
    files hold the prompt as they trained it (``Alpaca-scored/*.jsonl``, trained verbatim by
    ``dataset=authors_alpaca``): the instruction with "." appended when it does not end in one,
    then a newline and the input. :meth:`prompt_body` rebuilds instruction + newline + input from
    an Alpaca triplet you scored yourself, without that full stop (the authors' code adds none:
    it is in their data files). Each piece is tokenised on its own, as theirs is; BOS / EOS are
    the tokenizer's ids.
    """

    name: str = "authors"
    user: str = "User: "
    assistant: str = "Assistant: "
    separator: str = "\n"

    @staticmethod
    def prompt_body(ex: Example) -> str:
        return ex.instruction + (f"\n{ex.input}" if ex.input.strip() else "")

    def prompt_text(self, ex: Example, tokenizer: Any = None) -> str:
        bos = getattr(tokenizer, "bos_token", None) or ""
        eos = getattr(tokenizer, "eos_token", None) or ""
        return f"{bos}{self.user}{self.prompt_body(ex)}{eos}{self.separator}{self.assistant}"

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        bos, eos = _special_id(tokenizer, "bos_token_id"), _special_id(tokenizer, "eos_token_id")
        if eos is None:
            raise DataError("prompt=authors needs a tokenizer with an eos_token")

        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        prompt = [*([bos] if bos is not None else []), *ids(self.user + self.prompt_body(ex))]
        prompt += [eos, *ids(self.separator + self.assistant)]
        return prompt, [*ids(ex.output), eos]


@dataclass
class PlainTemplate:
    """The prompt and the completion verbatim, no template around them (``prompt=plain``): how
    TRL's SFTTrainer trains a *standard* prompt-completion row (``{"prompt": "The sky is",
    "completion": " blue."}``, ``dataset=prompt_completion``).

    As TRL does it: the prompt tokenised with the tokenizer's own special tokens (a BOS where
    the tokenizer adds one), the completion the rest of the tokens of ``prompt + completion``,
    the loss on the completion only, and EOS appended to it. (Where tokenising the two together
    changes the prompt's last tokens, the completion is tokenised on its own, so the prompt's
    tokens stay exactly the prompt's.) An Alpaca triplet's prompt is ``instruction\\ninput``
    (LLaMA-Factory's joining).
    """

    name: str = "plain"
    add_eos: bool = True

    def prompt_text(self, ex: Example, tokenizer: Any = None) -> str:
        return ex.instruction + (f"\n{ex.input}" if ex.input.strip() else "")

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        text = self.prompt_text(ex)
        prompt = list(tokenizer(text)["input_ids"])
        full = list(tokenizer(text + ex.output)["input_ids"])
        if full[: len(prompt)] == prompt:
            completion = full[len(prompt) :]
        else:
            completion = list(tokenizer(ex.output, add_special_tokens=False)["input_ids"])
        if self.add_eos:
            eos = _special_id(tokenizer, "eos_token_id")
            if eos is None:
                raise DataError("the tokenizer has no eos_token; set one or prompt.add_eos=false")
            if completion[-1:] != [eos]:
                completion = [*completion, eos]
        return prompt, completion


Segments = list[tuple[list[int], bool]]  # token ids, and whether the loss is on them


CHAT_TEMPLATES = Path(__file__).parent / "chat_templates"  # packaged: prompt.chat_template=<name>
TOOL_TEMPLATE_HINT = (
    "use a model whose chat template renders tools (e.g. model=hf "
    "model.path=Qwen/Qwen2.5-0.5B-Instruct), or, for a ChatML model such as model=smollm2_135m, "
    "prompt.chat_template=chatml_tools"
)


def chat_template_text(name_or_path: str) -> str:
    """A Jinja chat template: a packaged one by name (``chatml_tools``) or a ``.jinja`` file."""
    packaged = CHAT_TEMPLATES / f"{name_or_path}.jinja"
    path = packaged if packaged.is_file() else Path(name_or_path).expanduser()
    if not path.is_file():
        known = sorted(p.stem for p in CHAT_TEMPLATES.glob("*.jinja"))
        raise DataError(
            f"prompt.chat_template={name_or_path}: no such file, and no packaged template of that "
            f"name (packaged: {', '.join(known)})"
        )
    return path.read_text(encoding="utf-8")


@dataclass
class ChatTemplate:
    """The tokenizer's own chat template (or ``chat_template``: a packaged template's name or a
    ``.jinja`` file): user turn = instruction (+ input, after a blank line), assistant turn =
    output. (A LLaMA-Factory row with a system prompt or history is a conversation whose user
    turn joins them with one newline, as its data README says: see ``loaders.from_alpaca``.)

    A conversation (:attr:`Example.messages`) is rendered turn by turn, with the loss on every
    trained assistant turn, tool calls included, and never on system, user or tool turns
    (:meth:`conversation_ids`); its tools are passed to the template (``tools=``). A template
    that would silently drop tools, tool calls or tool results is refused by name. The prompt,
    for generation and scoring, is every turn before the last assistant turn.
    """

    name: str = "chat"
    system: str | None = None
    chat_template: str | None = None

    def _with_system(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system is not None and msgs[0]["role"] != "system":
            return [{"role": "system", "content": self.system}, *msgs]
        return msgs

    def _messages(self, ex: Example) -> list[dict[str, Any]]:
        """The turns before the last assistant turn."""
        if ex.messages is not None:
            return self._with_system([m.as_dict() for m in ex.messages[:-1]])
        user = ex.instruction if not ex.input.strip() else f"{ex.instruction}\n\n{ex.input}"
        return self._with_system([{"role": "user", "content": user}])

    def _all_messages(self, ex: Example) -> list[dict[str, Any]]:
        last = (
            ex.messages[-1].as_dict()
            if ex.messages
            else {"role": "assistant", "content": ex.output}
        )
        return [*self._messages(ex), last]

    def _template(self, tokenizer: Any) -> str | None:
        if self.chat_template is not None:
            return chat_template_text(self.chat_template)
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"prompt=chat needs a tokenizer with a chat template; {type(tokenizer).__name__} "
                "has none: use a chat model (model=smollm2_135m, or model=hf model.path=<an "
                "instruct model>), name a template (prompt.chat_template=chatml_tools), or, for "
                "plain instruction/output rows, prompt=alpaca"
            )
        return None

    def _render(
        self,
        tokenizer: Any,
        msgs: list[dict[str, Any]],
        generation_prompt: bool,
        tools: list[Any] | None = None,
    ) -> str:
        try:
            return str(
                tokenizer.apply_chat_template(
                    msgs,
                    tools=tools,
                    chat_template=self._template(tokenizer),
                    tokenize=False,
                    add_generation_prompt=generation_prompt,
                )
            )
        except DataError:
            raise
        except Exception as e:  # jinja's TemplateError, raise_exception(...) in the template
            roles = sorted({m["role"] for m in msgs})
            raise DataError(
                f"the chat template cannot render this conversation (roles {', '.join(roles)}"
                f"{', tool calls' if any(m.get('tool_calls') for m in msgs) else ''}): "
                f"{type(e).__name__}: {e}"
                + ("; " + TOOL_TEMPLATE_HINT if tools or "tool" in roles else "")
            ) from None

    def _check_tools(
        self, ex: Example, tokenizer: Any, msgs: list[dict[str, Any]]
    ) -> list[Any] | None:
        """The example's tools for the template, once the template is known to show them, its
        tool calls and its tool results (many templates silently drop what they do not know)."""
        tools = json.loads(ex.tools) if ex.tools else None
        if ex.messages is None or not (tools or any(not m.plain for m in ex.messages)):
            return tools
        text = self._render(tokenizer, msgs, False, tools)
        lost = []
        if tools and self._render(tokenizer, msgs, False) == text:
            lost.append("the tools on offer")
        for m in ex.messages:
            for call in m.tool_calls:
                if call.name not in text:
                    lost.append(f"the call to {call.name}")
            if m.role == "tool" and m.content.strip() and m.content.strip() not in text:
                lost.append("a tool's result")
        if lost:
            raise DataError(
                f"example '{ex.id}': the chat template does not render {', '.join(dict.fromkeys(lost))}; "
                f"training on it would drop them silently: {TOOL_TEMPLATE_HINT}"
            )
        return tools

    def prompt_text(self, ex: Example, tokenizer: Any) -> str:
        msgs = self._messages(ex)
        tools = self._check_tools(ex, tokenizer, self._all_messages(ex))
        return self._render(tokenizer, msgs, True, tools)

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        full_text = self._render(tokenizer, self._all_messages(ex), False)
        prompt_text = self.prompt_text(ex, tokenizer)
        if not full_text.startswith(prompt_text):
            raise DataError(
                "the tokenizer's chat template renders the conversation so that it does not start "
                "with the generation prompt; loss masking would be wrong (use prompt=alpaca, or "
                "prompt.chat_template=<a template whose prompt its conversation extends>)"
            )
        prompt = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        completion = list(
            tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        )
        return prompt, completion

    def conversation_ids(self, ex: Example, tokenizer: Any) -> Segments:
        """Token ids of the whole conversation in pieces, the loss on each trained assistant turn.

        The template renders the turns up to each assistant turn with and without it; each
        rendering must extend the one before (what every template that can be trained through
        does), else the masking would be wrong and the example is refused, by name. Assistant
        turns that are not trained (OpenAI's ``weight: 0``, a prompt-completion row's prompt) and
        tool results are context, like user turns.
        """
        assert ex.messages is not None
        msgs = self._all_messages(ex)
        tools = self._check_tools(ex, tokenizer, msgs)
        offset = len(msgs) - len(ex.messages)  # a system turn prompt.system added
        cuts: list[tuple[int, bool]] = []  # (end offset in the text, trained)
        text = ""
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prompt = self._render(tokenizer, msgs[:k], True, tools)
            full = self._render(tokenizer, msgs[: k + 1], False, tools)
            if not (prompt.startswith(text) and full.startswith(prompt)):
                raise DataError(
                    f"example '{ex.id}': the tokenizer's chat template renders turn {k + 1} so "
                    "that the conversation before it changes (some templates rewrite earlier "
                    "turns); the loss on its assistant turns cannot be placed exactly"
                )
            cuts += [(len(prompt), False), (len(full), ex.messages[k - offset].trained)]
            text = full
        segments: Segments = []
        start = 0
        for end, trained in cuts:
            ids = list(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            if segments and segments[-1][1] == trained:  # an untrained turn joins the context
                segments[-1] = (segments[-1][0] + ids, trained)
            else:
                segments.append((ids, trained))
            start = end
        return segments


def template_segments(ex: Example, template: PromptTemplate, tokenizer: Any) -> Segments:
    """The pieces of ``ex`` as ``template`` lays it out, each with whether the loss is on it."""
    if ex.messages is None:
        prompt, completion = template.split_ids(ex, tokenizer)
        return [(prompt, False), (completion, True)]
    conversation_ids = getattr(template, "conversation_ids", None)
    if conversation_ids is None:
        msgs = ex.messages
        kind = f"{ex.meta.get('turns', len(msgs))}-turn conversation"
        has = [
            what
            for what, there in (
                ("a system message", msgs[0].role == "system"),
                ("tools", ex.tools is not None),
                ("tool calls", any(m.tool_calls for m in msgs)),
                ("turns that are not trained", any(not m.trained for m in msgs)),
            )
            if there
        ]
        if has:
            kind += " with " + ", ".join(has)
        raise DataError(
            f"example '{ex.id}' is a {kind}; prompt={template.name} has no place for that: use "
            "prompt=chat with a chat model (e.g. model=smollm2_135m, or model=hf "
            "model.path=<an instruct model>): its chat template, the loss on every trained "
            "assistant turn"
        )
    segments: Segments = conversation_ids(ex, tokenizer)
    return segments


class Encoded:
    """An example's token ids and labels (-100 where the loss is not), kept as 32-bit arrays:
    a million encoded examples as Python lists of ints would cost about 44 bytes a token, these
    8. ``input_ids`` and ``labels`` read back as lists (new ones each time)."""

    __slots__ = ("_ids", "_labels", "truncated")

    def __init__(
        self, input_ids: Sequence[int], labels: Sequence[int], truncated: bool = False
    ) -> None:
        self._ids = array("i", input_ids)
        self._labels = array("i", labels)
        self.truncated = truncated  # the end of the output did not fit max_length

    @property
    def input_ids(self) -> list[int]:
        return self._ids.tolist()

    @property
    def labels(self) -> list[int]:
        return self._labels.tolist()

    @property
    def n_tokens(self) -> int:
        return len(self._ids)

    @property
    def n_target(self) -> int:
        return len(self._labels) - self._labels.count(IGNORE_INDEX)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoded):
            return NotImplemented
        return (self._ids, self._labels, self.truncated) == (
            other._ids,
            other._labels,
            other.truncated,
        )

    __hash__ = None  # type: ignore[assignment]  # as the dataclass it was: mutable, unhashable

    def __repr__(self) -> str:
        return (
            f"Encoded(input_ids={self.input_ids!r}, labels={self.labels!r}, "
            f"truncated={self.truncated!r})"
        )


class Counted(Encoded):
    """An example's encoding as a plan needs it: its token counts, not its tokens. The tokens
    are made again (``make``: :func:`encode` once more) when they are read, as ``inspect``
    does for the few examples it prints."""

    __slots__ = ("_make", "_n_target", "_n_tokens")

    def __init__(
        self, n_tokens: int, n_target: int, truncated: bool, make: Callable[[], Encoded]
    ) -> None:
        self._n_tokens, self._n_target, self.truncated, self._make = (
            n_tokens,
            n_target,
            truncated,
            make,
        )

    @property
    def input_ids(self) -> list[int]:
        return self._make().input_ids

    @property
    def labels(self) -> list[int]:
        return self._make().labels

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    @property
    def n_target(self) -> int:
        return self._n_target

    def __eq__(self, other: object) -> bool:
        return self._make() == other

    def __repr__(self) -> str:
        return repr(self._make())


class EncodedCounts(Mapping[str, Encoded]):
    """Every example's token counts by id, without its tokens: what ``train.py plan_only``
    keeps. Three numbers an example (12 bytes) where :class:`Encoded` keeps 8 bytes a token:
    a million Alpaca examples plan in a tenth of the memory their tokens would take. Reading an
    example gives a :class:`Counted`, whose tokens are encoded again when asked for."""

    def __init__(
        self,
        examples: Sequence[Example],
        n_tokens: Sequence[int],
        n_target: Sequence[int],
        truncated: Sequence[int],  # 1 where the end of the output did not fit
        make: Callable[[Example], Encoded | None],
    ) -> None:
        import numpy as np

        self._examples = examples
        self._index: dict[str, int] | None = None  # id -> position, made when first read
        self._n_tokens = np.asarray(n_tokens, dtype=np.int32)
        self._n_target = np.asarray(n_target, dtype=np.int32)
        self._truncated = np.asarray(truncated, dtype=bool)
        self._make = make

    @property
    def _at(self) -> dict[str, int]:
        # made on first use, which in a plan is after the stage manifest is read: the two
        # largest transient structures of a million-row plan are never alive at once
        if self._index is None:
            self._index = {ex.id: k for k, ex in enumerate(self._examples)}
        return self._index

    def _encoded(self, k: int) -> Encoded:
        enc = self._make(self._examples[k])
        assert enc is not None, f"example {self._examples[k].id!r} was counted, so it fits"
        return enc

    def __getitem__(self, key: str) -> Encoded:
        k = self._at[key]
        return Counted(
            int(self._n_tokens[k]),
            int(self._n_target[k]),
            bool(self._truncated[k]),
            lambda: self._encoded(k),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)


def encode(
    ex: Example, template: PromptTemplate, tokenizer: Any, max_length: int
) -> Encoded | None:
    """Token ids and labels for one example; ``None`` if no output token fits ``max_length``.

    Labels are -100 on every token the loss is not on (the prompt; in a conversation, every
    turn but the assistant's). Over-long examples keep the start and lose the end (truncation,
    when it cuts tokens the loss is on, is counted by the caller).
    """
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in template_segments(ex, template, tokenizer):
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    if all(x == IGNORE_INDEX for x in labels[:max_length]):
        return None
    truncated = any(x != IGNORE_INDEX for x in labels[max_length:])
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def pad_batch(
    batch: Sequence[dict[str, Any]], pad_id: int, *, side: str = "right"
) -> dict[str, list[list[int]]]:
    """Pad ``input_ids`` with ``pad_id``, ``labels`` with -100, and build the attention mask."""
    width = max(len(b["input_ids"]) for b in batch)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for b in batch:
        n = len(b["input_ids"])
        pad = width - n
        ids, mask = list(b["input_ids"]), [1] * n
        labels = list(b.get("labels", [IGNORE_INDEX] * n))
        if side == "right":
            out["input_ids"].append(ids + [pad_id] * pad)
            out["attention_mask"].append(mask + [0] * pad)
            out["labels"].append(labels + [IGNORE_INDEX] * pad)
        else:
            out["input_ids"].append([pad_id] * pad + ids)
            out["attention_mask"].append([0] * pad + mask)
            out["labels"].append([IGNORE_INDEX] * pad + labels)
    return out
