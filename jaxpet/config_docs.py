"""Every config key with its type, default and meaning, read from the config dataclasses."""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import typing
from dataclasses import MISSING as NO_DEFAULT
from functools import cache
from typing import Any

from omegaconf import MISSING

from jaxpet.config import PET_SECTIONS, TEXT2TEXT_SECTIONS, Config, Text2TextConfig

# What `make docs` writes; tests/test_config_docs.py fails when the file differs from it.
DOCS_PATH = "docs/config.md"
# Lint pragmas in field comments say nothing to a user.
_NOQA = re.compile(r"noqa: \w+( - OmegaConf needs Optional)?( - )?")


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One config key: dotted name, type, default as YAML would write it, one-line meaning."""

    key: str
    type: str
    default: str
    help: str


def _clean(comment: str) -> str:
    return _NOQA.sub("", comment.lstrip("#").strip()).strip()


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in `cls`'s own source: the comment lines right above the field
    joined with the comment at the end of its line."""
    lines = inspect.getsource(cls).splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
    trailing: dict[int, str] = {}
    for token in tokens:
        if token.type == tokenize.COMMENT:
            trailing[token.start[0]] = token.string
    comments: dict[str, str] = {}
    field_line = re.compile(r"^    (\w+): ")
    for number, line in enumerate(lines, start=1):
        match = field_line.match(line)
        if not match:
            continue
        above, row = [], number - 1
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            above.insert(0, _clean(lines[row - 1].strip()))
            row -= 1
        end = trailing.get(number)
        if end and not line.strip().startswith("#"):
            above.append(_clean(end))
        comments[match.group(1)] = " ".join(part for part in above if part)
    return comments


def _help(cls: type, name: str) -> str:
    """The field's comment in `cls` or, when it has none there, in the class it inherits from."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            text = field_comments(klass).get(name, "")
            if text:
                return text
    return ""


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_type_name(a) for a in inner) + " | null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not NO_DEFAULT:
        return f.default
    if f.default_factory is not NO_DEFAULT:
        return f.default_factory()
    return MISSING


def _yaml_value(value: Any) -> str:
    if value == MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
        return repr(value).replace("e", ".0e")  # YAML reads 1e-05 as a string, 1.0e-05 a float
    return repr(value)


def key_docs(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key under dataclass `cls`, in declaration order, sections flattened."""
    hints = typing.get_type_hints(cls)
    docs = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            docs += key_docs(hint, f"{prefix}{f.name}.")
            continue
        docs.append(KeyDoc(f"{prefix}{f.name}", _type_name(hint), _yaml_value(_default(f)),
                           _help(cls, f.name)))
    return docs


def text2text_key_docs() -> list[KeyDoc]:
    """The `text2text:` section of a `method: text2text` config (its other sections are the
    shared model, mesh, checkpoint, eval and logging sections)."""
    return key_docs(Text2TextConfig, "text2text.")


def keys_text() -> str:
    """`jaxpet config keys`: one key a line, aligned: key, type, default, meaning."""
    rows = [(d.key, d.type, d.default, d.help) for d in key_docs()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        out.append(f"{cells[0]}  {cells[1]}  {cells[2]}  {row[3]}".rstrip())
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(docs: list[KeyDoc]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{d.key}` | {_cell(d.type)} | `{_cell(d.default)}` | {_cell(d.help)} |"
             for d in docs]
    return rows


def keys_markdown() -> str:
    """docs/config.md: the key tables, one per section, for PET-family and text2text runs."""
    sections: dict[str, list[KeyDoc]] = {}
    for doc in key_docs():
        section = doc.key.split(".")[0] if "." in doc.key else "(top level)"
        if section != "text2text":  # its own part below
            sections.setdefault(section, []).append(doc)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses (jaxpet/config/schema.py) by",
        "`jaxpet config keys --markdown > docs/config.md`; do not edit by hand.",
        "",
        "A run reads `python train.py --config FILE.yaml [key=value ...]`: the defaults below,",
        "then the YAML file, then each dotted `key=value` override (e.g. `pet.max_steps=100`).",
        "An unknown key or a value of the wrong type is an error naming the key.",
        "`jaxpet config show FILE.yaml [key=value ...]` prints the resolved config.",
        "",
        "One schema serves every method; `method` chooses the sections a config may set. The",
        f"PET-family methods read {', '.join(f'`{k}`' for k in PET_SECTIONS)};",
        f"text2text reads {', '.join(f'`{k}`' for k in TEXT2TEXT_SECTIONS)}. A key in a section",
        "the method does not read is an error, not silently ignored.",
        "",
    ]
    for section, docs in sections.items():
        lines += [f"## {section}", ""]
        cls = _section_class(section)
        if cls is not None and cls.__doc__:
            lines += [" ".join(cls.__doc__.split()), ""]
        lines += _table(docs) + [""]
    lines += ["## text2text (method: text2text)", "",
              " ".join(Text2TextConfig.__doc__.split()),
              "A text2text config also reads the shared keys and sections above (`method`, "
              "`output_dir`, `seed`, `compilation_cache`, `model`, `mesh`, `checkpoint`, `eval`, "
              "`logging`, `distributed`); the PET sections (`task`, `pet`, ...) do not apply.", ""]
    lines += _table(text2text_key_docs()) + [""]
    return "\n".join(lines)


def _section_class(section: str) -> type | None:
    hint = typing.get_type_hints(Config).get(section)
    return hint if dataclasses.is_dataclass(hint) else None
