"""Start-up warnings about environment variables that look like mistyped edge settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.env_typos import CLIENT_ENV_NAMES, KNOWN_NAMES, PREFIXES, find_unknown, unknown_settings
from edge.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parents[2]

# what a shell, systemd, a container and Kubernetes put into a normal environment
NORMAL_ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/var/lib/edge",
    "HOSTNAME": "edge-7d9f",
    "LANG": "C.UTF-8",
    "TERM": "xterm",
    "PYTHONPATH": "/opt/edge",
    "PYTHONUNBUFFERED": "1",
    "VIRTUAL_ENV": "/opt/edge",
    "INVOCATION_ID": "0f3c",
    "JOURNAL_STREAM": "8:1234",
    "STATE_DIRECTORY": "/var/lib/edge",
    "LOGS_DIRECTORY": "/var/log/edge",
    "CONFIGURATION_DIRECTORY": "/etc/edge",
    "http_proxy": "http://proxy.internal:3128",
    "https_proxy": "http://proxy.internal:3128",
    "no_proxy": "localhost,127.0.0.1",
    "HTTP_PROXY": "http://proxy.internal:3128",
    "HTTPS_PROXY": "http://proxy.internal:3128",
    "ALL_PROXY": "socks5://proxy.internal:1080",
    "NO_PROXY": "localhost",
    "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    "KUBERNETES_PORT": "tcp://10.0.0.1:443",
    # Kubernetes service links (and Docker's legacy links) for services named redis, api, edge
    "REDIS_SERVICE_HOST": "10.0.0.11",
    "REDIS_SERVICE_PORT": "6379",
    "REDIS_PORT": "tcp://10.0.0.11:6379",
    "REDIS_PORT_6379_TCP": "tcp://10.0.0.11:6379",
    "REDIS_PORT_6379_TCP_ADDR": "10.0.0.11",
    "REDIS_PORT_6379_TCP_PORT": "6379",
    "REDIS_PORT_6379_TCP_PROTO": "tcp",
    "API_SERVICE_HOST": "10.0.0.12",
    "API_SERVICE_PORT_HTTP": "80",
    "EDGE_SERVICE_HOST": "10.0.0.13",
    "EDGE_PORT": "tcp://10.0.0.13:80",
    "EDGE_PORT_80_TCP_ADDR": "10.0.0.13",
    "PROXY_NAME": "/web/proxy",
}


def found(env: dict[str, str]) -> dict[str, str]:
    """Variable -> suggested setting."""
    return {u.name: u.suggestion for u in find_unknown(env)}


def test_known_settings_and_client_variables_are_not_warned_about() -> None:
    assert found(dict.fromkeys(ENV_NAMES, "1")) == {}
    assert found(dict.fromkeys(CLIENT_ENV_NAMES, "1")) == {}


def test_a_normal_environment_gives_no_warning() -> None:
    assert found(NORMAL_ENVIRONMENT) == {}


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("EDGE_WORKER", "EDGE_WORKERS"),
        ("EDGE_STATEDIR", "EDGE_STATE_DIR"),
        ("EDGE_SEED", "EDGE_SEED_FILE"),
        ("REDIS_PASWORD", "REDIS_PASSWORD"),
        ("REDIS_USER", "REDIS_USERNAME"),
        ("REDIS_HOST", "REDIS_URL"),
        ("PROXY_CONECT_TIMEOUT", "PROXY_CONNECT_TIMEOUT"),
        ("PROXY_TRUSTED_CIDR", "PROXY_TRUSTED_CIDRS"),
        ("CLIENT_HEADERS_TIMEOUT", "CLIENT_HEADER_TIMEOUT"),
        ("UPSTREAM_IDLE_LIMT", "UPSTREAM_IDLE_LIMIT"),
        ("TLS_STRICT", "TLS_STRICT_SNI"),
        ("API_HOSTNAMES", "API_HOSTNAME"),
        ("HTTP_PROT", "HTTP_PORT"),
        ("HTTPS_PROT", "HTTPS_PORT"),
        ("LOG_LVL", "LOG_LEVEL"),
        ("MAX_HEADERS_BYTES", "MAX_HEADER_BYTES"),
        ("PAT_CACHE_TTL", "PAT_VERIFY_CACHE_TTL"),
        # a close match elsewhere beats the closest name of the same prefix (HTTP_PORT)
        ("HTTP_PROTOCOL_PORT", "PROXY_PROTOCOL_PORT"),
        ("EDGE_ENV_FILE", "EDGE_SEED_FILE"),
        # the right name in the wrong case is not read either
        ("redis_url", "REDIS_URL"),
        ("Edge_Workers", "EDGE_WORKERS"),
        ("edge_wrokers", "EDGE_WORKERS"),
        # a value that is not a service link does not make a *_PORT name one
        ("REDIS_PORT", "REDIS_URL"),
    ],
)
def test_a_mistyped_setting_is_found_with_the_closest_name(name: str, suggestion: str) -> None:
    value = "6379" if name == "REDIS_PORT" else "x"
    assert found({**NORMAL_ENVIRONMENT, name: value}) == {name: suggestion}


def test_the_message_names_the_variable_and_the_setting_but_never_the_value() -> None:
    (unknown,) = find_unknown({"REDIS_PASWORD": "hunter2"})
    assert str(unknown) == "unknown setting REDIS_PASWORD (did you mean REDIS_PASSWORD?)"
    (unknown,) = find_unknown({"EDGE_WORKER": "4"}, source="/etc/edge/edge.env")
    assert str(unknown) == (
        "unknown setting EDGE_WORKER in /etc/edge/edge.env (did you mean EDGE_WORKERS?)"
    )
    assert "hunter2" not in repr(find_unknown({"REDIS_PASWORD": "hunter2"}))


def test_unrelated_names_without_a_settings_prefix_are_left_alone() -> None:
    assert found({"WORKERS": "4", "DATABASE_URL": "postgres://", "APP_URL": "x", "TZ": "UTC"}) == {}


def test_prefixes_come_from_the_known_names() -> None:
    expected = {"EDGE", "REDIS", "PROXY", "CLIENT", "UPSTREAM", "TLS", "API", "HTTP", "HTTPS"}
    assert expected <= PREFIXES
    assert {name.split("_", 1)[0] for name in KNOWN_NAMES if "_" in name} == PREFIXES
    # a name without "_" (TOKEN) is no prefix: TOKEN_FILE is not ours to judge
    assert "TOKEN" not in PREFIXES
    assert found({"TOKEN_FILE": "x"}) == {}


def test_one_warning_per_variable_in_name_order() -> None:
    got = find_unknown({"REDIS_HOST": "h", "EDGE_WORKER": "2", "HTTP_PROT": "80"})
    assert [u.name for u in got] == ["EDGE_WORKER", "HTTP_PROT", "REDIS_HOST"]


def test_client_variables_match_what_the_client_reads() -> None:
    """The client's variables (edge/client/config.py) are known, so never warned about."""
    source = (ROOT / "edge" / "client" / "config.py").read_text(encoding="utf-8")
    read = set(re.findall(r'_env\(env, "([A-Z_]+)"\)', source))
    assert read and read <= KNOWN_NAMES
    assert set(CLIENT_ENV_NAMES) <= read | set(ENV_NAMES)


def test_env_file_variables_are_checked_and_attributed_to_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text("HTTP_PORT=8080\nEDGE_WORKER=2\nTLS_STRICT_SNY=true\n", encoding="utf-8")
    got = unknown_settings({"REDIS_PASWORD": "x", "PATH": "/bin"}, str(env_file))
    assert [(u.name, u.suggestion, u.source) for u in got] == [
        ("EDGE_WORKER", "EDGE_WORKERS", str(env_file)),
        ("REDIS_PASWORD", "REDIS_PASSWORD", None),
        ("TLS_STRICT_SNY", "TLS_STRICT_SNI", str(env_file)),
    ]
    # the process environment is what edge reads (it wins over the file): named once
    got = unknown_settings({"EDGE_WORKER": "3"}, str(env_file))
    assert [(u.name, u.source) for u in got if u.name == "EDGE_WORKER"] == [("EDGE_WORKER", None)]
    assert [u.name for u in unknown_settings({"EDGE_WORKER": "3"}, None)] == ["EDGE_WORKER"]
