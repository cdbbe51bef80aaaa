"""Score the difficulty of every training example (the paper's IDC step).

    python score.py scorer=gpt4 dataset=alpaca dry_run=true    # cost estimate only
    python score.py scorer=gpt4 dataset=alpaca scorer.budget_usd=50
    python score.py scorer=ifd model=smollm2_135m dataset=graded
Rerunning the same command resumes: answered examples come from the cache.
"""

import hydra
from omegaconf import DictConfig

import phasedsft.config  # noqa: F401  (registers schemas and resolvers)
from phasedsft.cli import plain_errors
from phasedsft.score.run import run


@hydra.main(config_path="conf", config_name="score", version_base="1.3")
@plain_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
