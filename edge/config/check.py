"""``edge check``: validate the settings, a seed file and every configuration key in Redis.

The keys are read from ``REDIS_URL``, or from the embedded Redis: its socket when it runs,
or else a copy of its data started on a private socket for the check (the state directory
is only read). Exit status 0: everything asked for was checked and is valid; 1: a problem,
or something that could not be checked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from edge.settings import RedisTarget, Settings, load_settings, redact_url

__all__ = ["check_redis", "embedded_data", "resolve_redis", "run_check"]

# what the embedded Redis keeps in the state directory (edge.embedded_redis)
_DATA = ("appendonlydir", "edge.aof", "dump.rdb")


def _config_values(redis: RedisTarget) -> dict[str, bytes]:
    """Every config key and its value (:class:`WrongType` for another Redis type), read
    with one-shot blocking commands: no redis-py nor asyncio import for a command that
    reads once and exits (edge.store.oneshot)."""
    from edge.config.schema import CONFIG_KEY_PATTERNS, WrongType, classify_key
    from edge.store.oneshot import open_reader

    reader = open_reader(redis)
    try:
        keys: set[str] = set()
        for pattern in CONFIG_KEY_PATTERNS:
            keys.update(k for k in reader.scan(pattern) if classify_key(k) is not None)
        found = reader.mget(sorted(keys))
        missing = [k for k, v in found.items() if v is None]
        # MGET answers nil for another type too: TYPE tells those from absent keys
        kinds = reader.types(missing)
    finally:
        reader.close()
    values = {k: v for k, v in found.items() if v is not None}
    values.update({k: WrongType(kind.encode()) for k, kind in kinds.items() if kind != "none"})
    return values


def check_redis(redis: RedisTarget, out: TextIO) -> int:
    """Decode every config key; print each problem with its key and field. Returns count.

    A rejected value is reported whether or not the edge still serves the key's last good
    value: this reads Redis, not what the workers hold.
    """
    values = _config_values(redis)
    if not values:
        print("0 config keys checked, 0 problem(s)", file=out)
        return 0
    from edge.config.schema import ConfigError, WrongType, decode_item
    from edge.tls.material import CertRecord, validate_record

    problems = 0
    for key in sorted(values):
        raw = values[key]
        try:
            if isinstance(raw, WrongType):
                raise ConfigError(key, None, f"holds a {raw.decode()}, expected a string")
            item = decode_item(key, raw)
            if isinstance(item, CertRecord):
                # the material too: what a worker would refuse to serve
                _, info = validate_record(key, item, allow_expired=True)
                if info.expired:
                    print(f"warning: {key}: certificate expired on {info.not_after}", file=out)
        except ConfigError as exc:
            # every problem of the document, one a line: "error: key: field 'f': message"
            for problem in exc.problems:
                problems += 1
                print(f"error: {key}: {problem.describe()}", file=out)
    print(f"{len(values)} config keys checked, {problems} problem(s)", file=out)
    return problems


def embedded_data(state_dir: str) -> list[Path]:
    """The embedded Redis's data files in ``state_dir`` (OSError: cannot be read)."""
    base = Path(state_dir)
    os.listdir(base)  # PermissionError / FileNotFoundError said plainly by the caller
    return [base / name for name in _DATA if (base / name).exists()]


class Unresolved(Exception):
    """The Redis to read cannot be found; the message says what to pass."""


def resolve_redis(
    settings: Settings, env_file: str | None, err: TextIO = sys.stderr
) -> tuple[Settings, str | None]:
    """The settings whose Redis to read and its URL (None: the embedded one, not running).

    Without ``REDIS_URL`` the embedded socket in ``EDGE_STATE_DIR`` is used, as ``edge
    serve`` does. When that socket is absent and neither ``--env-file`` nor
    ``EDGE_STATE_DIR`` says where to look, the one edge running on this machine is used
    (its workers' environment), said on ``err``; several, or one this user cannot read:
    :class:`Unresolved` naming the ``--env-file`` to pass.
    """
    from edge.embedded_redis import socket_path, socket_url

    if settings.redis_url is not None:
        return settings, settings.redis_url
    if socket_path(settings.state_dir).exists():
        return settings, socket_url(settings.state_dir)
    if env_file is not None or "EDGE_STATE_DIR" in os.environ:
        return settings, None
    from edge.locate import LocateError, running_edge_environ

    try:
        environ, edge = running_edge_environ()
    except LocateError as exc:
        if "no edge is running" in str(exc):
            return settings, None
        raise Unresolved(
            f"REDIS_URL is not set and there is no embedded redis socket at "
            f"{socket_path(settings.state_dir)}; {exc}"
        ) from None
    found = load_settings(environ)
    print(f"using the redis of the edge running as {edge.describe()}", file=err)
    return found, found.redis_url


def _check_seed(path: str, out: TextIO) -> int:
    from edge.config.seed import SeedError, load_seed

    try:
        loaded = load_seed(path)
    except SeedError as exc:
        print(f"error: {exc}", file=out)
        return 1
    for warning in loaded.warnings:
        print(f"warning: seed file {path}: {warning}", file=out)
    print(f"seed file {path}: {len(loaded.keys)} keys, ok", file=out)
    return 0


def _check_stopped(settings: Settings, out: TextIO) -> int:
    """Check the keys of a stopped embedded Redis: its data copied and served on a
    private socket, then thrown away (the state directory is only read)."""
    from edge.embedded_redis import EmbeddedRedis, EmbeddedRedisError
    from edge.store.oneshot import OneShotError

    state = settings.state_dir
    try:
        found = embedded_data(state)
    except FileNotFoundError:
        print(
            f"redis: embedded, not running and never started in EDGE_STATE_DIR={state}: "
            "no config keys yet",
            file=out,
        )
        return 0
    except OSError as exc:
        print(f"error: EDGE_STATE_DIR={state}: cannot read it ({exc.strerror})", file=out)
        return 1
    if not found:
        print(
            f"redis: embedded, not running, no data in EDGE_STATE_DIR={state}: no config keys",
            file=out,
        )
        return 0
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edge-check-") as scratch:
        try:
            for path in found:
                copy = Path(scratch) / path.name
                if path.is_dir():
                    shutil.copytree(path, copy)
                else:
                    shutil.copy2(path, copy)
        except OSError as exc:
            print(f"error: EDGE_STATE_DIR={state}: cannot read its data ({exc})", file=out)
            return 1
        embedded = EmbeddedRedis(scratch)
        try:
            url = embedded.start()
            print(f"redis: embedded, not running: its data in {state} checked offline", file=out)
            problems = check_redis(settings.redis_target(url), out)
        except (EmbeddedRedisError, OSError, OneShotError) as exc:
            print(f"error: embedded redis data in {state}: {exc}", file=out)
            return 1
        finally:
            embedded.stop()
    return 1 if problems else 0


def run_check(
    settings: Settings,
    out: TextIO = sys.stdout,
    *,
    seed_file: str | None = None,
    env_file: str | None = None,
) -> int:
    print("settings: ok", file=out)
    status = 0
    seed_file = seed_file or settings.seed_file
    if seed_file:
        status = _check_seed(seed_file, out)
    try:
        settings, url = resolve_redis(settings, env_file)
    except Unresolved as exc:
        print(f"error: {exc}", file=out)
        return 1
    if url is None:
        return _check_stopped(settings, out) or status
    try:
        problems = check_redis(settings.redis_target(url), out)
    except Exception as exc:  # any connection failure is a check failure, said plainly
        print(f"error: redis at {redact_url(url)}: {exc}", file=out)
        return 1
    return 1 if problems or status else 0
