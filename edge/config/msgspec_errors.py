"""msgspec's decode errors as a (field, message) pair, for every place that decodes JSON.

msgspec reports one problem as a sentence with a JSON path appended ("Expected `str`, got
`int` - at `$.hostname`", "Object contains unknown field `x`", "Invalid enum value 'y' -
at `$.acme_challenge`"). Configuration records, certificate records, resource records and
admin API bodies all need the field at fault and a message; this module is the one parser
of those sentences, so a change in msgspec's wording is fixed once.

The callers do not word problems alike (a stored record says "unknown field" next to the
field it names, the Redis configuration repeats the name, an API body keeps msgspec's own
sentence). Those differences are deliberate and stay: each caller passes a
:class:`Wording`. This module imports nothing of edge, so any module may use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

__all__ = ["Wording", "translate"]

# msgspec appends the location of a nested problem: " - at `$.a.b[0]`"
_AT_PATH_RE = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_NAMED_RE = re.compile(
    r"^Object (?P<kind>contains unknown|missing required) field `(?P<name>[^`]*)`$"
)
_ENUM_RE = re.compile(r"^Invalid enum value (?P<value>.*)$")
_PATH_HEAD_RE = re.compile(r"^\.(?P<name>[^.\[]+)")


@dataclass(frozen=True, slots=True)
class Wording:
    """How one caller words what msgspec found; the defaults are the stored records'."""

    # Keep msgspec's own sentence and name the whole path as the field ("a.b[0]"): API
    # clients see what msgspec's documentation shows, and a body's field is a path.
    raw: bool = False
    # "unknown field 'x'" rather than "unknown field" for a top-level field; where the
    # message is always printed after its field the name would only repeat.
    name_unknown: bool = False
    # Append " (at a.b[0])" when the problem is below the top-level field it is filed under.
    locate: bool = True
    # A document that is not an object at all: "expected a JSON object, got array", for
    # people who typed the document into redis-cli rather than "expected object".
    json_object: bool = False
    # Lowercase the first letter of a message about the whole document, as of the others.
    lower_document: bool = True
    # The message for input that is not JSON; ``{error}`` is msgspec's own message.
    invalid_json: str = "invalid JSON: {error}"


def translate(
    error: msgspec.DecodeError | UnicodeDecodeError,
    wording: Wording = Wording(),
    choices: Mapping[str, tuple[object, ...]] | None = None,
    under: str | None = None,
) -> tuple[str | None, str]:
    """The field at fault (None for the whole document) and a message for ``error``.

    ``error`` is what decoding raised: a :class:`msgspec.ValidationError` (the JSON was
    read but does not fit the type), any other :class:`msgspec.DecodeError` or a
    :class:`UnicodeDecodeError` (it is not JSON). ``choices`` are the allowed values of
    top-level fields, listed when such a field holds another value. ``under`` names the
    top-level field whose value alone was decoded (``msgspec.convert`` of one field): the
    problem is then located as if the whole document had been.
    """
    if not isinstance(error, msgspec.ValidationError):
        return None, wording.invalid_json.format(error=error)
    text, path = str(error), ""
    match = _AT_PATH_RE.match(text)
    if match:
        text, path = match.group("msg"), match.group("path")
    if under is not None:
        path = f".{under}{path}"
    named = _NAMED_RE.match(text)
    if wording.raw:
        return _raw(text, path, named)

    head = _PATH_HEAD_RE.match(path)
    field = head.group("name") if head else None
    location = f" (at {path[1:]})" if wording.locate and head and path[1:] != field else ""

    if named:
        name = named.group("name")
        unknown = named.group("kind") == "contains unknown"
        if field is None:  # the document itself lacks or has an extra field
            if unknown:
                return name, f"unknown field {name!r}" if wording.name_unknown else "unknown field"
            return name, "required field is missing"
        message = f"unknown field {name!r}" if unknown else f"missing required field {name!r}"
        # the path is that of the object holding the field, so it is located even when
        # that object is the top-level field itself
        return field, message + (f" (at {path[1:]})" if wording.locate else "")

    enum = _ENUM_RE.match(text)
    if enum:
        message = f"invalid value {enum.group('value')}"
        allowed = (choices or {}).get(field or "")
        if allowed and not location:
            message += " (allowed: " + ", ".join(repr(c) for c in allowed) + ")"
        return field, message + location

    message = text.replace("`", "")
    lower = field is not None or wording.lower_document
    if lower and message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    if field is None and wording.json_object and message.startswith("expected object"):
        message = message.replace("expected object", "expected a JSON object", 1)
    return field, message + location


def _raw(text: str, path: str, named: re.Match[str] | None) -> tuple[str | None, str]:
    """msgspec's sentence as it is, filed under the whole path (``a.b[0]``)."""
    field = path.lstrip(".") or None
    if named is not None:
        name = named.group("name")
        field = f"{field}.{name}" if field else name
    return field, text
