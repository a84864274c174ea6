"""Strict schemas for the configuration documents stored in Redis.

Every configuration item lives under its own Redis key:

* ``proxy:{hostname}``          -> JSON object decoded into :class:`ProxyConfig`
* ``route:{route_id}``          -> JSON object decoded into :class:`RouteConfig`
* ``service:url:{name}``        -> plain URL string decoded into :class:`ServiceURL`
* ``service:external:{name}``   -> JSON object decoded into :class:`ExternalService`
* ``app:{id}``, ``app_resource:{id}``, ``database:{id}`` -> port-forward targets
  (:mod:`edge.config.targets`)

:func:`decode_item` is the single entry point: it decodes the raw Redis value with a
module-level msgspec decoder (unknown fields and wrong types are rejected), then applies
semantic validation and normalisation.  Problems are reported as one :class:`ConfigError`
naming the key and, for each problem of the document, the offending field and a human
readable message (see :mod:`edge.config.problems`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

from edge.config.addresses import (
    CONTROL_OR_SPACE_RE,
    normalize_hostname,
    validate_host_port,
    validate_port,
    validate_url,
)
from edge.config.pathregex import compile_path_regex
from edge.config.problems import ConfigError, Problems, decode_struct
from edge.config.targets import Target, decode_target
from edge.config.timestamps import Timestamp, validate_timestamp
from edge.store import keys

if TYPE_CHECKING:
    from edge.tls.material import CertRecord

__all__ = [
    "CONFIG_KEY_PATTERNS",
    "HOP_BY_HOP_HEADERS",
    "CertDomain",
    "ConfigError",
    "ConfigItem",
    "ExternalService",
    "ProxyConfig",
    "RouteConfig",
    "ServiceURL",
    "classify_key",
    "decode_item",
    "normalize_hostname",
    "validate_header_map",
    "validate_header_name",
    "validate_header_value",
    "validate_timestamp",
    "validate_url",
]


# ---------------------------------------------------------------------------
# Structs
# ---------------------------------------------------------------------------

RouteMode: TypeAlias = Literal["all", "selective", "none"]
AuthMode: TypeAlias = Literal["forward", "redirect", "passthrough"]
TargetType: TypeAlias = Literal["port", "service", "hostname", "url"]
RouteScope: TypeAlias = Literal["global", "proxy"]


class ProxyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``proxy:{hostname}``."""

    hostname: str
    target_url: str
    enabled: bool = True
    enable_http: bool = True
    enable_https: bool = True
    preserve_host_header: bool = True
    custom_headers: dict[str, str] = msgspec.field(default_factory=dict)
    custom_response_headers: dict[str, str] = msgspec.field(default_factory=dict)
    route_mode: RouteMode = "all"
    enabled_routes: tuple[str, ...] = ()
    disabled_routes: tuple[str, ...] = ()
    cert_name: str | None = None
    created_by: str | None = None
    created_at: Timestamp = None
    owner_token_hash: str | None = None
    # Authentication (validated and stored; acted on by ForwardAuth support).
    auth_enabled: bool = False
    auth_proxy: str | None = None
    auth_mode: AuthMode = "forward"
    auth_required_users: tuple[str, ...] | None = None
    auth_required_emails: tuple[str, ...] | None = None
    auth_required_groups: tuple[str, ...] | None = None
    auth_allowed_scopes: tuple[str, ...] | None = None
    auth_allowed_audiences: tuple[str, ...] | None = None
    auth_pass_headers: bool = True
    # null: stripped when the credential came from the session cookie, kept for a bearer token
    auth_strip_authorization: bool | None = None
    auth_cookie_name: str = "edge_auth"
    auth_header_prefix: str = "X-Auth-"
    auth_excluded_paths: tuple[str, ...] | None = None
    # external ForwardAuth: the answer's fields copied onto the request (null: the identity
    # fields {auth_header_prefix}User-Id, User-Name, Email, Scopes, Client-Id)
    auth_response_headers: tuple[str, ...] | None = None
    # Protected resource metadata (validated and stored; acted on by MCP metadata support).
    resource_endpoint: str | None = None
    resource_scopes: tuple[str, ...] = ()
    resource_stateful: bool = False
    resource_versions: tuple[str, ...] = ()
    resource_server_info: dict[str, Any] = msgspec.field(default_factory=dict)
    resource_override_backend: bool = False
    resource_bearer_methods: tuple[str, ...] = ("header",)
    resource_documentation_suffix: str = "/docs"
    resource_custom_metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # ACME account of the proxy's certificate (validated and stored; acted on by automatic
    # HTTPS): the contact address, and the CA's directory (null: the edge's default CA).
    cert_email: str | None = None
    acme_directory_url: str | None = None


class RouteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``route:{route_id}``."""

    route_id: str
    path_pattern: str
    target_type: TargetType
    target_value: str
    priority: int = 50
    methods: tuple[str, ...] | None = None
    is_regex: bool = False
    enabled: bool = True
    scope: RouteScope = "global"
    proxy_hostnames: tuple[str, ...] = ()
    description: str = ""
    owner_token_hash: str | None = None
    created_at: Timestamp = None
    created_by: str | None = None


class ExternalService(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``service:external:{name}``."""

    service_name: str
    target_url: str
    description: str = ""
    service_type: str = "external"
    routing_enabled: bool = True
    created_by: str | None = None
    created_at: Timestamp = None
    owner_token_hash: str | None = None


class ServiceURL(msgspec.Struct, frozen=True):
    """Value of ``service:url:{name}`` (a plain URL string, not JSON)."""

    name: str
    url: str


class CertDomain(msgspec.Struct, frozen=True):
    """Value of ``cert:domain:{domain}``: the name of the certificate serving that domain."""

    domain: str
    cert_name: str


# ``cert:{name}`` decodes to ``edge.tls.material.CertRecord``, imported only when a
# certificate is decoded: ``cryptography`` stays off the import path of everything else
# that reads this module (settings, the router, the client). The port-forward targets are
# ``edge.config.targets``'s.
ConfigItem: TypeAlias = (
    "ProxyConfig | RouteConfig | ExternalService | ServiceURL | CertDomain | CertRecord | Target"
)

CONFIG_KEY_PATTERNS: tuple[str, ...] = keys.CONFIG_PATTERNS

_PROXY_DECODER = msgspec.json.Decoder(ProxyConfig)
_ROUTE_DECODER = msgspec.json.Decoder(RouteConfig)
_EXTERNAL_DECODER = msgspec.json.Decoder(ExternalService)

# ---------------------------------------------------------------------------
# Key classification
# ---------------------------------------------------------------------------

_PROXY_PREFIX = keys.PROXY
_ROUTE_PREFIX = keys.ROUTE
_SERVICE_URL_PREFIX = keys.SERVICE_URL
_SERVICE_EXTERNAL_PREFIX = keys.SERVICE_EXTERNAL
# Index keys kept next to route documents; they are not route documents themselves.
_ROUTE_INDEX_PREFIXES = keys.ROUTE_INDEXES
_CERT_PREFIX = keys.CERT
_CERT_DOMAIN_PREFIX = keys.CERT_DOMAIN
_TARGET_KINDS = (
    (keys.APP_RESOURCE, "app_resource"),
    (keys.APP, "app"),
    (keys.DATABASE, "database"),
)


class WrongType(bytes):
    """In place of a config key's value: the Redis type it holds instead of a string."""


def classify_key(key: str) -> str | None:
    """Return the kind of configuration stored under ``key``.

    One of ``"proxy"``, ``"route"``, ``"service_url"``, ``"service_external"``,
    ``"cert"``, ``"cert_domain"``, ``"app"``, ``"app_resource"``, ``"database"``, or
    ``None`` for keys the configuration does not own (including route index keys and
    prefixes with an empty suffix).
    """
    if key.startswith(_SERVICE_URL_PREFIX):
        return "service_url" if len(key) > len(_SERVICE_URL_PREFIX) else None
    if key.startswith(_SERVICE_EXTERNAL_PREFIX):
        return "service_external" if len(key) > len(_SERVICE_EXTERNAL_PREFIX) else None
    if key.startswith(_ROUTE_PREFIX):
        if key.startswith(_ROUTE_INDEX_PREFIXES):
            return None
        return "route" if len(key) > len(_ROUTE_PREFIX) else None
    if key.startswith(_PROXY_PREFIX):
        return "proxy" if len(key) > len(_PROXY_PREFIX) else None
    if key.startswith(_CERT_DOMAIN_PREFIX):
        return "cert_domain" if len(key) > len(_CERT_DOMAIN_PREFIX) else None
    if key.startswith(keys.CERT_STATUS):
        return None  # an ACME issuance's progress, not configuration
    if key.startswith(_CERT_PREFIX):
        return "cert" if len(key) > len(_CERT_PREFIX) else None
    # port-forward targets; app_resource: before app: (though app: never matches it)
    for prefix, kind in _TARGET_KINDS:
        if key.startswith(prefix):
            return kind if len(key) > len(prefix) else None
    return None


# ---------------------------------------------------------------------------
# Value validators (raise ValueError with a message; the caller adds key/field)
# ---------------------------------------------------------------------------
# Host names, ports and URLs are checked in edge.config.addresses, which the TLS
# certificate records share without importing this module.

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HEADER_VALUE_BAD_RE = re.compile(r"[^\t\x20-\x7e]")

HOP_BY_HOP_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    }
)

_BEARER_METHODS = frozenset({"header", "body", "query"})
_PRIORITY_MIN = -100_000
_PRIORITY_MAX = 100_000


def validate_header_name(name: str) -> str:
    """Validate an HTTP field name (an RFC 9110 token)."""
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}: must be an HTTP token")
    return name


def validate_header_value(value: str) -> str:
    """Validate an HTTP field value: printable ASCII (and tab), no surrounding whitespace."""
    for char, label in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if char in value:
            raise ValueError(f"invalid header value {value!r}: contains {label}")
    if _HEADER_VALUE_BAD_RE.search(value):
        raise ValueError(
            f"invalid header value {value!r}: only printable ASCII characters and tab are allowed"
        )
    if value != value.strip(" \t"):
        raise ValueError(f"invalid header value {value!r}: leading or trailing whitespace")
    return value


def validate_header_map(headers: Mapping[str, str]) -> dict[str, str]:
    """Validate a map of headers added by the proxy (hop-by-hop names are refused)."""
    seen: set[str] = set()
    for name, value in headers.items():
        validate_header_name(name)
        lowered = name.lower()
        if lowered in HOP_BY_HOP_HEADERS:
            raise ValueError(
                f"header {name!r} cannot be set: it is a hop-by-hop or framing header "
                "managed by the proxy"
            )
        if lowered in seen:
            raise ValueError(
                f"header {name!r} is listed more than once (names are case-insensitive)"
            )
        seen.add(lowered)
        try:
            validate_header_value(value)
        except ValueError as exc:
            raise ValueError(f"header {name!r}: {exc}") from None
    return dict(headers)


def _validate_words(values: Iterable[str], what: str) -> None:
    """Each item is non-empty and free of whitespace and control characters."""
    for item in values:
        if not item or CONTROL_OR_SPACE_RE.search(item):
            raise ValueError(
                f"invalid {what} {item!r}: must be non-empty without whitespace or "
                "control characters"
            )


def _validate_texts(values: Iterable[str], what: str) -> None:
    """Each item is non-empty, not only whitespace and free of control characters."""
    for item in values:
        if not item.strip() or re.search(r"[\x00-\x1f\x7f]", item):
            raise ValueError(f"invalid {what} {item!r}: must be non-empty text")


def _validate_path(value: str, what: str) -> None:
    if not value.startswith("/") or CONTROL_OR_SPACE_RE.search(value):
        raise ValueError(
            f"invalid {what} {value!r}: must start with '/' and contain no whitespace or "
            "control characters"
        )


def _validate_service_name(value: str) -> str:
    if not _SERVICE_NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid service name {value!r}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )
    return value


def _validate_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    result = tuple(m.upper() for m in methods)
    for method in result:
        if not _TOKEN_RE.fullmatch(method):
            raise ValueError(f"invalid method {method!r}: must be an HTTP token such as 'GET'")
    return result


def _validate_regex(pattern: str) -> None:
    compile_path_regex(pattern)  # the router's own compiler: what passes here runs there


def _validate_route_target(target_type: str, value: str) -> str:
    if target_type == "port":
        return str(validate_port(value, "target_value"))
    if target_type == "hostname":
        return validate_host_port(value)
    if target_type == "service":
        return _validate_service_name(value)
    return validate_url(value)


def _validate_auth_proxy(value: str) -> str:
    if "://" in value:
        return validate_url(value)
    return validate_host_port(value)


def _validate_resource_endpoint(value: str) -> str:
    if "://" in value:
        return validate_url(value)
    _validate_path(value, "resource endpoint")
    return value


def _validate_bearer_methods(values: tuple[str, ...]) -> None:
    for method in values:
        if method not in _BEARER_METHODS:
            raise ValueError(
                f"invalid bearer method {method!r}: must be one of 'header', 'body', 'query'"
            )


def _validate_cert_name(value: str) -> str:
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or CONTROL_OR_SPACE_RE.search(value)
    ):
        raise ValueError(
            f"invalid certificate name {value!r}: must be non-empty without '/', whitespace "
            "or control characters"
        )
    return value


def _validate_route_id(value: str) -> str:
    if not value or CONTROL_OR_SPACE_RE.search(value):
        raise ValueError(
            f"invalid route id {value!r}: must be non-empty without whitespace or control "
            "characters"
        )
    return value


# ---------------------------------------------------------------------------
# Per-document validation
# ---------------------------------------------------------------------------


def _check_optional_timestamp(problems: Problems, value: str | float | None) -> None:
    if value is not None:
        problems.check("created_at", validate_timestamp, value)


def _validate_proxy(problems: Problems, suffix: str, cfg: ProxyConfig) -> ProxyConfig:
    p = problems
    hostname = p.check("hostname", normalize_hostname, cfg.hostname)
    if hostname is not None and (not suffix.isascii() or hostname != suffix.lower()):
        p.add("hostname", f"hostname {cfg.hostname!r} does not match the key (expected {suffix!r})")
    p.check("target_url", validate_url, cfg.target_url)
    p.check("custom_headers", validate_header_map, cfg.custom_headers)
    p.check("custom_response_headers", validate_header_map, cfg.custom_response_headers)
    p.check("enabled_routes", lambda v: _validate_words(v, "route id"), cfg.enabled_routes)
    p.check("disabled_routes", lambda v: _validate_words(v, "route id"), cfg.disabled_routes)
    if cfg.cert_name is not None:
        p.check("cert_name", _validate_cert_name, cfg.cert_name)
    _check_optional_timestamp(p, cfg.created_at)
    _validate_proxy_auth(p, cfg)
    _validate_proxy_resource(p, cfg)
    _validate_proxy_acme(p, cfg)
    p.raise_any()
    if hostname is not None and hostname != cfg.hostname:
        return msgspec.structs.replace(cfg, hostname=hostname)
    return cfg


def _validate_proxy_acme(p: Problems, cfg: ProxyConfig) -> None:
    if cfg.cert_email is not None:
        p.check("cert_email", _validate_email, cfg.cert_email)
    if cfg.acme_directory_url is not None:
        p.check("acme_directory_url", _validate_acme_directory, cfg.acme_directory_url)


def _validate_email(value: str) -> str:
    """``user@domain``: the ACME account contact (a ``mailto:`` URI, RFC 8555 section 7.3)."""
    local, at, domain = value.rpartition("@")
    if not at or not local or "@" in local or "," in value or CONTROL_OR_SPACE_RE.search(value):
        raise ValueError(f"invalid e-mail address {value!r}: expected user@domain")
    if len(value) > 254:  # RFC 5321 section 4.5.3.1.3
        raise ValueError(f"invalid e-mail address {value!r}: longer than 254 characters")
    try:
        normalize_hostname(domain, allow_wildcard=False)
    except ValueError:
        ok = False
    else:
        ok = "." in domain
    if not ok:
        raise ValueError(
            f"invalid e-mail address {value!r}: the domain must be a host name with a dot"
        )
    return value


def _is_loopback_host(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_acme_directory(value: str) -> str:
    """An ``https://`` URL; ``http://`` only for a loopback host (a local test CA)."""
    validate_url(value)
    scheme, _, rest = value.partition("://")
    authority = rest.partition("/")[0]
    if authority.startswith("["):
        host = authority[1 : authority.index("]")]
    else:
        host = authority.partition(":")[0]
    if scheme != "https" and not _is_loopback_host(host):
        raise ValueError(
            f"must be an https:// URL (http:// only for a loopback host), got {value!r}"
        )
    return value


def _validate_proxy_auth(p: Problems, cfg: ProxyConfig) -> None:
    if cfg.auth_proxy is not None:
        p.check("auth_proxy", _validate_auth_proxy, cfg.auth_proxy)
    word_lists: tuple[tuple[str, tuple[str, ...] | None, str], ...] = (
        ("auth_required_users", cfg.auth_required_users, "user"),
        ("auth_required_emails", cfg.auth_required_emails, "email"),
        ("auth_required_groups", cfg.auth_required_groups, "group"),
        ("auth_allowed_scopes", cfg.auth_allowed_scopes, "scope"),
        ("auth_allowed_audiences", cfg.auth_allowed_audiences, "audience"),
    )
    for field, values, what in word_lists:
        if values is not None:
            p.check(field, partial(_validate_words, what=what), values)
    if cfg.auth_required_emails is not None:
        for email in cfg.auth_required_emails:
            local, at, domain = email.rpartition("@")
            if not at or not local or not domain:
                p.add("auth_required_emails", f"invalid email {email!r}: expected user@domain")
    p.check("auth_cookie_name", _validate_cookie_name, cfg.auth_cookie_name)
    p.check("auth_header_prefix", validate_header_name, cfg.auth_header_prefix)
    if cfg.auth_response_headers is not None:
        for name in cfg.auth_response_headers:
            p.check("auth_response_headers", validate_header_name, name)
    if cfg.auth_excluded_paths is not None:
        for path in cfg.auth_excluded_paths:
            p.check("auth_excluded_paths", lambda v: _validate_path(v, "path"), path)


def _validate_cookie_name(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"invalid cookie name {value!r}: must be an HTTP token")
    return value


def _validate_proxy_resource(p: Problems, cfg: ProxyConfig) -> None:
    if cfg.resource_endpoint is not None:
        p.check("resource_endpoint", _validate_resource_endpoint, cfg.resource_endpoint)
    p.check("resource_scopes", lambda v: _validate_words(v, "scope"), cfg.resource_scopes)
    p.check("resource_versions", lambda v: _validate_texts(v, "version"), cfg.resource_versions)
    p.check("resource_bearer_methods", _validate_bearer_methods, cfg.resource_bearer_methods)
    p.check(
        "resource_documentation_suffix",
        lambda v: _validate_path(v, "documentation suffix"),
        cfg.resource_documentation_suffix,
    )


def _validate_priority(value: int) -> int:
    if not _PRIORITY_MIN <= value <= _PRIORITY_MAX:
        raise ValueError(f"must be between {_PRIORITY_MIN} and {_PRIORITY_MAX}, got {value}")
    return value


def _validate_route(p: Problems, suffix: str, cfg: RouteConfig) -> RouteConfig:
    route_id = p.check("route_id", _validate_route_id, cfg.route_id)
    if route_id is not None and route_id != suffix:
        p.add("route_id", f"route_id {cfg.route_id!r} does not match the key (expected {suffix!r})")
    if p.usable("is_regex"):
        if cfg.is_regex:
            p.check("path_pattern", _validate_regex, cfg.path_pattern)
        else:
            p.check("path_pattern", lambda v: _validate_path(v, "path pattern"), cfg.path_pattern)
    p.check("priority", _validate_priority, cfg.priority)
    methods = cfg.methods
    if methods is not None:
        methods = p.check("methods", _validate_methods, methods)
    target_value: str | None = cfg.target_value
    if p.usable("target_type"):  # target_value is read by its type
        target_value = p.check(
            "target_value", lambda v: _validate_route_target(cfg.target_type, v), cfg.target_value
        )
    hostnames = tuple(
        p.check("proxy_hostnames", normalize_hostname, h) or "" for h in cfg.proxy_hostnames
    )
    if p.usable("scope", "proxy_hostnames"):
        if cfg.scope == "proxy" and not hostnames:
            p.add("proxy_hostnames", "must list at least one hostname when scope is 'proxy'")
        if cfg.scope == "global" and hostnames:
            p.add("proxy_hostnames", "is only allowed when scope is 'proxy' (scope is 'global')")
    _check_optional_timestamp(p, cfg.created_at)
    p.raise_any()
    if (
        methods != cfg.methods
        or target_value != cfg.target_value
        or hostnames != cfg.proxy_hostnames
    ):
        return msgspec.structs.replace(
            cfg, methods=methods, target_value=target_value, proxy_hostnames=hostnames
        )
    return cfg


def _validate_external(p: Problems, suffix: str, cfg: ExternalService) -> ExternalService:
    name = p.check("service_name", _validate_service_name, cfg.service_name)
    if name is not None and name != suffix:
        p.add(
            "service_name",
            f"service_name {cfg.service_name!r} does not match the key (expected {suffix!r})",
        )
    p.check("target_url", validate_url, cfg.target_url)
    _check_optional_timestamp(p, cfg.created_at)
    p.raise_any()
    return cfg


def _decode_service_url(key: str, suffix: str, raw: bytes | str) -> ServiceURL:
    try:
        _validate_service_name(suffix)
    except ValueError as exc:
        raise ConfigError(key, "name", str(exc)) from None
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(key, "url", f"value is not valid UTF-8: {exc}") from None
    url = text.strip()
    if not url:
        raise ConfigError(key, "url", "value is empty; expected a plain http(s) URL")
    try:
        validate_url(url)
    except ValueError as exc:
        raise ConfigError(key, "url", str(exc)) from None
    return ServiceURL(name=suffix, url=url)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def decode_item(key: str, raw: bytes | str) -> ConfigItem:
    """Decode and validate the Redis value ``raw`` stored under ``key``.

    Raises :class:`ConfigError` if the key is not a configuration key or the value is
    invalid.  Returned items are normalised (host names lowercased, methods uppercased).
    """
    kind = classify_key(key)
    if kind == "proxy":
        proxy, problems = decode_struct(key, _PROXY_DECODER, raw)
        return _validate_proxy(problems, key[len(_PROXY_PREFIX) :], proxy)
    if kind == "route":
        route, problems = decode_struct(key, _ROUTE_DECODER, raw)
        return _validate_route(problems, key[len(_ROUTE_PREFIX) :], route)
    if kind == "service_external":
        external, problems = decode_struct(key, _EXTERNAL_DECODER, raw)
        return _validate_external(problems, key[len(_SERVICE_EXTERNAL_PREFIX) :], external)
    if kind == "service_url":
        return _decode_service_url(key, key[len(_SERVICE_URL_PREFIX) :], raw)
    if kind == "cert":
        from edge.tls.material import decode_cert

        return decode_cert(key, raw)
    if kind == "cert_domain":
        return _decode_cert_domain(key, key[len(_CERT_DOMAIN_PREFIX) :], raw)
    if kind in ("app", "app_resource", "database"):
        return decode_target(kind, key, raw)
    raise ConfigError(key, None, "not a configuration key")


def _decode_cert_domain(key: str, suffix: str, raw: bytes | str) -> CertDomain:
    try:
        domain = normalize_hostname(suffix)
    except ValueError as exc:
        raise ConfigError(key, None, f"key names {exc}") from None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    name = text.strip()
    if not name or any(c.isspace() or c in "/\\" or not c.isprintable() for c in name):
        raise ConfigError(key, None, f"must hold a certificate name, got {text[:80]!r}")
    return CertDomain(domain, name)
