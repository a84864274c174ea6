"""``cert_email`` and ``acme_directory_url`` of a proxy: stored for automatic HTTPS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.config.schema import ConfigError, ProxyConfig, decode_item

KEY = "proxy:app.example.com"


def _decode(**extra: Any) -> ProxyConfig:
    doc: dict[str, Any] = {"hostname": "app.example.com", "target_url": "http://127.0.0.1:8080"}
    doc.update(extra)
    item = decode_item(KEY, json.dumps(doc))
    assert isinstance(item, ProxyConfig)
    return item


def test_both_default_to_null() -> None:
    cfg = _decode()
    assert cfg.cert_email is None
    assert cfg.acme_directory_url is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cert_email", "ops@example.com"),
        ("cert_email", "first.last+edge@mail.example.co.uk"),
        ("acme_directory_url", "https://acme-v02.api.letsencrypt.org/directory"),
        ("acme_directory_url", "https://ca.internal:14000/dir"),
        ("acme_directory_url", "http://127.0.0.1:14000/dir"),
        ("acme_directory_url", "http://localhost:14000/dir"),
        ("acme_directory_url", "http://[::1]:14000/dir"),
    ],
)
def test_accepted(field: str, value: str) -> None:
    assert getattr(_decode(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("cert_email", "ops", "expected user@domain"),
        ("cert_email", "@example.com", "expected user@domain"),
        ("cert_email", "ops@", "domain"),
        ("cert_email", "ops@localhost", "domain must be a host name with a dot"),
        ("cert_email", "a@b@example.com", "expected user@domain"),
        ("cert_email", "o ps@example.com", "expected user@domain"),
        ("cert_email", "ops@exa mple.com", "expected user@domain"),
        ("cert_email", "ops@-bad-.com", "domain"),
        ("acme_directory_url", "http://ca.example.com/dir", "https://"),
        ("acme_directory_url", "http://10.0.0.1/dir", "loopback"),
        ("acme_directory_url", "ftp://ca.example.com/dir", "http"),
        ("acme_directory_url", "https://ca.example.com/dir?x=1", "query"),
        ("acme_directory_url", "directory", "URL"),
    ],
)
def test_refused_naming_the_field(field: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _decode(**{field: value})
    assert info.value.field == field
    assert needle in info.value.message


@pytest.mark.parametrize("field", ["cert_email", "acme_directory_url"])
def test_wrong_type_names_the_field(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _decode(**{field: 5})
    assert info.value.field == field
