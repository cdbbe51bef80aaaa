"""Every option of the ``ordering`` config group, in one table, each built from its class.

An ordering is declared once: its class (``phasedsft.train.ordering``,
``phasedsft.train.curricula``) holds its fields and their defaults, and its ``bound`` class
variable says which of them a run binds to its own config (``${seed}``,
``${trainer.num_train_epochs}``). :func:`node_of` turns the class into the typed config node
Hydra composes (``_target_`` and every field), so the node and the class cannot disagree.
:data:`OPTIONS` lists every option by name; :func:`register` stores them. Adding an ordering:
a class with the :class:`~phasedsft.train.ordering.Ordering` members, a row here, a row in
``conf/ordering/README.md`` (``tests/test_docs_map.py`` checks both).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from typing import Any

from hydra.core.config_store import ConfigStore

from phasedsft.config import stage_sequences, stages_name
from phasedsft.train.curricula import Interleaved, Paced, SelfPaced
from phasedsft.train.ordering import OneOff, Phased, RandomPhased, Sorted, paced_name

PACINGS = ("linear", "root", "geometric", "step")


def target_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def node_of(cls: type) -> type:
    """The typed config node of ordering class ``cls``: ``_target_``, then every field of the
    class at its default, or at the value its ``bound`` class variable gives it in a run."""
    hints = typing.get_type_hints(cls)
    bound: dict[str, Any] = dict(getattr(cls, "bound", {}))
    specs: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=target_of(cls)))
    ]
    for f in dataclasses.fields(cls):
        if f.name in bound:
            value = bound[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[operator]
        default: Any
        if isinstance(value, list | dict):
            default = dataclasses.field(default_factory=functools.partial(copy.deepcopy, value))
        else:
            default = dataclasses.field(default=value)
        specs.append((f.name, hints[f.name], default))
    return dataclasses.make_dataclass(f"{cls.__name__}Node", specs)


ONE_OFF, PHASED, RANDOM, SORTED = map(node_of, (OneOff, Phased, RandomPhased, Sorted))
PACED, INTERLEAVED, SELF_PACED = map(node_of, (Paced, Interleaved, SelfPaced))


def options() -> dict[str, Any]:
    """Every option of the group: its name -> its node (a class, or an instance of one)."""
    out: dict[str, Any] = {
        "one_off": ONE_OFF,
        "phased": PHASED,  # any sequence: ordering.stages=[...]
        "random": RANDOM,
        "random_matched": RANDOM(name="random_matched", sizes="matched"),
        "sorted": SORTED,
        "paced": PACED,
        "interleaved": INTERLEAVED,
        "self_paced": SELF_PACED,
    }
    for pacing in PACINGS:  # one option per pacing and direction, for sweeps
        for anti in (False, True):
            name = paced_name(pacing, anti)
            out[name] = PACED(name=name, pacing=pacing, anti=anti) if anti else PACED(pacing=pacing)
    for seq in stage_sequences():  # 1-2-3, 3-2-1, only-3, ...: names that spell their stages
        name = stages_name(seq)
        out[name] = PHASED(name=name, stages=list(seq))
    return out


def register() -> None:
    """Store every option in Hydra's ``ordering`` group (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in options().items():
        cs.store(group="ordering", name=name, node=node)


register()
