"""Static settings: names, defaults, validation, env-file parsing and precedence."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from edge.cpu_quota import default_workers
from edge.settings import (
    ENV_NAMES,
    RedisTarget,
    Settings,
    SettingsError,
    environment,
    load_settings,
    read_env_file,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[2]

# variable -> (Settings field, built-in default), as documented for existing deployments
EXPECTED_DEFAULTS: dict[str, tuple[str, object]] = {
    "REDIS_URL": ("redis_url", None),
    "REDIS_USERNAME": ("redis_username", None),
    "REDIS_PASSWORD": ("redis_password", None),
    "SERVER_HOST": ("server_host", "0.0.0.0"),
    "HTTP_PORT": ("http_port", 80),
    "API_HOST": ("api_host", "127.0.0.1"),
    "API_PORT": ("api_port", 9000),
    "API_HOSTNAME": ("api_hostname", None),
    "LOG_LEVEL": ("log_level", "INFO"),
    "LOG_FORMAT": ("log_format", None),
    "ACCESS_LOG_SKIP_PATHS": ("access_log_skip_paths", ("/health",)),
    "PROXY_CONNECT_TIMEOUT": ("proxy_connect_timeout", 30.0),
    "FORWARD_AUTH_TIMEOUT": ("forward_auth_timeout", 5.0),
    "PROXY_REQUEST_TIMEOUT": ("proxy_request_timeout", 120.0),
    "PROXY_TOTAL_TIMEOUT": ("proxy_total_timeout", 0.0),
    "CLIENT_HEADER_TIMEOUT": ("client_header_timeout", 10.0),
    "CLIENT_BODY_TIMEOUT": ("client_body_timeout", 60.0),
    "KEEPALIVE_TIMEOUT": ("keepalive_timeout", 60.0),
    "DRAIN_TIMEOUT": ("drain_timeout", 30.0),
    "DRAIN_IDLE_GRACE": ("drain_idle_grace", 1.0),
    "DRAIN_WEBSOCKET_GRACE": ("drain_websocket_grace", 5.0),
    "LINGER_TIMEOUT": ("linger_timeout", 5.0),
    "LINGER_TIME": ("linger_time", 30.0),
    "LISTEN_BACKLOG": ("listen_backlog", 4096),
    "MAX_HEADER_BYTES": ("max_header_bytes", 16384),
    "MAX_HEADER_COUNT": ("max_header_count", 100),
    "MAX_REQUEST_LINE": ("max_request_line", 8192),
    "EDGE_WORKERS": ("workers", default_workers()),
    "EDGE_STATE_DIR": ("state_dir", "/var/lib/edge"),
    "EDGE_SEED_FILE": ("seed_file", None),
    "EDGE_SEED_REPLACE": ("seed_replace", False),
    "CONFIG_RESYNC_INTERVAL": ("config_resync_interval", 30.0),
    "UPSTREAM_IDLE_LIMIT": ("upstream_idle_limit", 64),
    "UPSTREAM_IDLE_TIMEOUT": ("upstream_idle_timeout", 60.0),
    "EDGE_LOOP": ("event_loop", "uvloop"),
    "HTTPS_PORT": ("https_port", 443),
    "PROXY_PROTOCOL_PORT": ("proxy_protocol_port", 10001),
    "PROXY_PROTOCOL_TLS_PORT": ("proxy_protocol_tls_port", 10443),
    "PROXY_TRUSTED_CIDRS": (
        "proxy_trusted_cidrs",
        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
    ),
    "PROXY_PROTOCOL_TIMEOUT": ("proxy_protocol_timeout", 5.0),
    "TLS_HANDSHAKE_TIMEOUT": ("tls_handshake_timeout", 10.0),
    "TLS_STRICT_SNI": ("tls_strict_sni", False),
    "SHARE_PORTS": ("share_ports", False),
    "SELF_SIGNED_CN": ("self_signed_cn", "localhost"),
    "SELF_SIGNED_DAYS": ("self_signed_days", 365),
    "RSA_KEY_SIZE": ("rsa_key_size", 2048),
    "AUTO_HTTPS": ("auto_https", True),
    "ACME_DIRECTORY_URL": ("acme_directory_url", "https://acme-v02.api.letsencrypt.org/directory"),
    "ACME_STAGING_URL": (
        "acme_staging_url",
        "https://acme-staging-v02.api.letsencrypt.org/directory",
    ),
    "ACME_CA_BUNDLE": ("acme_ca_bundle", None),
    "ACME_POLL_MAX_ATTEMPTS": ("acme_poll_max_attempts", 30),
    "ACME_POLL_INTERVAL_SECONDS": ("acme_poll_interval_seconds", 2.0),
    "ACME_POLL_INITIAL_WAIT": ("acme_poll_initial_wait", 1.0),
    "ACME_RETRY_INITIAL_SECONDS": ("acme_retry_initial_seconds", 60.0),
    "ACME_RETRY_MAX_SECONDS": ("acme_retry_max_seconds", 21600.0),
    "ACME_LEASE_SECONDS": ("acme_lease_seconds", 30.0),
    "ADMIN_EMAIL": ("admin_email", None),
    "CERT_GEN_MAX_WORKERS": ("cert_gen_max_workers", 4),
    "CERT_STATUS_RETENTION_SECONDS": ("cert_status_retention_seconds", 86400.0),
    "RENEWAL_CHECK_INTERVAL": ("renewal_check_interval", 3600.0),
    "RENEWAL_THRESHOLD_DAYS": ("renewal_threshold_days", 30),
    "RENEWAL_MIN_AGE": ("renewal_min_age", 3600.0),
    "ON_DEMAND_TLS": ("on_demand_tls", False),
    "ON_DEMAND_TLS_WAIT": ("on_demand_tls_wait", 10.0),
    "ON_DEMAND_TLS_MAX_PER_HOUR": ("on_demand_tls_max_per_hour", 20),
    "PAT_VERIFY_CACHE_TTL": ("pat_verify_cache_ttl", 30.0),
    "PAT_LAST_USED_FLUSH_INTERVAL": ("pat_last_used_flush_interval", 30.0),
    "PORT_FORWARD_MAX_SESSIONS": ("port_forward_max_sessions", 5),
    "PORT_FORWARD_MAX_SESSION_SECONDS": ("port_forward_max_session_seconds", 3600.0),
    "PORT_FORWARD_PING_INTERVAL": ("port_forward_ping_interval", 20.0),
    "PORT_FORWARD_CONNECT_TIMEOUT": ("port_forward_connect_timeout", 5.0),
    "PORT_FORWARD_MAX_MESSAGE": ("port_forward_max_message", 1048576),
    "PORT_FORWARD_SLOT_SECONDS": ("port_forward_slot_seconds", 45.0),
    "REQUEST_LOG": ("request_log", True),
    "EDGE_NODE_NAME": ("node_name", None),
    "LOG_BATCH_MS": ("log_batch_ms", 100),
    "LOG_RETENTION_HOURS": ("log_retention_hours", 24),
    "LOG_SLOW_MS": ("log_slow_ms", 1000),
    "LOG_STREAM_MAX": ("log_stream_max", 100_000),
    "LOG_QUEUE_SIZE": ("log_queue_size", 10_000),
    "LOG_MAX_ENTRIES": ("log_max_entries", 500_000),
    "BASE_DOMAIN": ("base_domain", None),
    "AUTH_HOSTNAME": ("auth_hostname_setting", None),
    "OAUTH_ISSUER": ("oauth_issuer_setting", None),
    "OAUTH_SCOPES": ("oauth_scopes", ("mcp:read", "mcp:write", "mcp:admin")),
    "OAUTH_ACCESS_TOKEN_LIFETIME": ("oauth_access_token_lifetime", 1800),
    "OAUTH_REFRESH_TOKEN_LIFETIME": ("oauth_refresh_token_lifetime", 30 * 86400),
    "OAUTH_CODE_LIFETIME": ("oauth_code_lifetime", 60),
    "OAUTH_SESSION_TIMEOUT": ("oauth_session_timeout", 600),
    "OAUTH_BROWSER_SESSION_LIFETIME": ("oauth_browser_session_lifetime", 7 * 86400),
    "OAUTH_SESSION_COOKIE": ("oauth_session_cookie", "__Host-edge_oauth_session"),
    "OAUTH_CLIENT_LIFETIME": ("oauth_client_lifetime", 90 * 86400),
    "OAUTH_ALLOWED_GITHUB_USERS": ("oauth_allowed_github_users", ()),
    "OAUTH_CIMD_ALLOW_PRIVATE": ("oauth_cimd_allow_private", False),
    "OAUTH_JWT_PRIVATE_KEY_B64": ("oauth_jwt_private_key_b64", None),
    "GITHUB_CLIENT_ID": ("github_client_id", None),
    "GITHUB_CLIENT_SECRET": ("github_client_secret", None),
    "GITHUB_AUTHORIZE_URL": ("github_authorize_url", "https://github.com/login/oauth/authorize"),
    "GITHUB_TOKEN_URL": ("github_token_url", "https://github.com/login/oauth/access_token"),
    "GITHUB_API_URL": ("github_api_url", "https://api.github.com"),
    "ADMIN_TOKEN": ("admin_token", None),
}

SECONDS = [
    "PROXY_PROTOCOL_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "PROXY_CONNECT_TIMEOUT",
    "FORWARD_AUTH_TIMEOUT",
    "PROXY_REQUEST_TIMEOUT",
    "CLIENT_HEADER_TIMEOUT",
    "CLIENT_BODY_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "DRAIN_TIMEOUT",
    "LINGER_TIMEOUT",
    "LINGER_TIME",
    "CONFIG_RESYNC_INTERVAL",
    "UPSTREAM_IDLE_TIMEOUT",
    "PAT_LAST_USED_FLUSH_INTERVAL",
    "PORT_FORWARD_MAX_SESSION_SECONDS",
    "PORT_FORWARD_PING_INTERVAL",
    "PORT_FORWARD_CONNECT_TIMEOUT",
]

# every numeric and enumerated variable with values it must refuse
INVALID: list[tuple[str, str]] = [
    *[
        (name, bad)
        for name in (
            "HTTP_PORT",
            "API_PORT",
            "HTTPS_PORT",
            "PROXY_PROTOCOL_PORT",
            "PROXY_PROTOCOL_TLS_PORT",
        )
        for bad in ("abc", "-1", "65536", "8.5")
    ],
    ("PROXY_TRUSTED_CIDRS", "10.0.0.1/8"),
    ("PROXY_TRUSTED_CIDRS", "10.0.0.0/8, example.com"),
    ("PROXY_TRUSTED_CIDRS", " , "),
    ("TLS_STRICT_SNI", "maybe"),
    ("SELF_SIGNED_DAYS", "0"),
    ("RSA_KEY_SIZE", "1024"),
    ("ACME_DIRECTORY_URL", "http://acme.example.com/directory"),
    ("ACME_DIRECTORY_URL", "ftp://127.0.0.1/dir"),
    ("ACME_CA_BUNDLE", "/nonexistent/ca.pem"),
    ("ADMIN_EMAIL", "not-an-address"),
    ("CERT_GEN_MAX_WORKERS", "0"),
    ("ON_DEMAND_TLS", "maybe"),
    ("ON_DEMAND_TLS_WAIT", "0"),
    ("RENEWAL_THRESHOLD_DAYS", "-1"),
    *[("PAT_VERIFY_CACHE_TTL", bad) for bad in ("-1", "3601", "nan", "soon")],
    *[("PORT_FORWARD_MAX_SESSIONS", bad) for bad in ("0", "-1", "2.5", "many")],
    *[("PORT_FORWARD_MAX_MESSAGE", bad) for bad in ("1023", "67108865", "big")],
    *[("PORT_FORWARD_SLOT_SECONDS", bad) for bad in ("2", "3601", "nan", "long")],
    ("REQUEST_LOG", "sometimes"),
    *[("LOG_BATCH_MS", bad) for bad in ("0", "10001", "1.5", "fast")],
    *[("LOG_RETENTION_HOURS", bad) for bad in ("0", "8785", "day")],
    *[("LOG_SLOW_MS", bad) for bad in ("0", "-5", "3600001")],
    *[("LOG_STREAM_MAX", bad) for bad in ("999", "100000001")],
    *[("LOG_QUEUE_SIZE", bad) for bad in ("99", "lots")],
    *[("LOG_MAX_ENTRIES", bad) for bad in ("999", "1000000001", "1e6")],
    ("SELF_SIGNED_CN", "not a host"),
    *[
        (name, bad)
        for name in SECONDS
        for bad in ("abc", "0", "-1", "86401", "nan", "inf", "1e9", "10s")
    ],
    ("MAX_HEADER_BYTES", "255"),
    ("MAX_HEADER_BYTES", str((1 << 20) + 1)),
    ("MAX_HEADER_BYTES", "lots"),
    ("MAX_HEADER_COUNT", "0"),
    ("MAX_HEADER_COUNT", "10001"),
    ("MAX_HEADER_COUNT", "1.5"),
    ("MAX_REQUEST_LINE", "63"),
    ("MAX_REQUEST_LINE", str((1 << 20) + 1)),
    ("MAX_REQUEST_LINE", "x"),
    *[("DRAIN_IDLE_GRACE", bad) for bad in ("-1", "86401", "nan", "inf", "soon", "1s")],
    *[("DRAIN_WEBSOCKET_GRACE", bad) for bad in ("-1", "86401", "nan", "inf", "soon", "1s")],
    *[("LISTEN_BACKLOG", bad) for bad in ("0", "65536", "-1", "lots", "1.5")],
    ("EDGE_WORKERS", "0"),
    ("EDGE_WORKERS", "1025"),
    ("EDGE_WORKERS", "two"),
    ("UPSTREAM_IDLE_LIMIT", "-1"),
    ("UPSTREAM_IDLE_LIMIT", "100001"),
    ("UPSTREAM_IDLE_LIMIT", "many"),
    ("LOG_LEVEL", "VERBOSE"),
    ("LOG_LEVEL", "warn"),
    ("LOG_FORMAT", "text"),
    ("LOG_FORMAT", "pretty"),
    ("ACCESS_LOG_SKIP_PATHS", "health"),
    ("ACCESS_LOG_SKIP_PATHS", "/health,/ready?x=1"),
    ("ACCESS_LOG_SKIP_PATHS", "/a b"),
    ("EDGE_LOOP", "trio"),
    ("EDGE_LOOP", "uv loop"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "127.0.0.1:6379"),
    ("SERVER_HOST", "example.com"),
    ("SERVER_HOST", "256.0.0.1"),
    ("API_HOST", "*"),
    ("ADMIN_TOKEN", "short"),
    ("ADMIN_TOKEN", "edge_" + "x" * 40 + " y"),
    ("ADMIN_TOKEN", "edge_" + "\u00e9" * 40),
    ("ADMIN_TOKEN", "t" * 257),
    ("ADMIN_TOKEN", "edge_" + "x" * 40 + "!"),  # not sendable as a bearer token
    ("ADMIN_TOKEN", "=" + "x" * 40),
    ("BASE_DOMAIN", "*.example.com"),
    ("AUTH_HOSTNAME", "auth example"),
    ("OAUTH_ISSUER", "http://auth.example.com"),  # plain HTTP only on loopback
    ("OAUTH_ISSUER", "https://auth.example.com/path"),
    ("OAUTH_ISSUER", "https://auth.example.com?x=1"),
    ("OAUTH_ISSUER", "ftp://auth.example.com"),
    ("OAUTH_ISSUER", "https://auth.example.com:99999"),
    ("OAUTH_SCOPES", 'mcp:"read"'),
    ("OAUTH_ACCESS_TOKEN_LIFETIME", "5"),
    ("OAUTH_CODE_LIFETIME", "601"),
    ("OAUTH_SESSION_COOKIE", "a b"),
    ("OAUTH_SESSION_COOKIE", "a;b"),
    ("OAUTH_CIMD_ALLOW_PRIVATE", "maybe"),
    ("OAUTH_JWT_PRIVATE_KEY_B64", "not base64!"),
    ("OAUTH_JWT_PRIVATE_KEY_B64", "aGVsbG8="),  # base64, but of no PEM key
    ("GITHUB_TOKEN_URL", "http://github.example.com/token"),
]


def test_every_variable_is_known_with_its_default() -> None:
    assert set(ENV_NAMES) == set(EXPECTED_DEFAULTS)
    defaults = load_settings({})
    assert defaults == Settings()
    for name, (field, default) in EXPECTED_DEFAULTS.items():
        assert getattr(defaults, field) == default, name
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields == {field for field, _ in EXPECTED_DEFAULTS.values()}


def test_env_example_lists_every_variable_with_the_real_default() -> None:
    """systemd/edge.env.example claims each commented line shows the built-in default."""
    text = (ROOT / "systemd" / "edge.env.example").read_text()
    documented = dict(re.findall(r"^#([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.M))
    assert set(documented) <= set(ENV_NAMES)
    # these lines show examples, as their comments say: not defaults
    examples = {
        "REDIS_URL",
        "EDGE_WORKERS",
        "EDGE_SEED_FILE",
        "BASE_DOMAIN",
        "AUTH_HOSTNAME",
        "OAUTH_ISSUER",
    }
    assert set(ENV_NAMES) - set(documented) <= {"API_HOSTNAME", "EDGE_LOOP"}
    for name, value in documented.items():
        if name in examples:
            continue
        field = EXPECTED_DEFAULTS[name][0]
        assert getattr(load_settings({name: value}), field) == getattr(Settings(), field), name


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_is_rejected_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert str(info.value).startswith(f"{name}=")


def test_first_bad_variable_is_reported_even_among_good_ones() -> None:
    with pytest.raises(SettingsError, match=r"^DRAIN_TIMEOUT="):
        load_settings({"HTTP_PORT": "8080", "DRAIN_TIMEOUT": "-5", "LOG_LEVEL": "DEBUG"})


def test_valid_values_are_parsed_and_normalised() -> None:
    s = load_settings(
        {
            "HTTP_PORT": " 8080 ",
            "API_PORT": "0",
            "SERVER_HOST": "::",
            "API_HOST": "localhost",
            "LOG_LEVEL": "debug",
            "EDGE_LOOP": "AsyncIO",
            "DRAIN_TIMEOUT": "0.5",
            "KEEPALIVE_TIMEOUT": "86400",
            "EDGE_WORKERS": "1024",
            "UPSTREAM_IDLE_LIMIT": "0",
            "MAX_HEADER_BYTES": "256",
            "REDIS_URL": "unix:///run/redis.sock",
            "API_HOSTNAME": "  ",
            "EDGE_STATE_DIR": " /srv/edge ",
        }
    )
    assert s.http_port == 8080
    assert s.api_port == 0
    assert s.server_host == "::"
    assert s.api_host == "localhost"
    assert s.log_level == "DEBUG"
    assert s.event_loop == "asyncio"
    assert s.drain_timeout == 0.5
    assert s.keepalive_timeout == 86400.0
    assert s.workers == 1024
    assert s.upstream_idle_limit == 0
    assert s.max_header_bytes == 256
    assert s.redis_url == "unix:///run/redis.sock"
    assert s.api_hostname is None
    assert s.state_dir == "/srv/edge"


def test_empty_values_mean_default_and_overrides_win() -> None:
    s = load_settings({"HTTP_PORT": "", "EDGE_WORKERS": "3"}, workers=5, seed_file=None)
    assert s.http_port == 80
    assert s.workers == 5
    assert s.seed_file is None


def test_invalid_redis_url_error_hides_the_password() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"REDIS_URL": "http://admin:hunter2@10.0.0.1:6379/0"})
    assert str(info.value).startswith("REDIS_URL=")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:6379/0",
        "redis://admin:hunter2@127.0.0.1:6379/0",
        "rediss://admin:hun@ter2@redis.internal:6380/1",
        "redis://127.0.0.1:6379/0?password=hunter2",
        "redis://127.0.0.1:6379/0?db=2&Password=hunter2",
        "unix:///run/redis.sock?password=hunter2",
    ],
)
def test_redact_url_hides_passwords(url: str) -> None:
    shown = redact_url(url)
    assert "hunter2" not in shown and "ter2" not in shown
    assert "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]


def test_admin_token_is_never_shown() -> None:
    from edge.auth.secrets import new_admin_token

    token = new_admin_token()
    s = load_settings({"ADMIN_TOKEN": f" {token} "})
    assert s.admin_token == token
    assert token not in repr(s) and token not in str(s)
    assert "admin_token" not in repr(s)
    # a refused value is not quoted in the error either
    bad = token + " extra"
    with pytest.raises(SettingsError) as info:
        load_settings({"ADMIN_TOKEN": bad})
    assert str(info.value).startswith("ADMIN_TOKEN=<redacted>: ")
    assert token not in str(info.value)


# ---------------------------------------------------------------- Redis credentials

REDIS = "redis://127.0.0.1:6379/0"


def test_redis_credentials_are_client_arguments_not_part_of_the_url() -> None:
    s = load_settings(
        {"REDIS_URL": REDIS, "REDIS_USERNAME": " edge ", "REDIS_PASSWORD": "p@ss:w/rd"}
    )
    target = s.redis_target()
    assert target.url == REDIS
    assert target.client_kwargs() == {"username": "edge", "password": "p@ss:w/rd"}
    only_password = load_settings({"REDIS_URL": REDIS, "REDIS_PASSWORD": "pw"}).redis_target()
    assert only_password.client_kwargs() == {"password": "pw"}
    assert load_settings({"REDIS_URL": REDIS}).redis_target().client_kwargs() == {}


def test_redis_target_of_another_url_keeps_the_credentials() -> None:
    s = load_settings({"REDIS_URL": REDIS, "REDIS_PASSWORD": "pw"})
    other = s.redis_target("unix:///run/edge/redis.sock")
    assert other == RedisTarget("unix:///run/edge/redis.sock", None, "pw")
    with pytest.raises(ValueError, match="REDIS_URL"):
        load_settings({}).redis_target()


def test_redis_password_is_never_shown() -> None:
    s = load_settings({"REDIS_URL": REDIS, "REDIS_USERNAME": "edge", "REDIS_PASSWORD": "hunter2"})
    target = s.redis_target()
    for text in (repr(s), str(s), repr(target), str(target)):
        assert "hunter2" not in text
    assert "edge" in repr(target)


def test_settings_repr_redacts_a_password_in_redis_url() -> None:
    s = load_settings({"REDIS_URL": "redis://admin:hunter2@10.0.0.1:6379/0"})
    assert s.redis_url == "redis://admin:hunter2@10.0.0.1:6379/0"
    for text in (repr(s), repr(s.redis_target()), str(s.redis_target())):
        assert "hunter2" not in text
        assert "redis://admin:***@10.0.0.1:6379/0" in text


@pytest.mark.parametrize(
    ("url", "env", "names"),
    [
        ("redis://:hunter1@127.0.0.1:6379/0", {"REDIS_PASSWORD": "hunter2"}, "REDIS_PASSWORD"),
        ("redis://u:hunter1@127.0.0.1/0", {"REDIS_PASSWORD": "hunter2"}, "REDIS_PASSWORD"),
        ("redis://127.0.0.1/0?password=hunter1", {"REDIS_PASSWORD": "hunter2"}, "REDIS_PASSWORD"),
        ("unix:///run/r.sock?password=hunter1", {"REDIS_PASSWORD": "hunter2"}, "REDIS_PASSWORD"),
        ("redis://ann@127.0.0.1/0", {"REDIS_USERNAME": "bob"}, "REDIS_USERNAME"),
        ("redis://127.0.0.1/0?username=ann", {"REDIS_USERNAME": "bob"}, "REDIS_USERNAME"),
        # the same password twice is still two places to change it
        ("redis://:hunter2@127.0.0.1:6379/0", {"REDIS_PASSWORD": "hunter2"}, "REDIS_PASSWORD"),
    ],
)
def test_credentials_in_both_redis_url_and_a_setting_are_refused(
    url: str, env: dict[str, str], names: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"REDIS_URL": url, **env})
    message = str(info.value)
    assert message.startswith(f"{names} ") and "REDIS_URL" in message
    assert "hunter1" not in message and "hunter2" not in message


def test_username_in_the_url_and_password_from_the_setting_combine() -> None:
    s = load_settings({"REDIS_URL": "redis://ann@127.0.0.1/0", "REDIS_PASSWORD": "pw"})
    assert s.redis_target().client_kwargs() == {"password": "pw"}
    s = load_settings({"REDIS_URL": "redis://:pw@127.0.0.1/0", "REDIS_USERNAME": "ann"})
    assert s.redis_target().client_kwargs() == {"username": "ann"}


@pytest.mark.parametrize("name", ["REDIS_PASSWORD", "REDIS_USERNAME"])
def test_redis_credentials_without_redis_url_are_refused(name: str) -> None:
    # without REDIS_URL the edge runs its own Redis, which has no users nor password:
    # more likely a forgotten REDIS_URL than something to ignore
    with pytest.raises(SettingsError) as info:
        load_settings({name: "hunter2"})
    assert str(info.value).startswith(f"{name} ")
    assert "REDIS_URL" in str(info.value) and "hunter2" not in str(info.value)


def test_redact_url_keeps_urls_without_secrets() -> None:
    for url in ("redis://127.0.0.1:6379/0", "unix:///run/redis.sock?db=1", "redis://user@h/0"):
        assert redact_url(url) == url


# ---------------------------------------------------------------- env files


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "edge.env"
    path.write_text(
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "HTTP_PORT=8080\n"
        "export API_PORT=9100\n"
        "LOG_LEVEL = 'warning'\n"
        'EDGE_STATE_DIR="/srv/edge state"\n'
        'API_HOSTNAME="api.example.com"   # quoted, then a comment\n'
        "SERVER_HOST=127.0.0.1 # trailing comment\n"
        "REDIS_URL=redis://127.0.0.1:6379/0?client_name=a#b\n"
        "EDGE_SEED_FILE=\n"
        "QUOTE_INSIDE='it's'\n",
        encoding="utf-8",
    )
    env = read_env_file(path)
    assert env == {
        "HTTP_PORT": "8080",
        "API_PORT": "9100",
        "LOG_LEVEL": "warning",
        "EDGE_STATE_DIR": "/srv/edge state",
        "API_HOSTNAME": "api.example.com",
        "SERVER_HOST": "127.0.0.1",
        "REDIS_URL": "redis://127.0.0.1:6379/0?client_name=a#b",
        "EDGE_SEED_FILE": "",
        "QUOTE_INSIDE": "it's",
    }
    s = load_settings(env)
    assert (s.http_port, s.api_port, s.log_level) == (8080, 9100, "WARNING")
    assert s.state_dir == "/srv/edge state"
    assert s.api_hostname == "api.example.com"
    assert s.seed_file is None


@pytest.mark.parametrize(
    ("lines", "bad_line"),
    [
        (["HTTP_PORT=1", "this is not an assignment"], 2),
        (["# ok", "", "=value"], 3),
        (["HTTP-PORT=1"], 1),
        (["A=1", "B=2", "export", "C=3"], 3),
    ],
)
def test_env_file_bad_line_names_file_and_line(
    tmp_path: Path, lines: list[str], bad_line: int
) -> None:
    path = tmp_path / "bad.env"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        read_env_file(path)
    assert str(info.value).startswith(f"{path}:{bad_line}:")


def test_real_environment_overrides_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "edge.env"
    path.write_text("HTTP_PORT=8080\nAPI_PORT=9100\nLOG_LEVEL=DEBUG\n", encoding="utf-8")
    monkeypatch.setenv("HTTP_PORT", "8181")
    monkeypatch.delenv("API_PORT", raising=False)
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    merged = environment(str(path))
    assert merged["HTTP_PORT"] == "8181"
    assert merged["API_PORT"] == "9100"
    s = load_settings(merged)
    assert (s.http_port, s.api_port, s.log_level) == (8181, 9100, "DEBUG")


def test_environment_without_file_is_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRAIN_TIMEOUT", "7")
    merged = environment(None)
    assert merged["DRAIN_TIMEOUT"] == "7"
    assert load_settings(merged).drain_timeout == 7.0


def test_missing_or_unreadable_env_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"--env-file .*missing\.env: No such file"):
        environment(str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match=r"--env-file .*: Is a directory"):
        environment(str(tmp_path))
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"HTTP_PORT=\xff\xfe\n")
    with pytest.raises(SettingsError, match=r"--env-file .*binary\.env: not UTF-8"):
        environment(str(binary))


def test_trusted_cidrs_parse_as_a_list() -> None:
    got = load_settings({"PROXY_TRUSTED_CIDRS": "10.0.0.0/8, 2001:db8::/32"})
    assert got.proxy_trusted_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert load_settings({"TLS_STRICT_SNI": "true"}).tls_strict_sni is True


def test_log_format_and_access_log_skip_paths() -> None:
    assert load_settings({"LOG_FORMAT": "Console"}).log_format == "console"
    assert load_settings({"LOG_FORMAT": "json"}).log_format == "json"
    paths = load_settings({"ACCESS_LOG_SKIP_PATHS": " /health, /ready ,"})
    assert paths.access_log_skip_paths == ("/health", "/ready")
    assert load_settings({"ACCESS_LOG_SKIP_PATHS": "none"}).access_log_skip_paths == ()
