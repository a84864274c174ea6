"""Seed files: ``{"keys": {key: value}}`` written to Redis when the edge starts.

Every key is validated as the workers would decode it (:func:`edge.config.schema.decode_item`,
certificates with their material) before anything is written: a seed file with one bad key
writes nothing. Without ``replace`` a key that exists is kept (``SET NX``); with it, every
key of the file is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.settings import RedisTarget

__all__ = ["Seed", "SeedError", "load_seed", "seed", "write_seed"]


class SeedError(RuntimeError):
    """The seed file cannot be read or applied; the message says why, without secrets."""


@dataclass(frozen=True)
class Seed:
    """A seed file's keys, each validated, as the strings to store."""

    path: str
    keys: dict[str, str] = field(repr=False)
    warnings: tuple[str, ...] = ()


def _problems(key: str, raw: str) -> list[str]:
    """What is wrong with ``raw`` as the value of ``key`` (empty: nothing)."""
    from edge.config.schema import ConfigError, classify_key, decode_item
    from edge.tls.material import CertRecord, validate_record

    if classify_key(key) is None:
        return []  # reported as a warning by load_seed
    try:
        item = decode_item(key, raw)
        if isinstance(item, CertRecord):
            validate_record(key, item, allow_expired=True)
    except ConfigError as exc:
        return [f"{key}: {problem.describe()}" for problem in exc.problems]
    return []


def load_seed(path: str) -> Seed:
    """Read and validate the seed file at ``path``; :class:`SeedError` listing every
    problem (one a line) when a key is invalid."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SeedError(f"seed file {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SeedError(f"seed file {path}: invalid JSON: {exc}") from None
    keys = data.get("keys", data) if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise SeedError(f'seed file {path}: expected a JSON object {{"keys": {{key: value}}}}')
    from edge.config.schema import classify_key

    values: dict[str, str] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for key, value in keys.items():
        raw = value if isinstance(value, str) else json.dumps(value)
        values[key] = raw
        if classify_key(key) is None:
            warnings.append(f"{key}: not a configuration key (the edge ignores it)")
        problems.extend(_problems(key, raw))
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise SeedError(f"seed file {path}: {count}, nothing written:\n  " + "\n  ".join(problems))
    return Seed(path, values, tuple(warnings))


def write_seed(redis_target: RedisTarget, loaded: Seed, *, replace: bool = False) -> int:
    """Write ``loaded``'s keys (``replace``: all of them; else only those absent); the
    number written."""
    import redis  # only a seed file needs it in the supervisor

    client = redis.Redis.from_url(
        redis_target.url, socket_timeout=5, **redis_target.client_kwargs()
    )
    written = 0
    try:
        for key, raw in loaded.keys.items():
            if client.set(key, raw, nx=not replace):
                written += 1
    except (redis.RedisError, OSError) as exc:
        raise SeedError(f"seed file {loaded.path}: cannot write to redis: {exc}") from None
    finally:
        client.close()
    return written


def seed(redis_target: RedisTarget, path: str, *, replace: bool = False) -> int:
    """Validate the seed file at ``path`` and write its keys; the number written."""
    return write_seed(redis_target, load_seed(path), replace=replace)
