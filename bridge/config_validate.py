"""One settings model from one table, each pydantic error turned into a ConfigProblem.

    validate         one model from one table; each pydantic error becomes file, dotted key
                     (``failure.retry_statuses[0]``) and message, with the offending value
                     when the message does not show it, and for an unknown key the known key
                     it most resembles ("did you mean 'max_in_flight'?")
    dotted           a pydantic error location as the key is written in the file

Secrets are never echoed back in a problem (:data:`SECRET_KEYS`).
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bridge.errors import ConfigProblem

M = TypeVar("M", bound=BaseModel)

# Never echoed back in a problem, whatever their type.
SECRET_KEYS = frozenset({"client_id", "client_secret", "token"})
# The message of these already says what is wrong with the value, or has no single value.
_VALUE_SHOWN = frozenset({"missing", "extra_forbidden", "value_error", "assertion_error"})


def validate(
    model: type[M],
    data: Mapping[str, Any],
    path: Path,
    context: Mapping[str, Any],
    problems: list[ConfigProblem],
    *,
    hidden: Collection[str] = (),
) -> M | None:
    """``model`` from ``data``, or None with every error added to ``problems``.

    ``hidden`` are top-level fields the loader fills in itself, never suggested to a user.
    """
    try:
        return model.model_validate(data, context=dict(context))
    except ValidationError as exc:
        for err in exc.errors():
            key = dotted(_user_loc(model, err["loc"]))
            problems.append(ConfigProblem(str(path), key, _message(model, err, hidden)))
        return None


def dotted(loc: Sequence[str | int]) -> str:
    """``("failure", "retry_statuses", 0)`` -> ``failure.retry_statuses[0]``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _message(model: type[BaseModel], err: ErrorDetails, hidden: Collection[str]) -> str:
    message = err["msg"].removeprefix("Value error, ")
    loc = _user_loc(model, err["loc"])
    if err["type"] == "extra_forbidden" and loc:
        known = _known_keys(model, err["loc"][:-1])
        if known is not None:
            if len(loc) == 1:
                known = [k for k in known if k not in hidden]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                return f"{message}; did you mean {close[0]!r}?"
            return f"{message}; known keys here: {', '.join(known)}"
    value = err.get("input")
    secret = any(str(p) in SECRET_KEYS for p in loc)
    if err["type"] not in _VALUE_SHOWN and not secret and _scalar(value):
        shown = repr(value)
        message += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return message


def _scalar(value: object) -> bool:
    if isinstance(value, list):
        return all(_scalar(v) for v in value)
    return isinstance(value, str | int | float | bool)


def _user_loc(model: type[BaseModel], loc: Sequence[str | int]) -> list[str | int]:
    """``loc`` as the user wrote it: without validator names and union tags."""
    return _walk(model, loc)[1]


def _known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The field names of the table at ``loc`` inside ``model``, or None if it is no table."""
    node = _walk(model, loc)[0]
    while get_origin(node) in (Annotated, Union, types.UnionType):
        node = _member(node, [])
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [field.alias or name for name, field in node.model_fields.items()]
    return None


def _walk(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, list[str | int]]:
    """(the type found at ``loc``, or None; the parts of ``loc`` that are keys or indexes).

    Follows the shapes the settings use: nested models, lists, ``X | None``,
    ``dict[str, Model]`` (the key is a name the user chose), discriminated unions (pydantic
    puts the tag in the loc, though the user never wrote it as a key) and validators
    (named in the loc as ``function-...``).
    """
    node: Any = model
    parts = [p for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    kept: list[str | int] = []
    while parts:
        if get_origin(node) in (Annotated, Union, types.UnionType):
            node = _member(node, parts)
            continue
        part = parts.pop(0)
        kept.append(part)
        if get_origin(node) in (dict, list):
            node = get_args(node)[-1]
        elif isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            node = None if field is None else field.annotation
        else:
            node = None
    return node, kept


def _member(node: Any, parts: list[str | int]) -> Any:
    """Inside ``Annotated``, ``X | None``, or the discriminated-union member the next loc
    part tags (consumed)."""
    if get_origin(node) is Annotated:
        return get_args(node)[0]
    members = [m for m in get_args(node) if m is not type(None)]
    if len(members) > 1:
        tag = parts.pop(0) if parts else None
        members = [m for m in members if _tag(m) == tag]
    return members[0] if len(members) == 1 else None


def _tag(member: Any) -> object:
    """The ``type`` literal of a discriminated-union member."""
    if isinstance(member, type) and issubclass(member, BaseModel):
        field = member.model_fields.get("type")
        if field is not None and get_args(field.annotation):
            return get_args(field.annotation)[0]
    return None
