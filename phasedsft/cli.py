"""What the entrypoints share: user errors in plain words, without a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from phasedsft.audit import AuditError
from phasedsft.models import ModelError
from phasedsft.precision import PrecisionError
from phasedsft.records import DataError

F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ModelError, PrecisionError, AuditError)


def plain_errors(fn: F) -> F:
    """Bad input and unavailable models end the job with ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            logging.getLogger("phasedsft").debug("user error", exc_info=True)
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
