"""Data layer: loaders into the canonical :class:`~phasedsft.records.Example`, and the graded suite."""

from phasedsft.data.loaders import Loaded, load_data, load_hub, load_json, load_jsonl

__all__ = ["Loaded", "load_data", "load_hub", "load_json", "load_jsonl"]
