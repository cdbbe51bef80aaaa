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


INTERRUPTED = (
    "interrupted: everything finished so far is kept (scores and judgments cached, answers "
    "saved, stages checkpointed); rerun the same command to continue"
)


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind ``e``, also when a library wrapped it (Hydra's ``instantiate``)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, USER_ERRORS):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def plain_errors(fn: F) -> F:
    """Bad input and unavailable models end the job with ``error: ...`` and exit code 2;
    Ctrl-C with what was kept and exit code 130, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except Exception as e:
            found = user_error(e)
            if found is None:
                raise
            logging.getLogger("phasedsft").debug("user error", exc_info=True)
            print(f"error: {found}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
