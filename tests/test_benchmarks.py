"""The benchmarks' own machinery (never their speed): bench_gpu.py's toy mode end to end, and
compare.py's merge and its flags on values outside an old run's min-max."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_bench(path: Path, name: str, rounds: dict[str, list[float]]) -> Path:
    compare = load_compare()
    summary = {k: compare.median_range(v) for k, v in rounds.items()}
    path.write_text(json.dumps({"bench": name, "per_round": rounds, "summary": summary}))
    return path


def test_median_range():
    compare = load_compare()
    assert compare.median_range([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert compare.median_range([4.0, 1.0, 2.0, 3.0])["median"] == 2.5


def test_compare_flags_a_median_outside_the_old_min_max(tmp_path, capsys):
    compare = load_compare()
    old = write_bench(
        tmp_path / "old.json",
        "training",
        {"ours_over_fixed": [2.0, 2.1, 1.9, 2.2, 2.0], "overhead_pct": [3.0, 4.0, 2.0, 5.0, 3.5]},
    )
    new = write_bench(
        tmp_path / "new.json",
        "training",
        {"ours_over_fixed": [1.5, 1.6, 1.4, 1.5, 1.55], "overhead_pct": [3.1, 3.9, 2.5, 4.2, 3.3]},
    )
    assert compare.compare(old, new) == 1
    lines = {
        ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")
    }
    assert "outside the old min-max" in lines["ours_over_fixed"]
    assert "-25.0 %" in lines["ours_over_fixed"]  # median 2.0 -> 1.5
    assert "outside" not in lines["overhead_pct"]


def test_merge_then_compare_with_one_bench(tmp_path, capsys):
    compare = load_compare()
    seg = write_bench(tmp_path / "seg.json", "segmentation", {"a_over_manual": [2.0, 3.0, 2.5]})
    gen = write_bench(tmp_path / "gen.json", "generation", {"batched_over_one": [5.0, 6.0, 5.5]})
    merged = tmp_path / "run.json"
    compare.merge(merged, [seg, gen])
    data = json.loads(merged.read_text())
    assert set(data["benches"]) == {"segmentation", "generation"}
    assert data["machine"]["cpu_count"] == os.cpu_count() and data["date"]
    capsys.readouterr()
    assert compare.compare(merged, seg) == 0  # a bench file against a merged run: what they share
    out = capsys.readouterr().out
    assert "generation: only in OLD" in out and "a_over_manual" in out


@pytest.mark.integration
def test_bench_gpu_toy_mode_writes_every_field(tmp_path):
    """What the GPU benchmark runs without CUDA (tiny config, fp32, a few steps), end to end."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU toy path, even on a GPU box
    cmd = [sys.executable, str(BENCH / "bench_gpu.py"), "--toy", "--peak-tflops", "1"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["bench"] == "gpu" and data["toy"] and data["device"] == "cpu"
    assert data["precision"] == "fp32" and data["peak_tflops"] == 1.0
    assert data["attn"] == ["sdpa"] and "flash_attention_2" in data["attn_not_run"]
    rounds = data["settings"]["rounds"]
    assert rounds >= 5
    toy = data["models"]["toy"]
    assert toy["params"] > toy["flop_params"] > 0
    padded, packed = toy["train"]["sdpa/padded"], toy["train"]["sdpa/packed"]
    for cell in (padded, packed):
        assert cell["error"] is None and len(cell["seconds"]) == rounds
        assert 0 < cell["real_tokens"] <= cell["computed_tokens"]
    assert padded["real_tokens"] == packed["real_tokens"]  # the same examples, batched two ways
    assert toy["generation"]["hf"]["error"] is None
    assert toy["generation"]["hf"]["tokens"] == 4 * 8  # --gen-batch x --new-tokens (toy)
    assert toy["generation"]["vllm"]["error"].startswith("skipped")
    summary = data["summary"]
    for key in (
        "toy/sdpa/padded/tokens_per_s",
        "toy/sdpa/packed/tokens_per_s",
        "toy/sdpa/padded/mfu",
        "toy/sdpa/packed/mfu_computed",
        "toy/sdpa/packed_over_padded",
        "toy/generate/hf_tokens_per_s",
    ):
        m = summary[key]
        assert 0 < m["min"] <= m["median"] <= m["max"], key
        assert len(data["per_round"][key]) == rounds
    tps = data["per_round"]["toy/sdpa/padded/tokens_per_s"]
    mfu = data["per_round"]["toy/sdpa/padded/mfu"]
    assert mfu[0] == pytest.approx(6 * toy["flop_params"] * tps[0] / 1e12)
    assert tps[0] == pytest.approx(padded["real_tokens"] / padded["seconds"][0])


def test_bench_token_counts_counts_the_same_tokens_three_ways(tmp_path):
    """Table 1's counting bench on a few generated rows: the tokenizer's pass, a cold count
    cache and a warm one each measured every round (the bench itself refuses a variant whose
    total differs from the others')."""
    out = tmp_path / "token_counts.json"
    cmd = [sys.executable, str(BENCH / "bench_token_counts.py"), "--n", "300", "--rounds", "2"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["bench"] == "token_counts" and data["n"] == 300 and data["rounds"] == 2
    assert data["tokens"] > 300 * 10  # every row has at least 18 words
    for variant in ("tokenizer", "cold", "warm"):
        assert len(data["seconds"][variant]) == 2 and len(data["cores"][variant]) == 2
        m = data["summary"][f"{variant}/seconds"]
        assert 0 < m["min"] <= m["median"] <= m["max"]
