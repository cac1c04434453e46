"""Tools given as Python callables, turned into the JSON schemas chat templates read.

The schema is the one ``transformers.utils.get_json_schema`` produces (so a template renders the
same text either way): ``{"type": "function", "function": {"name", "description", "parameters":
{"type": "object", "properties", "required"}, "return"?}}``. The description and each
argument's text come from a Google-style docstring (``Args:``, ``Returns:``); types from the
type hints: int, float, str, bool, None, Any, list/tuple/dict (parametrized or not), unions and
``Optional`` (``"nullable": true``), ``Literal`` and ``Enum`` (``"enum"``). An argument text
ending in ``(choices: [...])`` (JSON) becomes an ``"enum"``.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_PLAIN = {**{t: {"type": n} for t, n in _SCALARS.items()}, list: {"type": "array"}}
_PLAIN |= {tuple: {"type": "array"}, dict: {"type": "object"}}
_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Examples?|Yields|Notes?):\s*$")
_ARG = re.compile(r"^(\w+)(?:\s*\([^()]*\))?:\s*(.*)$")
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


def function_schema(fn: Callable) -> dict[str, Any]:
    """The JSON schema of the tool ``fn`` (see the module docstring).

    Raises:
      InputError: ``fn`` has no docstring, an argument without a type hint or without a
        description in ``Args:``, or a type hint that has no JSON schema (a custom class).
    """
    name = getattr(fn, "__name__", "operation")
    doc = inspect.getdoc(fn)
    if not doc:
        raise InputError(f"tools: function {name!r} has no docstring (expected a description)")
    description, arg_docs, returns_doc = _parse_docstring(doc)
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # unresolvable forward references
        raise InputError(f"tools: function {name!r}: type hints do not resolve: {e}") from None
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls") and params[0].annotation is params[0].empty:
        params = params[1:]  # a method's receiver
    properties: dict[str, Any] = {}
    required = []
    for p in params:
        if p.name not in hints:
            raise InputError(f"tools: function {name!r}: argument {p.name!r} has no type hint")
        schema = _schema(hints[p.name], f"tools: function {name!r}: argument {p.name!r}")
        text = arg_docs.get(p.name)
        if text is None:
            raise InputError(
                f"tools: function {name!r}: argument {p.name!r} has no description in the "
                "docstring's Args: section"
            )
        choices = _CHOICES.search(text)
        if choices:
            try:
                values = json.loads(choices.group(1))
            except json.JSONDecodeError:
                raise InputError(
                    f"tools: function {name!r}: argument {p.name!r}: (choices: ...) is not a JSON "
                    f"list: {choices.group(1)!r}"
                ) from None
            if not isinstance(values, list):
                raise InputError(
                    f"tools: function {name!r}: argument {p.name!r}: (choices: ...) is not a "
                    f"JSON list: {choices.group(1)!r}"
                )
            schema["enum"] = [v.strip() if isinstance(v, str) else v for v in values]
            text = text[: choices.start()].strip()
        schema["description"] = text
        properties[p.name] = schema
        if p.default is p.empty:
            required.append(p.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    out: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        try:
            ret = _schema(hints["return"], "")
        except InputError:
            ret = None  # the model never writes the return value: leave it out
        if ret is not None:
            if returns_doc is not None:
                ret["description"] = returns_doc
            out["return"] = ret
    return {"type": "function", "function": out}


def tool_schemas(tools) -> list[Mapping[str, Any]] | None:
    """``tools`` with each callable replaced by its schema (dicts pass through)."""
    if tools is None:
        return None
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, typing.Sequence):
        raise InputError(f"tools={tools!r} (expected a list of JSON schemas or functions)")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, Mapping):
            out.append(tool)
        elif inspect.isfunction(tool) or inspect.ismethod(tool):
            out.append(function_schema(tool))
        else:
            raise InputError(
                f"tools[{i}]={tool!r} (expected a JSON schema dict or a function with type hints "
                "and a Google-style docstring)"
            )
    return out


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {arg: text}, returns text) of a Google-style docstring."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in doc.strip().splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            sections.setdefault(current, [])
        else:
            sections[current].append(line)
    args: dict[str, str] = {}
    indent = None
    last = None
    for line in sections.get("Args", sections.get("Arguments", [])):
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        m = _ARG.match(line.strip())
        if m and (indent is None or depth <= indent):
            indent, last = depth, m.group(1)
            args[last] = m.group(2).strip()
        elif last is not None:  # a continuation line
            args[last] = f"{args[last]} {line.strip()}".strip()
    returns = "\n".join(sections["Returns"]).strip() if "Returns" in sections else None
    return "\n".join(sections[""]).strip(), args, returns or None


def _schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin is None and isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([m.value for m in hint], where)
    if origin is None:
        if hint in _PLAIN:
            return dict(_PLAIN[hint])
        raise InputError(f"{where}: type hint {hint!r} has no JSON schema (use basic types)")
    if origin is typing.Union or origin is types.UnionType:
        subs = [_schema(a, where) for a in args if a is not type(None)]
        if len(subs) == 1:
            out = subs[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subs):
            names = sorted({s["type"] for s in subs})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subs}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is typing.Literal:
        return _enum(list(args), where)
    if origin is list:
        return {"type": "array", **({"items": _schema(args[0], where)} if args else {})}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or Ellipsis in args:
            raise InputError(f"{where}: {hint!r}: use list[...] for a variable-length argument")
        return {"type": "array", "prefixItems": [_schema(a, where) for a in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _schema(args[1], where)
        return out
    raise InputError(f"{where}: type hint {hint!r} has no JSON schema (use basic types)")


def _enum(values: list, where: str) -> dict[str, Any]:
    if not values or any(type(v) not in _SCALARS for v in values):
        raise InputError(f"{where}: enum values {values!r} (expected JSON scalars, at least one)")
    names = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": names[0] if len(names) == 1 else names, "enum": values}
