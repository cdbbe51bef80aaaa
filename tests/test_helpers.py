"""The test helpers' own promises."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped
from helpers.deps import STRICT_ENV, needs


def test_a_missing_extra_skips_with_its_name_and_fails_where_every_extra_is_promised(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    with pytest.raises(Skipped, match="needs no_such_module_phasedsft"):
        needs("no_such_module_phasedsft")
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(Failed, match=f"{STRICT_ENV}=1 says every extra is installed"):
        needs("no_such_module_phasedsft")
    assert needs("json").dumps([]) == "[]"  # a present module comes back imported
