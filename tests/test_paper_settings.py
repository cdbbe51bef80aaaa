"""Every command a user runs to reproduce the paper composes to the settings in docs/paper_settings.md.

Stand-ins (the tiny model, CPU) prove mechanics; the settings that only matter at scale
(precision, sequence and generation lengths, optimizer betas, which ablation runs, the judge)
are checked here against the settings table, for every paper experiment with every hub model
and for every reproduction command in the README. A row of the table is checked through its
last column: ``train: KEY = VALUE`` or ``evaluate: KEY = VALUE`` (``*`` in a key: every test
set the command chose; keys under ``effective.`` are computed the way the run computes them).
"""

from __future__ import annotations

import itertools
import re
import shlex
from functools import cache
from typing import Any

import pytest
import yaml
from conftest import CONF, ROOT, compose
from omegaconf import OmegaConf

DOC = ROOT / "docs" / "paper_settings.md"
HUB_MODELS = ["llama2_7b", "llama2_13b", "mistral_7b"]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("exp*.yaml"))  # the paper's
CHECK = re.compile(r"`(train|evaluate): ([\w.*-]+) = ([^`]+)`")
PLACEHOLDERS = {"<run>": "run", "<gpu>": "gpu", "SCORED.jsonl": "/data/scored.jsonl"}


@cache
def table_checks() -> list[tuple[str, str, str, Any]]:
    """(setting, job, key, expected) for every row of the settings table that names a check."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for job, key, value in CHECK.findall(cells[-1]):
            rows.append((cells[0], job, key, yaml.safe_load(value)))
    return rows


def readme_commands(program: str) -> list[list[str]]:
    """The README's reproduction commands for ``program`` (continuation lines joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Reproduce the paper", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    out = []
    for line in block.splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith(f"python {program}"):
            for k, v in PLACEHOLDERS.items():
                line = line.replace(k, v)
            out.append(shlex.split(line)[2:])
    assert out, f"README's reproduction section has no {program} command"
    return out


def expand(words: list[str]) -> list[list[str]]:
    """Every job of a multirun command line: the product of its comma-swept values."""
    fixed = [w for w in words if w != "-m" and "," not in w]
    swept = [
        [f"{k}={v}" for v in vs.split(",")]
        for k, vs in (w.split("=", 1) for w in words if "," in w)
    ]
    return [[*fixed, *combo] for combo in itertools.product(*swept)]


def experiment_jobs(name: str) -> list[list[str]]:
    """An experiment's own command (line 2 of its file) with every hub model and every swept ordering."""
    line = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()[1].removeprefix("# ")
    for k, v in PLACEHOLDERS.items():
        line = line.replace(k, v)
    words = [w for w in shlex.split(line)[2:] if not w.startswith("model=")]
    sweep = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]
    orderings = sweep["params"]["ordering"].split(",")
    return [
        [*w, f"model={m}", f"ordering={o}"]
        for w in expand(words)
        for m in HUB_MODELS
        for o in orderings
    ]


def train_jobs() -> list[list[str]]:
    jobs = [j for name in EXPERIMENTS for j in experiment_jobs(name)]
    for words in readme_commands("train.py"):
        for job in expand(words):
            if any(w.startswith("+experiment=") for w in job):
                name = next(w for w in job if w.startswith("+experiment=")).split("=")[1]
                sweep = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
                orderings = sweep["hydra"]["sweeper"]["params"]["ordering"].split(",")
                jobs += [[*job, f"ordering={o}"] for o in orderings]
            else:
                jobs.append(job)
    return jobs


def effective(job: str, cfg: Any, key: str, monkeypatch) -> Any:
    """Values the run derives from its config, computed by the code the run uses."""
    import phasedsft.train.precision as precision

    monkeypatch.setattr(precision, "bf16_available", lambda: True)  # the paper's A100s
    if job == "train":
        bf16, fp16 = precision.resolve_half(cfg.trainer.bf16, cfg.trainer.fp16)
        ds = OmegaConf.to_container(cfg.trainer.deepspeed) if cfg.trainer.deepspeed else None
        values = {
            "bf16_on_gpu": bf16,
            # DeepSpeed in 16 bits keeps fp32 masters; elsewhere the guard upcasts
            "fp32_master_weights": precision.deepspeed_half(ds, bf16, fp16)
            or bool(cfg.trainer.upcast_half_weights),
            "random_stage_sizes": cfg.ordering.get("sizes"),
        }
        return values[key]
    from hydra.utils import instantiate

    generator = instantiate(cfg.generator)
    name, what = key.split(".", 1)
    lengths = generator.lengths(cfg.eval_sets[name].generation)
    return getattr(lengths, what)


def check(job: str, cfg: Any, key: str, monkeypatch) -> list[tuple[str, Any]]:
    keys = [key]
    if "*" in key:
        keys = [key.replace("*", name) for name in cfg.eval_sets]
    out = []
    for k in keys:
        if k.startswith("effective."):
            out.append((k, effective(job, cfg, k.removeprefix("effective."), monkeypatch)))
        else:
            value = OmegaConf.select(cfg, k, throw_on_missing=True)
            out.append((k, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return out


def test_the_table_checks_every_kind_of_setting():
    keys = {key for _, _, key, _ in table_checks()}
    for needed in (
        "trainer.max_seq_length",
        "trainer.adam_beta2",
        "trainer.shuffle",
        "prompt._target_",
        "effective.bf16_on_gpu",
        "effective.fp32_master_weights",
        "effective.*.max_length",
        "judge.style",
        "judge.max_tokens",
    ):
        assert needed in keys, f"docs/paper_settings.md has no check of {needed}"


@pytest.mark.parametrize("job", train_jobs(), ids=lambda j: " ".join(j)[-90:])
def test_every_training_command_composes_to_the_paper_settings(job, monkeypatch):
    cfg = compose(job)
    if cfg.model.name not in HUB_MODELS:
        pytest.fail(f"a reproduction command trains {cfg.model.name}, not a paper model")
    for setting, kind, key, expected in table_checks():
        if kind != "train":
            continue
        if key == "effective.random_stage_sizes" and not cfg.ordering.name.startswith("random"):
            continue
        for k, got in check("train", cfg, key, monkeypatch):
            assert got == expected, f"{setting}: {k} is {got!r}, the table says {expected!r}"


@pytest.mark.parametrize("job", [j for w in readme_commands("evaluate.py") for j in expand(w)])
def test_every_evaluation_command_composes_to_the_paper_settings(job, monkeypatch):
    cfg = compose(job, config_name="evaluate")
    assert sorted(cfg.eval_sets) == sorted(
        ["self_instruct", "wizardlm", "koala", "vicuna", "oasst", "anthropic"]
    )
    for setting, kind, key, expected in table_checks():
        if kind != "evaluate":
            continue
        for k, got in check("evaluate", cfg, key, monkeypatch):
            assert got == expected, f"{setting}: {k} is {got!r}, the table says {expected!r}"


def test_exp2_runs_size_matched_random_stages():
    """The paper's §3: random stages with the difficulty stages' sizes; equal sizes stay an option."""
    for job in experiment_jobs("exp2_random_stages"):
        cfg = compose(job)
        assert cfg.ordering.name in ("random_matched", "one_off")
    assert compose(["ordering=random"]).ordering.sizes == "equal"


def test_exp3_sweeps_exactly_the_six_orders_of_three_stages():
    orderings = {j[-1].split("=")[1] for j in experiment_jobs("exp3_permutations")}
    assert orderings - {"one_off"} == {"1-2-3", "1-3-2", "2-1-3", "2-3-1", "3-1-2", "3-2-1"}
