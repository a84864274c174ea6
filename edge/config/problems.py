"""Configuration errors, and every problem of a document found in one pass.

msgspec stops at the first problem of a document; someone who fixes a typo should not
learn about the next mistake only after the next write. So when the typed decode fails,
:func:`decode_struct` reads the document again as plain JSON and checks each field on its
own (unknown fields, missing fields, each field's type with ``msgspec.convert``). Fields
that passed are then checked by the schema's field validators, which report through a
:class:`Problems` collector instead of raising at the first. A document that decodes
cleanly (the common case) pays for none of this.

One problem reads ``key: field 'name': message``; several are joined with ``; `` after the
key, and ``edge check`` prints one a line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

import msgspec

__all__ = ["ConfigError", "Problems", "decode_struct"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class ConfigError(Exception):
    """A configuration document stored under ``key`` is invalid.

    ``field`` and ``message`` are those of the first problem; ``problems`` lists every
    problem found in the document (``(self,)`` when there is one).
    """

    key: str
    field: str | None
    message: str
    problems: tuple[ConfigError, ...]

    def __init__(self, key: str, field: str | None, message: str) -> None:
        super().__init__(key, field, message)
        self.key = key
        self.field = field
        self.message = message
        self.problems = (self,)

    @classmethod
    def every(cls, problems: Sequence[ConfigError]) -> ConfigError:
        """The first of ``problems`` (all of one key), carrying them all."""
        first = problems[0]
        first.problems = tuple(problems)
        return first

    def describe(self) -> str:
        """This one problem without the key: ``field 'name': message``."""
        if self.field is None:
            return self.message
        return f"field '{self.field}': {self.message}"

    def __str__(self) -> str:
        return f"{self.key}: " + "; ".join(p.describe() for p in self.problems)


class Problems:
    """The problems of one document, collected so that every one is reported.

    A field that is missing or of the wrong type is *unusable*: it is reported once and
    its checks (and those of fields read through it) are skipped.
    """

    __slots__ = ("found", "key", "unusable")

    def __init__(self, key: str) -> None:
        self.key = key
        self.found: list[ConfigError] = []
        self.unusable: set[str] = set()

    def add(self, field: str | None, message: str) -> None:
        self.found.append(ConfigError(self.key, field, message))

    def usable(self, *fields: str) -> bool:
        return not self.unusable.intersection(fields)

    def check(self, field: str, func: Callable[[_T], _R], value: _T) -> _R | None:
        """``func(value)``, or None after recording its ValueError against ``field``."""
        if field in self.unusable:
            return None
        try:
            return func(value)
        except ValueError as exc:
            self.add(field, str(exc))
            return None

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError.every(self.found)


# ---------------------------------------------------------------------------
# msgspec messages in our words
# ---------------------------------------------------------------------------

_AT_PATH_RE = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_FIELD_IN_MSG_RE = re.compile(
    r"^Object (?P<kind>contains unknown|missing required) field `(?P<name>[^`]*)`$"
)
_ENUM_RE = re.compile(r"^Invalid enum value (?P<value>.*)$")
_PATH_HEAD_RE = re.compile(r"^\.(?P<name>[^.\[]+)")


def _choices(struct: type[Any]) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each Literal field, to make "invalid value" errors helpful."""
    return {
        f.name: get_args(f.type)
        for f in msgspec.structs.fields(struct)
        if get_origin(f.type) is Literal
    }


def translate(key: str, text: str, struct: type[Any]) -> ConfigError:
    """A msgspec validation message about a ``struct`` document as a ConfigError."""
    path = ""
    match = _AT_PATH_RE.match(text)
    if match:
        text, path = match.group("msg"), match.group("path")
    field: str | None = None
    head = _PATH_HEAD_RE.match(path)
    if head:
        field = head.group("name")
    location = f" (at {path[1:]})" if head and path[1:] != field else ""

    named = _FIELD_IN_MSG_RE.match(text)
    if named:
        name = named.group("name")
        unknown = named.group("kind") == "contains unknown"
        if field is None:
            message = f"unknown field {name!r}" if unknown else "required field is missing"
            return ConfigError(key, name, message)
        message = f"unknown field {name!r}" if unknown else f"missing required field {name!r}"
        return ConfigError(key, field, f"{message} (at {path[1:]})")

    enum = _ENUM_RE.match(text)
    if enum:
        message = f"invalid value {enum.group('value')}"
        choices = _choices(struct).get(field or "")
        if choices and not location:
            message += " (allowed: " + ", ".join(repr(c) for c in choices) + ")"
        return ConfigError(key, field, message + location)

    message = text.replace("`", "")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    if field is None and message.startswith("expected object"):
        message = message.replace("expected object", "expected a JSON object", 1)
    return ConfigError(key, field, message + location)


def _under(name: str, text: str) -> str:
    """A message about one field's value, located as if the whole document was decoded."""
    match = _AT_PATH_RE.match(text)
    if match:
        return f"{match.group('msg')} - at `$.{name}{match.group('path')}`"
    return f"{text} - at `$.{name}`"


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------


def decode_struct(
    key: str, decoder: msgspec.json.Decoder[_T], raw: bytes | str
) -> tuple[_T, Problems]:
    """The document decoded, and the collector its field checks report to.

    When the typed decode fails, every field is checked on its own; the struct returned
    then holds only the usable fields (None for a required one that is not), for the field
    validators to check the rest, and the collector already holds the decode problems.
    """
    problems = Problems(key)
    struct: Any = decoder.type
    try:
        return decoder.decode(raw), problems
    except msgspec.ValidationError as exc:
        first = translate(key, str(exc), struct)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(key, None, f"invalid JSON: {exc}") from None
    try:
        doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise first  # not an object at all: nothing to read field by field
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    values: dict[str, Any] = {}
    for name, value in doc.items():
        info = fields.get(name)
        if info is None:
            problems.add(name, f"unknown field {name!r}")
            continue
        try:
            values[info.name] = msgspec.convert(value, info.type)
        except msgspec.ValidationError as exc:
            problems.found.append(translate(key, _under(name, str(exc)), struct))
            problems.unusable.add(info.name)
    for info in fields.values():
        if info.required and info.encode_name not in doc:
            problems.add(info.name, "required field is missing")
            problems.unusable.add(info.name)
        if info.required and info.name in problems.unusable:
            values[info.name] = None  # never read: its checks are skipped
    if not any((p.field, p.message) == (first.field, first.message) for p in problems.found):
        problems.found.insert(0, first)  # what the typed decode saw is always reported
    return struct(**values), problems
