"""Answers from an OpenAI-compatible server (``generator=openai``): the completions adapter
(:class:`_CompletionsClient`) and :class:`OpenAIGenerator`, which sends the prompt token ids
the run's template gives to ``/v1/completions`` of a server given per checkpoint or started
for each (:mod:`.servers`). Requests run through :mod:`phasedsft.llm` as the judge's do:
``concurrency`` in flight, retries, and every answer recorded in
``generations/requests.sqlite`` the moment it arrives, so a killed run asks none again.
(``conf/generator/openai.yaml`` names it ``phasedsft.evaluate.generation.OpenAIGenerator``,
where it is re-exported.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from phasedsft.evaluate.answers import Lengths, Pending, lengths_of
from phasedsft.evaluate.runs import Checkpoint
from phasedsft.evaluate.servers import (
    SERVER_LOG,
    ProcessGroup,
    Server,
    free_port,
    listed_models,
    log_tail,
)
from phasedsft.io import sha256_json
from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.endpoint import ChatEndpoint, Rejected, Tally
from phasedsft.llm.engine import Job, RequestsAborted
from phasedsft.records import DataError
from phasedsft.rundir import GENERATIONS_DIR

log = logging.getLogger(__name__)

REQUESTS_DB = "requests.sqlite"  # generations/<this>: every answer a server sent, as it came
PLACEHOLDERS = ("model_dir", "port", "host")
PROMPT_FORMATS = ("token_ids", "text")


class _CompletionsClient:
    """An ``AsyncOpenAI`` client whose ``chat.completions.create`` sends a completion.

    :class:`ChatEndpoint` sends every request as ``client.chat.completions.create(model=,
    messages=, max_tokens=, **options)`` and classifies what comes back (retries, rejected,
    endpoint down, not a completion). Answers from a prompt need ``/v1/completions``: this
    sends ``prompt`` with ``answer_tokens`` as ``max_tokens`` there and hands the reply back
    shaped as a chat completion (``choices[i].message.content`` = the text), so the same
    classification applies to it; the model is the one the server serves (``model``, not the
    endpoint's configured name). Errors of the client pass through untouched.
    """

    def __init__(self, client: Any, model: str):
        self._client, self._model = client, model  # the served model's name
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(
        self,
        *,
        model: str,
        messages: Any,
        max_tokens: int,
        prompt: str | list[int],
        answer_tokens: int,
        **options: Any,
    ) -> Any:
        resp = await self._client.completions.create(
            model=self._model, prompt=prompt, max_tokens=answer_tokens, **options
        )
        choices = getattr(resp, "choices", None)
        if isinstance(resp, str) or not isinstance(choices, list):
            return resp  # the endpoint's checks say what is wrong with it
        shaped = [
            SimpleNamespace(
                message=SimpleNamespace(content=c.text)
                if isinstance(getattr(c, "text", None), str)
                else None,
                finish_reason=getattr(c, "finish_reason", None),
            )
            for c in choices
        ]
        dump = getattr(resp, "model_dump_json", None)
        return SimpleNamespace(
            choices=shaped,
            usage=getattr(resp, "usage", None),
            model_dump_json=dump if callable(dump) else lambda: repr(resp),
        )


@dataclass
class OpenAIGenerator(ChatEndpoint):
    """Answers from an OpenAI-compatible server (``vllm serve``, SGLang, TGI, llama.cpp).

    Where each checkpoint is served, exactly one of: ``base_url`` (one checkpoint),
    ``base_urls`` (checkpoint label ``<run>/stage_<i>_<name>``, or the path of its stage or
    model directory -> URL) or ``command`` (a server started per checkpoint and stopped after
    it: ``{model_dir}``, ``{port}`` and ``{host}`` are filled in; e.g. ``vllm serve
    {model_dir} --port {port}``). ``prompt_format``: ``token_ids`` sends the prompt ids the
    run's template gives with the tokenizer saved beside the weights, what generator=hf feeds
    the model (vLLM, SGLang, llama.cpp take them); ``text`` sends the template's text for the
    server to tokenize (TGI), which may add its own special tokens. The API key comes from the
    environment variable ``api_key_env`` only (none needed for a local server).
    """

    task: ClassVar[str] = "generation"

    model: str = ""  # "": the first model the server lists at /v1/models
    base_urls: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    host: str = "127.0.0.1"  # where a started server is asked
    start_timeout: float = 900.0  # seconds for a started server to answer /v1/models
    stop_timeout: float = 30.0  # seconds after SIGTERM before SIGKILL
    prompt_format: str = "token_ids"
    context_length: int | None = None  # null: the checkpoint's max_position_embeddings
    max_new_tokens: int | None = None  # as generator=hf: null leaves it to each test set
    max_length: int | None = None
    top_p: float = 1.0  # sent when temperature > 0
    extra_body: dict[str, Any] = field(default_factory=dict)  # sent as is (repetition_penalty...)
    max_tokens: int = 0  # not used: each answer's budget is sent (the test set's lengths)
    parse_retries: int = 2  # asking again when a reply is not a completion
    name: str = "openai"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_urls = {str(k): str(v) for k, v in dict(self.base_urls or {}).items()}
        extra = self.extra_body or {}
        if isinstance(extra, DictConfig):
            extra = OmegaConf.to_container(extra, resolve=True)
        self.extra_body = {str(k): v for k, v in dict(extra).items()}
        given = [k for k in ("base_url", "base_urls", "command") if getattr(self, k)]
        if len(given) != 1:
            raise DataError(
                "generator=openai needs exactly one of generator.base_url (the server of the "
                "one checkpoint), generator.base_urls ({<run>/stage_<i>_<name>: <url>, ...}) or "
                "generator.command (a server started per checkpoint, e.g. 'vllm serve "
                "{model_dir} --port {port}')"
                + (f"; given: {', '.join('generator.' + k for k in given)}" if given else "")
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise DataError(
                f"generator.prompt_format must be one of {list(PROMPT_FORMATS)}, "
                f"not {self.prompt_format!r}"
            )
        if self.command:
            self.command_argv(model_dir="m", port=1)  # a bad template fails before any work

    # ---- settings

    def lengths(self, settings: Any) -> Lengths:
        return lengths_of(settings, self)

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        """What changes the answers: not where the server runs (the weights are the
        checkpoint's), but how it is asked."""
        ident: dict[str, Any] = {
            "backend": "openai",
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "prompt_format": self.prompt_format,
        }
        if self.context_length is not None:
            ident["context_length"] = self.context_length
        if self.extra_body:
            ident["extra_body"] = self.extra_body
        return {**ident, **(lengths or self.lengths(None)).identity()}

    def request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": self.temperature}
        if self.temperature > 0:
            options["top_p"] = self.top_p
        if self.seed is not None:
            options["seed"] = self.seed
        if self.extra_body:
            options["extra_body"] = dict(self.extra_body)
        return options

    def command_argv(self, **values: Any) -> list[str]:
        """``command`` split as a shell would (no shell runs it), placeholders filled in."""
        assert self.command is not None
        try:
            parts = shlex.split(self.command)
        except ValueError as e:
            raise DataError(
                f"generator.command cannot be split into words ({e}): {self.command!r}"
            ) from None
        names = {
            name
            for part in parts
            for _, name, _, _ in string.Formatter().parse(part)
            if name is not None
        }
        unknown = sorted(names - set(PLACEHOLDERS))
        missing = [n for n in ("model_dir", "port") if n not in names]
        if not parts or unknown or missing:
            raise DataError(
                f"generator.command {self.command!r}: "
                + (
                    f"unknown placeholder(s) {['{' + n + '}' for n in unknown]}; "
                    if unknown
                    else ""
                )
                + (f"missing {['{' + n + '}' for n in missing]}; " if missing else "")
                + "it must start a server of {model_dir} on {port} (also known: {host}), "
                "e.g. 'vllm serve {model_dir} --port {port}'"
            )
        values = {"host": self.host, **values}
        return [part.format(**{k: str(v) for k, v in values.items()}) for part in parts]

    # ---- where each checkpoint is served

    def url_for(self, ckpt: Checkpoint) -> str | None:
        """The given URL of ``ckpt``'s server: ``base_url``, or its ``base_urls`` entry."""
        if self.base_url:
            return self.base_url
        wanted = {ckpt.dir.resolve(), ckpt.model_dir.resolve()}
        for key, url in self.base_urls.items():
            if key == ckpt.label or Path(key).expanduser().resolve() in wanted:
                return url
        return None

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Every checkpoint has a server before any generates."""
        labels = [c.label for c in checkpoints]
        if self.base_url and len(checkpoints) > 1:
            raise DataError(
                f"generator.base_url is the server of one checkpoint, but {len(labels)} need "
                f"answers ({', '.join(labels[:4])}{', ...' if len(labels) > 4 else ''}): give "
                "each its URL in generator.base_urls={<label>: <url>, ...}, or let "
                "generator.command start a server per checkpoint"
            )
        if self.base_urls:
            missing = [c.label for c in checkpoints if self.url_for(c) is None]
            if missing:
                raise DataError(
                    f"generator.base_urls has no URL for {missing}; its keys are checkpoint "
                    "labels (<run>/stage_<i>_<name>) or paths of the stage or model directory; "
                    f"given: {sorted(self.base_urls)}"
                )

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def serve(self, ckpt: Checkpoint) -> Server:
        """Start ``command`` for ``ckpt`` and wait until it lists its models at /v1/models.

        Its output goes to ``generations/server.log``. A server that exits, or does not
        answer within ``start_timeout`` seconds, is stopped (with all it started) and is a
        plain error quoting the end of its output; so is Ctrl-C while it starts.
        """
        port = free_port(self.host)
        argv = self.command_argv(model_dir=ckpt.model_dir, port=port)
        url = f"http://{self.host}:{port}/v1"
        log_path = ckpt.dir / GENERATIONS_DIR / SERVER_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        shown = self.redact(shlex.join(argv))
        with open(log_path, "ab") as out:
            start = out.tell()
            group = ProcessGroup(argv, stdout=out, stop_timeout=self.stop_timeout)
        try:
            with open(log_path, "ab") as out:
                out.write(
                    f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {ckpt.label}: pid {group.pid} "
                    f"port {port}: {shown}\n".encode()
                )
            log.info("%s: starting its server (pid %d): %s", ckpt.label, group.pid, shown)
            began, key = time.monotonic(), self.api_key()
            while True:
                code = group.proc.poll()
                if code is not None:
                    raise DataError(
                        f"the server for {ckpt.label} exited with code {code} before answering "
                        f"{url}/models (generator.command: {shown}); the end of its output "
                        f"({log_path}):\n{log_tail(log_path, start)}"
                    )
                try:
                    models = listed_models(url, key)
                    break
                except (OSError, ValueError):
                    pass
                if time.monotonic() - began > self.start_timeout:
                    raise DataError(
                        f"the server for {ckpt.label} did not answer {url}/models within "
                        f"{self.start_timeout:g} s (generator.start_timeout), so it was stopped "
                        f"(generator.command: {shown}); the end of its output ({log_path}):\n"
                        f"{log_tail(log_path, start)}"
                    )
                time.sleep(0.25)
        except BaseException:
            group.stop()
            raise
        log.info(
            "%s: its server answers at %s after %.0f s", ckpt.label, url, time.monotonic() - began
        )
        return Server(ckpt.label, url, group, log_path, models)

    def release(self, loaded: dict[str, Any]) -> None:
        """Stop the server started for the checkpoint (if any); forget its tokenizer."""
        server = loaded.get("server")
        loaded.clear()
        if server is not None:
            server.stop()

    def _connect(self, ckpt: Checkpoint, loaded: dict[str, Any]) -> dict[str, Any]:
        """``loaded`` for ``ckpt``: its tokenizer, context, server URL and model name; a
        server from ``command`` is started once and kept for the checkpoint's other sets."""
        if loaded.get("dir") == ckpt.model_dir:
            return loaded
        self.release(loaded)
        from transformers import AutoConfig, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(ckpt.model_dir)
        except Exception as e:
            raise DataError(
                f"generator=openai builds each prompt with the tokenizer saved beside the "
                f"weights; it could not be read from {ckpt.model_dir}: {type(e).__name__}: {e}"
            ) from e
        context = self.context_length
        if context is None:
            with contextlib.suppress(Exception):
                context = getattr(
                    AutoConfig.from_pretrained(ckpt.model_dir), "max_position_embeddings", None
                )
        if self.command:
            server = self.serve(ckpt)
            loaded["server"] = server
            url, models = server.url, server.models
        else:
            given = self.url_for(ckpt)
            if given is None:
                raise DataError(f"generator.base_urls has no URL for {ckpt.label}")
            url, models = given, []
            if not self.model:
                try:
                    models = listed_models(given, self.api_key(), timeout=self.timeout)
                except (OSError, ValueError) as e:
                    raise DataError(
                        f"the server for {ckpt.label} at {given} does not list its models at "
                        f"{given.rstrip('/')}/models ({self.redact(f'{type(e).__name__}: {e}')}): "
                        "is it running? (or name the model: generator.model=...)"
                    ) from e
        model = self.model or (models[0] if models else "")
        if not model:
            raise DataError(
                f"the server for {ckpt.label} at {url} lists no model at /v1/models: name the "
                "one it serves with generator.model=..."
            )
        # "dir" last: an error above leaves nothing that looks connected
        loaded.update(tokenizer=tokenizer, context=context, url=url, model=model)
        loaded["dir"] = ckpt.model_dir
        return loaded

    # ---- answers

    def answer(self, pending: Pending) -> None:
        own = pending.loaded is None  # answers_for alone: start and stop the server here
        loaded: dict[str, Any] = {} if pending.loaded is None else pending.loaded
        try:
            self._answer(pending, self._connect(pending.ckpt, loaded))
        finally:
            if own:
                self.release(loaded)

    def _answer(self, pending: Pending, served: dict[str, Any]) -> None:
        ckpt, tokenizer = pending.ckpt, served["tokenizer"]
        as_text = self.prompt_format == "text"
        prompts = pending.prompts(tokenizer, served["context"], truncate=not as_text)
        client = _CompletionsClient(
            replace(self, base_url=served["url"], base_urls={}, command=None).client("generator"),
            served["model"],
        )
        options = self.request_options()

        jobs = []
        for p in prompts:
            sent: str | list[int] = (
                pending.template.prompt_text(p.ex, tokenizer) if as_text else p.ids
            )
            key = sha256_json(
                {"answers": pending.key, "id": p.ex.id, "prompt": sent, "max_tokens": p.budget}
            )
            cost = self.price.cost(p.full, p.budget)
            jobs.append(Job(key, (p, sent), p.full + p.budget, cost))

        async def call(job: Job) -> Result:
            p, sent = job.example
            tally = Tally()
            for _ in range(1 + self.parse_retries):
                try:
                    resp = await self.ask(
                        client, job, [], tally, prompt=sent, answer_tokens=p.budget, **options
                    )
                except Rejected as e:
                    return self.failed(job, p.ex.id, tally, str(e))
                if resp is None:  # not a completion: a failed attempt, asked again
                    continue
                choice = resp.choices[0]
                detail = {"finish_reason": choice.finish_reason}
                text = choice.message.content or ""
                return self._result(job, p.ex.id, tally, "ok", None, detail, text, None)
            return self.failed(job, p.ex.id, tally, f"no completion: {tally.reason}")

        cache = ScoreCache(ckpt.dir / GENERATIONS_DIR / REQUESTS_DB)
        stopped: RequestsAborted | None = None
        try:
            stats = self.run_requests(
                jobs, call, cache, f"generate {pending.eval_set} ({ckpt.label})"
            )
        except RequestsAborted as e:
            stats, stopped = e.stats, e
        finally:
            cache.close()
        failed: list[tuple[str, str]] = []
        for job, result in zip(jobs, stats.ordered, strict=True):
            p = job.example[0]
            if result is None:
                continue
            if result.status == "ok":
                pending.done[p.ex.id] = p.item((result.raw or "").strip())
            else:
                failed.append((p.ex.id, result.error or "failed"))
        pending.save()
        where = f"{ckpt.label} on {pending.eval_set}"
        if stopped is not None:
            raise DataError(f"{where}: {stopped}")
        if failed:
            raise DataError(
                f"{where}: {len(failed)} of {len(jobs)} requests failed (first: item "
                f"{failed[0][0]}: {failed[0][1]}); the other answers are saved. Rerun with "
                "generator.retry_failed=true to ask the failed ones again"
            )
