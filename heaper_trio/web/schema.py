"""A small JSON-Schema subset: one schema per route validates requests *and* documents them.

Supported keywords: type, properties, required, additionalProperties (false only), minLength,
maxLength, pattern (anchored ``^…$``: JSON Schema patterns search, ours must match whole),
minimum, maximum, enum, not (of an enum), anyOf, items, maxItems, minItems. That is all the routes
need; the same dicts go verbatim into ``/api/openapi.json``, so the document cannot drift from
what is enforced. Every failure is a ``BadRequest`` naming the field.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from heaper_trio.errors import BadRequest

MAX_INT = 2**53 - 1  # the largest integer every JSON client (JavaScript's Number) holds exactly
_DIGITS = re.compile(r"-?[0-9]+")  # ASCII only: str.isdigit() and int() take "²" and "٣"

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, n) for n in names):
            raise BadRequest(
                f"{where} must be of type {' or '.join(names)}",
                code="invalid_type",
                details={"field": where},
            )
    if "enum" in schema and value not in schema["enum"]:
        raise _invalid(where, f"must be one of {schema['enum']}")
    if "not" in schema and value in schema["not"].get("enum", ()):
        raise _invalid(where, f"must not be one of {schema['not']['enum']} (reserved)")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise _invalid(where, f"must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise _invalid(where, f"must be at most {schema['maxLength']} characters")
        if "pattern" in schema and not _regex(schema["pattern"]).fullmatch(value):
            raise _invalid(where, f"must match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise _invalid(where, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise _invalid(where, f"must be at most {schema['maximum']}")
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise BadRequest(
                    f"{where}.{name} is required",
                    code="missing_field",
                    details={"field": f"{where}.{name}"},
                )
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                raise BadRequest(
                    f"{where} has unknown field(s): {', '.join(extra)}",
                    code="unknown_field",
                    details={"field": f"{where}.{extra[0]}"},
                )
        for name, sub in props.items():
            if name in value:
                validate(value[name], sub, f"{where}.{name}")
    if "anyOf" in schema:
        # the first alternative's complaint is the one reported ("heap_id is required")
        problems: list[BadRequest] = []
        for alternative in schema["anyOf"]:
            try:
                validate(value, alternative, where)
                break
            except BadRequest as e:
                problems.append(e)
        else:
            raise problems[0]
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise _invalid(where, f"must have at most {schema['maxItems']} items")
        if len(value) < schema.get("minItems", 0):
            raise _invalid(where, f"must have at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")


def storable(text: str) -> bool:
    """False for text holding NUL (PostgreSQL text and JSONB refuse it) or a lone surrogate
    (no UTF-8 exists for it: pycrdt, SQLite and asyncpg all raise)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


UNSTORABLE = "must not hold NUL or a lone surrogate"


def check_text(value: Any, where: str = "body") -> None:
    """Refuse any string (object keys too) that no store can hold, before any work: names,
    ids, types and queries never need NUL or a lone surrogate, and content travels inside
    base64 Yjs updates. A bad key is reported as its object (the key itself may not be
    printable in the answer). Iterative: a body nested as deep as the JSON parser allows must
    not exhaust the stack here."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                raise _invalid(at, UNSTORABLE)
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                if not storable(key):
                    raise _invalid(at, f"has a field name that {UNSTORABLE}")
                stack.append((sub, f"{at}.{key}"))
        elif isinstance(item, list):
            stack.extend((sub, f"{at}[{i}]") for i, sub in reversed(list(enumerate(item))))


def _invalid(where: str, text: str) -> BadRequest:
    return BadRequest(f"{where} {text}", code="invalid_value", details={"field": where})


def obj(
    required: dict[str, Any] | None = None, optional: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """A closed object schema: the listed fields and nothing else."""
    required = required or {}
    props = {**required, **(optional or {})}
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


def string(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


def integer(**kw: Any) -> dict[str, Any]:
    """Bounded unless told otherwise: 0 .. 2**53-1. Unbounded integers reach the database as
    64-bit values, where anything from 2**63 up is an overflow (a 500), not a 400."""
    return {"type": "integer", "minimum": 0, "maximum": MAX_INT, **kw}


def parse_int(text: str, schema: dict[str, Any], where: str) -> int:
    """A query or path integer: optional minus and ASCII digits only, then the schema's bounds.
    Anything else is ``invalid_value``, as an out-of-range number is."""
    if not _DIGITS.fullmatch(text) or len(text) > 20:
        raise _invalid(where, f"must be an integer of at most {MAX_INT}")
    value = int(text)
    validate(value, schema, where)
    return value


def is_int_text(text: str) -> bool:
    """True for text ``parse_int`` reads as a number (in or out of range)."""
    return bool(_DIGITS.fullmatch(text))


def boolean(**kw: Any) -> dict[str, Any]:
    return {"type": "boolean", **kw}


def open_obj(**props: Any) -> dict[str, Any]:
    """A response object: documents the fields we send, allows more (contract: extras fine)."""
    return {"type": "object", "properties": props}
