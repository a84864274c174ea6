"""Port-forward targets as configuration: app:, app_resource:, database: decoded strictly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.config.schema import ConfigError, classify_key, decode_item
from edge.config.seed import SeedError, load_seed
from edge.config.targets import (
    AppTarget,
    DatabaseTarget,
    ResourceTarget,
    valid_target_id,
    validate_target_host,
)


def app(app_id: str = "a_1", **extra: Any) -> bytes:
    return json.dumps({"id": app_id, "project_id": "p_1", "name": "web", **extra}).encode()


def resource(resource_id: str = "r_1", **extra: Any) -> bytes:
    doc = {
        "id": resource_id,
        "project_id": "p_1",
        "app_id": "a_1",
        "name": "postgres",
        "host": "10.0.0.5",
        "config_port": 5432,
        **extra,
    }
    return json.dumps(doc).encode()


def database(database_id: str = "db_1", **extra: Any) -> bytes:
    doc = {
        "id": database_id,
        "project_id": "p_1",
        "name": "main",
        "engine": "postgres",
        "host": "db.internal",
        **extra,
    }
    return json.dumps(doc).encode()


def problems(key: str, raw: bytes | str) -> dict[str | None, str]:
    """Every problem of the document, by field (the message of each)."""
    with pytest.raises(ConfigError) as caught:
        decode_item(key, raw)
    assert caught.value.key == key
    return {p.field: p.message for p in caught.value.problems}


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("app:a_1", "app"),
        ("app_resource:r_1", "app_resource"),
        ("database:db_1", "database"),
        ("app:", None),
        ("app_resource:", None),
        ("database:", None),
        ("apps:x", None),
        ("app_resourcex:r", None),
        ("databases:x", None),
    ],
)
def test_target_keys_are_classified(key: str, kind: str | None) -> None:
    assert classify_key(key) == kind


def test_an_app_resource_key_is_never_taken_for_an_app() -> None:
    # the same document under both prefixes: each is read as its own kind
    assert isinstance(decode_item("app_resource:r_1", resource()), ResourceTarget)
    assert "config_port" in problems("app:r_1", resource())


def test_good_documents_decode_with_their_defaults() -> None:
    assert decode_item("app:a_1", app()) == AppTarget(id="a_1", project_id="p_1", name="web")
    found = decode_item("app_resource:r_1", resource(config_internal_ports=[9187, 8080]))
    assert isinstance(found, ResourceTarget)
    assert found.config_internal_ports == (9187, 8080)
    pg = decode_item("database:db_1", database())
    assert isinstance(pg, DatabaseTarget)
    assert (pg.port, pg.status, pg.ready) == (5432, "created", True)
    cache = decode_item("database:db_2", database("db_2", engine="redis"))
    assert isinstance(cache, DatabaseTarget) and cache.port == 6379
    other = decode_item("database:db_3", database("db_3", port=15432, status="creating"))
    assert isinstance(other, DatabaseTarget)
    assert (other.port, other.ready) == (15432, False)
    # built directly (not decoded), the engine's port is filled in all the same
    built = DatabaseTarget(id="d", project_id="p", name="n", engine="redis", host="h")
    assert built.port == 6379


def test_times_are_optional_and_checked() -> None:
    stamped = app(created_at="2030-01-01T00:00:00Z", updated_at=1893456000)
    assert decode_item("app:a_1", stamped) == AppTarget(
        id="a_1",
        project_id="p_1",
        name="web",
        created_at="2030-01-01T00:00:00Z",
        updated_at=1893456000,
    )
    assert set(problems("app:a_1", app(updated_at="last week"))) == {"updated_at"}


def test_allows_the_config_port_and_the_internal_ports_only() -> None:
    found = decode_item("app_resource:r_1", resource(config_internal_ports=[9187]))
    assert isinstance(found, ResourceTarget)
    assert found.allows(5432) and found.allows(9187)
    assert not found.allows(5433) and not found.allows(0) and not found.allows(22)


def test_hosts_are_names_or_ip_literals_normalised() -> None:
    assert validate_target_host("DB.Internal") == "db.internal"
    assert validate_target_host("127.0.0.1") == "127.0.0.1"
    assert validate_target_host("0:0::1") == "::1"
    found = decode_item("database:db_1", database(host="PG.Example.COM"))
    assert isinstance(found, DatabaseTarget) and found.host == "pg.example.com"
    for bad in ("*.example.com", "db.internal:5432", "[::1]", "", "a b", "http://x", "é.test"):
        assert set(problems("database:db_1", database(host=bad))) == {"host"}, bad


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("db_1", True),
        ("p_4fJq9xZk2mNa", True),
        ("a.b-c_d", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("_a", False),
        ("-a", False),
        ("a:b", False),
        ("a b", False),
        ("a/b", False),
        ("", False),
    ],
)
def test_id_shape(value: str, ok: bool) -> None:
    assert valid_target_id(value) is ok


def test_the_id_must_be_the_keys() -> None:
    assert set(problems("app:a_2", app("a_1"))) == {"id"}
    assert "does not match the key" in problems("app:a_2", app("a_1"))["id"]
    # a key whose name cannot be an id: that one problem, whatever the document
    assert problems("database:a b", database("a b")) == {
        None: "the key's id 'a b' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
    }


def test_every_problem_of_a_document_is_reported_with_its_field() -> None:
    bad = database(
        "db_9",
        project_id="p 1",
        name=" ",
        engine="mysql",
        host="*.x",
        port=0,
        status="Not Ready",
        owner="me",
    )
    found = problems("database:db_1", bad)
    assert set(found) == {
        "id",
        "project_id",
        "name",
        "engine",
        "host",
        "port",
        "status",
        "owner",
    }
    assert found["engine"] == "invalid value 'mysql' (allowed: 'postgres', 'redis')"
    assert found["owner"] == "unknown field 'owner'"


def test_ports_are_checked() -> None:
    for port in (0, 65536, -1, "5432", True, 5432.5):
        assert set(problems("app_resource:r_1", resource(config_port=port))) == {"config_port"}
        assert set(problems("database:db_1", database(port=port))) == {"port"}
    internal = problems("app_resource:r_1", resource(config_internal_ports=[80, 0]))
    assert "config_internal_ports[1]" in internal["config_internal_ports"]
    twice = problems("app_resource:r_1", resource(config_internal_ports=[80, 81, 80]))
    assert twice == {"config_internal_ports": "lists port 80 more than once"}
    many = problems("app_resource:r_1", resource(config_internal_ports=list(range(1, 66))))
    assert set(many) == {"config_internal_ports"}


def test_required_fields() -> None:
    found = problems("app_resource:r_1", b'{"id": "r_1"}')
    assert set(found) == {"project_id", "app_id", "name", "host", "config_port"}
    assert set(problems("app:a_1", b"{}")) == {"id", "project_id", "name"}
    assert set(problems("database:db_1", b'{"id": "db_1"}')) == {
        "project_id",
        "name",
        "engine",
        "host",
    }


def test_ids_named_in_a_target_are_id_shaped() -> None:
    assert set(problems("app_resource:r_1", resource(app_id="a/1"))) == {"app_id"}
    assert set(problems("app:a_1", app(project_id=""))) == {"project_id"}


def test_names_and_statuses() -> None:
    assert set(problems("app:a_1", app(name="x\ny"))) == {"name"}
    assert set(problems("app:a_1", app(name="x" * 201))) == {"name"}
    assert decode_item("app:a_1", app(name="Web front (prod)"))
    for status in ("creating", "failed", "deleting", "created"):
        assert isinstance(decode_item("database:db_1", database(status=status)), DatabaseTarget)
    for status in ("", "Created", "two words", "x" * 33):
        assert set(problems("database:db_1", database(status=status))) == {"status"}


def test_not_json_or_not_an_object() -> None:
    assert problems("app:a_1", b"[1]") == {None: "expected a JSON object, got array"}
    assert list(problems("database:db_1", b"{")) == [None]


def test_a_seed_file_may_hold_targets(tmp_path: Any) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"app:a_1": json.loads(app()), "database:db_1": "{}"}))
    with pytest.raises(SeedError) as caught:
        load_seed(str(good))
    assert "database:db_1: field 'id': required field is missing" in str(caught.value)
    good.write_text(json.dumps({"app:a_1": json.loads(app())}))
    assert list(load_seed(str(good)).keys) == ["app:a_1"]
