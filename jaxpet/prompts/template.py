"""Template strings for config-defined patterns, e.g. `"{text_a:shorten} It was {mask} ."`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxpet.data.example import Example
from jaxpet.prompts.pvp import PVP, Part, lowercase_first, mask, remove_final_punc
from jaxpet.prompts.registry import register_pvp
from jaxpet.prompts.verbalizer import Verbalizer

SEGMENT_SEPARATOR = " || "
MODIFIERS = ("shorten", "nopunc", "lowerfirst")
_SLOT = re.compile(r"\{([^{}]*)\}")
_MASK = re.compile(r"mask(?:\*(\d+))?")
_META = re.compile(r"meta\.([A-Za-z_][A-Za-z0-9_]*)")
# stand-ins for escaped braces while parsing
_LB, _RB = "\x01", "\x02"


class TemplateError(ValueError):
    """A template string that cannot be parsed; the message names the template and slot."""


@dataclass(frozen=True)
class Slot:
    source: str  # "text_a" | "text_b" | "meta" | "mask"
    field: str = ""
    count: int | None = None  # masks: fixed count, None = one per answer token
    modifiers: tuple[str, ...] = ()

    @property
    def shortenable(self) -> bool:
        return "shorten" in self.modifiers


Item = str | Slot


def _parse_slot(body: str, template: str) -> Slot:
    name, *mods = [s.strip() for s in body.split(":")]
    bad = [m for m in mods if m not in MODIFIERS]
    if bad:
        raise TemplateError(
            f"template {template!r}: slot {{{body}}} has unknown modifier {bad[0]!r}; "
            f"known: {', '.join(MODIFIERS)}"
        )
    if m := _MASK.fullmatch(name):
        if mods:
            raise TemplateError(
                f"template {template!r}: slot {{{body}}}: a mask takes no modifiers"
            )
        count = int(m.group(1)) if m.group(1) else None
        if count == 0:
            raise TemplateError(f"template {template!r}: slot {{{body}}} has zero masks")
        return Slot("mask", count=count)
    if name in ("text_a", "text_b"):
        return Slot(name, modifiers=tuple(mods))
    if m := _META.fullmatch(name):
        return Slot("meta", field=m.group(1), modifiers=tuple(mods))
    raise TemplateError(
        f"template {template!r}: unknown slot {{{body}}}; use {{text_a}}, {{text_b}}, "
        "{meta.FIELD}, {mask} or {mask*N}, optionally with :shorten, :nopunc, :lowerfirst"
    )


def _parse_segment(segment: str, template: str) -> list[list[Item]]:
    """Split a segment into parts: whitespace next to a slot separates parts, while text
    touching a slot (`{mask}.`) joins it, and literal text between slots stays one part."""
    parts: list[list[Item]] = []
    current: list[Item] = []

    def close() -> None:
        if current:
            parts.append(list(current))
            current.clear()

    pos = 0
    for m in _SLOT.finditer(segment):
        literal = segment[pos: m.start()]
        _add_literal(literal, current, close, template)
        current.append(_parse_slot(m.group(1), template))
        pos = m.end()
    _add_literal(segment[pos:], current, close, template)
    close()
    for part in parts:
        if any(isinstance(i, Slot) and i.shortenable for i in part) and len(part) > 1:
            raise TemplateError(
                f"template {template!r}: a :shorten slot must be separated from the text "
                "around it by spaces (it is cut token by token from its end)"
            )
    return parts


def _add_literal(literal: str, current: list[Item], close: Any, template: str) -> None:
    if "{" in literal or "}" in literal:
        raise TemplateError(f"template {template!r}: unbalanced brace near {literal.strip()!r}"
                            " (write {{ or }} for a literal brace)")
    text = literal.replace(_LB, "{").replace(_RB, "}")
    if not text.strip():
        if text:
            close()
        return
    if text[0].isspace():
        close()
    current.append(text.strip())
    if text[-1].isspace():
        close()


def parse_template(template: str) -> tuple[list[list[Item]], list[list[Item]]]:
    """Parse a template into the parts of segment a and segment b (b may be empty)."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError(f"template {template!r} is empty")
    escaped = template.replace("{{", _LB).replace("}}", _RB)
    segments = escaped.split(SEGMENT_SEPARATOR.strip())
    if len(segments) > 2:
        raise TemplateError(
            f"template {template!r} has {len(segments)} segments; at most two, separated by ' || '"
        )
    parsed = [_parse_segment(s, template) for s in segments]
    slots = [i for seg in parsed for part in seg for i in part if isinstance(i, Slot)]
    if not any(s.source == "mask" for s in slots):
        raise TemplateError(f"template {template!r} has no {{mask}} slot")
    if len(parsed) == 2 and not parsed[1]:
        raise TemplateError(f"template {template!r}: the segment after ' || ' is empty")
    return parsed[0], parsed[1] if len(parsed) == 2 else []


class TemplatePVP(PVP):
    """A PVP defined by a template string and a label -> word(s) mapping."""

    def __init__(
        self, task_name: str, pattern_id: int, labels: Sequence[str], verbalizer: Verbalizer,
        template: str,
    ) -> None:
        super().__init__(task_name, pattern_id, labels, verbalizer)
        self.template = template
        self.segments = parse_template(template)

    def __repr__(self) -> str:
        return f"TemplatePVP(task={self.task_name!r}, pattern_id={self.pattern_id}, " \
               f"template={self.template!r})"

    def num_masks(self, example: Example, tokenizer: Any) -> int:
        return sum(
            i.count or 1 for seg in self.segments for part in seg for i in part
            if isinstance(i, Slot) and i.source == "mask"
        )

    def _value(self, slot: Slot, example: Example, num_masks: int) -> str:
        if slot.source == "mask":
            return mask(slot.count or num_masks)
        if slot.source == "meta":
            if slot.field not in example.meta:
                raise ValueError(
                    f"example {example.guid!r} has no meta field {slot.field!r} needed by "
                    f"template {self.template!r} (has {sorted(example.meta)})"
                )
            text = str(example.meta[slot.field])
        else:
            text = getattr(example, slot.source)
            if text is None:
                raise ValueError(
                    f"example {example.guid!r} has no {slot.source}, which template "
                    f"{self.template!r} uses"
                )
        if "lowerfirst" in slot.modifiers:
            text = lowercase_first(text)
        if "nopunc" in slot.modifiers:
            text = remove_final_punc(text)
        return text

    def get_parts(self, example: Example, num_masks: int = 1) -> tuple[list, list]:
        out: list[list[Part]] = []
        for seg in self.segments:
            parts = []
            for part in seg:
                text = "".join(
                    i if isinstance(i, str) else self._value(i, example, num_masks) for i in part
                )
                shortenable = any(isinstance(i, Slot) and i.shortenable for i in part)
                parts.append(Part(text, shortenable))
            out.append(parts)
        return out[0], out[1] if len(out) > 1 else []


def _verbalizer_for(verbalizer: Any, pattern_id: int, task_name: str) -> Verbalizer:
    source = f"verbalizer of task {task_name!r}"
    if isinstance(verbalizer, Sequence) and not isinstance(verbalizer, str):
        if pattern_id >= len(verbalizer):
            raise ValueError(f"{source}: no entry for pattern {pattern_id}")
        return Verbalizer.from_mapping(verbalizer[pattern_id], source)
    if isinstance(verbalizer, Mapping) and verbalizer and all(
        isinstance(v, Mapping) for v in verbalizer.values()
    ):
        by_id = {int(k): v for k, v in verbalizer.items()}
        if pattern_id not in by_id:
            raise ValueError(f"{source}: no entry for pattern {pattern_id}; has {sorted(by_id)}")
        return Verbalizer.from_mapping(by_id[pattern_id], source)
    if not isinstance(verbalizer, Mapping):
        raise ValueError(f"{source} must be a mapping label -> word(s), got {verbalizer!r}")
    return Verbalizer.from_mapping(verbalizer, source)


def pvp_from_config(
    task_name: str, labels: Sequence[str], patterns: Sequence[str], verbalizer: Any,
    register: bool = True,
) -> list[TemplatePVP]:
    """One `TemplatePVP` per template (pattern ids 0, 1, ...), registered under `task_name`.

    `verbalizer`: a mapping label -> word(s) shared by all patterns, or per pattern a list
    of such mappings or a mapping pattern id -> mapping.
    """
    if isinstance(patterns, str) or not patterns:
        raise ValueError(f"task {task_name!r}: patterns must be a non-empty list of templates")
    labels = [str(label) for label in labels]
    pvps = [
        TemplatePVP(task_name, i, labels, _verbalizer_for(verbalizer, i, task_name), t)
        for i, t in enumerate(patterns)
    ]
    if register:
        for pvp in pvps:
            register_pvp(task_name, pvp.pattern_id, pvp, overwrite=True)
    return pvps
