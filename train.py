"""Phased instruction fine-tuning: one entrypoint for one-off, phased, random and permuted runs.

python train.py                                    # offline demo: graded suite, tiny model, 1-2-3
python train.py -m ordering=1-2-3,3-2-1,one_off,random model=llama2_7b trainer=paper
python train.py --cfg job                          # print the composed config
"""

import hydra
from omegaconf import DictConfig

import phasedsft.config  # registers schemas and resolvers
import phasedsft.train.orderings  # noqa: F401  (registers the ordering group)
from phasedsft.cli import plain_errors
from phasedsft.train.run import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@plain_errors
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    main()
