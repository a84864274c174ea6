"""The ``edge`` command line as a new operator meets it: version, completion, global flags,
``update`` with a flag that turns something off, ``check``, ``reverse-proxy``; each against a
real edge or a real embedded Redis, as a subprocess."""

from __future__ import annotations

from tests.helpers import EdgeProcess
from tests.integration.test_client_cli import as_json, cli, env, home, ok

__all__ = ["env", "home"]  # the fixtures, shared with the client tests


def test_update_with_only_a_false_flag_changes_it(api: EdgeProcess, env: dict[str, str]) -> None:
    ok(cli("proxy create app.test --target http://127.0.0.1:1", env=env))
    for flag, field in (
        ("--disable", "enabled"),
        ("--no-http", "enable_http"),
        ("--no-https", "enable_https"),
        ("--no-preserve-host", "preserve_host_header"),
    ):
        if flag == "--no-preserve-host":
            ok(cli("proxy update app.test --preserve-host", env=env))
        doc = as_json(cli(f"proxy update app.test {flag} -o json", env=env))
        assert doc[field] is False, (flag, doc)
    ok(cli("route create r1 --path /a --target-type port --target 9001 --regex", env=env))
    assert as_json(cli("route update r1 --disable -o json", env=env))["enabled"] is False
    assert as_json(cli("route update r1 --no-regex -o json", env=env))["is_regex"] is False
    assert as_json(cli("route update r1 --enable --regex -o json", env=env))["enabled"] is True
