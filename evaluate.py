"""Evaluate a sweep of training runs: answers on test sets, pairwise judging, win rates, reports.

    python evaluate.py                                       # graded demo: held-out set, exact-match judge
    python evaluate.py checkpoints=every_stage               # + Figure 1 (win rate after each stage)
    python evaluate.py eval_set=paper judge=gpt4 sweep_dir=runs/alpaca  dry_run=true   # cost first
    python -m phasedsft.evaluate.winrate runs/evaluation/gpt4/comparisons/koala/<file>.jsonl --rule fastchat
Rerunning the same command resumes: answers files and judge replies are cached.
"""

import hydra
from omegaconf import DictConfig

import phasedsft.config  # noqa: F401  (registers schemas and resolvers)
from phasedsft.cli import plain_errors
from phasedsft.evaluate.run import run


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@plain_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
