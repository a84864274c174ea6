"""Port-forward targets in the configuration snapshot: one map per kind, updated key by key,
a rejected value keeping the key's last good one like every other key."""

from __future__ import annotations

from edge.config.redis_source import WrongType
from edge.config.snapshot import Snapshot, adopt, apply, resync_updates
from edge.config.targets import AppTarget, DatabaseTarget, ResourceTarget
from tests.unit.test_targets_schema import app, database, resource

TARGETS: dict[str, bytes | None] = {
    "app:a_1": app("a_1"),
    "app:a_2": app("a_2", name="api"),
    "app_resource:r_1": resource("r_1"),
    "database:db_1": database("db_1"),
}


def test_each_kind_has_its_map_by_id() -> None:
    snap = apply(Snapshot(), TARGETS)
    assert not snap.rejected
    assert set(snap.apps) == {"a_1", "a_2"}
    assert isinstance(snap.apps["a_2"], AppTarget) and snap.apps["a_2"].name == "api"
    assert set(snap.app_resources) == {"r_1"}
    assert isinstance(snap.app_resources["r_1"], ResourceTarget)
    assert set(snap.databases) == {"db_1"}
    assert isinstance(snap.databases["db_1"], DatabaseTarget)
    assert snap.databases["db_1"].port == 5432
    # targets are not proxies, routes or services
    assert not snap.exact and not snap.routes and not snap.services and not snap.urls


def test_updates_touch_only_the_changed_map_and_key() -> None:
    snap = apply(Snapshot(), TARGETS)
    later = apply(snap, {"database:db_1": database("db_1", status="failed")})
    assert later.databases["db_1"].status == "failed"
    assert later.apps is snap.apps and later.app_resources is snap.app_resources
    # an unchanged item is the very same object
    renamed = apply(snap, {"app:a_2": app("a_2", name="api-v2")})
    assert renamed.apps["a_1"] is snap.apps["a_1"]
    assert renamed.apps["a_2"].name == "api-v2"
    gone = apply(renamed, {"app:a_1": None, "app_resource:r_1": None})
    assert set(gone.apps) == {"a_2"} and not gone.app_resources
    assert "app:a_1" not in gone.raw


def test_a_rejected_value_keeps_the_last_good_one_until_deleted() -> None:
    snap = apply(Snapshot(), TARGETS)
    bad = apply(
        snap,
        {
            "app:a_1": app("a_1", name=""),
            "app_resource:r_1": resource("r_1", config_port=0),
            "database:db_1": WrongType(b"hash"),
        },
    )
    assert set(bad.rejected) == {"app:a_1", "app_resource:r_1", "database:db_1"}
    assert set(bad.kept) == set(bad.rejected)
    assert bad.apps["a_1"] is snap.apps["a_1"]
    assert bad.app_resources["r_1"].config_port == 5432
    assert bad.databases["db_1"] is snap.databases["db_1"]
    assert "field 'name'" in bad.rejected["app:a_1"]
    assert "holds a hash" in bad.rejected["database:db_1"]
    # a full resync reading the same bad values changes nothing
    assert resync_updates(bad, bad.raw) == {}
    # fixed: the new value serves and the report goes
    fixed = apply(bad, {"app_resource:r_1": resource("r_1", config_port=6543)})
    assert fixed.app_resources["r_1"].config_port == 6543
    assert "app_resource:r_1" not in fixed.rejected and "app_resource:r_1" not in fixed.kept
    # DEL forgets both the rejected value and the last good one
    deleted = apply(bad, {"app:a_1": None, "database:db_1": None})
    assert "a_1" not in deleted.apps and "db_1" not in deleted.databases
    assert set(deleted.rejected) == {"app_resource:r_1"}


def test_a_value_never_good_is_not_served() -> None:
    snap = apply(Snapshot(), {"database:db_9": database("db_8")})
    assert "db_9" not in snap.databases and "db_8" not in snap.databases
    assert "database:db_9" in snap.rejected and "database:db_9" not in snap.kept


def test_a_last_good_value_shared_by_another_worker_is_adopted() -> None:
    shared = {"database:db_1": database("db_1", host="10.1.1.1")}
    late = apply(Snapshot(), {"database:db_1": b"{"})
    assert not late.databases
    adopted = adopt(late, shared)
    assert adopted.databases["db_1"].host == "10.1.1.1"
    assert "database:db_1" in adopted.rejected
