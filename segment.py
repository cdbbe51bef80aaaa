"""Segment scored data into stages of rising difficulty (the paper's IDS step).

python segment.py                                         # graded suite, paper thresholds
python segment.py segment=jenks segment.method.k=4
python segment.py dataset=jsonl dataset.source.path=runs/score/<run>/scored.jsonl segment=kde_valleys
python train.py <the command segment.py prints>              # its data options, then segment.manifest=...
"""

import hydra
from omegaconf import DictConfig

import phasedsft.config  # noqa: F401  (registers schemas and resolvers)
from phasedsft.cli import plain_errors
from phasedsft.segment.run import run


@hydra.main(config_path="conf", config_name="segment", version_base="1.3")
@plain_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
