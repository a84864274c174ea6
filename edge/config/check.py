"""``edge check``: validate the settings and every configuration key in Redis."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from edge.config.redis_source import WrongType, scan_all
from edge.config.schema import ConfigError, decode_item
from edge.embedded_redis import socket_path, socket_url
from edge.settings import RedisTarget, Settings, redact_url
from edge.store.client import redis_client
from edge.tls.material import CertRecord, validate_record


async def check_redis(redis: RedisTarget, out: TextIO) -> int:
    """Decode every config key; print each problem with its key and field. Returns count.

    A rejected value is reported whether or not the edge still serves the key's last good
    value: this reads Redis, not what the workers hold.
    """
    client = redis_client(redis)
    try:
        values = await scan_all(client)
    finally:
        await client.aclose()
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


def run_check(settings: Settings, out: TextIO = sys.stdout) -> int:
    print("settings: ok", file=out)
    url = settings.redis_url
    if url is None:
        if not socket_path(settings.state_dir).exists():
            print(
                "redis: embedded (REDIS_URL unset) and not running; config keys are checked "
                "when the edge serves",
                file=out,
            )
            return 0
        url = socket_url(settings.state_dir)
    try:
        problems = asyncio.run(check_redis(settings.redis_target(url), out))
    except Exception as exc:  # any connection failure is a check failure, said plainly
        print(f"error: redis at {redact_url(url)}: {exc}", file=out)
        return 1
    return 1 if problems else 0
