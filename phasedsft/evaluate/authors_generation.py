"""``generator=authors``: answers as the Phased IFT authors generated theirs.

Read from their script (GitHub xubuvd/PhasedSFT ``generation/generation_v2.py``, commit
a8546508; lines cited as ``:N``) and done the same way here:

* **Prompt text**: ``"<s>User: {instruction}\\n{input}</s>\\nAssistant:"`` or, without an input,
  ``"<s>User: {instruction}</s>\\nAssistant:"`` (``:19``, ``:25``): the special tokens written
  as text, and no space after ``"Assistant:"`` (training puts one there:
  :class:`~phasedsft.prompts.UserAssistantTemplate`). Which of the two, per test set
  (``:132-142``): Self-Instruct takes the input when it is non-empty; Anthropic and OASST always
  take the first, so an empty input still gives ``"\\n"`` before ``"</s>"``; the other sets the
  second. A set the authors did not run (the graded ``held_out``, your own) takes the input
  when it is non-empty, as Self-Instruct does, instead of dropping it (no loader of their
  four input-less sets gives an input, so their six sets are unchanged by that).
* **Tokens**: ``tokenizer(prompt)`` with the tokenizer's own ``add_special_tokens`` default
  (``:144``). A tokenizer that knows ``"<s>"`` as its BOS reads the literal text as that
  token, so one that also adds a BOS itself (Llama's) gives two: ``[BOS, BOS, User, ...]``.
* **Decoding**: ``model.generate(input_ids, max_length=...)`` and nothing else (``:148-151``),
  one prompt at a time, in the set's order, the seed (3517, ``:64``) set first (``:79``). The
  length is the set's (``max_length: 1024`` on the paper's sets, prompt + answer), passed as
  ``max_length = prompt tokens + the answer's budget`` (the same number while the model's
  context allows it). The decoding settings are the model config's, not the checkpoint's
  ``generation_config.json``: they build the model with ``LlamaForCausalLM._from_config`` and
  load the weights into it (``:85-91``), which never reads that file, so a Llama-2 checkpoint's
  ``do_sample: true`` there does not apply and decoding is greedy (``generation_config:
  checkpoint`` uses the file, as ``from_pretrained`` would).
* **Weights** in bf16 (``_from_config(config, torch_dtype=torch.bfloat16)``, ``:86``:
  ``load_checkpoint_in_model`` casts to it whatever the checkpoint's dtype).
* **Answer**: the whole sequence, prompt included, decoded with ``skip_special_tokens=True,
  clean_up_tokenization_spaces=False`` (``:153-156``), then ``split("Assistant:")[1]``
  (``:159``): the text after the first ``"Assistant:"`` and before a second one, not stripped
  (it starts with the space the model put after the colon). The decoded text is kept as
  ``raw_output`` (their ``:157``).

The answers files are :mod:`~phasedsft.evaluate.answers`' (same layout, resume, key);
each item also holds ``raw_output``. What still differs from their run is listed in
``docs/paper_settings.md`` ("Generation").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from phasedsft.evaluate.answers import Lengths, Pending, Prompt, kept_model, lengths_of
from phasedsft.evaluate.runs import Checkpoint
from phasedsft.prompts import UserAssistantTemplate
from phasedsft.records import DataError, Example

log = logging.getLogger(__name__)

PROMPT_INPUT = "{bos}User: {instruction}\n{input}{eos}\nAssistant:"  # generation_v2.py:19
PROMPT_NO_INPUT = "{bos}User: {instruction}{eos}\nAssistant:"  # generation_v2.py:25
AUTHORS_BOS, AUTHORS_EOS = "<s>", "</s>"  # as written in their prompt text
ANSWER_MARK = "Assistant:"  # generation_v2.py:159
ALWAYS_INPUT = ("anthropic", "oasst")  # generation_v2.py:139-140
SPECIAL_TEXT = ("authors", "tokenizer")
GENERATION_CONFIGS = ("model_config", "checkpoint")


def authors_prompt(
    ex: Example,
    eval_set: str,
    always_input: Sequence[str] = ALWAYS_INPUT,
    bos: str = AUTHORS_BOS,
    eos: str = AUTHORS_EOS,
) -> str:
    """The authors' prompt text for one test item of the set named ``eval_set``."""
    if eval_set in always_input or ex.input:  # non-empty, as `if instances[0]['input']:`
        return PROMPT_INPUT.format(bos=bos, instruction=ex.instruction, input=ex.input, eos=eos)
    return PROMPT_NO_INPUT.format(bos=bos, instruction=ex.instruction, eos=eos)


def authors_prompt_ids(text: str, tokenizer: Any) -> list[int]:
    """``tokenizer(prompt)`` as the authors call it: the tokenizer's own special-token default."""
    return list(tokenizer(text)["input_ids"])


def authors_answer(decoded: str) -> str | None:
    """``decoded.split("Assistant:")[1]``; None where there is no ``"Assistant:"`` (their
    script stops there with an IndexError)."""
    parts = decoded.split(ANSWER_MARK)
    return parts[1] if len(parts) > 1 else None


def _dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise DataError(f"generator.dtype={name}: not a torch dtype (bfloat16, float32, auto)")
    return value


@dataclass
class AuthorsGenerator:
    """The authors' generation (module docstring): one prompt at a time, their prompt text,
    tokenisation, decoding call and answer split.

    ``max_new_tokens`` / ``max_length``: ``None`` leaves the length to each test set, as
    ``generator=hf``. ``special_text``: ``authors`` writes ``<s>`` / ``</s>`` as they did;
    ``tokenizer`` writes the tokenizer's own BOS / EOS text there (a model whose special tokens
    are not those). ``always_input``: the sets whose prompt always has ``"\\n{input}"``.
    ``generation_config``: ``model_config`` (theirs) or ``checkpoint``.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    seed: int = 3517
    dtype: str = "bfloat16"
    device: str = "auto"  # "auto": CUDA when available
    generation_config: str = "model_config"
    special_text: str = "authors"
    always_input: list[str] = field(default_factory=lambda: list(ALWAYS_INPUT))
    save_every: int = 16  # prompts between saves of the answers file
    own_process: bool = False
    name: str = "authors"

    def __post_init__(self) -> None:
        self.always_input = [str(s) for s in self.always_input]  # a ListConfig from Hydra
        for key, known in (
            ("generation_config", GENERATION_CONFIGS),
            ("special_text", SPECIAL_TEXT),
        ):
            if getattr(self, key) not in known:
                raise DataError(
                    f"generator.{key}={getattr(self, key)!r}: one of {', '.join(known)}"
                )

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        keep = ("seed", "dtype", "generation_config", "special_text", "always_input")
        ident = {"backend": "authors", **{k: getattr(self, k) for k in keep}}
        return {**ident, **(lengths or self.lengths(None)).identity()}

    def lengths(self, settings: Any) -> Lengths:
        return lengths_of(settings, self)

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Checks before any checkpoint generates (nothing to check here)."""

    def release(self, loaded: dict[str, Any]) -> None:
        loaded.clear()

    def load(self, model_dir: Path) -> tuple[Any, Any]:
        """The weights in ``dtype`` with the model config's decoding settings, and the
        tokenizer saved beside them (no pad token added: one prompt, no padding)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(self.dtype))
        if self.generation_config == "model_config":
            model.generation_config = GenerationConfig.from_model_config(model.config)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(torch.device(device)).eval()  # type: ignore[arg-type]
        return model, tokenizer

    def special(self, tokenizer: Any) -> tuple[str, str]:
        if self.special_text == "authors":
            return AUTHORS_BOS, AUTHORS_EOS
        return (
            getattr(tokenizer, "bos_token", None) or "",
            getattr(tokenizer, "eos_token", None) or "",
        )

    def prompts(self, pending: Pending, tokenizer: Any, context: int | None) -> list[Prompt]:
        """Each item's prompt ids, in the set's order. Where a prompt and its answer exceed
        the model's context the prompt keeps its last tokens and is flagged (as
        ``generator=hf``; the authors' script has no such case at 1024 tokens)."""
        bos, eos = self.special(tokenizer)
        room = None if context is None else context - (pending.lengths.max_new_tokens or 1)
        if room is not None and room < 8:
            raise DataError(
                f"max_new_tokens={pending.lengths.max_new_tokens} leaves no room for a prompt "
                f"in {pending.ckpt.label}'s context of {context} tokens"
            )
        out = []
        for ex in pending.items:
            text = authors_prompt(ex, pending.eval_set, self.always_input, bos, eos)
            full = authors_prompt_ids(text, tokenizer)
            ids = full[-room:] if room is not None and len(full) > room else full
            out.append(Prompt(ex, ids, len(full), pending.lengths.budget(len(ids), context)))
        return out

    def generate(self, model: Any, tokenizer: Any, prompt: Prompt) -> tuple[str, str, bool]:
        """(answer, decoded text, whether it held "Assistant:") for one prompt."""
        import torch

        input_ids = torch.tensor([prompt.ids], device=next(model.parameters()).device)
        with torch.no_grad():
            out = model.generate(input_ids, max_length=len(prompt.ids) + prompt.budget)
        decoded = tokenizer.batch_decode(
            out, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )[0]
        answer = authors_answer(decoded)
        if answer is not None:
            return answer, decoded, True
        new = tokenizer.decode(
            out[0, input_ids.shape[1] :],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )
        return new, decoded, False

    def answer(self, pending: Pending) -> None:
        """Answers for ``pending``'s items one prompt at a time, saved every ``save_every``;
        the model stays in ``pending.loaded`` for the checkpoint's next set."""
        from transformers import set_seed

        model, tokenizer = kept_model(pending, self.load)
        self._warn(pending, tokenizer)
        prompts = self.prompts(
            pending, tokenizer, getattr(model.config, "max_position_embeddings", None)
        )
        set_seed(self.seed)  # as the script starts (a resumed set starts here again)
        bar = tqdm(
            total=pending.total,
            initial=len(pending.done),
            desc=f"generate {pending.eval_set} (authors)",
            unit="item",
        )
        unsplit = 0
        for i, p in enumerate(prompts, 1):
            text, decoded, found = self.generate(model, tokenizer, p)
            unsplit += not found
            pending.done[p.ex.id] = {**p.item(text), "raw_output": decoded}
            if i % max(1, self.save_every) == 0:
                pending.save()
            bar.update(1)
        bar.close()
        pending.save()
        if unsplit:
            log.warning(
                "%s / %s: %d decoded answers hold no %r (the authors' script stops there); "
                "their answer is the decoded new tokens",
                pending.ckpt.label,
                pending.eval_set,
                unsplit,
                ANSWER_MARK,
            )

    def _warn(self, pending: Pending, tokenizer: Any) -> None:
        """Say where the authors' prompt is not what it was for them."""
        if not isinstance(pending.template, UserAssistantTemplate):
            log.warning(
                "%s was trained with prompt=%s; generator=authors prompts it with the authors' "
                "User/Assistant text all the same",
                pending.ckpt.label,
                getattr(pending.template, "name", type(pending.template).__name__),
            )
        if self.special_text == "authors":
            special = set(getattr(tokenizer, "all_special_tokens", []))
            plain = [t for t in (AUTHORS_BOS, AUTHORS_EOS) if t not in special]
            if plain:
                log.warning(
                    "%s: the tokenizer reads %s in the authors' prompt as plain text, not as "
                    "special tokens (generator.special_text=tokenizer writes its own)",
                    pending.ckpt.label,
                    " and ".join(plain),
                )
        marked = sum(ANSWER_MARK in ex.instruction + ex.input for ex in pending.items)
        if marked:
            log.warning(
                "%s / %s: %d prompts hold %r themselves; as in the authors' script the answer "
                "is the text after the first one",
                pending.ckpt.label,
                pending.eval_set,
                marked,
                ANSWER_MARK,
            )
