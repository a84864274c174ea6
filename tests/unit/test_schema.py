from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config.pathregex import MAX_PATH_REGEX_LENGTH
from edge.config.schema import (
    CONFIG_KEY_PATTERNS,
    CertDomain,
    ConfigError,
    ExternalService,
    ProxyConfig,
    RouteConfig,
    ServiceURL,
    classify_key,
    decode_item,
    normalize_hostname,
    validate_header_value,
    validate_url,
)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _proxy(hostname: str = "app.example.com", **extra: Any) -> bytes:
    doc: dict[str, Any] = {"hostname": hostname, "target_url": "http://127.0.0.1:8080"}
    doc.update(extra)
    return json.dumps(doc).encode()


def _route(route_id: str = "r1", **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "route_id": route_id,
        "path_pattern": "/api",
        "target_type": "port",
        "target_value": "9000",
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def _external(name: str = "billing", **extra: Any) -> bytes:
    doc: dict[str, Any] = {"service_name": name, "target_url": "https://billing.internal:8443"}
    doc.update(extra)
    return json.dumps(doc).encode()


def _reject(key: str, raw: bytes) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        decode_item(key, raw)
    err = info.value
    assert err.key == key
    return err


def _proxy_cfg(raw: bytes, key: str = "proxy:app.example.com") -> ProxyConfig:
    item = decode_item(key, raw)
    assert isinstance(item, ProxyConfig)
    return item


def _route_cfg(raw: bytes, key: str = "route:r1") -> RouteConfig:
    item = decode_item(key, raw)
    assert isinstance(item, RouteConfig)
    return item


# ---------------------------------------------------------------------------
# ConfigError
# ---------------------------------------------------------------------------


def test_config_error_str_with_field() -> None:
    err = ConfigError("proxy:a.example.com", "target_url", "must be an http:// or https:// URL")
    assert str(err) == (
        "proxy:a.example.com: field 'target_url': must be an http:// or https:// URL"
    )
    assert err.key == "proxy:a.example.com"
    assert err.field == "target_url"
    assert err.message == "must be an http:// or https:// URL"


def test_config_error_str_without_field() -> None:
    err = ConfigError("route:x", None, "invalid JSON: boom")
    assert str(err) == "route:x: invalid JSON: boom"


# ---------------------------------------------------------------------------
# classify_key
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("proxy:app.example.com", "proxy"),
        ("proxy:*.example.com", "proxy"),
        ("proxy:", None),
        ("route:r1", "route"),
        ("route:unique", "route"),
        ("route:", None),
        ("route:unique:/api:port:9000", None),
        ("route:unique:", None),
        ("route:priority:50:r1", None),
        ("route:priority:", None),
        ("service:url:api", "service_url"),
        ("service:url:", None),
        ("service:external:billing", "service_external"),
        ("service:external:", None),
        ("service:other:x", None),
        ("service:", None),
        ("cert:app.example.com", "cert"),
        ("cert:domain:app.example.com", "cert_domain"),
        ("cert:domain:", None),
        ("cert:", None),
        ("proxyx:a", None),
        ("", None),
    ],
)
def test_classify_key(key: str, kind: str | None) -> None:
    assert classify_key(key) == kind


def test_config_key_patterns() -> None:
    assert CONFIG_KEY_PATTERNS == (
        "proxy:*",
        "route:*",
        "service:url:*",
        "service:external:*",
        "cert:*",
        "app:*",
        "app_resource:*",
        "database:*",
    )


def test_cert_domain_keys_decode_to_the_name() -> None:
    item = decode_item("cert:domain:App.Example.com", b" app-cert ")
    assert item == CertDomain("app.example.com", "app-cert")
    assert "certificate name" in _reject("cert:domain:a.example.com", b"").message
    assert "certificate name" in _reject("cert:domain:a.example.com", b"a b").message
    assert "host name" in _reject("cert:domain:bad_name!", b"x").message


def test_decode_item_rejects_non_config_key() -> None:
    err = _reject("route:unique:x", b"{}")
    assert err.field is None
    assert "not a configuration key" in err.message


# ---------------------------------------------------------------------------
# ProxyConfig: valid documents and defaults
# ---------------------------------------------------------------------------


def test_proxy_minimal_defaults() -> None:
    cfg = _proxy_cfg(_proxy())
    assert cfg.hostname == "app.example.com"
    assert cfg.target_url == "http://127.0.0.1:8080"
    assert cfg.enabled and cfg.enable_http and cfg.enable_https
    assert cfg.preserve_host_header is True
    assert cfg.custom_headers == {} and cfg.custom_response_headers == {}
    assert cfg.route_mode == "all"
    assert cfg.enabled_routes == () and cfg.disabled_routes == ()
    assert cfg.cert_name is None
    assert cfg.created_by is None and cfg.created_at is None
    assert cfg.owner_token_hash is None
    assert cfg.auth_enabled is False
    assert cfg.auth_proxy is None
    assert cfg.auth_mode == "forward"
    assert cfg.auth_required_users is None
    assert cfg.auth_pass_headers is True
    assert cfg.auth_cookie_name == "edge_auth"
    assert cfg.auth_header_prefix == "X-Auth-"
    assert cfg.auth_excluded_paths is None
    assert cfg.resource_endpoint is None
    assert cfg.resource_scopes == ()
    assert cfg.resource_stateful is False
    assert cfg.resource_server_info == {}
    assert cfg.resource_bearer_methods == ("header",)
    assert cfg.resource_documentation_suffix == "/docs"
    assert cfg.resource_custom_metadata == {}


def test_proxy_structs_are_frozen() -> None:
    cfg = _proxy_cfg(_proxy())
    with pytest.raises(AttributeError):
        cfg.hostname = "other"  # type: ignore[misc]


def test_proxy_full_document() -> None:
    raw = _proxy(
        enabled=False,
        enable_http=False,
        preserve_host_header=False,
        custom_headers={"X-Forwarded-Proto": "https", "X-Empty": ""},
        custom_response_headers={"Strict-Transport-Security": "max-age=63072000"},
        route_mode="selective",
        enabled_routes=["r1", "r2"],
        disabled_routes=["r3"],
        cert_name="app-cert",
        created_by="admin",
        created_at="2024-05-01T12:00:00Z",
        owner_token_hash="ab12",
        auth_enabled=True,
        auth_proxy="auth.example.com",
        auth_mode="redirect",
        auth_required_users=["alice"],
        auth_required_emails=["alice@example.com"],
        auth_required_groups=["ops"],
        auth_allowed_scopes=["read", "write"],
        auth_allowed_audiences=["https://app.example.com"],
        auth_excluded_paths=["/health", "/public"],
        resource_endpoint="/mcp",
        resource_scopes=["mcp:read"],
        resource_stateful=True,
        resource_versions=["2025-06-18"],
        resource_server_info={"name": "srv", "nested": {"x": [1, 2]}},
        resource_bearer_methods=["header", "body"],
        resource_custom_metadata={"k": 1},
    )
    cfg = _proxy_cfg(raw)
    assert cfg.enabled is False
    assert cfg.custom_headers["X-Empty"] == ""
    assert cfg.enabled_routes == ("r1", "r2")
    assert cfg.auth_mode == "redirect"
    assert cfg.auth_allowed_scopes == ("read", "write")
    assert cfg.resource_server_info["nested"] == {"x": [1, 2]}
    assert cfg.resource_bearer_methods == ("header", "body")


def test_proxy_created_at_epoch_number() -> None:
    assert _proxy_cfg(_proxy(created_at=1714564800)).created_at == 1714564800.0
    assert _proxy_cfg(_proxy(created_at=1714564800.5)).created_at == 1714564800.5


def test_proxy_hostname_lowercased_and_key_case_insensitive() -> None:
    cfg = _proxy_cfg(_proxy("App.Example.COM"), key="proxy:app.EXAMPLE.com")
    assert cfg.hostname == "app.example.com"


def test_proxy_accepts_str_input() -> None:
    item = decode_item("proxy:app.example.com", _proxy().decode())
    assert isinstance(item, ProxyConfig)


@pytest.mark.parametrize(
    "hostname",
    ["*.example.com", "*.a.b.example.com", "localhost", "x", "a-b.c-d.example", "10.0.0.1"],
)
def test_proxy_valid_hostname_forms(hostname: str) -> None:
    assert _proxy_cfg(_proxy(hostname), key=f"proxy:{hostname}").hostname == hostname


# ---------------------------------------------------------------------------
# ProxyConfig: rejections
# ---------------------------------------------------------------------------


def test_unknown_field_names_the_field() -> None:
    err = _reject("proxy:app.example.com", _proxy(target="http://x"))
    assert err.field == "target"
    assert "unknown field" in err.message
    assert str(err).startswith("proxy:app.example.com: field 'target': ")


def test_missing_required_field() -> None:
    err = _reject("proxy:app.example.com", b'{"hostname":"app.example.com"}')
    assert err.field == "target_url"
    assert "missing" in err.message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("enabled", "yes", "expected bool, got str"),
        ("enabled", 1, "expected bool, got int"),
        ("custom_headers", ["a"], "expected object, got array"),
        ("route_mode", 3, "got int"),
        ("created_at", True, "got bool"),
        ("resource_server_info", "x", "expected object, got str"),
    ],
)
def test_wrong_type_names_the_field(field: str, value: Any, expected: str) -> None:
    err = _reject("proxy:app.example.com", _proxy(**{field: value}))
    assert err.field == field
    assert expected in err.message
    assert "`" not in err.message


def test_wrong_type_in_list_element_reports_path() -> None:
    err = _reject("proxy:app.example.com", _proxy(enabled_routes=["ok", 5]))
    assert err.field == "enabled_routes"
    assert "enabled_routes[1]" in err.message


def test_wrong_type_in_header_value() -> None:
    err = _reject("proxy:app.example.com", _proxy(custom_headers={"X-A": 1}))
    assert err.field == "custom_headers"
    assert "expected str, got int" in err.message


def test_invalid_enum_value_lists_choices() -> None:
    err = _reject("proxy:app.example.com", _proxy(route_mode="some"))
    assert err.field == "route_mode"
    assert "'some'" in err.message
    assert "'selective'" in err.message


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"hostname": "a" "b"}', b"\xff\xfe"])
def test_invalid_json(raw: bytes) -> None:
    err = _reject("proxy:app.example.com", raw)
    assert err.field is None
    assert err.message.startswith("invalid JSON: ")


def test_invalid_utf8_inside_string_is_invalid_json() -> None:
    err = _reject("proxy:app.example.com", b'{"hostname":"\xff"}')
    assert err.field is None
    assert err.message.startswith("invalid JSON: ")


@pytest.mark.parametrize("raw", [b"[]", b'"http://x"', b"42", b"null"])
def test_document_must_be_object(raw: bytes) -> None:
    err = _reject("proxy:app.example.com", raw)
    assert err.field is None
    assert "expected a JSON object" in err.message


def test_hostname_key_mismatch() -> None:
    err = _reject("proxy:app.example.com", _proxy("other.example.com"))
    assert err.field == "hostname"
    assert "does not match the key" in err.message


@pytest.mark.parametrize(
    "hostname",
    [
        "*",
        "*.",
        "a.*.b",
        "*.*.example.com",
        "a*.example.com",
        "-a.example.com",
        "a-.example.com",
        "a..b",
        "example.com.",
        ".example.com",
        "a_b.example.com",
        "exa mple.com",
        "ex\u00e4mple.com",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4),
        "",
    ],
)
def test_invalid_hostnames_rejected(hostname: str) -> None:
    key = f"proxy:{hostname}" if hostname else "proxy:x"
    err = _reject(key, _proxy(hostname))
    assert err.field == "hostname"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "example.com",
        "HTTP://example.com",
        "http://",
        "http:///path",
        "http://example.com?x=1",
        "http://example.com/p?x=1",
        "http://example.com/#frag",
        "http://user:pw@example.com",
        "http://user@example.com/",
        "http://example.com:0",
        "http://example.com:65536",
        "http://example.com:port",
        "http://example.com:",
        "http://exa mple.com",
        "http://example.com/a b",
        "http://example.com/\x01",
        " http://example.com",
        "http://[::1",
        "http://[zz]:80",
        "http://[::1]x",
        "http://-bad.example.com",
        "http://*.example.com",
    ],
)
def test_bad_target_url(url: str) -> None:
    err = _reject("proxy:app.example.com", _proxy(target_url=url))
    assert err.field == "target_url"
    assert "must be an http:// or https:// URL" in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com/",
        "http://127.0.0.1:8080",
        "https://backend.internal:8443/base/path",
        "http://[::1]:8080/x",
        "http://[2001:db8::1]",
        "http://localhost:1",
        "http://localhost:65535",
    ],
)
def test_good_target_url(url: str) -> None:
    assert _proxy_cfg(_proxy(target_url=url)).target_url == url
    assert validate_url(url) == url


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({"Bad Name": "x"}, "invalid header name"),
        ({"": "x"}, "invalid header name"),
        ({"X-A:": "x"}, "invalid header name"),
        ({"X-\u00e9": "x"}, "invalid header name"),
        ({"X-A": "a\r\nX-Injected: 1"}, "CR"),
        ({"X-A": "a\nb"}, "LF"),
        ({"X-A": "a\x00b"}, "NUL"),
        ({"X-A": "a\x01b"}, "printable ASCII"),
        ({"X-A": " leading"}, "leading or trailing whitespace"),
        ({"X-A": "trailing\t"}, "leading or trailing whitespace"),
        ({"X-A": "a", "x-a": "b"}, "more than once"),
    ],
)
@pytest.mark.parametrize("field", ["custom_headers", "custom_response_headers"])
def test_bad_headers(field: str, headers: dict[str, str], needle: str) -> None:
    extra: dict[str, Any] = {field: headers}
    err = _reject("proxy:app.example.com", _proxy(**extra))
    assert err.field == field
    assert needle in err.message


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "keep-alive",
        "Proxy-Connection",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "Upgrade",
        "Content-Length",
        "Host",
    ],
)
@pytest.mark.parametrize("field", ["custom_headers", "custom_response_headers"])
def test_hop_by_hop_headers_forbidden(field: str, name: str) -> None:
    extra: dict[str, Any] = {field: {name: "x"}}
    err = _reject("proxy:app.example.com", _proxy(**extra))
    assert err.field == field
    assert "hop-by-hop" in err.message
    assert name in err.message


def test_header_token_characters_accepted() -> None:
    cfg = _proxy_cfg(_proxy(custom_headers={"X-!#$%&'*+-.^_`|~9": "v a\tl"}))
    assert cfg.custom_headers == {"X-!#$%&'*+-.^_`|~9": "v a\tl"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled_routes", ["ok", ""]),
        ("disabled_routes", ["has space"]),
        ("cert_name", "../etc/passwd"),
        ("cert_name", ""),
        ("created_at", "yesterday"),
        ("created_at", -5),
        ("auth_proxy", "not a host"),
        ("auth_proxy", "ftp://auth.example.com"),
        ("auth_required_emails", ["alice"]),
        ("auth_allowed_scopes", ["two words"]),
        ("auth_cookie_name", "bad cookie"),
        ("auth_header_prefix", "X Auth"),
        ("auth_excluded_paths", ["health"]),
        ("resource_endpoint", "mcp"),
        ("resource_scopes", [""]),
        ("resource_versions", ["   "]),
        ("resource_bearer_methods", ["cookie"]),
        ("resource_documentation_suffix", "docs"),
    ],
)
def test_other_proxy_field_rejections(field: str, value: Any) -> None:
    err = _reject("proxy:app.example.com", _proxy(**{field: value}))
    assert err.field == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("auth_proxy", "auth.example.com:9000"),
        ("auth_proxy", "https://auth.example.com"),
        ("resource_endpoint", "https://app.example.com/mcp"),
        ("created_at", "2024-05-01T12:00:00+02:00"),
        ("created_at", "2024-05-01"),
    ],
)
def test_other_proxy_field_accepted(field: str, value: Any) -> None:
    _proxy_cfg(_proxy(**{field: value}))


# ---------------------------------------------------------------------------
# RouteConfig
# ---------------------------------------------------------------------------


def test_route_minimal_defaults() -> None:
    cfg = _route_cfg(_route())
    assert cfg.route_id == "r1"
    assert cfg.path_pattern == "/api"
    assert cfg.target_type == "port"
    assert cfg.target_value == "9000"
    assert cfg.priority == 50
    assert cfg.methods is None
    assert cfg.is_regex is False
    assert cfg.enabled is True
    assert cfg.scope == "global"
    assert cfg.proxy_hostnames == ()
    assert cfg.description == ""
    assert cfg.owner_token_hash is None
    assert cfg.created_at is None and cfg.created_by is None


def test_route_id_must_match_key() -> None:
    err = _reject("route:r2", _route("r1"))
    assert err.field == "route_id"
    assert "does not match the key" in err.message


def test_route_id_with_colon_matches_key() -> None:
    assert _route_cfg(_route("team:r1"), key="route:team:r1").route_id == "team:r1"


def test_route_path_must_start_with_slash() -> None:
    err = _reject("route:r1", _route(path_pattern="api"))
    assert err.field == "path_pattern"


def test_route_regex_valid() -> None:
    cfg = _route_cfg(_route(path_pattern=r"^/v[0-9]+/items$", is_regex=True))
    assert cfg.is_regex is True


def test_route_regex_need_not_start_with_slash() -> None:
    assert _route_cfg(_route(path_pattern=r".*\.php$", is_regex=True)).is_regex


def test_route_bad_regex_reports_the_compiler_message() -> None:
    err = _reject("route:r1", _route(path_pattern="/a(b", is_regex=True))
    assert err.field == "path_pattern"
    assert "missing )" in err.message


@pytest.mark.parametrize(
    "pattern",
    [
        r"^/(a+)\1$",  # backreference
        r"^/(?P<x>a)(?P=x)$",  # named backreference
        r"^/(?=api)",  # lookahead
        r"^/(?!api)",  # negative lookahead
        r"(?<=/)api",  # lookbehind
        r"^/api\Z",  # Python's end anchor (RE2 spells it \z)
        r"^/(?>a+)",  # atomic group
        r"^/a++",  # possessive repeat
    ],
)
def test_route_regex_refuses_what_a_linear_time_engine_cannot_run(pattern: str) -> None:
    err = _reject("route:r1", _route(path_pattern=pattern, is_regex=True))
    assert err.field == "path_pattern"
    assert "RE2" in err.message, err.message
    assert repr(pattern) in err.message


def test_route_regex_length_is_capped() -> None:
    longest = "^/" + "a" * (MAX_PATH_REGEX_LENGTH - 2)
    assert _route_cfg(_route(path_pattern=longest, is_regex=True)).path_pattern == longest
    err = _reject("route:r1", _route(path_pattern=longest + "b", is_regex=True))
    assert err.field == "path_pattern"
    assert f"longer than {MAX_PATH_REGEX_LENGTH} characters" in err.message


def test_route_regex_program_size_is_capped() -> None:
    # short to write, but compiles to a program larger than the memory a route may use
    err = _reject("route:r1", _route(path_pattern=r"^/[\p{L}]{1000}", is_regex=True))
    assert err.field == "path_pattern"
    assert "too large" in err.message


def test_route_regex_python_features_kept() -> None:
    for pattern in (r"^/v(?P<n>[0-9]+)/", r"(?i)^/API", r"^/a{2,5}$", r"\.php$", r"^/\d+$"):
        assert _route_cfg(_route(path_pattern=pattern, is_regex=True)).is_regex


def test_route_methods_normalised_to_uppercase() -> None:
    assert _route_cfg(_route(methods=["get", "Post"])).methods == ("GET", "POST")
    assert _route_cfg(_route(methods=[])).methods == ()
    assert _route_cfg(_route(methods=None)).methods is None


@pytest.mark.parametrize("method", ["", "GE T", "GET\r", "G/ET"])
def test_route_bad_method(method: str) -> None:
    err = _reject("route:r1", _route(methods=["GET", method]))
    assert err.field == "methods"


@pytest.mark.parametrize("priority", [-100000, 0, 100000])
def test_route_priority_bounds_ok(priority: int) -> None:
    assert _route_cfg(_route(priority=priority)).priority == priority


@pytest.mark.parametrize("priority", [-100001, 100001, 10**30])
def test_route_priority_out_of_range(priority: int) -> None:
    err = _reject("route:r1", _route(priority=priority))
    assert err.field == "priority"


@pytest.mark.parametrize("priority", ["50", 50.5, True])
def test_route_priority_wrong_type(priority: Any) -> None:
    err = _reject("route:r1", _route(priority=priority))
    assert err.field == "priority"
    assert "expected int" in err.message


def test_route_bad_target_type() -> None:
    err = _reject("route:r1", _route(target_type="socket"))
    assert err.field == "target_type"
    assert "'port'" in err.message


@pytest.mark.parametrize(
    ("target_type", "value", "normalised"),
    [
        ("port", "1", "1"),
        ("port", "65535", "65535"),
        ("port", "08080", "8080"),
        ("hostname", "backend.internal", "backend.internal"),
        ("hostname", "Backend.Internal:8080", "backend.internal:8080"),
        ("service", "billing", "billing"),
        ("service", "Billing_v2.svc-1", "Billing_v2.svc-1"),
        ("url", "https://api.example.com/v1", "https://api.example.com/v1"),
    ],
)
def test_route_targets_valid(target_type: str, value: str, normalised: str) -> None:
    cfg = _route_cfg(_route(target_type=target_type, target_value=value))
    assert cfg.target_value == normalised


@pytest.mark.parametrize(
    ("target_type", "value"),
    [
        ("port", "0"),
        ("port", "65536"),
        ("port", "-1"),
        ("port", "+80"),
        ("port", " 80"),
        ("port", "80a"),
        ("port", ""),
        ("hostname", "*.example.com"),
        ("hostname", "bad host"),
        ("hostname", "host:0"),
        ("hostname", "host:"),
        ("hostname", "http://host"),
        ("service", "-svc"),
        ("service", "svc/x"),
        ("service", ""),
        ("service", "a" * 129),
        ("url", "backend:8080"),
        ("url", "http://backend?x=1"),
    ],
)
def test_route_targets_invalid(target_type: str, value: str) -> None:
    err = _reject("route:r1", _route(target_type=target_type, target_value=value))
    assert err.field == "target_value"


def test_route_port_target_must_be_string() -> None:
    err = _reject("route:r1", _route(target_value=9000))
    assert err.field == "target_value"
    assert "expected str, got int" in err.message


def test_route_proxy_scope_requires_hostnames() -> None:
    err = _reject("route:r1", _route(scope="proxy"))
    assert err.field == "proxy_hostnames"
    err = _reject("route:r1", _route(scope="proxy", proxy_hostnames=[]))
    assert err.field == "proxy_hostnames"


def test_route_proxy_scope_hostnames_normalised() -> None:
    cfg = _route_cfg(_route(scope="proxy", proxy_hostnames=["App.Example.com", "*.Example.org"]))
    assert cfg.scope == "proxy"
    assert cfg.proxy_hostnames == ("app.example.com", "*.example.org")


@pytest.mark.parametrize("hostname", ["a.*.b", "*", "bad host", ""])
def test_route_proxy_scope_bad_hostname(hostname: str) -> None:
    err = _reject("route:r1", _route(scope="proxy", proxy_hostnames=["ok.example.com", hostname]))
    assert err.field == "proxy_hostnames"


def test_route_global_scope_rejects_hostnames() -> None:
    err = _reject("route:r1", _route(proxy_hostnames=["app.example.com"]))
    assert err.field == "proxy_hostnames"


def test_route_bad_scope() -> None:
    err = _reject("route:r1", _route(scope="local"))
    assert err.field == "scope"


def test_route_unknown_field() -> None:
    err = _reject("route:r1", _route(path="/x"))
    assert err.field == "path"
    assert "unknown field" in err.message


# ---------------------------------------------------------------------------
# ExternalService and ServiceURL
# ---------------------------------------------------------------------------


def test_external_service_defaults() -> None:
    item = decode_item("service:external:billing", _external())
    assert isinstance(item, ExternalService)
    assert item.service_name == "billing"
    assert item.target_url == "https://billing.internal:8443"
    assert item.description == ""
    assert item.service_type == "external"
    assert item.routing_enabled is True
    assert item.created_by is None and item.created_at is None
    assert item.owner_token_hash is None


def test_external_service_name_must_match_key() -> None:
    err = _reject("service:external:billing", _external("other"))
    assert err.field == "service_name"


def test_external_service_bad_url() -> None:
    err = _reject("service:external:billing", _external(target_url="billing.internal"))
    assert err.field == "target_url"


def test_external_service_unknown_field() -> None:
    err = _reject("service:external:billing", _external(port=80))
    assert err.field == "port"
    assert "unknown field" in err.message


def test_external_service_bad_name() -> None:
    err = _reject("service:external:bad name", _external("bad name"))
    assert err.field == "service_name"


def test_service_url_plain_string_stripped() -> None:
    item = decode_item("service:url:api", b"  http://10.0.0.5:9000/base \r\n")
    assert item == ServiceURL(name="api", url="http://10.0.0.5:9000/base")


def test_service_url_accepts_str() -> None:
    assert decode_item("service:url:api", "https://api.internal") == ServiceURL(
        name="api", url="https://api.internal"
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b'"http://10.0.0.5:9000"', b"10.0.0.5:9000", b"http://a b", b"\xff"],
)
def test_service_url_invalid(raw: bytes) -> None:
    err = _reject("service:url:api", raw)
    assert err.field == "url"


def test_service_url_bad_name() -> None:
    err = _reject("service:url:-api", b"http://x")
    assert err.field == "name"


def test_service_url_struct_is_frozen() -> None:
    item = ServiceURL(name="a", url="http://a")
    with pytest.raises(AttributeError):
        item.url = "http://b"  # type: ignore[misc]
    assert msgspec.structs.astuple(item) == ("a", "http://a")


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
_HOSTNAME = st.lists(_LABEL, min_size=1, max_size=5).map(".".join).filter(lambda h: len(h) <= 253)


@given(hostname=_HOSTNAME, wildcard=st.booleans(), upper=st.booleans())
def test_property_valid_hostnames_round_trip(hostname: str, wildcard: bool, upper: bool) -> None:
    expected = f"*.{hostname}" if wildcard else hostname
    written = expected.upper() if upper else expected
    assert normalize_hostname(written) == expected
    cfg = _proxy_cfg(_proxy(written), key=f"proxy:{written}")
    assert cfg.hostname == expected


@given(
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
    newline=st.sampled_from(["\r", "\n", "\r\n"]),
)
def test_property_header_value_with_cr_or_lf_rejected(
    prefix: str, suffix: str, newline: str
) -> None:
    value = prefix + newline + suffix
    with pytest.raises(ValueError):
        validate_header_value(value)
    with pytest.raises(ConfigError) as info:
        decode_item("proxy:app.example.com", _proxy(custom_headers={"X-Test": value}))
    assert info.value.field == "custom_headers"


def test_non_ascii_that_lowercases_to_ascii_is_rejected() -> None:
    # the Kelvin sign lowercases to an ASCII "k": neither key nor field may use it
    import pytest as _pytest

    with _pytest.raises(ConfigError):
        decode_item("proxy:\u212a.test", b'{"hostname":"k.test","target_url":"http://127.0.0.1:1"}')
    with _pytest.raises(ConfigError):
        decode_item(
            "proxy:k.test", '{"hostname":"\u212a.test","target_url":"http://127.0.0.1:1"}'.encode()
        )


# ---------------------------------------------------------------------------
# every problem of a document, not only the first
# ---------------------------------------------------------------------------


def _problems(err: ConfigError) -> list[tuple[str | None, str]]:
    return [(p.field, p.message) for p in err.problems]


def test_every_problem_of_a_proxy_is_reported() -> None:
    # two unknown fields and a bad URL: three problems; the document's shape first
    raw = _proxy(colour="blue", size=3, target_url="ftp://x")
    err = _reject("proxy:app.example.com", raw)
    assert [field for field, _ in _problems(err)] == ["colour", "size", "target_url"]
    assert (err.field, err.message) == _problems(err)[0]  # the first, as before
    assert str(err) == (
        "proxy:app.example.com: field 'colour': unknown field 'colour'; field 'size': unknown "
        "field 'size'; field 'target_url': must be an http:// or https:// URL, got 'ftp://x'"
    )


def test_type_errors_and_field_checks_are_reported_together() -> None:
    raw = _proxy(
        enabled="yes",
        custom_headers={"Host": "x"},
        auth_excluded_paths=["nope", "/ok", "also-bad"],
        route_mode="some",
    )
    fields = [field for field, _ in _problems(_reject("proxy:app.example.com", raw))]
    assert sorted(fields) == sorted(
        ["enabled", "route_mode", "custom_headers", "auth_excluded_paths", "auth_excluded_paths"]
    )


def test_a_missing_field_does_not_hide_the_others() -> None:
    raw = json.dumps({"hostname": "app.example.com", "enabled": 2}).encode()
    problems = _problems(_reject("proxy:app.example.com", raw))
    assert ("target_url", "required field is missing") in problems
    assert [f for f, _ in problems if f != "target_url"] == ["enabled"]


def test_every_problem_of_a_route_is_reported() -> None:
    doc = {"route_id": "r1", "path_pattern": "api", "target_value": "x", "priority": "high"}
    problems = _problems(_reject("route:r1", json.dumps(doc).encode()))
    assert sorted(f for f, _ in problems if f) == ["path_pattern", "priority", "target_type"]
    # target_value is not judged without a valid target_type to read it by
    bad_type = {**doc, "target_type": "ftp", "priority": 1}
    problems = _problems(_reject("route:r1", json.dumps(bad_type).encode()))
    assert sorted(f for f, _ in problems if f) == ["path_pattern", "target_type"]
    scoped = _route(scope="proxy", methods=["G T"], priority=10**6, created_at=-1)
    problems = _problems(_reject("route:r1", scoped))
    assert sorted(f for f, _ in problems if f) == [
        "created_at", "methods", "priority", "proxy_hostnames",
    ]  # fmt: skip


def test_every_problem_of_an_external_service_is_reported() -> None:
    raw = _external("other", target_url="nope", port=80)
    problems = _problems(_reject("service:external:billing", raw))
    assert sorted(f for f, _ in problems if f) == ["port", "service_name", "target_url"]


def test_one_problem_reads_as_before() -> None:
    err = _reject("proxy:app.example.com", _proxy(target="http://x"))
    assert len(err.problems) == 1 and err.problems[0] is err
    assert str(err) == "proxy:app.example.com: field 'target': unknown field 'target'"
