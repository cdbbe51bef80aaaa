"""The package's layout: one folder per pipeline step, imports flowing one way.

shared (records, io, config, identity, rundir, judging, models, prompts, data, cli, jobs) ->
llm -> score -> segment -> train; evaluate reads run directories from disk (phasedsft.rundir)
and imports shared code and llm only. Every import of a phasedsft module is checked, including
those inside functions; no module imports itself back through others (no import cycles); and
every ``_target_`` a step instantiates (conf/, phasedsft's registered config nodes) names only
what that step may import.
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


def module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """phasedsft module -> the phasedsft modules it imports (``from pkg import mod`` names the
    module ``pkg.mod``), read statically, imports inside functions and TYPE_CHECKING included."""
    known = {module_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        me, out = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module in known:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in known else node.module)
            elif isinstance(node, ast.ImportFrom) and node.module:
                out |= {f"{node.module}.{a.name}" for a in node.names} & known
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names} & known
        graph[me] = out - {me}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one
    module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_phasedsft():
    """Every phasedsft module can be read without the ones that import it: no module imports
    (directly or through others) a module that imports it, not even inside a function."""
    graph = import_graph()
    assert "phasedsft.evaluate.winrate" in graph["phasedsft.winrate"]  # the graph is real
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


# ------------------------------------------------------------------ _target_ strings obey them too

CONF = ROOT / "conf"
STEP_CONFIGS = {"score": "score", "segment": "segment", "train": "train", "evaluate": "evaluate"}
SCHEMAS = {"score_schema": "score", "segmentation_schema": "segment", "train_schema": "train"}
SCHEMAS["evaluate_schema"] = "evaluate"
# (step, group) pairs whose options a step composes but does not instantiate all of: train.py
# instantiates a judge only if it marks answers (phasedsft.judging's reference, a user's own);
# evaluate.py's pairwise judges it recognises by their _target_ and never imports
# (train.held_out.marking_judge; test_train_never_imports_evaluates_judges). Its default judge
# (reference) is shared code, and the defaults are checked strictly.
BORROWED = {("train", "judge")}


def target_layer(target: str) -> str:
    """The layer of the module a ``_target_`` names (saved old names read as today's)."""
    from phasedsft.identity import current_target

    return layer(current_target(target).rpartition(".")[0])


def targets_in(node) -> list[str]:
    """Every ``_target_`` string in a plain config tree (interpolations left out)."""
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k == "_target_" and isinstance(v, str)]
        return [t for t in out if not t.startswith("${")] + [
            t for k, v in node.items() if k != "_target_" for t in targets_in(v)
        ]
    if isinstance(node, list):
        return [t for v in node for t in targets_in(v)]
    return []


def groups_of_steps() -> dict[str, set[str]]:
    """Config group (its folder under conf/) -> the steps whose primary config composes it."""
    import yaml

    used: dict[str, set[str]] = {}
    for step, name in STEP_CONFIGS.items():
        for entry in yaml.safe_load((CONF / f"{name}.yaml").read_text())["defaults"]:
            if not isinstance(entry, dict):
                continue
            key = next(iter(entry)).removeprefix("optional ").split("@")[0].strip()
            if not key.startswith(("override ", "hydra")):
                used.setdefault(key, set()).add(step)
    return used


def test_the_steps_compose_the_groups_they_name():
    used = groups_of_steps()
    assert used["judge"] == {"train", "evaluate"} and used["generator"] == {"evaluate"}
    assert used["trainer/peft"] == {"train"} and "score" in used["scorer"]


def conf_targets() -> list[tuple[str, str, set[str]]]:
    """(where, target, the steps that may instantiate it) for every ``_target_`` in conf/ and
    in the config nodes phasedsft registers (its schemas' and generated groups' defaults)."""
    import yaml
    from conftest import compose
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    compose([], "train")  # registers every node, as train.py does
    used = groups_of_steps()
    out = []
    for step, name in STEP_CONFIGS.items():
        for t in targets_in(yaml.safe_load((CONF / f"{name}.yaml").read_text())):
            out.append((f"conf/{name}.yaml", t, {step}))
    for path in sorted(CONF.rglob("*.yaml")):
        group = str(path.parent.relative_to(CONF))
        if path.parent == CONF or group not in used:
            continue
        steps = {s for s in used[group] if (s, group) not in BORROWED}
        for t in targets_in(yaml.safe_load(path.read_text())):
            out.append((str(path.relative_to(ROOT)), t, steps))
    for key, entry in ConfigStore.instance().repo.items():
        nodes = entry.items() if isinstance(entry, dict) else [(key, entry)]
        steps = (
            {SCHEMAS[key.removesuffix(".yaml")]} if key.removesuffix(".yaml") in SCHEMAS else set()
        )
        steps |= used.get(key, set()) - {s for s in used.get(key, set()) if (s, key) in BORROWED}
        for name, node in nodes:
            if not hasattr(node, "node"):
                continue
            tree = OmegaConf.to_container(node.node, resolve=False)
            for t in targets_in(tree):
                out.append((f"config store {key}/{name}", t, steps))
    return out


def test_config_targets_obey_the_import_rules():
    """A ``_target_`` is an import by whichever step instantiates it: train must not name an
    evaluate module (evaluate reads run directories, it is not imported by training), score
    nothing of segment or train, shared code's nodes only shared code, and so on."""
    found = conf_targets()
    assert any(t == "phasedsft.judging.ReferenceJudge" for _, t, _ in found)  # it reads conf/
    assert any(w.startswith("config store ordering/") for w, _, _ in found)  # and the nodes
    bad = [
        f"{where}: {target} ({target_layer(target)}) for {step}"
        for where, target, steps in found
        for step in sorted(steps)
        if target_layer(target) not in allowed(step)
    ]
    assert not bad, "targets a step may not import:\n" + "\n".join(bad)


@pytest.mark.parametrize("step", sorted(STEP_CONFIGS))
def test_each_steps_defaults_target_only_what_it_may_import(step):
    """What a step instantiates when nothing is overridden, composed as it composes it."""
    from conftest import compose
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose([], STEP_CONFIGS[step]), resolve=False)
    bad = [t for t in targets_in(cfg) if target_layer(t) not in allowed(step)]
    assert not bad, f"{step}.yaml's defaults target {bad}: allowed layers {sorted(allowed(step))}"


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


def test_train_never_imports_evaluates_judges():
    """#24 item 2: a train run configured with a pairwise judge (judge=openai, judge=gpt4) leaves it to
    evaluate.py without importing evaluate's code; the reference judge marks answers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from phasedsft.train.held_out import marking_judge\n"
        "pairwise = OmegaConf.load('conf/judge/openai.yaml')\n"
        "assert pairwise._target_.startswith('phasedsft.evaluate.')\n"
        "assert marking_judge(pairwise) is None\n"
        "assert marking_judge(OmegaConf.load('conf/judge/reference.yaml')) is not None\n"
        "assert not [m for m in sys.modules if m.startswith('phasedsft.evaluate')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
