"""A small method + path router for the JSON API (sans-IO: strings in, a match out).

Patterns are ``/``-separated segments, each literal or a ``{param}``::

    router.add("GET", "/api/v1/tokens/{name}", endpoint)

Matching rules (all covered by ``tests/unit/test_api_routing.py``):

- The request path is split on ``/`` *before* percent-decoding, so an encoded ``%2F``
  stays inside one segment; then every segment is percent-decoded as UTF-8 (RFC 3986
  section 2.1). Literal segments compare with the decoded text, so ``/api/v1/%74okens`` is
  ``/api/v1/tokens`` (RFC 3986 section 6.2.2.2).
- One trailing slash never changes the resource: ``/api/v1/tokens`` and
  ``/api/v1/tokens/`` are the same collection, ``/api/v1/tokens/ci/`` is ``.../ci``. Empty
  segments elsewhere (``//``) match nothing.
- When several patterns match a path the most specific wins: compared segment by segment,
  a literal beats a parameter (``/tokens/info`` over ``/tokens/{name}``). That pattern is
  *the* resource: a method it lacks is a 405 listing the methods it has, even when a less
  specific pattern has the method (``DELETE /tokens/info`` is 405, not a delete of a token
  named "info").
- ``GET`` also answers ``HEAD`` (RFC 9110 section 9.3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from edge.api.http import ApiError, MethodNotAllowed, NotFound

T = TypeVar("T")

__all__ = ["InvalidPath", "Match", "Router", "split_path"]


class InvalidPath(ApiError):
    """A path segment is not valid percent-encoded UTF-8."""

    status = 400
    code = "invalid_path"
    public_message = "the request path is not valid percent-encoded UTF-8"


def split_path(path: str) -> list[str]:
    """Decoded segments of ``path`` (no leading ``/``, one trailing ``/`` ignored).

    ``path`` is the raw request path as the connection gives it (latin-1 text of the bytes,
    query removed). Raises :class:`NotFound` for a path that is not absolute and
    :class:`InvalidPath` for percent-encoding that does not decode as UTF-8.
    """
    if not path.startswith("/"):
        raise NotFound()
    body = path[1:]
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        return []
    segments = []
    for raw in body.split("/"):
        if "%" not in raw:
            segments.append(raw)
            continue
        try:
            segments.append(unquote_to_bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidPath() from None
    return segments


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    """A route that answers the request, and its decoded path parameters."""

    pattern: str
    method: str
    target: T
    params: dict[str, str]


@dataclass(slots=True)
class _Resource(Generic[T]):
    pattern: str
    # each segment: (is_param, literal text or parameter name)
    segments: tuple[tuple[bool, str], ...]
    methods: dict[str, T] = field(default_factory=dict)

    def bind(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for (is_param, text), part in zip(self.segments, parts, strict=True):
            if is_param:
                if not part:
                    return None
                params[text] = part
            elif part != text:
                return None
        return params

    @property
    def rank(self) -> tuple[int, ...]:
        # lower sorts first: a literal (0) beats a parameter (1) at the first difference
        return tuple(1 if is_param else 0 for is_param, _ in self.segments)

    def allow(self) -> list[str]:
        methods = set(self.methods)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


class Router(Generic[T]):
    """Routes ``(method, path)`` to a target ``T`` (the API stores its endpoints here)."""

    def __init__(self) -> None:
        self._resources: dict[tuple[tuple[bool, str], ...], _Resource[T]] = {}
        self._ordered: list[_Resource[T]] = []

    def add(self, method: str, pattern: str, target: T) -> None:
        """Register ``target`` for ``method`` on ``pattern`` (a duplicate is a bug: raises)."""
        if not pattern.startswith("/"):
            raise ValueError(f"pattern must start with '/': {pattern!r}")
        segments: list[tuple[bool, str]] = []
        names: set[str] = set()
        for part in split_path(pattern):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                if not name.isidentifier() or name in names:
                    raise ValueError(f"bad parameter {part!r} in {pattern!r}")
                names.add(name)
                segments.append((True, name))
            elif not part or "{" in part or "}" in part:
                raise ValueError(f"bad segment {part!r} in {pattern!r}")
            else:
                segments.append((False, part))
        # parameter names do not make patterns different: /a/{x} and /a/{y} collide
        key = tuple((is_param, "" if is_param else text) for is_param, text in segments)
        resource = self._resources.get(key)
        if resource is None:
            resource = _Resource(pattern, tuple(segments))
            self._resources[key] = resource
            self._ordered.append(resource)
            self._ordered.sort(key=lambda r: r.rank)
        elif resource.segments != tuple(segments):
            raise ValueError(f"{pattern!r} clashes with {resource.pattern!r}")
        method = method.upper()
        if method in resource.methods:
            raise ValueError(f"{method} {pattern} is already routed")
        resource.methods[method] = target

    def match(self, method: str, path: str) -> Match[T]:
        """The route for a request; raises :class:`NotFound`, :class:`MethodNotAllowed`
        (with ``allow``) or :class:`InvalidPath`."""
        parts = split_path(path)
        for resource in self._ordered:  # most specific first
            params = resource.bind(parts)
            if params is None:
                continue
            target = resource.methods.get(method)
            if target is None and method == "HEAD":
                target = resource.methods.get("GET")
            if target is None:
                raise MethodNotAllowed(resource.allow())
            return Match(resource.pattern, method, target, params)
        raise NotFound()
