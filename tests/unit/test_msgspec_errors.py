"""The one translator of msgspec's decode errors, fed by real msgspec decodes."""

from __future__ import annotations

from typing import Literal

import msgspec
import pytest

from edge.config.msgspec_errors import Wording, translate


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    port: int


class Doc(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    mode: Literal["a", "b"] = "a"
    inner: Inner | None = None
    tags: tuple[str, ...] = ()


RECORD = Wording()
CONFIG = Wording(name_unknown=True, json_object=True)
RESOURCE = Wording(locate=False, lower_document=False)
BODY = Wording(raw=True)


def _error(raw: str) -> msgspec.DecodeError:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(raw, type=Doc)
    return info.value


@pytest.mark.parametrize(
    ("raw", "wording", "expected"),
    [
        # wrong type at a nested path: filed under the top-level field, located below it
        (
            '{"name": "x", "inner": {"port": "80"}}',
            RECORD,
            ("inner", "expected int, got str (at inner.port)"),
        ),
        ('{"name": "x", "tags": ["a", 1]}', RECORD, ("tags", "expected str, got int (at tags[1])")),
        ('{"name": "x", "tags": ["a", 1]}', RESOURCE, ("tags", "expected str, got int")),
        (
            '{"name": "x", "inner": {"port": "80"}}',
            BODY,
            ("inner.port", "Expected `int`, got `str`"),
        ),
        ('{"name": 1}', RECORD, ("name", "expected str, got int")),
        # unknown field, at the top and below it
        ('{"name": "x", "nope": 1}', RECORD, ("nope", "unknown field")),
        ('{"name": "x", "nope": 1}', CONFIG, ("nope", "unknown field 'nope'")),
        ('{"name": "x", "nope": 1}', BODY, ("nope", "Object contains unknown field `nope`")),
        (
            '{"name": "x", "inner": {"port": 1, "nope": 2}}',
            RECORD,
            ("inner", "unknown field 'nope' (at inner)"),
        ),
        (
            '{"name": "x", "inner": {"port": 1, "nope": 2}}',
            BODY,
            ("inner.nope", "Object contains unknown field `nope`"),
        ),
        # missing required field
        ("{}", RECORD, ("name", "required field is missing")),
        ("{}", BODY, ("name", "Object missing required field `name`")),
        (
            '{"name": "x", "inner": {}}',
            CONFIG,
            ("inner", "missing required field 'port' (at inner)"),
        ),
        # invalid enum value, with the allowed values when the caller knows them
        ('{"name": "x", "mode": "c"}', RECORD, ("mode", "invalid value 'c'")),
        ('{"name": "x", "mode": "c"}', BODY, ("mode", "Invalid enum value 'c'")),
        # not an object at all
        ("[]", RECORD, (None, "expected object, got array")),
        ("[]", CONFIG, (None, "expected a JSON object, got array")),
        ("[]", RESOURCE, (None, "Expected object, got array")),
        ("[]", BODY, (None, "Expected `object`, got `array`")),
    ],
)
def test_validation_messages(raw: str, wording: Wording, expected: tuple[str | None, str]) -> None:
    assert translate(_error(raw), wording) == expected


def test_enum_lists_the_allowed_values() -> None:
    error = _error('{"name": "x", "mode": "c"}')
    assert translate(error, CONFIG, {"mode": ("a", "b")}) == (
        "mode",
        "invalid value 'c' (allowed: 'a', 'b')",
    )


def test_json_syntax_error() -> None:
    error = _error('{"name": ')
    assert type(error) is msgspec.DecodeError
    field, message = translate(error)
    assert field is None
    assert message.startswith("invalid JSON: Input data was truncated")
    assert translate(error, Wording(invalid_json="not JSON")) == (None, "not JSON")


def test_text_that_is_not_utf8() -> None:
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert translate(error) == (None, f"invalid JSON: {error}")


def test_one_field_decoded_on_its_own_is_located_in_the_document() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"port": "80"}, Inner)
    assert translate(info.value, CONFIG, under="inner") == (
        "inner",
        "expected int, got str (at inner.port)",
    )
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(1, str)
    assert translate(info.value, CONFIG, under="name") == ("name", "expected str, got int")
