"""Static settings: read once from the environment (and an optional env file).

Dynamic configuration (proxies, routes, services) lives in Redis; see ``edge.config``.
Names match the environment variables existing deployments already use.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge.cpu_quota import default_workers


class SettingsError(ValueError):
    """A static setting is invalid; the message names the variable."""


T = TypeVar("T")


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _seconds(raw: str) -> float:
    value = float(raw.strip())
    if not 0 < value <= 86400 or value != value:
        raise ValueError("must be a number of seconds > 0 and <= 86400")
    return value


def _optional_seconds(raw: str) -> float:
    value = float(raw.strip())
    if not 0 <= value <= 86400 or value != value:
        raise ValueError("must be a number of seconds >= 0 (0: off) and <= 86400")
    return value


def _cache_seconds(raw: str) -> float:
    value = float(raw.strip())
    if not 0 <= value <= 3600 or value != value:
        raise ValueError("must be a number of seconds >= 0 (0: no cache) and <= 3600")
    return value


def _slot_seconds(raw: str) -> float:
    value = float(raw.strip())
    if not 3 <= value <= 3600 or value != value:
        raise ValueError("must be a number of seconds >= 3 and <= 3600")
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            raise ValueError("must be an IP address or 'localhost'") from None
    return value


def _level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return value


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "console"}:
        raise ValueError("must be 'json' or 'console' (unset: console on a terminal, else json)")
    return value


def _paths(raw: str) -> tuple[str, ...]:
    """Comma-separated request paths (``none``: an empty list)."""
    if raw.strip().lower() == "none":
        return ()
    paths = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.startswith("/") or "?" in part or any(c.isspace() for c in part):
            raise ValueError(f"{part!r} is not a path such as /health (or 'none')")
        paths.append(part)
    return tuple(paths)


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _secret_text(raw: str) -> str | None:
    # a Redis password may hold any character; only the surrounding whitespace an env
    # file or a shell leaves is dropped, as for every other setting
    return raw.strip() or None


def _loop(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"uvloop", "asyncio"}:
        raise ValueError("must be 'uvloop' or 'asyncio'")
    return value


_SECRET_QUERY_ARGS = frozenset({"password", "pass", "passwd", "pwd", "auth", "token"})


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # the last "@" ends the userinfo; a password may itself contain "@", "/" or "?"
    creds, at, location = rest.rpartition("@")
    userinfo = ""
    if at:
        user, colon, _password = creds.partition(":")
        userinfo = f"{user}:***@" if colon else f"{user}@"
    location, qsep, query = location.partition("?")
    if qsep:
        parts = []
        for item in query.split("&"):
            name, eq, _value = item.partition("=")
            secret = urllib.parse.unquote_plus(name).lower() in _SECRET_QUERY_ARGS
            parts.append(f"{name}=***" if eq and secret else item)
        query = "&".join(parts)
    return f"{scheme}://{userinfo}{location}{qsep}{query}"


def _url_credentials(url: str) -> tuple[bool, bool]:
    """Whether ``url`` carries a username, a password: where redis-py finds them (the
    userinfo, or ``?username=``/``?password=``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    return bool(parts.username or query.get("username")), bool(
        parts.password or query.get("password")
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis to connect to and how to log in: every client the edge makes starts here.

    The credentials of ``REDIS_USERNAME``/``REDIS_PASSWORD`` travel as client arguments,
    never inside :attr:`url`, so the URL stays fit to print; ``str()`` and ``repr()``
    also hide a password that the URL itself carries.
    """

    url: str
    username: str | None = None
    password: str | None = None

    def client_kwargs(self) -> dict[str, str]:
        """``username``/``password`` for ``Redis.from_url`` (only those that are set)."""
        kwargs = {}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        password = "<redacted>" if self.password is not None else "None"
        return (
            f"RedisTarget(url={redact_url(self.url)!r}, username={self.username!r}, "
            f"password={password})"
        )


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _cidrs(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a network in CIDR form ({exc})") from None
    if not nets:
        raise ValueError("must list at least one network, e.g. 127.0.0.1/32")
    return tuple(nets)


def _key_size(raw: str) -> int:
    value = int(raw.strip())
    if value not in (2048, 3072, 4096):
        raise ValueError("must be 2048, 3072 or 4096")
    return value


def _common_name(raw: str) -> str:
    from edge.config.schema import normalize_hostname

    return normalize_hostname(raw.strip(), allow_wildcard=False)


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _https_url(raw: str) -> str:
    """An ACME directory: ``https://``; ``http://`` only on a loopback host (a local CA)."""
    value = raw.strip()
    parts = urllib.parse.urlsplit(value)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("must be an https:// URL (http:// only for a loopback host)")
    if not parts.hostname:
        raise ValueError("must name a host")
    return value


def _pem_file(raw: str) -> str:
    value = raw.strip()
    try:
        text = Path(value).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError("holds no PEM certificate")
    return value


def _email(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value):
        raise ValueError("must be an e-mail address such as ops@example.com")
    return value


def _hostname(raw: str) -> str | None:
    from edge.config.schema import normalize_hostname

    value = raw.strip()
    return normalize_hostname(value, allow_wildcard=False) if value else None


def _issuer(raw: str) -> str | None:
    """An OAuth issuer: an https:// URL without path, query or fragment (a port is fine);
    http:// only on a loopback host (tests and local development)."""
    value = raw.strip().rstrip("/")
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    host = parts.hostname or ""
    loopback = host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError("must be an https:// URL (http:// only for a loopback host)")
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError("must be a scheme, a host and an optional port, nothing else")
    parts.port  # noqa: B018 - raises ValueError on a bad port
    return value


_COOKIE_NAME = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP token (RFC 6265)


def _cookie_name(raw: str) -> str:
    value = raw.strip()
    if _COOKIE_NAME.match(value) is None:
        raise ValueError("must be a cookie name (an HTTP token: letters, digits, -_.!#$%&'*+^`|~)")
    return value


def _words(raw: str) -> tuple[str, ...]:
    """A list separated by spaces or commas ("mcp:read mcp:write", "alice,bob")."""
    words = tuple(w for w in re.split(r"[\s,]+", raw.strip()) if w)
    for word in words:
        if not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in word):
            raise ValueError(f"{word!r}: only visible ASCII without quotes or backslashes")
    return words


def _b64_private_key(raw: str) -> str:
    """A PEM RSA private key, base64-encoded (one line in an env file); checked at start."""
    import base64
    import binascii

    value = raw.strip()
    try:
        pem = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of a PEM private key") from None
    if b"PRIVATE KEY-----" not in pem:
        raise ValueError("must be base64 of a PEM private key")
    return value


_TOKEN_MIN, _TOKEN_MAX = 32, 256
# what a client can send after "Bearer " (RFC 6750 section 2.1, b64token)
_BEARER_TOKEN = re.compile(r"\A[A-Za-z0-9._~+/-]+=*\Z")


def _bearer_token(raw: str) -> str:
    # the message never quotes the value (load_settings shows <redacted> for it too)
    value = raw.strip()
    if not _TOKEN_MIN <= len(value) <= _TOKEN_MAX:
        raise ValueError(f"must be {_TOKEN_MIN} to {_TOKEN_MAX} characters long")
    if _BEARER_TOKEN.match(value) is None:
        raise ValueError("may only use A-Z a-z 0-9 - . _ ~ + / (and = at the end)")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Immutable static settings of one edge process."""

    redis_url: str | None = None
    redis_username: str | None = None
    # secret: kept out of repr, like admin_token
    redis_password: str | None = dataclasses.field(default=None, repr=False)
    server_host: str = "0.0.0.0"
    http_port: int = 80
    api_host: str = "127.0.0.1"
    api_port: int = 9000
    api_hostname: str | None = None
    log_level: str = "INFO"
    log_format: str | None = None  # None: console when stdout is a terminal, else json
    # access lines not written for these paths when the client is loopback or a trusted
    # PROXY peer (load balancer and local health checks)
    access_log_skip_paths: tuple[str, ...] = ("/health",)
    proxy_connect_timeout: float = 30.0
    forward_auth_timeout: float = 5.0  # an external ForwardAuth service's whole answer
    proxy_request_timeout: float = 120.0
    proxy_total_timeout: float = 0.0  # 0: no cap on a whole exchange
    client_header_timeout: float = 10.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    drain_timeout: float = 30.0
    drain_idle_grace: float = 1.0
    drain_websocket_grace: float = 5.0
    linger_timeout: float = 5.0
    linger_time: float = 30.0
    listen_backlog: int = 4096
    max_header_bytes: int = 16384
    max_header_count: int = 100
    max_request_line: int = 8192
    workers: int = dataclasses.field(default_factory=lambda: default_workers())
    state_dir: str = "/var/lib/edge"
    seed_file: str | None = None
    seed_replace: bool = False  # write every seed key, replacing those that exist
    config_resync_interval: float = 30.0
    upstream_idle_limit: int = 64
    upstream_idle_timeout: float = 60.0
    event_loop: str = "uvloop"
    # transports (0 disables a listener)
    https_port: int = 443
    proxy_protocol_port: int = 10001
    proxy_protocol_tls_port: int = 10443
    proxy_trusted_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    proxy_protocol_timeout: float = 5.0
    tls_handshake_timeout: float = 10.0
    tls_strict_sni: bool = False
    # let another edge that sets it too listen on the same ports (zero-downtime upgrade)
    share_ports: bool = False
    self_signed_cn: str = "localhost"
    self_signed_days: int = 365
    rsa_key_size: int = 2048
    # ACME: automatic HTTPS
    auto_https: bool = True  # a proxy with enable_https gets a certificate by itself
    acme_directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_staging_url: str = "https://acme-staging-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | None = None  # trusted for the ACME server's own HTTPS
    acme_poll_max_attempts: int = 30
    acme_poll_interval_seconds: float = 2.0
    acme_poll_initial_wait: float = 1.0
    acme_retry_initial_seconds: float = 60.0  # first pause after a failed order, doubling
    acme_retry_max_seconds: float = 21600.0
    # how long a certificate's order lease (edge:acme:lease:{name}) outlives a node that
    # died holding it (it is renewed every third of it while the order runs): another node
    # takes the order over once it has run out, and not before twice this long after the
    # order started
    acme_lease_seconds: float = 30.0
    admin_email: str | None = None
    cert_gen_max_workers: int = 4
    cert_status_retention_seconds: float = 86400.0
    renewal_check_interval: float = 3600.0
    renewal_threshold_days: int = 30
    renewal_min_age: float = 3600.0  # a certificate is never renewed younger than this
    on_demand_tls: bool = False
    on_demand_tls_wait: float = 10.0
    on_demand_tls_max_per_hour: int = 20
    # personal access tokens
    pat_verify_cache_ttl: float = 30.0
    pat_last_used_flush_interval: float = 30.0
    # port-forward tunnels (edge.tunnels)
    port_forward_max_sessions: int = 5  # live tunnels per project, over every node
    port_forward_max_session_seconds: float = 3600.0  # then closed with 4008
    # a Ping this often; a peer that has not answered one by the next is closed. Below
    # HAProxy's `timeout tunnel` (and `timeout client` in tcp mode) so idle tunnels live
    port_forward_ping_interval: float = 20.0
    port_forward_connect_timeout: float = 5.0  # to the target; then 4004
    port_forward_max_message: int = 1024 * 1024  # bytes of one WebSocket message; then 1009
    # a live tunnel's session slot outlives its last heartbeat (sent every third of it) by
    # this much: a node that dies frees its tunnels' slots within it, and a node that
    # cannot read Redis for that long closes its tunnels (their slots ran out)
    port_forward_slot_seconds: float = 45.0
    # the request log in Redis (edge.observe.reqlog): every finished exchange, batched
    request_log: bool = True
    node_name: str | None = None  # the request log's node field; None: the host's name
    log_batch_ms: int = 100  # a batch is written this often (or when 200 entries wait)
    log_retention_hours: int = 24  # every key of the request log expires after this
    log_slow_ms: int = 1000  # requests slower than this are indexed in idx:req:slow
    log_stream_max: int = 100_000  # stream:requests is capped near this many entries
    log_queue_size: int = 10_000  # entries waiting per worker; beyond, the oldest dropped
    log_max_entries: int = 500_000  # entries kept over every node; beyond, the oldest go
    # the OAuth 2.1 authorization server (on AUTH_HOSTNAME; off when there is none)
    base_domain: str | None = None
    auth_hostname_setting: str | None = None  # AUTH_HOSTNAME; see auth_hostname
    oauth_issuer_setting: str | None = None  # OAUTH_ISSUER; see oauth_issuer
    oauth_scopes: tuple[str, ...] = ("mcp:read", "mcp:write", "mcp:admin")
    oauth_access_token_lifetime: int = 1800
    oauth_refresh_token_lifetime: int = 30 * 86400
    oauth_code_lifetime: int = 60
    oauth_session_timeout: int = 600  # a login's state, GitHub round trip included
    oauth_browser_session_lifetime: int = 7 * 86400
    oauth_session_cookie: str = "__Host-edge_oauth_session"
    oauth_client_lifetime: int = 90 * 86400  # 0: registered clients never expire
    oauth_allowed_github_users: tuple[str, ...] = ()  # "*": everyone; empty: nobody
    oauth_cimd_allow_private: bool = False  # tests only: CIMD documents on loopback
    oauth_jwt_private_key_b64: str | None = dataclasses.field(default=None, repr=False)
    github_client_id: str | None = None
    github_client_secret: str | None = dataclasses.field(default=None, repr=False)
    github_authorize_url: str = "https://github.com/login/oauth/authorize"
    github_token_url: str = "https://github.com/login/oauth/access_token"
    github_api_url: str = "https://api.github.com"
    # secret: kept out of repr (and so out of any log line or traceback that prints Settings)
    admin_token: str | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:
        # the generated repr, less the secrets (repr=False) and a password in REDIS_URL
        shown = []
        for field in dataclasses.fields(self):
            if field.repr:
                value = getattr(self, field.name)
                if field.name == "redis_url" and value is not None:
                    value = redact_url(value)
                shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def auth_hostname(self) -> str | None:
        """The OAuth server's host: ``AUTH_HOSTNAME``, else ``auth.{BASE_DOMAIN}``."""
        if self.auth_hostname_setting:
            return self.auth_hostname_setting
        return f"auth.{self.base_domain}" if self.base_domain else None

    @property
    def oauth_issuer(self) -> str | None:
        """``OAUTH_ISSUER``, else ``https://{auth_hostname}``; None: no OAuth server."""
        if self.oauth_issuer_setting:
            return self.oauth_issuer_setting
        host = self.auth_hostname
        return f"https://{host}" if host else None

    def redis_target(self, url: str | None = None) -> RedisTarget:
        """The Redis at ``url`` (default ``REDIS_URL``; the embedded server's socket is
        the other), logged in with ``REDIS_USERNAME``/``REDIS_PASSWORD``."""
        url = url if url is not None else self.redis_url
        if url is None:
            raise ValueError("REDIS_URL is not set")
        return RedisTarget(url, self.redis_username, self.redis_password)


# variable name -> (field, parser)
_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "REDIS_URL": ("redis_url", _redis_url),
    "REDIS_USERNAME": ("redis_username", _optional_text),
    "REDIS_PASSWORD": ("redis_password", _secret_text),
    "SERVER_HOST": ("server_host", _host),
    "HTTP_PORT": ("http_port", _int(0, 65535)),
    "API_HOST": ("api_host", _host),
    "API_PORT": ("api_port", _int(0, 65535)),
    "API_HOSTNAME": ("api_hostname", _optional_text),
    "LOG_LEVEL": ("log_level", _level),
    "LOG_FORMAT": ("log_format", _log_format),
    "ACCESS_LOG_SKIP_PATHS": ("access_log_skip_paths", _paths),
    "PROXY_CONNECT_TIMEOUT": ("proxy_connect_timeout", _seconds),
    "FORWARD_AUTH_TIMEOUT": ("forward_auth_timeout", _seconds),
    "PROXY_REQUEST_TIMEOUT": ("proxy_request_timeout", _seconds),
    "PROXY_TOTAL_TIMEOUT": ("proxy_total_timeout", _optional_seconds),
    "CLIENT_HEADER_TIMEOUT": ("client_header_timeout", _seconds),
    "CLIENT_BODY_TIMEOUT": ("client_body_timeout", _seconds),
    "KEEPALIVE_TIMEOUT": ("keepalive_timeout", _seconds),
    "DRAIN_TIMEOUT": ("drain_timeout", _seconds),
    "DRAIN_IDLE_GRACE": ("drain_idle_grace", _optional_seconds),
    "DRAIN_WEBSOCKET_GRACE": ("drain_websocket_grace", _optional_seconds),
    "LINGER_TIMEOUT": ("linger_timeout", _seconds),
    "LINGER_TIME": ("linger_time", _seconds),
    "LISTEN_BACKLOG": ("listen_backlog", _int(1, 65535)),
    "MAX_HEADER_BYTES": ("max_header_bytes", _int(256, 1 << 20)),
    "MAX_HEADER_COUNT": ("max_header_count", _int(1, 10000)),
    "MAX_REQUEST_LINE": ("max_request_line", _int(64, 1 << 20)),
    "EDGE_WORKERS": ("workers", _int(1, 1024)),
    "EDGE_STATE_DIR": ("state_dir", _text),
    "EDGE_SEED_FILE": ("seed_file", _optional_text),
    "EDGE_SEED_REPLACE": ("seed_replace", _bool),
    "CONFIG_RESYNC_INTERVAL": ("config_resync_interval", _seconds),
    "UPSTREAM_IDLE_LIMIT": ("upstream_idle_limit", _int(0, 100000)),
    "UPSTREAM_IDLE_TIMEOUT": ("upstream_idle_timeout", _seconds),
    "EDGE_LOOP": ("event_loop", _loop),
    "HTTPS_PORT": ("https_port", _int(0, 65535)),
    "PROXY_PROTOCOL_PORT": ("proxy_protocol_port", _int(0, 65535)),
    "PROXY_PROTOCOL_TLS_PORT": ("proxy_protocol_tls_port", _int(0, 65535)),
    "PROXY_TRUSTED_CIDRS": ("proxy_trusted_cidrs", _cidrs),
    "PROXY_PROTOCOL_TIMEOUT": ("proxy_protocol_timeout", _seconds),
    "TLS_HANDSHAKE_TIMEOUT": ("tls_handshake_timeout", _seconds),
    "TLS_STRICT_SNI": ("tls_strict_sni", _bool),
    "SHARE_PORTS": ("share_ports", _bool),
    "SELF_SIGNED_CN": ("self_signed_cn", _common_name),
    "SELF_SIGNED_DAYS": ("self_signed_days", _int(1, 3650)),
    "RSA_KEY_SIZE": ("rsa_key_size", _key_size),
    "AUTO_HTTPS": ("auto_https", _bool),
    "ACME_DIRECTORY_URL": ("acme_directory_url", _https_url),
    "ACME_STAGING_URL": ("acme_staging_url", _https_url),
    "ACME_CA_BUNDLE": ("acme_ca_bundle", _pem_file),
    "ACME_POLL_MAX_ATTEMPTS": ("acme_poll_max_attempts", _int(1, 1000)),
    "ACME_POLL_INTERVAL_SECONDS": ("acme_poll_interval_seconds", _seconds),
    "ACME_POLL_INITIAL_WAIT": ("acme_poll_initial_wait", _optional_seconds),
    "ACME_RETRY_INITIAL_SECONDS": ("acme_retry_initial_seconds", _seconds),
    "ACME_RETRY_MAX_SECONDS": ("acme_retry_max_seconds", _seconds),
    "ACME_LEASE_SECONDS": ("acme_lease_seconds", _seconds),
    "ADMIN_EMAIL": ("admin_email", _email),
    "CERT_GEN_MAX_WORKERS": ("cert_gen_max_workers", _int(1, 64)),
    "CERT_STATUS_RETENTION_SECONDS": ("cert_status_retention_seconds", _seconds),
    "RENEWAL_CHECK_INTERVAL": ("renewal_check_interval", _seconds),
    "RENEWAL_THRESHOLD_DAYS": ("renewal_threshold_days", _int(0, 3650)),
    "RENEWAL_MIN_AGE": ("renewal_min_age", _seconds),
    "ON_DEMAND_TLS": ("on_demand_tls", _bool),
    "ON_DEMAND_TLS_WAIT": ("on_demand_tls_wait", _seconds),
    "ON_DEMAND_TLS_MAX_PER_HOUR": ("on_demand_tls_max_per_hour", _int(0, 100000)),
    "PAT_VERIFY_CACHE_TTL": ("pat_verify_cache_ttl", _cache_seconds),
    "PAT_LAST_USED_FLUSH_INTERVAL": ("pat_last_used_flush_interval", _seconds),
    "PORT_FORWARD_MAX_SESSIONS": ("port_forward_max_sessions", _int(1, 100000)),
    "PORT_FORWARD_MAX_SESSION_SECONDS": ("port_forward_max_session_seconds", _seconds),
    "PORT_FORWARD_PING_INTERVAL": ("port_forward_ping_interval", _seconds),
    "PORT_FORWARD_CONNECT_TIMEOUT": ("port_forward_connect_timeout", _seconds),
    "PORT_FORWARD_MAX_MESSAGE": ("port_forward_max_message", _int(1024, 64 * 1024 * 1024)),
    "PORT_FORWARD_SLOT_SECONDS": ("port_forward_slot_seconds", _slot_seconds),
    "REQUEST_LOG": ("request_log", _bool),
    "EDGE_NODE_NAME": ("node_name", _optional_text),
    "LOG_BATCH_MS": ("log_batch_ms", _int(1, 10_000)),
    "LOG_RETENTION_HOURS": ("log_retention_hours", _int(1, 24 * 366)),
    "LOG_SLOW_MS": ("log_slow_ms", _int(1, 3_600_000)),
    "LOG_STREAM_MAX": ("log_stream_max", _int(1000, 100_000_000)),
    "LOG_QUEUE_SIZE": ("log_queue_size", _int(100, 10_000_000)),
    "LOG_MAX_ENTRIES": ("log_max_entries", _int(1000, 1_000_000_000)),
    "BASE_DOMAIN": ("base_domain", _hostname),
    "AUTH_HOSTNAME": ("auth_hostname_setting", _hostname),
    "OAUTH_ISSUER": ("oauth_issuer_setting", _issuer),
    "OAUTH_SCOPES": ("oauth_scopes", _words),
    "OAUTH_ACCESS_TOKEN_LIFETIME": ("oauth_access_token_lifetime", _int(10, 86400)),
    "OAUTH_REFRESH_TOKEN_LIFETIME": ("oauth_refresh_token_lifetime", _int(60, 400 * 86400)),
    "OAUTH_CODE_LIFETIME": ("oauth_code_lifetime", _int(1, 600)),
    "OAUTH_SESSION_TIMEOUT": ("oauth_session_timeout", _int(10, 86400)),
    "OAUTH_BROWSER_SESSION_LIFETIME": ("oauth_browser_session_lifetime", _int(60, 400 * 86400)),
    "OAUTH_SESSION_COOKIE": ("oauth_session_cookie", _cookie_name),
    "OAUTH_CLIENT_LIFETIME": ("oauth_client_lifetime", _int(0, 3650 * 86400)),
    "OAUTH_ALLOWED_GITHUB_USERS": ("oauth_allowed_github_users", _words),
    "OAUTH_CIMD_ALLOW_PRIVATE": ("oauth_cimd_allow_private", _bool),
    "OAUTH_JWT_PRIVATE_KEY_B64": ("oauth_jwt_private_key_b64", _b64_private_key),
    "GITHUB_CLIENT_ID": ("github_client_id", _optional_text),
    "GITHUB_CLIENT_SECRET": ("github_client_secret", _secret_text),
    "GITHUB_AUTHORIZE_URL": ("github_authorize_url", _https_url),
    "GITHUB_TOKEN_URL": ("github_token_url", _https_url),
    "GITHUB_API_URL": ("github_api_url", _https_url),
    "ADMIN_TOKEN": ("admin_token", _bearer_token),
}

#: Variables whose values are never shown, not even in an error about them.
SECRET_NAMES = frozenset(
    {"ADMIN_TOKEN", "REDIS_PASSWORD", "GITHUB_CLIENT_SECRET", "OAUTH_JWT_PRIVATE_KEY_B64"}
)

ENV_NAMES: tuple[str, ...] = tuple(_VARIABLES)


def load_settings(env: Mapping[str, str], **overrides: Any) -> Settings:
    """Build settings from ``env``; raise SettingsError naming the first bad variable."""
    values: dict[str, Any] = {}
    for name, (field, parse) in _VARIABLES.items():
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            if name in SECRET_NAMES:
                raise SettingsError(f"{name}=<redacted>: {exc}") from None
            shown = redact_url(raw) if name == "REDIS_URL" else raw
            raise SettingsError(f"{name}={shown!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    _check_redis_credentials(values)
    return Settings(**values)


def _check_redis_credentials(values: Mapping[str, Any]) -> None:
    """Refuse a username or password given twice, or given for no Redis at all.

    Twice (in ``REDIS_URL`` and in its own setting) is refused rather than resolved by a
    precedence rule: a deployment that changes one of the two places would keep logging
    in with the other, and which one is used would be a surprise either way.
    """
    url = values.get("redis_url")
    given = [
        (name, field)
        for name, field in (
            ("REDIS_USERNAME", "redis_username"),
            ("REDIS_PASSWORD", "redis_password"),
        )
        if values.get(field) is not None
    ]
    if not given:
        return
    if url is None:
        names = " and ".join(name for name, _ in given)
        raise SettingsError(
            f"{names} {'is' if len(given) == 1 else 'are'} set but REDIS_URL is not: without "
            "REDIS_URL the edge runs its own Redis, which has no users or password; set "
            "REDIS_URL to the Redis these credentials are for"
        )
    has_username, has_password = _url_credentials(url)
    for name, field in given:
        twice = has_username if field == "redis_username" else has_password
        if twice:
            part = "username" if field == "redis_username" else "password"
            raise SettingsError(
                f"{name} is set and REDIS_URL={redact_url(url)!r} carries a {part} too: "
                f"give the {part} in one place only"
            )


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``NAME=value`` lines, ``#`` comments, optional quotes/export."""
    result: dict[str, str] = {}
    text = Path(path).read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[7:].lstrip()
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise SettingsError(f"{path}:{lineno}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value[:1] in ("'", '"'):
            # a quoted value followed by a comment: NAME="a b"  # note
            close = value.find(value[0], 1)
            if close > 0 and value[close + 1 :].lstrip().startswith("#"):
                value = value[1:close]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        result[name] = value
    return result


def environment(env_file: str | None) -> dict[str, str]:
    """The process environment overlaid on the env file (real environment wins)."""
    merged: dict[str, str] = {}
    if env_file:
        try:
            merged.update(read_env_file(env_file))
        except OSError as exc:
            raise SettingsError(f"--env-file {env_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"--env-file {env_file}: not UTF-8 text") from None
    merged.update(os.environ)
    return merged
