"""Optional dependencies of some tests: skipped with a reason where one is missing, never
silently where it must be there.

``make test`` (what CI runs) installs every extra and sets ``PHASEDSFT_TESTS_NEED_EXTRAS=1``:
there a missing dependency fails the test that needs it, so a broken install can never turn
the GGUF, DeepSpeed or W&B tests into skips that CI reports green.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

STRICT_ENV = "PHASEDSFT_TESTS_NEED_EXTRAS"


def needs(module: str) -> ModuleType:
    """``module`` imported; the test skipped (or, under ``make test``, failed) without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"needs {module} ({e}); pip install -e '.[dev]' installs it"
        if os.environ.get(STRICT_ENV) == "1":
            pytest.fail(f"{reason}, and {STRICT_ENV}=1 says every extra is installed")
        pytest.skip(reason, allow_module_level=True)
