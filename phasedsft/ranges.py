"""The range of a numeric option, declared once beside the code that reads it.

A number outside its meaning (``concurrency=0``, ``parse_retries=-1``, ``learning_rate=-1``)
must stop a job before it does anything, naming the value and why it is wrong, instead of
running silently as something else, stalling, or poisoning a shared cache. Each option says
what it takes where it is defined:

- a dataclass field (a typed schema in :mod:`phasedsft.config`, or a ``_target_`` class)::

      concurrency: int = ranged(16, ge=1, why="requests in flight at once")

- a function's or class's parameter: ``Annotated[int, Range(ge=1, why=...)]``;
- a class attribute ``RANGES: ClassVar[dict[str, Range]]`` (name -> range).

:func:`phasedsft.config_check.check_ranges` walks a composed config and checks every value
against these before the job starts: ``error: scorer.concurrency=0: must be >= 1 (requests
in flight at once)``. ``None`` (an optional option left unset) is never out of range; a
range on a list or a mapping applies to each of its values.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``ge``/``gt`` below, ``le``/``lt`` above (any may be None; none at
    all: any finite number). ``also``: single values allowed besides (``max_steps=-1``).
    ``why``: what the option means, shown with a value out of range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""
    also: tuple[float, ...] = ()

    def text(self) -> str:
        """``>= 1``, ``> 0 and <= 1``, ``a finite number``, ``..., or -1``."""
        parts = []
        if self.ge is not None:
            parts.append(f">= {_show(self.ge)}")
        if self.gt is not None:
            parts.append(f"> {_show(self.gt)}")
        if self.le is not None:
            parts.append(f"<= {_show(self.le)}")
        if self.lt is not None:
            parts.append(f"< {_show(self.lt)}")
        text = " and ".join(parts) or "a finite number"
        if self.also:
            text += ", or " + " or ".join(_show(a) for a in self.also)
        return text

    def holds(self, value: float) -> bool:
        if value in self.also:
            return True
        if math.isnan(value) or (math.isinf(value) and not self.bounded()):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def bounded(self) -> bool:
        """Whether any bound is set (an unbounded range still refuses inf and NaN)."""
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None (in range, unset, or not a number)."""
        if not is_number(value) or self.holds(float(value)):
            return None
        return f"must be {self.text()}" + (f" ({self.why})" if self.why else "")

    def bad_value(self) -> float:
        """A value this range refuses (for tests)."""
        if self.ge is not None:
            candidate = self.ge - 1
        elif self.gt is not None:
            candidate = self.gt
        elif self.le is not None:
            candidate = self.le + 1
        elif self.lt is not None:
            candidate = self.lt
        else:
            return math.nan
        while candidate in self.also:
            candidate -= 1
        return candidate


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def show_value(value: Any) -> str:
    """A config value as the user would type it: ``0``, ``-1``, ``1e-05``, ``[0.5, 3.5]``."""
    if is_number(value):
        return _show(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def ranged(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    why: str = "",
    also: tuple[float, ...] = (),
) -> Any:
    """A dataclass field with its :class:`Range` (``field(default=..., metadata={"range": ...})``)."""
    rng = Range(ge=ge, gt=gt, le=le, lt=lt, why=why, also=also)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"range": rng})
    return dataclasses.field(default=default, metadata={"range": rng})


def _hints(obj: Any) -> dict[str, Any]:
    plain_class = isinstance(obj, type) and not dataclasses.is_dataclass(obj)
    target = vars(obj).get("__init__", obj) if plain_class else obj
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # a forward reference that does not resolve at run time
        return {}


def _ranges_in_hint(hint: Any) -> Range | None:
    if typing.get_origin(hint) is typing.Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, Range):
                return meta
    return None


def ranges_of(obj: Any) -> dict[str, Range]:
    """Every range ``obj`` (a class or a function) declares for its options, by name."""
    out: dict[str, Range] = {}
    if obj is None:
        return out
    for name, hint in _hints(obj).items():
        r = _ranges_in_hint(hint)
        if r is not None:
            out[name] = r
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            r = f.metadata.get("range")
            if isinstance(r, Range):
                out[f.name] = r
    for klass in reversed(getattr(obj, "__mro__", ())):
        declared = vars(klass).get("RANGES")
        if isinstance(declared, dict):
            out.update({k: v for k, v in declared.items() if isinstance(v, Range)})
    return out


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):  # Optional[Price], Annotated[Price, ...]
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def nested_schemas(obj: Any) -> dict[str, type]:
    """Options of ``obj`` whose value is itself a dataclass (``price: Price``), or whose field
    names one in its metadata (``{"schema": TrainerConfig}``): their ranges apply inside."""
    out: dict[str, type] = {}
    if obj is None:
        return out
    for name, hint in _hints(obj).items():
        found = _dataclass_in(hint)
        if found is not None:
            out[name] = found
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            schema = f.metadata.get("schema")
            if isinstance(schema, type):
                out[f.name] = schema
    return out
