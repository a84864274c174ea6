"""The pure parts of the client command line: output formats, settings, error lines."""

from __future__ import annotations

import csv
import io
import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.client.base import key_values, set_fields
from edge.client.config import dump_toml, mask, resolve, write_config
from edge.client.errors import ClientError
from edge.client.http import Api
from edge.client.output import (
    Column,
    Printer,
    parse_time,
    relative_time,
    to_csv,
    to_yaml,
    use_color,
)
from edge.client.people import parse_duration

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=-0.5), "just now"),
        (timedelta(seconds=-30), "30s ago"),
        (timedelta(minutes=-5, seconds=-59), "5m ago"),
        (timedelta(hours=-3), "3h ago"),
        (timedelta(days=-2, hours=-23), "2d ago"),
        (timedelta(days=3), "in 3d"),
        (timedelta(minutes=90), "in 1h"),
        (timedelta(days=800), "in 2y"),
    ],
)
def test_relative_time(delta: timedelta, text: str) -> None:
    assert relative_time(NOW + delta, NOW) == text


def test_parse_time_only_takes_iso_date_and_time() -> None:
    assert parse_time("2024-05-01T12:00:00Z") == NOW
    assert parse_time("2024-05-01T14:00:00+02:00") == NOW
    assert parse_time("2024-05-01T12:00:00") == NOW  # naive: UTC
    assert parse_time("2024-05-01T12:00:00.123456Z") is not None
    for value in ("2024-05-01", "ci", "12:00", "2024-13-01T00:00:00Z", 5, None):
        assert parse_time(value) is None


# ---------------------------------------------------------------------------- yaml


def test_yaml_of_records() -> None:
    doc = [
        {
            "name": "ci",
            "cert_email": None,
            "created_at": "2024-05-01T12:00:00Z",
            "enabled": True,
            "priority": 50,
            "methods": ["GET", "HEAD"],
            "headers": {"X-A": "1"},
            "empty": [],
            "none": {},
        },
        {"name": "yes", "host": "*.example.com", "text": 'a "b"\nc', "n": "42"},
    ]
    assert to_yaml(doc) == (
        "- name: ci\n"
        "  cert_email: null\n"
        '  created_at: "2024-05-01T12:00:00Z"\n'
        "  enabled: true\n"
        "  priority: 50\n"
        "  methods:\n"
        "    - GET\n"
        "    - HEAD\n"
        "  headers:\n"
        '    X-A: "1"\n'
        "  empty: []\n"
        "  none: {}\n"
        '- name: "yes"\n'
        '  host: "*.example.com"\n'
        '  text: "a \\"b\\"\\nc"\n'
        '  "n": "42"\n'  # n is "no" in YAML 1.1: keys are quoted like values
    )
    assert to_yaml([]) == "[]\n"
    assert to_yaml({"a": [[1, 2], {"b": None}]}) == "a:\n  - - 1\n    - 2\n  - b: null\n"


@pytest.mark.parametrize(
    "text",
    ["", "true", "No", "null", "~", "1.5", "0x10", "a: b", "a #b", "-x", " lead", "trail ",
     "@at", "é", "tab\there", "\x1b[31m", "line\u2028sep", "😀", "[x]", "!tag", "%x", "`x`"],
)  # fmt: skip
def test_yaml_quotes_whatever_is_not_a_plain_string(text: str) -> None:
    out = to_yaml({"k": text})
    value = out[len("k: ") : -1]
    assert value.startswith('"') and value.endswith('"'), out
    assert "\x1b" not in value and "\t" not in value
    # what is quoted is a JSON string too, except the YAML-only escapes
    if all(c.isprintable() or c == " " for c in text):
        assert json.loads(value) == text


def test_yaml_leaves_plain_words_plain() -> None:
    for text in ("admin", "app.example.com", "ops@example.com", "Ann Lee", "/api/v1", "a-b_c"):
        assert to_yaml(text) == f"{text}\n"


# ---------------------------------------------------------------------------- csv


def test_csv_has_every_field_and_json_for_nested_values() -> None:
    rows = [{"a": 1, "b": None, "c": ["x", "y"]}, {"a": 2, "d": True, "c": {"k": "v,w"}}]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed == [
        {"a": "1", "b": "", "c": '["x","y"]', "d": ""},
        {"a": "2", "b": "", "c": '{"k":"v,w"}', "d": "true"},
    ]
    assert list(csv.reader(io.StringIO(to_csv({"one": "record"})))) == [["one"], ["record"]]
    assert to_csv([]) == ""


# ---------------------------------------------------------------------------- table


def _printer(fmt: str = "table", color: bool = False) -> tuple[Printer, io.StringIO]:
    out = io.StringIO()
    return Printer(fmt, stream=out, color=color, now=NOW), out


def test_table_is_aligned_with_relative_times() -> None:
    printer, out = _printer()
    items = [
        {"name": "admin", "created_at": "2024-05-01T11:55:00Z", "status": "active", "n": None},
        {"name": "a-much-longer-name", "created_at": "2024-04-28T12:00:00Z", "status": "revoked"},
    ]
    columns = [
        Column("NAME", "name"),
        Column("CREATED", "created_at"),
        Column("STATUS", "status", status=True),
        Column("N", "n"),
    ]
    printer.records(items, columns)
    assert out.getvalue().splitlines() == [
        "NAME                CREATED  STATUS   N",
        "admin               5m ago   active   -",
        "a-much-longer-name  3d ago   revoked  -",
    ]


def test_colour_only_when_asked_and_alignment_kept() -> None:
    printer, out = _printer(color=True)
    items = [{"s": "active", "x": 1}, {"s": "revoked", "x": 2}, {"s": "other", "x": 3}]
    printer.records(items, [Column("S", "s", status=True), Column("X", "x")])
    lines = out.getvalue().splitlines()
    assert lines[1] == "\x1b[32mactive \x1b[0m  1"
    assert lines[2] == "\x1b[31mrevoked\x1b[0m  2"
    assert lines[3] == "other    3"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_use_color() -> None:
    assert use_color(_Tty(), {}) is True
    assert use_color(_Tty(), {"NO_COLOR": "1"}) is False
    assert use_color(_Tty(), {"TERM": "dumb"}) is False
    assert use_color(io.StringIO(), {}) is False


def test_one_record_view_and_server_text_cannot_inject_escapes() -> None:
    printer, out = _printer()
    printer.record(
        {
            "name": "ci",
            "created_at": "2024-05-01T11:00:00Z",
            "description": "evil\x1b[2Jtext\nmore",
            "empty": "",
            "members": [{"role": "owner", "accepted": True}],
        }
    )
    assert out.getvalue().splitlines() == [
        "name         ci",
        "created_at   2024-05-01T11:00:00Z (1h ago)",
        "description  evil [2Jtext more",
        'empty        ""',
        "members:",
        "  - role=owner, accepted=yes",
    ]


def test_structured_formats_print_the_data() -> None:
    data: list[dict[str, Any]] = [{"a": 1}]
    printer, out = _printer("json")
    printer.records(data, [Column("A", "a")])
    assert json.loads(out.getvalue()) == data
    printer, out = _printer("yaml")
    printer.record({"a": 1})
    assert out.getvalue() == "a: 1\n"


# ---------------------------------------------------------------------------- settings


def test_mask_never_shows_the_token() -> None:
    token = "edge_4MmuwqrQ2GnWq9wy8Wq8pmc9Wv6Cq8WcFmdxQBiz7Xo3"
    assert mask(token) == "edge_4Mm…Xo3"
    assert mask("short-secret") == "…"
    assert mask(None) == "(none)"


def test_toml_round_trip(tmp_path: Path) -> None:
    doc = {
        "default_profile": "prod",
        "profiles": {
            "default": {"api_url": "http://127.0.0.1:9000", "token": 'a"b\\c\n\x01'},
            "prod": {"api_url": "https://x", "timeout": 5, "flags": [True, 1.5, "s"]},
            "odd name": {},
        },
    }
    assert tomllib.loads(dump_toml(doc)) == doc
    path = tmp_path / "sub" / "config.toml"
    write_config(path, doc)
    assert tomllib.loads(path.read_text()) == doc
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_resolve_layers(tmp_path: Path) -> None:
    base = {"XDG_CONFIG_HOME": str(tmp_path)}
    write_config(
        tmp_path / "edge" / "config.toml",
        {"profiles": {"default": {"api_url": "http://file:1", "token": "file-token-xxxxxxxxxxx"}}},
    )
    settings = resolve(base)
    assert (settings.api_url, settings.token) == ("http://file:1", "file-token-xxxxxxxxxxx")
    settings = resolve({**base, "API_URL": "http://env:2/", "ADMIN_TOKEN": "admin-t"})
    assert (settings.api_url, settings.token) == ("http://env:2", "admin-t")
    settings = resolve({**base, "TOKEN": "t", "ADMIN_TOKEN": "a", "API_URL": " "})
    assert (settings.api_url, settings.token) == ("http://file:1", "t")  # blank is unset
    settings = resolve({**base, "TOKEN": "t"}, api_url="http://flag:3", token="f")
    assert (settings.api_url, settings.token, settings.token_source) == (
        "http://flag:3",
        "f",
        "--token",
    )
    with pytest.raises(ClientError) as caught:
        resolve(base, profile="nope")
    assert caught.value.status == 2
    with pytest.raises(ClientError):
        resolve(base, profile="bad name!")
    home = resolve({"HOME": str(tmp_path / "h")})
    assert home.config_path == tmp_path / "h" / ".config" / "edge" / "config.toml"
    assert home.api_url == "http://127.0.0.1:9000" and home.token is None


# ---------------------------------------------------------------------------- errors


def _failure(status: int, doc: Any, flags: dict[str, str] | None = None) -> str:
    api = Api("http://127.0.0.1:9000", "t")
    err = api.failure(status, "Reason", {"x-request-id": "rid1"}, doc, flags or {})
    assert "\n" not in err.message
    return err.message


def test_error_lines() -> None:
    error = {"code": "invalid_body", "message": "bad\nthing", "field": "target_url"}
    assert _failure(400, {"error": error}, {"target_url": "--target"}) == (
        "invalid target_url (--target): bad thing"
    )
    assert _failure(401, {"error": {"code": "unauthorized"}}).startswith(
        "the token was refused (401)"
    )
    assert _failure(404, {"error": {"code": "proxy_not_found", "message": "no proxy",
                                    "request_id": "r9"}}) == (
        "404 proxy_not_found: no proxy (request r9)"
    )  # fmt: skip
    envelope = {"data": None, "errors": [{"code": "not_a_member", "message": "m", "field": None}]}
    assert _failure(403, envelope) == "403 not_a_member: m (request rid1)"
    conflict = {"error": {"code": "route_conflict", "message": "m", "field": "path_pattern"}}
    assert _failure(409, conflict) == "409 route_conflict: m [field path_pattern] (request rid1)"
    assert "not an edge API answer" in _failure(502, None)


def test_small_parsers() -> None:
    assert key_values(["A=1", "B=", "C=x=y"], "--header") == {"A": "1", "B": "", "C": "x=y"}
    with pytest.raises(ClientError):
        key_values(["novalue"], "--header")
    doc: dict[str, Any] = {}
    set_fields(doc, ["n=5", "b=true", "s=text", "l=[1]", 'q="5"'])
    assert doc == {"n": 5, "b": True, "s": "text", "l": [1], "q": "5"}
    assert parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "5", "d", "0d", "1x", "1d 2h"):
        with pytest.raises(ClientError):
            parse_duration(bad)
