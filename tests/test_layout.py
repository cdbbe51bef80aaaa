"""The package's layout: one folder per pipeline step, imports flowing one way.

shared (records, io, config, models, prompts, data, cli, jobs) -> llm -> score -> segment ->
train; evaluate reads run directories from disk and imports shared code and llm only.
Every import of a phasedsft module is checked, including those inside functions.
"""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

PACKAGE = ROOT / "phasedsft"
ORDER = ["shared", "llm", "score", "segment", "train"]
SHIMS = {"scoring", "winrate"}  # old command names, kept working (thin re-exports)


def layer(module: str) -> str:
    """The layer of a module: its step folder, or shared."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in {*ORDER, "evaluate", *SHIMS} else "shared"


def allowed(importer: str) -> set[str]:
    if importer == "evaluate":
        return {"shared", "llm", "evaluate"}
    if importer in SHIMS:
        return {*ORDER, "evaluate", *SHIMS}
    return set(ORDER[: ORDER.index(importer) + 1])


def imports(path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("phasedsft"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("phasedsft")]
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    mine = layer(module)
    bad = [m for m in imports(path) if layer(m) not in allowed(mine)]
    assert not bad, f"{module} ({mine}) imports {bad}: allowed layers {sorted(allowed(mine))}"


def test_every_step_has_its_folder_and_its_job():
    for step in ("score", "segment", "train", "evaluate"):
        assert (PACKAGE / step / "run.py").is_file()
        assert (ROOT / f"{step}.py").is_file()


SCORERS = sorted(p.stem for p in (ROOT / "conf" / "scorer").glob("*.yaml"))
JUDGES = sorted(p.stem for p in (ROOT / "conf" / "judge").glob("*.yaml"))


@pytest.mark.parametrize("name", SCORERS)
def test_every_scorer_implements_the_scorer_protocol(name):
    from conftest import compose
    from hydra.utils import instantiate

    from phasedsft.score.base import Scorer

    assert isinstance(instantiate(compose([f"scorer={name}"], "score").scorer), Scorer)


@pytest.mark.parametrize("name", JUDGES)
def test_every_judge_implements_the_judge_protocol(name):
    from conftest import compose
    from hydra.utils import instantiate

    from phasedsft.evaluate.judges import Judge, MarksAnswers

    judge = instantiate(compose([f"judge={name}"], "evaluate").judge)
    assert isinstance(judge, Judge)
    assert isinstance(judge, MarksAnswers) == (name == "reference")


def test_a_component_missing_part_of_its_protocol_is_a_plain_error():
    from phasedsft.evaluate.judges import checked_judge
    from phasedsft.records import DataError
    from phasedsft.score.base import checked_scorer

    class OnlyScore:
        name = "mine"

        def score(self, examples, ctx):
            return []

    with pytest.raises(
        DataError,
        match="lacks uses_model, costs_nothing, run, finalize, estimate, secrets: subclass",
    ):
        checked_scorer(OnlyScore())
    with pytest.raises(DataError, match="lacks judge_pairs, estimate"):
        checked_judge(OnlyScore())
