"""What run identity is today: run names, cache keys, manifest keys, comparison identity.

``tests/fixtures/identity_v1.json`` was written by this file (``python tests/identity_fixture.py
--write``) with the code as it stood before the package was reorganised into one folder per
pipeline step; ``tests/test_identity.py`` recomputes every value and requires it unchanged.
A run directory, a score or judge cache row, a stage manifest and a comparison group made by
earlier code must still be found by the same command after code moves: none of them may
depend on where a class lives.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FIXTURE = HERE / "fixtures" / "identity_v1.json"
PATH = "runs/score/x/scored.jsonl"

RUN_NAMES: dict[str, tuple[str, list[str]]] = {
    "train default": ("train", []),
    "train one_off": ("train", ["ordering=one_off"]),
    "train random": ("train", ["ordering=random"]),
    "train random_matched": ("train", ["ordering=random_matched"]),
    "train 3-2-1": ("train", ["ordering=3-2-1"]),
    "train only-3": ("train", ["ordering=only-3"]),
    "train sorted": ("train", ["ordering=sorted"]),
    "train smollm2": ("train", ["model=smollm2_135m", "prompt=chat"]),
    "train llama2_7b zero3 lora": (
        "train",
        ["model=llama2_7b", "trainer/deepspeed=zero3", "trainer/peft=lora"],
    ),
    "train jenks": ("train", ["segment=jenks"]),
    "train kde_valleys": ("train", ["segment=kde_valleys"]),
    "train scorer=length": ("train", ["scorer=length"]),
    **{
        f"train {exp}": (
            "train",
            [f"+experiment={exp}", "model=llama2_7b", f"dataset.source.path={PATH}"],
        )
        for exp in (
            "exp1_phased_vs_one_off",
            "exp2_random_stages",
            "exp3_permutations",
            "exp4_stage3_only",
        )
    },
    **{
        f"score scorer={s}": ("score", [f"scorer={s}"])
        for s in ("oracle", "length", "gpt4", "openai", "local", "ifd", "perplexity")
    },
    **{
        f"segment segment={s}": ("segment", [f"segment={s}"])
        for s in ("manual", "quantile", "balanced", "gmm", "jenks", "kde_valleys")
    },
    # models other than tiny (whose trainer preset score.py and segment.py no longer compose)
    "score scorer=ifd model=smollm2_135m": ("score", ["scorer=ifd", "model=smollm2_135m"]),
    "score scorer=gpt4 model=llama2_7b": ("score", ["scorer=gpt4", "model=llama2_7b"]),
    "segment model=smollm2_135m": ("segment", ["model=smollm2_135m"]),
    "segment model=llama2_7b segment=jenks": ("segment", ["model=llama2_7b", "segment=jenks"]),
}


def run_names() -> dict[str, str]:
    from conftest import compose

    return {label: str(compose(o, name).run.name) for label, (name, o) in RUN_NAMES.items()}


def cache_keys() -> dict[str, list[str]]:
    """Score- and judge-cache keys of two items (what a rerun looks up)."""
    from phasedsft.evaluate.judges import OpenAIJudge, Pair
    from phasedsft.llm.cache import cache_key, identity_hash
    from phasedsft.records import Example
    from phasedsft.score.api import OpenAIScorer

    examples = [Example("1", "Add 2 and 3.", "", "5"), Example("2", "Name a colour.", "", "Red")]
    pairs = [Pair("p", "Say hi.", "Hello!", "Hi."), Pair("q", "Add 1 and 1.", "2", "two")]
    local_identity = {"scorer": "local", "model": "smollm2", "prompt": "x", "seed": 0}
    return {
        "gpt4 scorer": [j.key for j in OpenAIScorer(model="gpt-4-0613").jobs(examples)],
        "openai scorer structured": [
            j.key for j in OpenAIScorer(model="m", structured=True).jobs(examples)
        ],
        "gpt4 judge (authors)": [j.key for j in OpenAIJudge(model="gpt-4-0613").jobs(pairs)],
        "vicuna judge": [j.key for j in OpenAIJudge(model="gpt-4", style="vicuna").jobs(pairs)],
        "cache_key": [cache_key(local_identity, ex) for ex in examples],
        "identity_hash": [identity_hash(local_identity)],
    }


def manifest_names() -> dict[str, str]:
    """The cached stage manifest's file name for the graded suite under each method."""
    from conftest import compose
    from hydra.utils import instantiate

    from phasedsft.data.graded import generate_suite
    from phasedsft.score.base import OracleScorer, apply_scores
    from phasedsft.segment.manifest import load_or_build_manifest

    examples = generate_suite(n=120, seed=0).examples
    examples = apply_scores(examples, OracleScorer().score(examples), "oracle")
    out = {}
    for method in ("manual", "quantile", "jenks"):
        segmenter = instantiate(compose([f"segment={method}"]).segment.method)
        with tempfile.TemporaryDirectory() as tmp:
            _, path = load_or_build_manifest(examples, segmenter, 0, Path(tmp))
        out[method] = path.name
    return out


def comparison_identity() -> dict[str, str]:
    """The hash of what groups runs for comparison (evaluate.py), from saved configs."""
    from conftest import compose
    from omegaconf import OmegaConf

    from phasedsft.evaluate.generation import Run
    from phasedsft.io import sha256_json

    out = {}
    for label, overrides in {"default": [], "one_off": ["ordering=one_off"]}.items():
        cfg = OmegaConf.create(OmegaConf.to_container(compose(overrides), resolve=True))
        run = Run(Path("x"), cfg, [])
        out[label] = sha256_json([run.identity, list(run.unused)])
    return out


def current() -> dict[str, object]:
    return {
        "run_names": run_names(),
        "cache_keys": cache_keys(),
        "manifests": manifest_names(),
        "comparison": comparison_identity(),
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/identity_fixture.py --write   (rewrites the fixture)")
    FIXTURE.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
