"""Parameters of OAuth requests: query strings and ``application/x-www-form-urlencoded``.

RFC 6749 section 3.1/3.2: a parameter sent twice is an error (``invalid_request``), except
those the protocol lets repeat (RFC 8707's ``resource``); a parameter sent empty counts as
absent. Bodies are capped (``FORM_LIMIT``) before they are read whole.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from edge.api.http import PayloadTooLarge, read_body
from edge.http1.exchange import Exchange
from edge.oauth.errors import InvalidRequest

FORM_LIMIT = 64 * 1024  # far above any token or registration request
REPEATABLE = frozenset({"resource"})


class Params:
    """The parameters of one request: single values, and the repeatable ones as lists."""

    __slots__ = ("_multi", "_single")

    def __init__(self, single: Mapping[str, str], multi: Mapping[str, list[str]]) -> None:
        self._single = dict(single)
        self._multi = {k: list(v) for k, v in multi.items()}

    def get(self, name: str) -> str | None:
        return self._single.get(name)

    def all(self, name: str) -> list[str]:
        return self._multi.get(name, [])

    def __contains__(self, name: str) -> bool:
        return name in self._single or name in self._multi


def parse(text: str) -> Params:
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=False, strict_parsing=False, max_num_fields=100
        )
    except ValueError:
        raise InvalidRequest("too many fields", public_message="too many parameters") from None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in REPEATABLE:
            multi.setdefault(name, []).append(value)
        elif name in single:
            raise InvalidRequest(
                f"{name} repeated", public_message=f"parameter {name!r} is sent more than once"
            )
        else:
            single[name] = value
    return Params(single, multi)


def query(ex: Exchange) -> Params:
    _, _, text = ex.target.partition(b"?")
    return parse(text.decode("latin-1"))


def content_type(ex: Exchange) -> bytes:
    for name, value in ex.headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


async def form(ex: Exchange) -> Params:
    """The form body (415-style ``invalid_request`` when it is not a form; 413 when too
    large)."""
    if ex.has_body and content_type(ex) != b"application/x-www-form-urlencoded":
        raise InvalidRequest(
            "not a form",
            public_message="the body must be application/x-www-form-urlencoded",
        )
    try:
        data = await read_body(ex, FORM_LIMIT)
    except PayloadTooLarge:
        raise InvalidRequest(
            "form too large",
            status=413,
            code="invalid_request",
            public_message=f"the request body is larger than {FORM_LIMIT} bytes",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("not utf-8", public_message="the body is not UTF-8") from None
    return parse(text)


def header(ex: Exchange, wanted: bytes) -> bytes | None:
    for name, value in ex.headers:
        if name == wanted:
            return value
    return None


def header_value(value: object) -> bytes:
    """A claim as a header value: visible ASCII and spaces only (no CR/LF smuggling)."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text).encode("ascii")


def cookie(ex: Exchange, wanted: str) -> str | None:
    """The value of cookie ``wanted`` (the first, as browsers send the most specific
    first)."""
    return cookie_value([value for name, value in ex.headers if name == b"cookie"], wanted)


def cookie_value(fields: list[bytes], wanted: str) -> str | None:
    """The value of cookie ``wanted`` in these Cookie field values (the first)."""
    values = cookie_values(fields, wanted)
    return values[0] if values else None


def cookie_values(fields: list[bytes], wanted: str) -> list[str]:
    """Every value of cookie ``wanted`` in these Cookie field values, in order (a browser
    sends several when cookies of that name were set for several paths or domains)."""
    prefix = wanted + "="
    found: list[str] = []
    for value in fields:
        for part in value.decode("latin-1").split(";"):
            part = part.strip()
            if part.startswith(prefix):
                found.append(part[len(prefix) :])
    return found
