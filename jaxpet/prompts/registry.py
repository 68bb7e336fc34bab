"""Look up PVPs by task name and pattern id; built-in PET PVPs plus user-registered ones."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from jaxpet.prompts.builtin import SPECS, make_builtin_pvp
from jaxpet.prompts.pvp import PVP
from jaxpet.prompts.verbalizer import VerbalizerSpec, load_verbalizer

PVPFactory = Callable[[Any], PVP]

# task -> pattern id -> factory(verbalizer or None) -> PVP
_REGISTRY: dict[str, dict[int, PVPFactory]] = {}


def register_pvp(
    task: str, pattern_id: int, pvp: PVP | PVPFactory, overwrite: bool = False
) -> None:
    """Register a PVP (or a factory `verbalizer -> PVP`) under (task, pattern_id)."""
    patterns = _REGISTRY.setdefault(task, {})
    if pattern_id in patterns and not overwrite:
        raise ValueError(f"a PVP for task {task!r} pattern {pattern_id} is already registered")
    if isinstance(pvp, PVP):
        registered = pvp

        def factory(verbalizer: Any) -> PVP:
            if verbalizer is None:
                return registered
            return _with_verbalizer(registered, verbalizer)

        patterns[pattern_id] = factory
    else:
        patterns[pattern_id] = pvp


def _with_verbalizer(pvp: PVP, verbalizer: Any) -> PVP:
    clone = copy.copy(pvp)
    clone.verbalizer = verbalizer
    verbalizer.check_labels(clone.labels, f"verbalizer override for {pvp.task_name}")
    return clone


def _builtin_factory(task: str, pattern_id: int) -> PVPFactory:
    return lambda verbalizer: make_builtin_pvp(task, pattern_id, verbalizer)


for _task, (_labels, _impl, _verbalizers) in SPECS.items():
    for _pid in _verbalizers:
        register_pvp(_task, _pid, _builtin_factory(_task, _pid))


def available() -> dict[str, list[int]]:
    """Every registered task with its pattern ids."""
    return {task: sorted(p) for task, p in sorted(_REGISTRY.items())}


def get_pvp(task: str, pattern_id: int, verbalizer: VerbalizerSpec = None) -> PVP:
    """The PVP for `task` and `pattern_id`; `verbalizer` overrides its words (a mapping
    label -> word(s), or the path of a PET verbalizer file or a YAML mapping)."""
    if task not in _REGISTRY:
        raise KeyError(f"unknown task {task!r}; PVPs exist for: {', '.join(sorted(_REGISTRY))}")
    patterns = _REGISTRY[task]
    if int(pattern_id) not in patterns:
        raise KeyError(
            f"task {task!r} has no pattern {pattern_id!r}; valid pattern ids: {sorted(patterns)}"
        )
    return patterns[int(pattern_id)](load_verbalizer(verbalizer, int(pattern_id)))
