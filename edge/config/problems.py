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

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

import msgspec

from edge.config.msgspec_errors import Wording
from edge.config.msgspec_errors import translate as translate_error

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

# The Redis configuration repeats an unknown field's name in its message (``edge check``
# prints messages where the field is not always beside them) and says "a JSON object" to
# people who typed the document into redis-cli.
_WORDING = Wording(name_unknown=True, json_object=True)


def _choices(struct: type[Any]) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each Literal field, to make "invalid value" errors helpful."""
    return {
        f.name: get_args(f.type)
        for f in msgspec.structs.fields(struct)
        if get_origin(f.type) is Literal
    }


def translate(
    key: str, exc: msgspec.DecodeError, struct: type[Any], under: str | None = None
) -> ConfigError:
    """A msgspec validation error about a ``struct`` document (or its field ``under``)."""
    field, message = translate_error(exc, _WORDING, _choices(struct), under=under)
    return ConfigError(key, field, message)


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
        first = translate(key, exc, struct)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(key, None, translate_error(exc)[1]) from None
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
            problems.found.append(translate(key, exc, struct, under=name))
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
