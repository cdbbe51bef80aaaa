"""Level 1: every option of every config group composes, and its components instantiate."""

import inspect
import json
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import CONF, compose
from helpers import run_command
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

GROUPS = [
    "model",
    "dataset",
    "prompt",
    "scorer",
    "segment",
    "ordering",
    "trainer",
    "judge",
    "logger",
    "launcher",
    "trainer/deepspeed",
    "trainer/peft",
]
LAUNCHERS = {
    "local": "BasicLauncher",
    "submitit_local": "LocalLauncher",
    "slurm": "SlurmLauncher",
    "slurm_local": "SlurmLauncher",
}


@cache
def options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    compose([])  # initialises Hydra once for the session
    return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


# The ordering group's permutations are generated (64 nodes): a sample composes here, and
# test_every_generated_ordering_instantiates checks them all without the cost of composing.
ORDERING_SAMPLE = {
    "one_off",
    "random",
    "random_matched",
    "sorted",
    "phased",
    "1-2-3",
    "3-2-1",
    "only-3",
    "4-1-2-3",
}
CASES = [(g, o) for g in GROUPS for o in options(g) if g != "ordering" or o in ORDERING_SAMPLE]


def bind(node, **extra):
    """Check a _target_ node's keys against its callable's signature (no hub download)."""
    fn = get_method(node._target_)
    kwargs = {
        k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k != "_target_"
    }
    inspect.signature(fn).bind(**extra, **kwargs)
    return fn


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g
    assert {"1-2-3", "3-2-1", "2-1-3", "only-3", "one_off", "random", "sorted", "phased"} <= set(
        options("ordering")
    )
    assert {"tiny", "smollm2_135m", "llama2_7b", "llama2_13b", "mistral_7b"} <= set(
        options("model")
    )


# one record of each data format, for the local-file dataset options
ROW_OF_FORMAT = {
    "phasedsft_scored": {"id": "1", "score": "2", "data": ["q", "a"]},
    "alpaca": {"instruction": "q", "output": "a"},
    "messages": {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    },
    "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    "prompt_completion": {"prompt": "q", "completion": "a"},
}


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group, option, tmp_path, tiny_tokenizer):
    overrides = [f"{group}={option}", f"run.root={tmp_path}"]
    if group == "ordering" and option == "phased":
        overrides.append("ordering.stages=[2,1]")
    if group == "dataset":
        src = compose(overrides).dataset.source
        # a local-file dataset (path: ???): give it a real file of its format
        path = OmegaConf.to_container(src).get("path")
        # an option whose data the user downloads first (the authors' scores) has no file here
        if path == "???" or (src._target_.endswith("load_jsonl") and not Path(path).exists()):
            row = ROW_OF_FORMAT[src.format]
            f = tmp_path / "data.json"
            f.write_text(
                json.dumps([row]) if src._target_.endswith("load_json") else json.dumps(row) + "\n"
            )
            overrides.append(f"dataset.source.path={f}")
    if group == "model" and option == "hf":
        overrides.append("model.path=org/some-model")
    cfg = compose(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    node = OmegaConf.select(cfg, group.replace("/", "."))

    if group == "model":
        from phasedsft.models import BuildContext

        ctx = BuildContext(tmp_path, 0, lambda: ["hello world"] * 10)
        if option == "tiny":
            tok = instantiate(node.tokenizer, context=ctx)
            model = instantiate(node.loader, context=ctx, tokenizer=tok)
            assert model.config.vocab_size == len(tok)
        else:  # hub / GGUF weights: loaded for real in the integration tests
            bind(node.tokenizer, context=ctx)
            bind(node.loader, context=ctx, tokenizer=None)
    elif group == "dataset":
        if node.source._target_.endswith("load_hub"):
            bind(node.source)
        else:
            assert instantiate(node.source).examples
        if node.eval:
            assert instantiate(node.eval).examples
    elif group == "segment":
        assert instantiate(node.method).thresholds_for([1.0] * 5 + [3.0] * 5 + [5.0] * 5)
    elif group == "trainer":
        from phasedsft.train.stage import training_arguments

        args = training_arguments(node, tmp_path, seed=0, report_to=[])
        assert args.learning_rate == node.learning_rate
    elif group == "trainer/deepspeed":
        from phasedsft.train.stage import deepspeed_config

        ds = deepspeed_config(node)
        assert ds["zero_optimization"]["stage"] in (2, 3)
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled by the Trainer
    elif group == "trainer/peft":
        from phasedsft.models import BuildContext, scratch_llama

        ctx = BuildContext(tmp_path, 0, list)
        model = instantiate(node).wrap(scratch_llama(ctx, tiny_tokenizer, 32, 64, 2, 2, 2))
        trainable, total = model.get_nb_trainable_parameters()
        assert 0 < trainable < total
    elif group == "logger":
        assert isinstance(list(node.report_to), list)
        if node.tracker:
            tracker = instantiate(node.tracker)
            if option == "wandb":
                assert tracker.group == f"{cfg.dataset.name}-{cfg.model.name}-s{cfg.seed}"
    elif group == "launcher":
        from hydra import compose as hydra_compose

        full = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
        target = full.hydra.launcher._target_
        assert target.endswith(LAUNCHERS[option])
        assert get_method(target)  # the launcher plugin is installed
    else:
        obj = instantiate(node)
        assert obj is not None
        if group == "ordering":
            assert obj.name == node.name


def test_every_generated_ordering_instantiates():
    from hydra.core.config_store import ConfigStore

    from phasedsft.config import stage_sequences

    nodes = ConfigStore.instance().repo["ordering"]
    assert len(stage_sequences()) == 64
    for seq in stage_sequences():
        name = "-".join(map(str, seq)) if len(seq) > 1 else f"only-{seq[0]}"
        obj = instantiate(nodes[f"{name}.yaml"].node)
        assert obj.name == name and list(obj.stages) == list(seq)


def test_paper_trainer_values():
    t = compose(["trainer=paper", "model=llama2_7b"]).trainer
    assert (t.learning_rate, t.num_train_epochs, t.per_device_train_batch_size) == (5e-6, 2, 16)
    assert (t.gradient_accumulation_steps, t.weight_decay, t.warmup_ratio, t.lr_scheduler_type) == (
        1,
        0.1,
        0.1,
        "cosine",
    )
    # the hub models keep the paper's recipe; the from-scratch tiny model brings its own
    assert compose(["model=llama2_7b"]).trainer.learning_rate == 5e-6
    assert compose([]).trainer.learning_rate > 1e-4


def test_model_configs_choose_no_other_group_and_trainer_tiny_is_what_model_tiny_gets():
    """A model config holds the model only; what the tiny model needs of a trainer preset is
    trainer/for_model/tiny.yaml, picked by train.yaml, the same values as trainer=tiny."""
    import yaml

    for path in sorted((CONF / "model").glob("*.yaml")):
        assert "defaults" not in yaml.safe_load(path.read_text()), path.name
    tiny_default = compose([]).trainer
    assert compose(["model=llama2_7b", "trainer=tiny"]).trainer == tiny_default
    assert compose(["trainer/peft=lora"]).trainer.learning_rate == tiny_default.learning_rate


def test_score_and_segment_compose_no_trainer_and_keep_their_run_names():
    """score.py and segment.py train nothing: no trainer node (a trainer override is a typo
    there). Their run names still hash the node they composed until 0.2, frozen in
    identity.DATA_JOB_TRAINER: the presets' values then (tests/test_identity.py checks the
    names of tiny and hub models against names written by the code that composed it)."""
    for job in ("score", "segment"):
        assert "trainer" not in compose([], job)
        with pytest.raises(ConfigCompositionException):
            compose(["trainer.learning_rate=1e-5"], job)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.learnin_rate=1e-5",
        "trainer.learning_rate=fast",
        "seed=abc",
        "ordering=1-2-9",
        "model=gpt5",
    ],
)
def test_typos_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose([override])


def test_run_name_is_stable_and_tracks_the_config():
    def name(*o):
        return compose(list(o)).run.name

    assert name() == name()
    assert name().startswith("graded-tiny-1-2-3-s0-")
    assert name("trainer.learning_rate=1e-4") != name()
    assert name("ordering=3-2-1") != name()
    assert name("run.root=/elsewhere") == name()  # where results go is not part of the identity
    assert name("scorer=gpt4") != name()
    assert name("scorer=gpt4", "scorer.budget_usd=5") == name(
        "scorer=gpt4"
    )  # spending is not identity


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_cfg_job_prints_the_composed_config():
    out = run_command([sys.executable, "train.py", "--cfg", "job", "ordering=3-2-1"]).stdout
    cfg = OmegaConf.create(out)
    assert list(cfg.ordering.stages) == [3, 2, 1] and cfg.model.name == "tiny"


def test_qlora_without_a_gpu_is_a_plain_error(tmp_path):
    from phasedsft.models import BuildContext, ModelError, load_pretrained

    cfg = compose(["model=llama2_7b", "trainer/peft=lora", "model.loader.quantization=nf4"])
    assert cfg.trainer.peft.target_modules[0] == "q_proj"
    with pytest.raises(ModelError, match="quantization=nf4 \\(QLoRA\\) needs a CUDA GPU"):
        load_pretrained(BuildContext(tmp_path, 0, list), None, path="unused", quantization="nf4")
    with pytest.raises(ModelError, match="must be nf4 or null"):
        load_pretrained(BuildContext(tmp_path, 0, list), None, path="unused", quantization="int3")


@pytest.mark.parametrize("config_name", ["score", "segment"])
def test_the_score_cache_lives_beside_the_runs_the_user_asked_for(config_name, tmp_path):
    """#23 item 13: score.py wrote ./runs/.cache whatever run.root said; the cache belongs to the
    project: run.root=<project>/score -> <project>/.cache, the one train.py run.root=<project>
    uses. The default stays runs/.cache."""
    cfg = compose([f"run.root={tmp_path}/proj/{config_name}"], config_name=config_name)
    assert cfg.run.cache_dir == f"{tmp_path}/proj/.cache"
    assert compose([f"run.root={tmp_path}/proj"]).run.cache_dir == f"{tmp_path}/proj/.cache"
    assert compose([], config_name=config_name).run.cache_dir == "runs/.cache"


@pytest.mark.integration
def test_score_py_writes_no_cache_where_it_is_run(tmp_path):
    from conftest import ROOT

    work = tmp_path / "cwd"
    work.mkdir()
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "score.py"),
            "scorer=length",
            f"run.root={tmp_path}/proj/score",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "proj" / ".cache" / "scores.sqlite").is_file()
    assert not (work / "runs").exists()


def test_paid_scores_of_earlier_versions_are_read_where_they_were_written(tmp_path, monkeypatch):
    """The cache moved beside run.root: a paid scorer whose new cache does not exist yet reads
    the one earlier versions wrote under ./runs/.cache instead of paying again."""
    from omegaconf import OmegaConf

    import phasedsft.config  # noqa: F401  (the parent_dir resolver)
    from phasedsft.jobs import DEFAULT_CACHE_DIR, score_cache_dir

    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "proj" / "runs")
    cfg = OmegaConf.create({"run": {"root": root, "cache_dir": DEFAULT_CACHE_DIR}})
    assert score_cache_dir(cfg, paid=True) == tmp_path / "proj" / ".cache"  # nothing earlier
    (tmp_path / "runs" / ".cache").mkdir(parents=True)
    (tmp_path / "runs" / ".cache" / "scores.sqlite").write_bytes(b"")
    given = OmegaConf.create({"run": {"root": root, "cache_dir": str(tmp_path / "mine")}})
    assert score_cache_dir(given, paid=True) == tmp_path / "mine"  # given: always that one
    assert score_cache_dir(cfg, paid=True) == Path("runs/.cache")
    assert score_cache_dir(cfg, paid=False) == tmp_path / "proj" / ".cache"  # costs nothing
    (tmp_path / "proj" / ".cache").mkdir(parents=True)
    (tmp_path / "proj" / ".cache" / "scores.sqlite").write_bytes(b"")
    assert score_cache_dir(cfg, paid=True) == tmp_path / "proj" / ".cache"  # started: its own
