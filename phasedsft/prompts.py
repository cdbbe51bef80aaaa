"""Prompt templates and the tokenisation that masks everything but the output.

A template turns an :class:`Example` into prompt token ids and completion token ids.
:func:`encode` concatenates them and sets ``labels`` to -100 on every prompt token, so
the loss is computed on the output (and the end-of-sequence token) only; the collator
adds -100 on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    files already hold the prompt as instruction and input joined by a newline (see
    ``Alpaca-scored/*.jsonl``), which is what :meth:`prompt_body` rebuilds from an Alpaca
    triplet. Each piece is tokenised on its own, as theirs is; BOS / EOS are the tokenizer's ids.
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


Segments = list[tuple[list[int], bool]]  # token ids, and whether the loss is on them


@dataclass
class ChatTemplate:
    """The tokenizer's own chat template: user turn = instruction (+ input), assistant = output.

    A conversation (:attr:`Example.messages`) is rendered turn by turn, with the loss on every
    assistant turn (:meth:`conversation_ids`); its prompt, for generation and scoring, is every
    turn before the last assistant turn.
    """

    name: str = "chat"
    system: str | None = None

    def _with_system(self, msgs: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system is not None and msgs[0]["role"] != "system":
            return [{"role": "system", "content": self.system}, *msgs]
        return msgs

    def _messages(self, ex: Example) -> list[dict[str, str]]:
        """The turns before the last assistant turn."""
        if ex.messages is not None:
            return self._with_system([{"role": r, "content": c} for r, c in ex.messages[:-1]])
        user = ex.instruction if not ex.input.strip() else f"{ex.instruction}\n\n{ex.input}"
        return self._with_system([{"role": "user", "content": user}])

    def _check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"prompt=chat needs a tokenizer with a chat template; "
                f"{type(tokenizer).__name__} has none (use prompt=alpaca)"
            )

    @staticmethod
    def _render(tokenizer: Any, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=generation_prompt
            )
        )

    def prompt_text(self, ex: Example, tokenizer: Any) -> str:
        self._check(tokenizer)
        return self._render(tokenizer, self._messages(ex), True)

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        self._check(tokenizer)
        msgs = self._messages(ex)
        full_text = self._render(
            tokenizer, [*msgs, {"role": "assistant", "content": ex.output}], False
        )
        prompt_text = self.prompt_text(ex, tokenizer)
        if not full_text.startswith(prompt_text):
            raise DataError(
                "the tokenizer's chat template renders the conversation so that it does not start "
                "with the generation prompt; loss masking would be wrong (use prompt=alpaca)"
            )
        prompt = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        completion = list(
            tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        )
        return prompt, completion

    def conversation_ids(self, ex: Example, tokenizer: Any) -> Segments:
        """Token ids of the whole conversation in pieces, the loss on each assistant turn.

        The template renders the turns up to each assistant turn with and without it; each
        rendering must extend the one before (what every template that can be trained through
        does), else the masking would be wrong and the example is refused, by name.
        """
        self._check(tokenizer)
        msgs = [*self._messages(ex), {"role": "assistant", "content": ex.output}]
        cuts: list[tuple[int, bool]] = []  # (end offset in the text, trained)
        text = ""
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prompt = self._render(tokenizer, msgs[:k], True)
            full = self._render(tokenizer, msgs[: k + 1], False)
            if not (prompt.startswith(text) and full.startswith(prompt)):
                raise DataError(
                    f"example '{ex.id}': the tokenizer's chat template renders turn {k + 1} so "
                    "that the conversation before it changes (some templates rewrite earlier "
                    "turns); the loss on its assistant turns cannot be placed exactly"
                )
            cuts += [(len(prompt), False), (len(full), True)]
            text = full
        segments: Segments = []
        start = 0
        for end, trained in cuts:
            ids = list(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
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
        kind = f"{ex.meta.get('turns', len(ex.messages))}-turn conversation"
        if ex.messages[0][0] == "system":
            kind += " with a system message"
        raise DataError(
            f"example '{ex.id}' is a {kind}; prompt={template.name} has no place for that: use "
            "prompt=chat (the tokenizer's chat template, with the loss on every assistant turn)"
        )
    segments: Segments = conversation_ids(ex, tokenizer)
    return segments


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # the end of the output did not fit max_length

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


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
