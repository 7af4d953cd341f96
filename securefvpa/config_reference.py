"""The configuration reference (``docs/config.md``), generated from the typed config.

Everything comes from :mod:`securefvpa.config` itself: the sections and keys are the fields of
:class:`~securefvpa.config.RunConfig` and its section dataclasses, the types their annotations,
the defaults their default values, and the explanations the class docstrings and the ``#``
comments on (or in the lines just above) each field. ``securefvpa config reference --out
docs/config.md`` writes it; ``tests/config/test_config_reference.py`` fails when the committed
file differs, so a new key is documented by rerunning that command.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, get_args, get_origin

import tomli_w

from securefvpa.config import RunConfig

REGENERATE = "securefvpa config reference --out docs/config.md"
_FIELD = re.compile(r"^\s+(\w+)\s*:")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_toml(v)}`" for v in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = _type_name(args[0]) if args else "value"
        return f"array of {inner}s" if len(set(args)) <= 1 else "array"
    names = {
        bool: "boolean", int: "integer", float: "number", str: "string", type(None): "unset",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _toml(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment and the comment lines just above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        if line.strip().startswith("def "):
            break
        m = _FIELD.match(line)
        if not m or line.strip().startswith("#"):
            continue
        above: list[str] = []
        j = i - 1
        while j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, trailing.get(j, ""))
            j -= 1
        own = trailing.get(i, "") if not line.strip().startswith("#") else ""
        text = " ".join(x for x in [*above, own] if x)
        out[m.group(1)] = text
    return out


def _text(node: ast.expr) -> str | None:
    """A constraint message as written: f-string fields ``{self.x}`` become ``x``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            elif isinstance(part, ast.FormattedValue):
                v = part.value
                out.append(v.attr if isinstance(v, ast.Attribute) else ast.unparse(v))
        return re.sub(r"\b(\w+)=\1\b", r"\1", "".join(out))
    return None


def _constraints(cls: type) -> dict[str, list[str]]:
    """Dotted key -> the ``_check(cond, key, value, must)`` messages of ``cls.validate``."""
    validate = getattr(cls, "validate", None)
    if validate is None:
        return {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(validate)))
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_check"
            and len(node.args) >= 4
            and isinstance(node.args[1], ast.Constant)
        ):
            must = _text(node.args[3])
            if must:
                out.setdefault(str(node.args[1].value), []).append(must)
    return out


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None  # pragma: no cover - every config field has a default


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(cls: type, prefix: str, skip_tables: bool) -> list[str]:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    musts = _constraints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if skip_tables and dataclasses.is_dataclass(hints[f.name]):
            continue
        default = _default(f)
        shown = "unset" if default is None else f"`{_cell(_toml(default))}`"
        must = "; ".join(musts.get(f"{prefix}{f.name}", []))
        rows.append(
            f"| `{prefix}{f.name}` | {_cell(_type_name(hints[f.name]))} | {shown} | "
            f"{_cell(must)} | {_cell(notes.get(f.name, ''))} |"
        )
    return rows


def config_reference() -> str:
    """The Markdown reference of every config key (deterministic: same config, same text)."""
    head = "| key | type | default | must | meaning |\n|---|---|---|---|---|"
    parts = [
        "# Configuration reference",
        "",
        f"Generated from `securefvpa/config.py` by `{REGENERATE}`; do not edit by hand "
        "(`tests/config/test_config_reference.py` fails when this file is out of date).",
        "",
        "A run configuration is one TOML file. Every key is optional and takes the default "
        "below, but a file that sets no key at all is refused. Unknown keys, wrong types and "
        "out-of-range values are rejected with the dotted key and the value named; "
        "`securefvpa run CONFIG --set key=value` overrides a key from the command line. The "
        "run directory's `config.resolved.toml` records every key as it ran.",
        "",
        "## Top level",
        "",
        _doc(RunConfig),
        "",
        head,
        *_rows(RunConfig, "", skip_tables=True),
    ]
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        section = hints[f.name]
        if not (isinstance(section, type) and dataclasses.is_dataclass(section)):
            continue
        parts += ["", f"## [{f.name}]", "", _doc(section), "", head]
        parts += _rows(section, f"{f.name}.", skip_tables=False)
    return "\n".join(parts) + "\n"
