"""Commands users already type keep working under their old module names (issue 13's moves).

``python -m phasedsft.winrate``, ``python -m phasedsft.scoring.agree`` and ``python -m
phasedsft.scoring.server`` run the same code as their new names, with the same output.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
