"""Commands users type run as written.

Old module names keep working (issue 13's moves): ``python -m phasedsft.winrate``, ``python -m
phasedsft.scoring.agree`` and ``python -m phasedsft.scoring.server`` run the same code as their
new names, with the same output. The README's data commands run as written (on small files
in place of the user's). The command segment.py prints: ``test_printed_commands.py``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import run_command

OLD_TO_NEW = {
    "phasedsft.winrate": "phasedsft.evaluate.winrate",
    "phasedsft.scoring.agree": "phasedsft.score.agree",
    "phasedsft.scoring.server": "phasedsft.llm.server",
}


def module(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", name, *args], timeout=120, check=check)


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_module_names_print_the_same_help(old):
    before, after = module(old, "--help"), module(OLD_TO_NEW[old], "--help")
    assert before.stdout == after.stdout and "usage:" in before.stdout
    note = f"note: python -m {old} is deprecated and goes in phasedsft 0.3; use python -m "
    assert f"{note}{OLD_TO_NEW[old]} (same options, same output)" in before.stderr
    assert "deprecated" not in after.stderr


def test_old_winrate_name_replays_a_file_like_the_new_one(tmp_path):
    rows = [
        {"id": i, "review_ab": ab, "review_ba": ba}
        for i, (ab, ba) in enumerate([("8 7", "5 9"), ("8 7", "9 5"), ("2 7", "9 5")])
    ]
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    old, new = (
        module("phasedsft.winrate", str(f), "--json"),
        module(OLD_TO_NEW["phasedsft.winrate"], str(f), "--json"),
    )
    assert json.loads(old.stdout)["wins"] == json.loads(new.stdout)["wins"] == 1
    missing = module("phasedsft.winrate", str(tmp_path / "missing.jsonl"), check=False)
    assert missing.returncode == 2


# ------------------------------------------------------------------ README's data commands, run
#
# Each `python train.py dataset=... dataset.source.path=data/<file>` line of the README's Data
# section runs as written, on a small file of that name and layout in place of the user's (and
# plan_only=true, run.root in a temporary folder). Lines that train a hub model (no network
# here) are not run; every other line must be.


def _alpaca(path: Path) -> None:
    rows = [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": "",
            "output": str(2 * i + 1) + " ok" * (i % 5),
        }
        for i in range(24)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")


def _llama_factory_alpaca(path: Path) -> None:
    rows = [
        {
            "instruction": f"And {i} plus one?",
            "input": "",
            "output": str(i + 1) + " ok" * (i % 5),
            "system": "Answer with a number.",
            "history": [[f"What is {i} plus {i}?", str(2 * i)]] * (i % 2),
        }
        for i in range(24)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")


def _glaive_tool_calls(path: Path) -> None:
    """ShareGPT with tool calls, as LLaMA-Factory's glaive_toolcall_en_demo.json lays it out."""
    add = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}
    tools = json.dumps([{"name": "add", "description": "Add two numbers", "parameters": add}])
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"What is {i} plus {i + 1}?"},
                {
                    "from": "function_call",
                    "value": json.dumps({"name": "add", "arguments": {"a": i, "b": i + 1}}),
                },
                {"from": "observation", "value": json.dumps({"result": 2 * i + 1})},
                {"from": "gpt", "value": f"It is {2 * i + 1}." + " Done." * (i % 4)},
            ],
            "tools": tools,
        }
        for i in range(24)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")


def _qa_csv(path: Path) -> None:
    lines = ["question,answer"] + [
        f"What is {i} plus {i}?,{2 * i}{' indeed' * (i % 4)}" for i in range(24)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pc_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = [f"Say {i} twice." for i in range(24)]
    completions = [f"{i} {i}{' again' * (i % 3)}" for i in range(24)]
    pq.write_table(pa.table({"prompt": prompts, "completion": completions}), str(path))


def _authors_scored(path: Path) -> None:
    rows = [{"id": str(i), "score": i % 5 + 1, "data": [f"Echo {i}.", f"{i}"]} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


README_DATA = {
    "alpaca_data.json": _alpaca,
    "glaive_toolcall_en_demo.json": _glaive_tool_calls,
    "lf_alpaca.json": _llama_factory_alpaca,
    "qa.csv": _qa_csv,
    "pc.parquet": _pc_parquet,
    "stage3.jsonl": _authors_scored,
}


def readme_data_lines() -> list[str]:
    """The README's ``python train.py`` lines that read a local ``data/`` file."""
    return [
        line
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("python train.py") and "dataset.source.path=data/" in line
    ]


def test_every_readme_data_line_is_run_here_unless_it_needs_the_hub():
    for line in readme_data_lines():
        words = shlex.split(line, comments=True)
        path = next(w for w in words if w.startswith("dataset.source.path=data/"))
        model = next((w.split("=", 1)[1] for w in words if w.startswith("model.path=")), "")
        hub_model = model.count("/") == 1 and not model.startswith(("data/", "models/", "."))
        assert path.removeprefix("dataset.source.path=data/") in README_DATA or hub_model, line


def readme_data_command(name: str) -> list[str]:
    """The README's ``python train.py`` line reading ``data/<name>``, as argv words after
    ``train.py`` (its comment dropped)."""
    for line in readme_data_lines():
        if f"dataset.source.path=data/{name}" in line:
            return shlex.split(line, comments=True)[2:]
    raise AssertionError(f"README has no 'python train.py' line reading data/{name}")


@pytest.mark.integration  # a subprocess each: seconds, not milliseconds
@pytest.mark.parametrize("name", sorted(README_DATA))
def test_readme_data_command_runs_as_written(name, tmp_path):
    data = tmp_path / name
    README_DATA[name](data)
    args = [
        a.replace(f"dataset.source.path=data/{name}", f"dataset.source.path={data}")
        for a in readme_data_command(name)
    ]
    out = run_command(
        [sys.executable, "train.py", *args, "plan_only=true", f"run.root={tmp_path / 'runs'}"],
        timeout=300,
        check=False,
        no_traceback=True,
    )
    assert out.returncode == 0, f"README: python train.py {shlex.join(args)}\n{out.stderr[-1500:]}"
    assert any(ln.startswith("plan: ") for ln in out.stdout.splitlines()), out.stdout[-1500:]
