"""The admin token of an embedded edge, out of the box.

On the first start of an edge that runs its own Redis (``REDIS_URL`` unset) without
``ADMIN_TOKEN``, the supervisor creates an admin token, saves it in ``admin-token`` in the
state directory (mode 0600, written atomically), and shows it once on the terminal: on
stderr when that is a terminal, else on the controlling terminal (``/dev/tty``) if there is
one; never in a log. The workers store its hash as the ``admin`` token, as they do for
``ADMIN_TOKEN`` (they read the file named by :data:`FILE_ENV`, each time they store it).
``edge login`` reads the file; ``edge admin-token rotate`` replaces the token in Redis, then
in the file. Redis only ever holds the token's hash.

Light on imports: the client (``edge login``) uses :func:`find_token_file`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.settings import RedisTarget

FILE_NAME = "admin-token"
#: set by the supervisor for its workers: the file whose token they store as the admin's
FILE_ENV = "EDGE_ADMIN_TOKEN_FILE"
#: where ``edge login`` looks when ``EDGE_STATE_DIR`` is not set: the quick start's state
#: directory (relative to the current one), then the default one
LOGIN_STATE_DIRS = (".edge-state", "/var/lib/edge")


class AdminTokenError(RuntimeError):
    """The token file cannot be read or written; the message names the file, never the token."""


def token_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FILE_NAME


def read_token(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise AdminTokenError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AdminTokenError(f"{path}: not an admin token") from None
    from edge.auth.secrets import looks_like_admin_token

    if not looks_like_admin_token(text):
        raise AdminTokenError(f"{path}: not an admin token (edge_ and 44 base58 characters)")
    return text


def write_token(path: Path, token: str) -> None:
    """Replace ``path`` with ``token`` atomically: a 0600 temporary file, then a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(token + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise AdminTokenError(f"{path}: cannot write the admin token ({exc.strerror})") from None


def ensure_token(state_dir: str) -> tuple[Path, str | None]:
    """The state directory's token file, created with a new token if missing; the new
    token (to be shown once), or None if the file was there."""
    path = token_path(state_dir)
    if path.exists():
        read_token(path)  # a broken file is an error now, not a worker retrying forever
        return path, None
    from edge.auth.secrets import new_admin_token

    token = new_admin_token()
    write_token(path, token)
    return path, token


def show_once(token: str, path: Path, what: str = "created an admin token") -> bool:
    """Write ``token`` to the terminal only: stderr if it is one, else ``/dev/tty``.
    False when there is no terminal (the token is then only in the file)."""
    text = (
        f"\nedge: {what} (shown once; saved in {path}, which `edge login` reads):\n\n"
        f"    {token}\n\n"
    )
    with contextlib.suppress(OSError, ValueError):
        if sys.stderr.isatty():
            sys.stderr.write(text)
            sys.stderr.flush()
            return True
    try:
        with open("/dev/tty", "w", encoding="utf-8") as tty:
            tty.write(text)
        return True
    except OSError:
        return False


def store(target: RedisTarget, token: str) -> bool:
    """Make ``token`` the ``admin`` token in the Redis at ``target`` (its hash, in the same
    transaction the workers use); True if Redis changed. The previous admin token is
    refused from then on."""
    import asyncio

    from edge.api.tokens.store import TokenStore
    from edge.store.client import RedisHandle

    async def run() -> bool:
        tokens = TokenStore(RedisHandle(target))
        try:
            return await tokens.bootstrap_admin(token)
        finally:
            await tokens.redis.close()

    return asyncio.run(run())


def find_token_file(env: Mapping[str, str]) -> Path | None:
    """The token file ``edge login`` uses: in ``EDGE_STATE_DIR`` if set, else in the first
    of :data:`LOGIN_STATE_DIRS` that has a readable one."""
    state = env.get("EDGE_STATE_DIR", "").strip()
    for directory in (state,) if state else LOGIN_STATE_DIRS:
        path = token_path(directory)
        if os.access(path, os.R_OK):
            return path.resolve()
    return None


__all__ = [
    "FILE_ENV",
    "AdminTokenError",
    "ensure_token",
    "find_token_file",
    "read_token",
    "show_once",
    "store",
    "token_path",
    "write_token",
]
