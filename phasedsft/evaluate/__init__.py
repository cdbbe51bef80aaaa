"""Evaluation: test sets, generation from training checkpoints, pairwise judging, reports."""
