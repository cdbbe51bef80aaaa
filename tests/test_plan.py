"""plan_only=true: a sweep is previewed (orderings, stage sizes, steps) without training anything."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT
from helpers import run_command

from phasedsft.train.plan import stage_steps

SMALL = ["dataset.source.n=200", "dataset.eval.n=10", "model.tokenizer.vocab_size=300"]


def readme_command(marker: str) -> list[str]:
    """The README's command line that contains ``marker``, as argv words after ``train.py``."""
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("python train.py") and marker in line:
            words = shlex.split(line.split("#")[0])
            return words[2:]
    raise AssertionError(f"README has no 'python train.py' line with {marker!r}")


def plan(args: list[str], tmp_path, check: bool = True) -> subprocess.CompletedProcess:
    return run_command(
        [sys.executable, "train.py", *args, "plan_only=true", *SMALL, f"run.root={tmp_path}"],
        timeout=300,
        check=check,
    )


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_readme_permutation_sweep_plans_exactly_the_six_orders_of_three_stages(tmp_path):
    args = readme_command("every permutation")
    proc = plan(args, tmp_path)
    jobs = re.findall(r"^  #\d+ (\S+)", proc.stdout, re.M)
    assert sorted(jobs) == ["1-2-3", "1-3-2", "2-1-3", "2-3-1", "3-1-2", "3-2-1"], proc.stdout
    assert "0 invalid, nothing trained" in proc.stdout
    # a plan writes no run: no stage directory, no run.json anywhere
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("stage_*"))


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_invalid_job_fails_the_plan_and_names_the_reason(tmp_path):
    proc = plan(["-m", "ordering=1-2-3,1-2-4"], tmp_path, check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs are invalid" in proc.stderr
    assert re.search(r"1-2-4 .*INVALID: ordering asks for difficulty stage 4", proc.stdout)
    assert re.search(r"1-2-3 .*difficulty-1 \d+ ex / \d+ steps", proc.stdout)


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_single_invalid_plan_ends_like_any_run(tmp_path):
    proc = plan(["ordering=only-4"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ordering asks for")
    assert "Traceback" not in proc.stderr


def test_step_count_is_the_trainers_arithmetic():
    t = SimpleNamespace(max_steps=-1, per_device_train_batch_size=16, gradient_accumulation_steps=1)
    assert stage_steps(2 * 30_300, t, world=8) == 474  # Alpaca stage 1, 2 epochs, 8 GPUs
    assert stage_steps(100, t, world=1) == 7
    t.gradient_accumulation_steps = 4
    assert stage_steps(100, t, world=1) == 2  # ceil(7 batches / 4)
    t.max_steps = 3
    assert stage_steps(10**6, t, world=8) == 3


def test_plan_counts_each_stages_target_tokens(tmp_path, capsys, monkeypatch):
    """plan_only: per stage, the tokens in the loss (labels != -100) over its examples."""
    from conftest import compose

    from phasedsft.train import run

    built = []  # the setup the plan made, to count its labels here

    def setup(*args, **kwargs):
        built.append(real_setup(*args, **kwargs))
        return built[-1]

    real_setup = run.setup
    monkeypatch.setattr(run, "setup", setup)
    cfg = compose([*SMALL, f"run.root={tmp_path}", f"run.cache_dir={tmp_path / 'cache'}"])
    record = run.plan(cfg)
    (s,) = built
    expected = [
        (p.name, sum(x != -100 for i in p.ids for x in s.encoded[i].labels)) for p in s.phases
    ]
    assert [(st["name"], st["target_tokens"]) for st in record["stages"]] == expected
    assert record["target_tokens"] == sum(t for _, t in expected) > 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    for (name, target), st in zip(expected, record["stages"], strict=True):
        assert f"{name} {st['examples']} ex / {st['steps']} steps / {target} target tokens" in line
    assert line.endswith(f"process(es), {record['target_tokens']} target tokens")
    assert not list(tmp_path.rglob("run.json"))  # a plan writes no run


@pytest.mark.integration
def test_a_preview_runs_where_it_is_launched_whatever_the_launcher(tmp_path):
    """A SLURM launcher (no cluster needed: nothing is submitted) and submitit's local executor:
    every job of the preview runs in this process, the plan still counts the launcher's tasks."""
    for launcher, processes in (("slurm", 8), ("submitit_local", 1)):
        root = tmp_path / launcher
        out = run_command(
            [
                sys.executable,
                "train.py",
                "-m",
                "ordering=1-2-3,one_off",
                "plan_only=true",
                f"launcher={launcher}",
                f"run.root={root}",
            ],
            no_traceback=True,
        )
        assert "plan: 2 jobs, 0 invalid, nothing trained" in out.stdout
        assert out.stdout.count(f"on {processes} process(es)") >= 2
        assert not list(root.rglob(".submitit"))  # no job was handed to submitit


def documented_glob_command() -> list[str]:
    text = (ROOT / "conf" / "ordering" / "README.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"`(python train\.py -m 'ordering=glob\([^`]*)`", text)
    return shlex.split(command)


@pytest.mark.integration
def test_the_documented_permutation_glob_plans_six_valid_jobs(tmp_path):
    """conf/ordering/README.md's "all six permutations of three stages", run as documented."""
    words = documented_glob_command()
    out = run_command(
        [sys.executable, *words[1:], "plan_only=true", f"run.root={tmp_path}"], no_traceback=True
    )
    assert "plan: 6 jobs, 0 invalid, nothing trained" in out.stdout
    orders = sorted(re.findall(r"^  #\d (\d-\d-\d) ", out.stdout, flags=re.M))
    assert orders == ["1-2-3", "1-3-2", "2-1-3", "2-3-1", "3-1-2", "3-2-1"]


def test_a_plan_keeps_counts_not_tokens_and_they_are_trainings(tiny_tokenizer):
    """plan_only encodes as training does but keeps three numbers an example: the same counts,
    the same skipped and truncated examples, the same tokens when an example is read again."""
    from phasedsft.data.graded import generate_suite
    from phasedsft.prompts import AlpacaTemplate, EncodedCounts
    from phasedsft.train.inspect import stage_tokens
    from phasedsft.train.run import encode_all

    exs = generate_suite(120, seed=3).examples
    template = AlpacaTemplate()
    lengths = sorted(
        len(template.split_ids(ex, tiny_tokenizer)[0]) for ex in exs
    )  # a max_length that skips some prompts and cuts some outputs
    max_len = lengths[len(lengths) // 2] + 8
    full_report: dict = {}
    counts_report: dict = {}
    kept, full = encode_all(exs, template, tiny_tokenizer, max_len, full_report)
    kept_c, counts = encode_all(exs, template, tiny_tokenizer, max_len, counts_report, tokens=False)
    assert isinstance(counts, EncodedCounts) and not isinstance(full, EncodedCounts)
    assert [e.id for e in kept_c] == [e.id for e in kept] and list(counts) == list(full)
    assert counts_report == full_report
    assert full_report["prompt_too_long_skipped"]["count"] > 0 and full_report["output_truncated"]
    for i in full:
        c, f = counts[i], full[i]
        assert (c.n_tokens, c.n_target, c.truncated) == (f.n_tokens, f.n_target, f.truncated)
        assert c.input_ids == f.input_ids and c.labels == f.labels and c == f
    ids = list(full)
    assert stage_tokens(ids, counts) == stage_tokens(ids, full)


def test_planning_imports_no_training_stack(tmp_path):
    """train.py plan_only (the recipe module, the offline tokenizer) never imports torch: its
    memory at a million rows (benchmarks/bench_scale.py) has no room for it."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import phasedsft.train.run\n"
        "from phasedsft.models import BuildContext, train_bpe_tokenizer\n"
        "texts = ['a plan counts tokens', 'and trains nothing'] * 20\n"
        f"ctx = BuildContext(Path({str(tmp_path)!r}), 0, lambda: iter(texts))\n"
        "tok = train_bpe_tokenizer(ctx, vocab_size=300)\n"
        "tok = train_bpe_tokenizer(ctx, vocab_size=300)  # and from the cache\n"
        "assert tok('a plan')['input_ids']\n"
        "print(sorted(m for m in ('torch', 'datasets', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
