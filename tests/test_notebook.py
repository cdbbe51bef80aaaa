"""notebooks/analysis.ipynb executes top to bottom on a real (tiny) sweep and draws its figures."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT
from helpers import run_command
from helpers.deps import needs

nbformat = needs("nbformat")
nbclient = needs("nbclient")
pytestmark = pytest.mark.integration


def test_analysis_notebook_runs_on_a_sweep(tiny_sweep, monkeypatch):
    run_command(
        [
            sys.executable,
            "evaluate.py",
            f"sweep_dir={tiny_sweep}",
            "checkpoints=every_stage",
            "generator.max_new_tokens=6",
        ]
    )
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "outputs must be stripped in git"
    )
    monkeypatch.setenv("PHASEDSFT_SWEEP", str(tiny_sweep))
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # held-out loss per level; Figure 1
    text = " ".join(
        o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "3 finished runs" in text
    assert "1-2-3" in text and "random" in text
