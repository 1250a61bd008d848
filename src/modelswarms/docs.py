"""The config reference, docs/CONFIG.md, generated from the config models' fields.

    python -m modelswarms.docs            # rewrite docs/CONFIG.md
    python -m modelswarms.docs --check    # exit 1 when the committed page is stale

It walks the fields from the root model, RunConfig, down every nested model and every member
of a union (each utility type), so it documents a config class wherever it is defined. A field
without a description is an error here: tests/test_docs.py keeps the page fresh and complete.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import RunConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
HEAD = """# Config reference

Every key of a config file, by section: its type, its default and what it does. Generated from
the config models' field descriptions by `python -m modelswarms.docs`; edit the descriptions
in the code, not this page (`tests/test_docs.py` fails when it is stale). How the parts fit
together, with a full example: [USAGE.md](USAGE.md). Unknown keys and wrong types are errors
that name the key; relative paths are relative to the config file.
"""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation holds (a model, an optional one, a union's members,
    a list of them, or the members of a registry-built field: `utility:`, a section)."""
    if get_origin(annotation) is Annotated:
        for meta in get_args(annotation)[1:]:
            if callable(getattr(meta, "members", None)):
                return list(meta.members())
        return _models(get_args(annotation)[0])
    if callable(getattr(annotation, "members", None)):
        return list(annotation.members())
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _registered(field: Any) -> list[type[BaseModel]]:
    """The models of a field built from a registry (`utility:`, a strategy's section)."""
    return [m for meta in field.metadata if callable(getattr(meta, "members", None))
            for m in meta.members()]


def _load_registries() -> None:
    """Import what registers utility configs and config sections (strategies, utilities)."""
    import importlib

    from . import api  # noqa: F401  (the strategies and the package's registries)
    from .evaluation.objectives import utilities

    for module in utilities.BUILTIN_MODULES:
        importlib.import_module(f"{utilities.__package__}.{module}")


def type_name(annotation: Any) -> str:
    """A field's type as a config writer reads it."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"mapping {type_name(args[0])} → {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return "its defaults" if value == type(value)() else \
            json.dumps(value.model_dump(mode="json", exclude_defaults=True))
    return json.dumps(value)


def _intro(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    inherited = any(doc == inspect.getdoc(base) for base in model.__mro__[1:]
                    if base is not model and base is not BaseModel)
    return "" if inherited else " ".join(doc.split("\n\n")[0].split())


def sections() -> list[tuple[type[BaseModel], list[str]]]:
    """Every config model reachable from RunConfig, in the order a reader meets them, with
    the keys it sits under."""
    _load_registries()
    order: list[type[BaseModel]] = []
    where: dict[type[BaseModel], list[str]] = {}
    queue: list[tuple[type[BaseModel], str]] = [(RunConfig, "")]
    while queue:
        model, path = queue.pop(0)
        if model in where:
            if path not in where[model]:
                where[model].append(path)
            continue
        order.append(model)
        where[model] = [path]
        for key, field in model.model_fields.items():
            for sub in _registered(field) or _models(field.annotation):
                queue.append((sub, f"{path}.{key}" if path else key))
    return [(m, where[m]) for m in order]


def undocumented() -> list[str]:
    """`Model.field` for every field without a description."""
    return [f"{m.__name__}.{k}" for m, _ in sections()
            for k, f in m.model_fields.items() if not f.description]


def render() -> str:
    lines = [HEAD]
    for model, paths in sections():
        under = ", ".join(f"`{p}`" for p in paths if p) or "the top level"
        kind = model.model_fields.get("type")
        if kind is not None and get_origin(kind.annotation) is Literal:
            under += f" with `type: {get_args(kind.annotation)[0]}`"
        lines += [f"## {model.__name__}", "", f"Under {under}."]
        if intro := _intro(model):
            lines[-1] += " " + intro
        lines += ["", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, field in model.model_fields.items():
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            default = default_text(field)
            default = default if default == "required" else f"`{default}`"
            if registered := _registered(field):
                kind = " \\| ".join(type_name(m) for m in registered) + (
                    " \\| null" if field.default is None else "")
            else:
                kind = type_name(field.annotation)
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    missing = undocumented()
    if missing:
        print("fields without a description: " + ", ".join(missing), file=sys.stderr)
        return 1
    text = render()
    if "--check" in argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python -m modelswarms.docs", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
