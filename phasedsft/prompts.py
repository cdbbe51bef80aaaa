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


@dataclass
class ChatTemplate:
    """The tokenizer's own chat template: user turn = instruction (+ input), assistant = output."""

    name: str = "chat"
    system: str | None = None

    def _messages(self, ex: Example) -> list[dict[str, str]]:
        user = ex.instruction if not ex.input.strip() else f"{ex.instruction}\n\n{ex.input}"
        msgs = [{"role": "user", "content": user}]
        if self.system is not None:
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs

    def _check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"prompt=chat needs a tokenizer with a chat template; "
                f"{type(tokenizer).__name__} has none (use prompt=alpaca)"
            )

    def prompt_text(self, ex: Example, tokenizer: Any) -> str:
        self._check(tokenizer)
        return str(
            tokenizer.apply_chat_template(
                self._messages(ex), tokenize=False, add_generation_prompt=True
            )
        )

    def split_ids(self, ex: Example, tokenizer: Any) -> tuple[list[int], list[int]]:
        self._check(tokenizer)
        msgs = self._messages(ex)
        full_text = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": ex.output}], tokenize=False
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

    Over-long examples keep the whole prompt and lose the end of the output (truncation
    is counted by the caller).
    """
    prompt, completion = template.split_ids(ex, tokenizer)
    if len(prompt) >= max_length:
        return None
    room = max_length - len(prompt)
    truncated = len(completion) > room
    completion = completion[:room]
    return Encoded(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, truncated)


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
