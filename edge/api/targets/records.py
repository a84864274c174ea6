"""The target records in Redis as the admin endpoints write them: one validator, one shape.

Every document is validated by :func:`edge.config.schema.decode_item`, the code the workers'
config watcher and ``edge check`` run, and stored normalised (every field written, host
names lowercased, a database's default port filled in). A write is one
``WATCH``/``MULTI``/``EXEC`` transaction (:func:`edge.api.config.store.transaction`) whose
checks read what they watch:

* the project a target names exists (``project:{id}``, the people store's record);
* a resource's app exists and is in the same project. Creating a resource writes its app's
  value back unchanged in the same transaction, so an app delete running at the same time
  (which watches the app and deletes the resources it found) either sees the new resource
  or fails its ``EXEC`` and looks again: no resource outlives its app through the API.

The server sets ``created_at`` (kept afterwards) and ``updated_at`` (each write); ``id``,
``project_id`` and a resource's ``app_id`` never change once stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from redis.exceptions import WatchError

from edge.api.config.store import (
    ConfigScope,
    encode,
    fetch_visible,
    loose_doc,
    stored_item,
    transaction,
    validated,
    visible_raw,
    visible_values,
)
from edge.api.http import Conflict, InvalidBody, NotFound
from edge.api.people.store import decode_project, new_id
from edge.api.tokens.store import now_iso
from edge.config.schema import classify_key
from edge.config.targets import (
    ID_PATTERN,
    AppTarget,
    DatabaseTarget,
    ResourceTarget,
    Target,
    valid_target_id,
)
from edge.store import keys
from edge.store.scan import as_text, scan_values
from edge.store.transaction import Txn

__all__ = [
    "APP",
    "DATABASE",
    "RESOURCE",
    "Kind",
    "app_not_found",
    "create",
    "delete",
    "delete_app",
    "document",
    "listed",
    "read_one",
    "replace",
]

SERVER_FIELDS: Final = ("created_at", "updated_at")


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of target: its config kind, key, struct, words and id letter."""

    kind: str  # as edge.config.schema.classify_key names it
    key: Callable[[str], str]
    struct: type[Target]
    noun: str  # in codes and messages: "app", "app_resource", "database"
    letter: str  # of generated ids: a_..., r_..., d_...

    def not_found(self) -> NotFound:
        words = self.noun.replace("_", " ")
        return NotFound(code=f"{self.noun}_not_found", public_message=f"no {words} with this id")

    def exists(self) -> Conflict:
        words = self.noun.replace("_", " ")
        return Conflict(
            f"{self.noun} exists",
            code=f"{self.noun}_exists",
            public_message=f"an {words} with this id exists"
            if words[0] in "aeiou"
            else f"a {words} with this id exists",
            field="id",
        )


APP = Kind("app", keys.app, AppTarget, "app", "a")
RESOURCE = Kind("app_resource", keys.app_resource, ResourceTarget, "app_resource", "r")
DATABASE = Kind("database", keys.database, DatabaseTarget, "database", "d")


def app_not_found(field: str | None = None) -> NotFound:
    return NotFound(code="app_not_found", public_message="no app with this id", field=field)


def _project_not_found() -> NotFound:
    return NotFound(
        code="project_not_found", public_message="no project with this id", field="project_id"
    )


def document(item: Target) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(item)
    return doc


def path_id(kind: Kind, value: str) -> str:
    """A path's id; one that cannot be an id names nothing (404, without Redis)."""
    if not valid_target_id(value):
        raise kind.not_found()
    return value


# ---------------------------------------------------------------------------- reading


async def read_one(scope: ConfigScope, kind: Kind, tid: str) -> Target:
    """The stored target (404 if absent, 409 ``invalid_document`` if the loader refuses it)."""
    key = kind.key(tid)
    item = stored_item(key, await fetch_visible(scope, key, kind.not_found))
    assert isinstance(item, kind.struct)
    return item


async def listed(scope: ConfigScope, kind: Kind) -> list[Target]:
    """Every stored target of ``kind`` the loader accepts, by id (the others are listed by
    ``edge check`` and ``/health``)."""
    prefix = kind.key("")
    found = await visible_values(scope, prefix + "*", lambda k: classify_key(k) == kind.kind)
    items: list[Target] = []
    for key, raw in found.items():
        try:
            item = stored_item(key, raw)
        except Conflict:
            continue
        assert isinstance(item, kind.struct)
        items.append(item)
    return items


# ---------------------------------------------------------------------------- checks


async def _check_project(txn: Txn, project_id: str) -> None:
    """The project exists (watched: the write fails if it changes before ``EXEC``)."""
    key = keys.project(project_id)
    await txn.watch(key)
    if decode_project(project_id, await txn.get(key)) is None:
        raise _project_not_found()


async def _app(txn: Txn, app_id: str, field: str | None = None) -> tuple[bytes, AppTarget]:
    """The stored app (watched) and its raw value; 404 ``app_not_found`` naming ``field``."""
    key = keys.app(app_id)
    await txn.watch(key)
    raw = await txn.get(key)
    if raw is None:
        raise app_not_found(field)
    item = stored_item(key, raw)
    assert isinstance(item, AppTarget)
    return raw, item


def _times(body: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """``created_at`` (now on create, then kept) and ``updated_at`` (now). A body may
    repeat the stored values (a record read, edited and sent back), nothing else."""
    for name in SERVER_FIELDS:
        if name in body and (stored is None or body[name] != stored.get(name)):
            raise InvalidBody(
                "read-only field", public_message=f"{name} is set by the server", field=name
            )
    now = now_iso()
    if stored is None:
        return {"created_at": now, "updated_at": now}
    created = stored.get("created_at")
    ok = isinstance(created, str | int | float) and not isinstance(created, bool)
    return {"created_at": created if ok else None, "updated_at": now}


def _fixed(body: dict[str, Any], field: str, value: object, why: str) -> dict[str, Any]:
    """``{field: value}``: a field that cannot change; the body may only repeat it."""
    if field in body and body[field] != value:
        raise InvalidBody(f"{field} differs", public_message=why, field=field)
    return {field: value}


def _stored_text(stored: dict[str, Any], field: str) -> str | None:
    value = stored.get(field)
    return value if isinstance(value, str) else None


def _body_id(body: dict[str, Any]) -> str | None:
    """The ``id`` the admin gave (None: one is generated)."""
    given = body.get("id")
    if given is None:
        return None
    if not isinstance(given, str) or not valid_target_id(given):
        raise InvalidBody(
            "bad id", public_message=f"id must be a string matching {ID_PATTERN}", field="id"
        )
    return given


def _valid(kind: Kind, tid: str, doc: dict[str, Any]) -> Target:
    item = validated(kind.key(tid), doc)
    assert isinstance(item, kind.struct)
    return item


# ---------------------------------------------------------------------------- writes


async def create(scope: ConfigScope, kind: Kind, body: dict[str, Any], app_id: str = "") -> Target:
    """A new target from ``body`` (a resource: of app ``app_id``, whose project it takes).

    Validated before any Redis call; the id is the body's, or a fresh ``{letter}_...``
    (another one is drawn on the unlikely collision).
    """
    given = _body_id(body)
    doc = {**body, **_times(body, None)}
    if kind is RESOURCE:
        doc.update(_fixed(body, "app_id", app_id, "app_id must be the path's app"))
        # the app's project, read in the transaction; a placeholder to validate the rest
        doc.setdefault("project_id", "p")
    first = given or new_id(kind.letter)
    template = _valid(kind, first, {**doc, "id": first})

    async def write(txn: Txn) -> Target:
        tid = given or new_id(kind.letter)
        key = kind.key(tid)
        await txn.watch(key)
        if await txn.exists(key):
            if given is None:
                raise WatchError("generated id taken")  # 2**-70: draw another
            raise kind.exists()
        item = msgspec.structs.replace(template, id=tid)
        app_raw = None
        if isinstance(item, ResourceTarget):
            app_raw, app = await _app(txn, app_id)
            if "project_id" in body and body["project_id"] != app.project_id:
                raise InvalidBody(
                    "project differs",
                    public_message="project_id must be the app's project",
                    field="project_id",
                )
            item = msgspec.structs.replace(item, project_id=app.project_id)
        await _check_project(txn, item.project_id)
        pipe = txn.writes()
        pipe.set(key, encode(item))
        if app_raw is not None:
            pipe.set(keys.app(app_id), app_raw)  # unchanged: see the module's docstring
        return item

    # watched from the start: what the checks read first (the target's key is watched in
    # the body, as a generated id may change between attempts)
    start = keys.app(app_id) if kind is RESOURCE else keys.project(template.project_id)
    return await transaction(scope, [start], write)


async def replace(scope: ConfigScope, kind: Kind, tid: str, body: dict[str, Any]) -> Target:
    """``PUT``: the stored target replaced by ``body`` (fields left out take their
    defaults); ``id``, ``project_id`` and ``app_id`` are the stored ones."""
    key = kind.key(tid)

    async def write(txn: Txn) -> Target:
        stored = loose_doc(await visible_raw(txn.reader, scope, key, kind.not_found))
        doc = {**body, **_times(body, stored)}
        doc.update(_fixed(body, "id", tid, "id does not match the path (an id never changes)"))
        for field in ("project_id", "app_id") if kind is RESOURCE else ("project_id",):
            # a hand-written record without a usable one takes the body's
            value = _stored_text(stored, field)
            if value is not None:
                why = f"{field} cannot change: delete the record and create it again"
                doc.update(_fixed(body, field, value, why))
        item = _valid(kind, tid, doc)
        if isinstance(item, ResourceTarget):
            _, app = await _app(txn, item.app_id, "app_id")
            if app.project_id != item.project_id:
                raise InvalidBody(
                    "project differs",
                    public_message="project_id must be the app's project",
                    field="project_id",
                )
        await _check_project(txn, item.project_id)
        pipe = txn.writes()
        pipe.set(key, encode(item))
        return item

    return await transaction(scope, [key], write)


async def delete(scope: ConfigScope, kind: Kind, tid: str) -> None:
    key = kind.key(tid)

    async def write(txn: Txn) -> None:
        await visible_raw(txn.reader, scope, key, kind.not_found)
        txn.writes().delete(key)

    await transaction(scope, [key], write)


async def delete_app(scope: ConfigScope, app_id: str) -> list[str]:
    """The app and every resource naming it, in one transaction; the resources' ids.

    A resource is the app's when its stored ``app_id`` says so, read leniently: a resource
    the loader refuses (a hand edit) still goes with its app.
    """
    key = keys.app(app_id)

    def its_own(raw: bytes | str) -> bool:
        return loose_doc(raw).get("app_id") == app_id

    async def write(txn: Txn) -> list[str]:
        await visible_raw(txn.reader, scope, key, APP.not_found)
        found = await scan_values(
            txn.reader, keys.APP_RESOURCE + "*", lambda k: classify_key(k) == "app_resource"
        )
        candidates = [k for k, raw in found.items() if its_own(raw)]
        owned: list[str] = []
        if candidates:
            await txn.watch(*candidates)  # then read again: what is deleted is what was seen
            raws = await txn.mget(candidates)
            owned = [k for k, raw in zip(candidates, raws, strict=True) if raw and its_own(raw)]
        txn.writes().delete(key, *owned)
        return [as_text(k)[len(keys.APP_RESOURCE) :] for k in owned]

    return await transaction(scope, [key], write)
