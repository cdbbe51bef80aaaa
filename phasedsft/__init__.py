"""phasedsft: phased (difficulty-curriculum) instruction fine-tuning.

Score every training triplet's difficulty, segment the data into stages of rising
difficulty, and uptrain stage after stage (Pang et al., ACL Findings 2024).
"""

__version__ = "0.1.0"
