"""Port-forward targets: what a project's members may open a tunnel to, fixed by the admin.

Three configuration documents, one Redis key each, watched and validated like every other
configuration key (:func:`edge.config.schema.decode_item` hands them to :func:`decode_target`):

* ``app:{id}``           -> :class:`AppTarget` (an application of a project)
* ``app_resource:{id}``  -> :class:`ResourceTarget` (a TCP service of an application: a host
  and the ports a tunnel may reach on it)
* ``database:{id}``      -> :class:`DatabaseTarget` (a PostgreSQL or Redis of a project)

A tunnel's far end is always a host and port written here by the admin: a user names a
target by its id (and a resource's port among those listed), never a host. So these
documents are as strict as the others: unknown fields are refused, the ``id`` must be the
key's own, hosts are DNS names or IP literals, ports 1-65535. Every problem of a document is
reported at once, with its key and field (:mod:`edge.config.problems`).

A leaf of :mod:`edge.config` (schema imports it, not the reverse).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Final, Literal, TypeAlias, TypeVar

import msgspec

from edge.config.addresses import normalize_hostname
from edge.config.problems import ConfigError, Problems, decode_struct
from edge.config.timestamps import Timestamp, validate_timestamp
from edge.store import keys

__all__ = [
    "DEFAULT_PORTS",
    "ID_PATTERN",
    "KINDS",
    "READY",
    "AppTarget",
    "DatabaseTarget",
    "Engine",
    "ResourceTarget",
    "Target",
    "decode_target",
    "valid_target_id",
    "validate_target_host",
]

#: what a target id (and a project or app id named in one) looks like; the people store's
#: ids (``p_`` and 12 base58) are of this shape, and so are the hosting platform's
ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID_RE = re.compile(ID_PATTERN)
_STATUS_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_NAME_MAX = 200
_INTERNAL_PORTS_MAX = 64

Engine: TypeAlias = Literal["postgres", "redis"]
#: a database's port when its document names none
DEFAULT_PORTS: Final[dict[str, int]] = {"postgres": 5432, "redis": 6379}
#: the one database status a tunnel may be opened to; any other (creating, failed...) waits
READY: Final = "created"

# A TCP port. Checked by msgspec at decode time so that a database's ``port`` absent (the
# default 0, which no document can hold) is told from one written as 0.
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class AppTarget(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``app:{id}``: an application of a project (its resources name it)."""

    id: str
    project_id: str
    name: str
    created_at: Timestamp = None
    updated_at: Timestamp = None


class ResourceTarget(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``app_resource:{id}``: a TCP service of an application.

    A tunnel reaches ``host`` on ``config_port`` or on one of ``config_internal_ports``
    (:meth:`allows`), nothing else.
    """

    id: str
    project_id: str
    app_id: str
    name: str
    host: str
    config_port: Port
    config_internal_ports: tuple[Port, ...] = ()
    created_at: Timestamp = None
    updated_at: Timestamp = None

    def allows(self, port: int) -> bool:
        """Whether a tunnel may reach ``port`` of this resource's host."""
        return port == self.config_port or port in self.config_internal_ports


class DatabaseTarget(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``database:{id}``: a project's database.

    ``port`` absent is the engine's (5432 for postgres, 6379 for redis). Only a database
    whose ``status`` is ``"created"`` (:attr:`ready`) can be reached; ``"creating"``,
    ``"failed"`` or any other word means not now.
    """

    id: str
    project_id: str
    name: str
    engine: Engine
    host: str
    port: Port = 0  # 0: not given, the engine's default (set below)
    status: str = READY
    created_at: Timestamp = None
    updated_at: Timestamp = None

    def __post_init__(self) -> None:
        # the default depends on another field: filled in once, whoever builds the struct
        # (an engine that did not decode leaves 0: the document is refused anyway)
        if self.port == 0 and self.engine in DEFAULT_PORTS:
            msgspec.structs.force_setattr(self, "port", DEFAULT_PORTS[self.engine])

    @property
    def ready(self) -> bool:
        return self.status == READY


Target: TypeAlias = AppTarget | ResourceTarget | DatabaseTarget

# kind (as edge.config.schema.classify_key names it) -> key prefix
KINDS: Final[dict[str, str]] = {
    "app": keys.APP,
    "app_resource": keys.APP_RESOURCE,
    "database": keys.DATABASE,
}

_APP_DECODER = msgspec.json.Decoder(AppTarget)
_RESOURCE_DECODER = msgspec.json.Decoder(ResourceTarget)
_DATABASE_DECODER = msgspec.json.Decoder(DatabaseTarget)


# ---------------------------------------------------------------------------- checks
# Each raises ValueError with a message; Problems files it under its field.


def valid_target_id(value: str) -> bool:
    """Whether ``value`` has the shape of a target, project or app id."""
    return _ID_RE.fullmatch(value) is not None


def _validate_id(value: str, what: str = "id") -> str:
    if not valid_target_id(value):
        raise ValueError(f"invalid {what} {value!r}: must match {ID_PATTERN}")
    return value


def _validate_name(value: str) -> str:
    if not value.strip() or len(value) > _NAME_MAX or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(
            f"invalid name {value[:80]!r}: must be 1 to {_NAME_MAX} characters, not blank, "
            "without control characters"
        )
    return value


def validate_target_host(value: str) -> str:
    """A DNS host name (returned lowercased) or an IP literal (IPv6 without brackets,
    returned in its compressed form): where a tunnel connects, so no wildcard, no port."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return normalize_hostname(value, allow_wildcard=False)
    except ValueError as exc:
        raise ValueError(f"must be a host name or an IP address: {exc}") from None


def _validate_internal_ports(ports: tuple[int, ...]) -> tuple[int, ...]:
    if len(ports) > _INTERNAL_PORTS_MAX:
        raise ValueError(f"lists {len(ports)} ports: at most {_INTERNAL_PORTS_MAX}")
    repeated = sorted({p for p in ports if ports.count(p) > 1})
    if repeated:
        raise ValueError(f"lists port {repeated[0]} more than once")
    return ports


def _validate_status(value: str) -> str:
    if not _STATUS_RE.fullmatch(value):
        raise ValueError(
            f"invalid status {value[:40]!r}: one lowercase word such as 'created', "
            "'creating' or 'failed'"
        )
    return value


# ---------------------------------------------------------------------------- documents


def _common(p: Problems, suffix: str, target: Target) -> None:
    """The fields every target has: its id (the key's), project, name and times."""
    found = p.check("id", _validate_id, target.id)
    if found is not None and found != suffix:
        p.add("id", f"id {target.id!r} does not match the key (expected {suffix!r})")
    p.check("project_id", lambda v: _validate_id(v, "project id"), target.project_id)
    p.check("name", _validate_name, target.name)
    for field in ("created_at", "updated_at"):
        value = getattr(target, field)
        if value is not None:
            p.check(field, validate_timestamp, value)


_T = TypeVar("_T", ResourceTarget, DatabaseTarget)


def _normalized_host(p: Problems, target: _T) -> _T:
    """``target`` with its host in its normal form, once every problem is reported."""
    host = p.check("host", validate_target_host, target.host)
    p.raise_any()
    if host is not None and host != target.host:
        return msgspec.structs.replace(target, host=host)
    return target


def _decode_app(key: str, suffix: str, raw: bytes | str) -> AppTarget:
    app, p = decode_struct(key, _APP_DECODER, raw)
    _common(p, suffix, app)
    p.raise_any()
    return app


def _decode_resource(key: str, suffix: str, raw: bytes | str) -> ResourceTarget:
    resource, p = decode_struct(key, _RESOURCE_DECODER, raw)
    _common(p, suffix, resource)
    p.check("app_id", lambda v: _validate_id(v, "app id"), resource.app_id)
    p.check("config_internal_ports", _validate_internal_ports, resource.config_internal_ports)
    return _normalized_host(p, resource)


def _decode_database(key: str, suffix: str, raw: bytes | str) -> DatabaseTarget:
    database, p = decode_struct(key, _DATABASE_DECODER, raw)
    _common(p, suffix, database)
    p.check("status", _validate_status, database.status)
    return _normalized_host(p, database)


_DECODE: Final[dict[str, Callable[[str, str, bytes | str], Target]]] = {
    "app": _decode_app,
    "app_resource": _decode_resource,
    "database": _decode_database,
}


def decode_target(kind: str, key: str, raw: bytes | str) -> Target:
    """The target stored under ``key`` (of ``kind``, as ``classify_key`` names it),
    validated and normalised (host names lowercased); :class:`ConfigError` listing every
    problem of the document."""
    decode = _DECODE.get(kind)
    if decode is None:
        raise ConfigError(key, None, "not a port-forward target key")
    suffix = key[len(KINDS[kind]) :]
    if not valid_target_id(suffix):
        raise ConfigError(key, None, f"the key's id {suffix[:80]!r} must match {ID_PATTERN}")
    return decode(key, suffix, raw)
