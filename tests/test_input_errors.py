"""Bad input and Ctrl-C end a job in plain words: `error: ...` (exit 2) / `interrupted: ...` (130)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, ref_path
from helpers import run_command

from phasedsft.cli import user_error
from phasedsft.llm.cache import ScoreCache
from phasedsft.records import DataError


def test_a_user_error_wrapped_by_a_library_is_found():
    from hydra.errors import InstantiationException

    try:
        try:
            raise DataError("data.jsonl:3: missing field 'output'")
        except DataError as e:
            raise InstantiationException("Error in call to target 'load_jsonl'") from e
    except InstantiationException as wrapped:
        assert str(user_error(wrapped)) == "data.jsonl:3: missing field 'output'"
    assert user_error(ValueError("a bug")) is None


def test_data_error_inside_instantiate_is_a_plain_error(tmp_path):
    """The authors' own scored file has empty outputs (first at line 2161): a located error."""
    scored = ref_path("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
    proc = run_command(
        [
            sys.executable,
            "segment.py",
            "dataset=phasedsft_scored",
            f"dataset.source.path={scored}",
            f"run.root={tmp_path}",
        ],
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "en-alpaca52k-stage3.jsonl:2161: empty output" in last
    assert "Error executing job" not in proc.stderr and "Traceback" not in proc.stderr
    # the override that skips bad rows, exactly as segment.py's config takes it
    assert last.endswith("(set dataset.source.on_error=skip to skip and count bad rows)")


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "dataset.source.n=400",
            "model.tokenizer.vocab_size=300",
            "trainer.max_steps=100000",
            f"run.root={tmp_path}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.time() + 240
        seen = ""
        assert proc.stdout is not None
        while time.time() < deadline:  # training has started: the stage plan is logged
            line = proc.stdout.readline()
            seen += line
            if "stages: 1:difficulty-1" in line or not line:
                break
        assert "stages: 1:difficulty-1" in seen, seen[-2000:]
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted: everything finished so far is kept" in rest
    assert "Traceback" not in rest


def default_sigint() -> None:
    """In the child: Ctrl-C acts as in a terminal even if this test runs with SIGINT ignored
    (a background job inherits SIG_IGN, and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ------------------------------------------------------------------ the skip hint fits the job


@pytest.mark.parametrize(
    ("config_name", "overrides", "node", "row", "override"),
    [
        (
            "train",
            ["dataset=jsonl"],
            "dataset.source",
            {"instruction": "b"},
            "dataset.source.on_error=skip",
        ),
        (
            "evaluate",
            ["eval_set=koala"],
            "eval_sets.koala.source",
            {"id": 2},
            "eval_sets.koala.source.on_error=skip",
        ),
        (  # a source whose config has no on_error key: Hydra wants it added with +
            "train",
            [
                "dataset=alpaca",
                "dataset.source._target_=phasedsft.data.loaders.load_jsonl",
                "~dataset.source.split",
            ],
            "dataset.source",
            {"instruction": "b"},
            "+dataset.source.on_error=skip",
        ),
    ],
)
def test_the_skip_hint_names_an_override_this_job_accepts(
    tmp_path, capsys, config_name, overrides, node, row, override
):
    """The hint is the override for the source that failed, and that override, added to the
    same job, skips and counts the row (evaluate.py has no dataset.source)."""
    from conftest import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from phasedsft.cli import plain_errors

    good = {"instruction": "a", "output": "x", "prompt": "a"}
    bad = tmp_path / "data.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    overrides = [*overrides, f"{node}.path={bad}"]

    @plain_errors
    def job(cfg):
        return instantiate(OmegaConf.select(cfg, node))

    with pytest.raises(SystemExit) as end:
        job(compose(overrides, config_name))
    assert end.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2: missing field")
    assert err.endswith(f"(set {override} to skip and count bad rows)")
    loaded = job(compose([*overrides, override], config_name))
    assert len(loaded.examples) == 1 and loaded.skips.count == 1


def test_a_source_outside_the_jobs_config_gets_no_override(tmp_path):
    """evaluate.py reading a training run's own held-out data cannot override it."""
    from conftest import compose

    from phasedsft.cli import skip_hint

    cfg = compose(["eval_set=koala"], config_name="evaluate")
    assert skip_hint(cfg, "dataset.eval") is None
    assert skip_hint(cfg, "eval_sets.koala.source") == "eval_sets.koala.source.on_error=skip"


# ------------------------------------------------------------------ Ctrl-C during score.py


class StubEndpoint:
    """An OpenAI-compatible endpoint on loopback: answers the first ``answer`` completions,
    then holds the next one open (``hung`` is set) until the test ends."""

    def __init__(self, answer: int | None):
        import http.server
        import threading

        self.answer, self.requests = answer, 0
        self.hung, self.release = threading.Event(), threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests += 1
                if stub.answer is not None and stub.requests > stub.answer:
                    stub.hung.set()
                    stub.release.wait(120)
                    return
                body = json.dumps(
                    {
                        "id": f"c{stub.requests}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "stub",
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": '{"task": 2, "response": 3}',
                                },
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59},
                    }
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_ctrl_c_during_score_keeps_every_answer_and_exits_130(tmp_path):
    """Three answers arrive, the fourth request hangs: Ctrl-C then (the endpoint has the
    request, so the job is mid-run) ends it with exit 130 and no traceback; the three answers
    are in the cache and a rerun asks only for the other five."""

    def cmd(base_url: str) -> list[str]:
        return [
            sys.executable,
            "score.py",
            "scorer=openai",
            f"scorer.base_url={base_url}",
            "scorer.model=stub",
            "scorer.concurrency=1",
            "scorer.max_retries=0",
            "dataset.source.n=8",
            "dataset.eval=null",
            f"run.root={tmp_path / 'score'}",
            f"run.cache_dir={tmp_path / 'cache'}",
        ]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)
    with StubEndpoint(answer=3) as stub:
        proc = subprocess.Popen(
            cmd(stub.base_url),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=default_sigint,
        )
        try:
            assert stub.hung.wait(240), "score.py never sent its fourth request"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert (
        "interrupted: everything finished so far is kept (every answer received is cached)" in err
    )
    assert "rerun the same command to continue" in err
    assert "Traceback" not in err + out
    cache = ScoreCache(tmp_path / "cache" / "scores.sqlite")
    assert cache.count() == 3
    with StubEndpoint(answer=None) as stub:
        again = subprocess.run(
            cmd(stub.base_url), cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert stub.requests == 5  # only the unanswered ones


def test_segment_records_the_rows_it_skipped_and_bad_scores_stop_it(tmp_path, capsys):
    """segment.py counts skipped rows in its own summary.json (it writes no run.json), and
    scores outside the scale or of the wrong type never reach Table 1."""
    from conftest import compose

    from phasedsft.cli import plain_errors
    from phasedsft.segment.run import run

    rows = [{"instruction": f"q{i}", "output": f"a{i}", "score": 1 + i % 5} for i in range(40)]
    rows[5]["score"] = 7
    rows[6]["score"] = True
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [
        "dataset=jsonl",
        f"dataset.source.path={data}",
        f"run.root={tmp_path}/segment",
        f"run.cache_dir={tmp_path}/cache",
        "model.tokenizer.vocab_size=300",
        "compare={}",
    ]
    with pytest.raises(SystemExit) as end:
        plain_errors(run)(compose(base, config_name="segment"))
    assert end.value.code == 2
    assert f"error: {data}:6: score 7 is outside the scale 1-5" in capsys.readouterr().err
    summary = run(compose([*base, "dataset.source.on_error=skip"], config_name="segment"))
    skipped = summary["data"]["skipped_rows"]
    assert summary["data"]["examples"] == 38 and skipped["skipped"] == 2
    assert [s["where"] for s in skipped["first"]] == [f"{data}:6", f"{data}:7"]
    saved = json.loads((tmp_path / "segment").glob("*/summary.json").__next__().read_text())
    assert saved["data"] == summary["data"]
    assert all(1 <= r["mean_difficulty"] <= 5 for r in summary["table1"] if r["count"])
