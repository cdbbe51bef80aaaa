"""Every command a user runs to reproduce the paper composes to the settings in docs/paper_settings.md.

Stand-ins (the tiny model, CPU) prove mechanics; the settings that only matter at scale
(precision, GPUs and global batch, sequence and generation lengths, optimizer betas, which
ablation runs, the judge, the scorer) are checked here against the settings table, for every
paper experiment with every hub model (its ``train.py`` command and its ``then: python
evaluate.py`` lines) and for every command of the README's "Reproduce the paper" section.

A row of the table is checked through its last column: ``JOB: KEY = VALUE`` where JOB is
``train``, ``evaluate``, ``score`` or ``segment`` (the program whose commands it applies to),
optionally narrowed to the commands whose dataset matches a glob: ``train[dataset=authors_*]:
KEY = VALUE``. ``*`` in a key: every test set the command chose; keys under ``effective.`` are
computed the way the run computes them.
"""

from __future__ import annotations

import fnmatch
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
JOBS = ("train", "evaluate", "score", "segment")
CHECK = re.compile(
    r"`(train|evaluate|score|segment)(?:\[dataset=([\w*?-]+)\])?: ([\w.*-]+) = ([^`]+)`"
)
PLACEHOLDERS = {"<run>": "run", "<gpu>": "gpu", "SCORED.jsonl": "/data/scored.jsonl"}
CONFIG_NAME = {"train": "train", "evaluate": "evaluate", "score": "score", "segment": "segment"}


@cache
def table_checks() -> list[tuple[str, str, str | None, str, Any]]:
    """(setting, job, dataset glob or None, key, expected) for every check the table names."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for job, dataset, key, value in CHECK.findall(cells[-1]):
            rows.append((cells[0], job, dataset or None, key, yaml.safe_load(value)))
    return rows


def words_of(line: str) -> list[str]:
    """A command line's overrides (after ``python PROGRAM``), placeholders filled."""
    for k, v in PLACEHOLDERS.items():
        line = line.replace(k, v)
    return shlex.split(line)[2:]


def readme_commands(program: str) -> list[list[str]]:
    """The README's reproduction commands for ``program``: every ``bash`` block of the section
    (continuation lines joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Reproduce the paper", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in section.split("```bash")[1:]:
        for line in block.split("```", 1)[0].replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(f"python {program}"):
                out.append(words_of(line))
    if program in ("train.py", "evaluate.py"):
        assert out, f"README's reproduction section has no {program} command"
    return out


def expand(words: list[str]) -> list[list[str]]:
    """Every job of a multirun command line: the product of its swept values, as Hydra's own
    override parser reads them (``select=[a,b]`` is one list value, not a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([w for w in words if w != "-m"])
    axes = []
    for o in parsed:
        key = o.input_line.split("=", 1)[0]
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def experiment_lines(name: str) -> list[str]:
    return (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()


def swept_orderings(name: str) -> list[str]:
    sweep = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]
    return sweep["params"]["ordering"].split(",")


def experiment_jobs(name: str) -> list[list[str]]:
    """An experiment's own command (line 2 of its file) with every hub model and every swept
    ordering."""
    line = experiment_lines(name)[1].removeprefix("# ")
    words = [w for w in words_of(line) if not w.startswith("model=")]
    return [
        [*w, f"model={m}", f"ordering={o}"]
        for w in expand(words)
        for m in HUB_MODELS
        for o in swept_orderings(name)
    ]


def experiment_evaluations(name: str) -> list[list[str]]:
    """The ``# then: python evaluate.py ...`` lines of an experiment file, as overrides."""
    return [
        words_of(line.removeprefix("# then: "))
        for line in experiment_lines(name)
        if line.startswith("# then: python evaluate.py")
    ]


def train_jobs() -> list[list[str]]:
    jobs = [j for name in EXPERIMENTS for j in experiment_jobs(name)]
    for words in readme_commands("train.py"):
        for job in expand(words):
            if any(w.startswith("+experiment=") for w in job):
                name = next(w for w in job if w.startswith("+experiment=")).split("=")[1]
                jobs += [[*job, f"ordering={o}"] for o in swept_orderings(name)]
            else:
                jobs.append(job)
    return jobs


def evaluate_jobs() -> list[list[str]]:
    commands = readme_commands("evaluate.py")
    commands += [w for name in EXPERIMENTS for w in experiment_evaluations(name)]
    return [j for w in commands for j in expand(w)]


def jobs_of(kind: str) -> list[list[str]]:
    if kind == "train":
        return train_jobs()
    if kind == "evaluate":
        return evaluate_jobs()
    return [j for w in readme_commands(f"{kind}.py") for j in expand(w)]


def gpus_launched(job: list[str]) -> int:
    """GPUs one training job runs on: the launcher's nodes x tasks per node, one task per GPU
    (conf/launcher/slurm.yaml; train.py turns SLURM's tasks into torch.distributed ranks)."""
    from hydra import compose as hydra_compose

    # Hydra is initialised: the job's own config was composed first
    full = hydra_compose(config_name="train", overrides=job, return_hydra_config=True)
    hl = full.hydra.launcher
    if "gpus_per_node" not in hl:
        return 1  # the local launcher: one process
    assert hl.tasks_per_node == hl.gpus_per_node, "one task per GPU"
    return int(hl.nodes) * int(hl.tasks_per_node)


def effective(kind: str, job: list[str], cfg: Any, key: str, monkeypatch) -> Any:
    """Values the run derives from its config, computed by the code the run uses."""
    import phasedsft.train.precision as precision

    monkeypatch.setattr(precision, "bf16_available", lambda: True)  # the paper's A100s
    if kind == "train":
        if key in ("gpus", "global_batch"):
            gpus = gpus_launched(job)
            if key == "gpus":
                return gpus
            tr = cfg.trainer
            return gpus * tr.per_device_train_batch_size * tr.gradient_accumulation_steps
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


def check(kind: str, job: list[str], cfg: Any, key: str, monkeypatch) -> list[tuple[str, Any]]:
    keys = [key]
    if "*" in key:
        keys = [key.replace("*", name) for name in cfg.eval_sets]
    out = []
    for k in keys:
        if k.startswith("effective."):
            out.append((k, effective(kind, job, cfg, k.removeprefix("effective."), monkeypatch)))
        else:
            value = OmegaConf.select(cfg, k, throw_on_missing=True)
            out.append((k, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return out


def assert_table_holds(kind: str, job: list[str], monkeypatch) -> Any:
    cfg = compose(job, config_name=CONFIG_NAME[kind])
    for setting, row_kind, dataset, key, expected in table_checks():
        if row_kind != kind:
            continue
        if dataset is not None and not fnmatch.fnmatch(str(cfg.dataset.name), dataset):
            continue
        if key == "effective.random_stage_sizes" and not cfg.ordering.name.startswith("random"):
            continue
        for k, got in check(kind, job, cfg, key, monkeypatch):
            assert got == expected, f"{setting}: {k} is {got!r}, the table says {expected!r}"
    return cfg


def test_the_table_checks_every_kind_of_setting():
    keys = {key for _, _, _, key, _ in table_checks()}
    for needed in (
        "trainer.max_seq_length",
        "trainer.adam_beta2",
        "trainer.shuffle",
        "prompt._target_",
        "seed",
        "effective.bf16_on_gpu",
        "effective.fp32_master_weights",
        "effective.gpus",
        "effective.global_batch",
        "segment.method.thresholds",
        "dataset.source.format",
        "dataset.source.on_error",
        "scorer.model",
        "scorer.combine",
        "effective.*.max_length",
        "generator.dtype",
        "generator.batch_size",
        "judge.style",
        "judge.max_tokens",
        "judge.parse_retries",
        "judge.max_retries",
        "rule",
    ):
        assert needed in keys, f"docs/paper_settings.md has no check of {needed}"
    assert {job for _, job, _, _, _ in table_checks()} == set(JOBS)


def test_every_row_with_a_config_key_is_checked():
    """A row that names a config key (``group=option``, ``a.b: value``, a conf/ file) says
    in its last column how the commands are checked against it."""
    unchecked = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| ") or line.startswith(("| Setting", "| ---")):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        ours = cells[-2] if len(cells) >= 5 else ""
        names_a_key = re.search(r"`[\w/]+(=|: )[^`]+`|`conf/", ours)
        if names_a_key and not CHECK.search(cells[-1]) and "test_" not in cells[-1]:
            unchecked.append(cells[0])
    assert not unchecked, f"rows naming a config key with no check: {unchecked}"


# ~100 composed jobs (every sweep point): in CI (make test), not in plain pytest
@pytest.mark.integration
@pytest.mark.parametrize("job", train_jobs(), ids=lambda j: " ".join(j)[-90:])
def test_every_training_command_composes_to_the_paper_settings(job, monkeypatch):
    cfg = assert_table_holds("train", job, monkeypatch)
    if cfg.model.name not in HUB_MODELS:
        pytest.fail(f"a reproduction command trains {cfg.model.name}, not a paper model")


@pytest.mark.parametrize("job", evaluate_jobs(), ids=lambda j: " ".join(j)[-90:])
def test_every_evaluation_command_composes_to_the_paper_settings(job, monkeypatch):
    cfg = assert_table_holds("evaluate", job, monkeypatch)
    assert sorted(cfg.eval_sets) == sorted(
        ["self_instruct", "wizardlm", "koala", "vicuna", "oasst", "anthropic"]
    )


@pytest.mark.parametrize(
    ("kind", "job"),
    [(kind, job) for kind in ("score", "segment") for job in jobs_of(kind)],
    ids=lambda x: x if isinstance(x, str) else " ".join(x)[-80:],
)
def test_every_scoring_and_segmenting_command_composes_to_the_paper_settings(
    kind, job, monkeypatch
):
    assert_table_holds(kind, job, monkeypatch)


def test_the_checks_narrowed_to_a_dataset_apply_to_the_authors_data(monkeypatch):
    """``train[dataset=authors_*]`` rows: checked on the authors' data, not on a scored file."""
    narrowed = [r for r in table_checks() if r[2] is not None]
    assert narrowed
    base = ["+experiment=exp1_phased_vs_one_off", "model=llama2_7b", "launcher=slurm"]
    authors = compose([*base, "dataset=authors_alpaca_cleaned"])
    own = compose([*base, "dataset.source.path=/data/scored.jsonl"])
    for setting, _, dataset, key, expected in narrowed:
        assert fnmatch.fnmatch(authors.dataset.name, dataset), setting
        assert OmegaConf.select(authors, key) == expected, setting
        assert not fnmatch.fnmatch(own.dataset.name, dataset), setting


def test_exp2_runs_size_matched_random_stages():
    """The paper's §4: random stages with the difficulty stages' sizes; equal sizes stay an option."""
    for job in experiment_jobs("exp2_random_stages"):
        cfg = compose(job)
        assert cfg.ordering.name in ("random_matched", "one_off")
    assert compose(["ordering=random"]).ordering.sizes == "equal"


def test_exp3_sweeps_exactly_the_six_orders_of_three_stages():
    orderings = {j[-1].split("=")[1] for j in experiment_jobs("exp3_permutations")}
    assert orderings - {"one_off"} == {"1-2-3", "1-3-2", "2-1-3", "2-3-1", "3-1-2", "3-2-1"}
