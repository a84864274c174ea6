"""Environment variables that look like mistyped edge settings, found at start-up.

A setting whose name is misspelled (``EDGE_WORKER=8``) is silently ignored: the edge runs
with the default and nothing says why. This names such variables so that ``edge serve``
logs them and ``edge check`` prints them: an unknown name that begins like the known
settings do (``EDGE_``, ``REDIS_``, ``PROXY_``, ... taken from the names themselves) or
that is a known name in the wrong case. Names other software sets in an ordinary
environment (``HTTP_PROXY``, Kubernetes service links such as ``REDIS_SERVICE_HOST``) are
left alone. Values are never looked at for the message: a mistyped ``REDIS_PASWORD``
holds a secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from pathlib import Path

from edge.settings import ENV_NAMES, read_env_file

__all__ = [
    "CLIENT_ENV_NAMES",
    "KNOWN_NAMES",
    "PREFIXES",
    "UnknownSetting",
    "find_unknown",
    "inline_comments",
    "unknown_settings",
]

#: Read by the client commands (``edge.client.config``), not by the server.
CLIENT_ENV_NAMES: tuple[str, ...] = ("API_URL", "TOKEN", "EDGE_PROFILE")
KNOWN_NAMES: frozenset[str] = frozenset(ENV_NAMES) | frozenset(CLIENT_ENV_NAMES)
#: The first word of every known name that has more than one: ``REDIS`` of ``REDIS_URL``.
PREFIXES: frozenset[str] = frozenset(name.split("_", 1)[0] for name in KNOWN_NAMES if "_" in name)

# set by other software in an ordinary environment, sharing a prefix with our settings
_WELL_KNOWN: frozenset[str] = frozenset(
    {
        # proxies of curl, pip, requests, Go, ... (also in lowercase)
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY_REQUEST_FULLURI",
        "HTTPS_PROXY_REQUEST_FULLURI",
        # CGI and web-server templates
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_ADDR",
        "SERVER_SOFTWARE",
        "SERVER_PROTOCOL",
        "SERVER_ADMIN",
        # the official redis image
        "REDIS_VERSION",
        "REDIS_DOWNLOAD_URL",
        "REDIS_DOWNLOAD_SHA",
    }
)
# Kubernetes service links ({SERVICE}_SERVICE_HOST, {SERVICE}_PORT_6379_TCP_ADDR, ...), also
# Docker's legacy links: a service called "redis", "api" or "edge" is common. (Docker's
# {ALIAS}_ENV_{NAME} copies are not skipped: that would hide EDGE_ENV_FILE.)
_SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)"
)
# {SERVICE}_PORT and {ALIAS}_NAME are links only by their value: REDIS_PORT=6379 is a guess
_LINK_VALUE = {"PORT": re.compile(r"(tcp|udp|sctp)://"), "NAME": re.compile(r"/")}
# other tools' names for what edge reads from one setting: closer in meaning than in letters
# (difflib would offer REDIS_PASSWORD for REDIS_PORT)
_ALIASES: dict[str, str] = {
    "REDIS_HOST": "REDIS_URL",
    "REDIS_PORT": "REDIS_URL",
    "REDIS_DB": "REDIS_URL",
    "REDIS_ADDR": "REDIS_URL",
    "REDIS_USER": "REDIS_USERNAME",
    "REDIS_PASS": "REDIS_PASSWORD",
}
# a close match to any known name beats the closest one of the same prefix
# (HTTP_PROTOCOL_PORT means PROXY_PROTOCOL_PORT, not HTTP_PORT); below this, stay in the prefix
_CLOSE = 0.75


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownSetting:
    """A variable edge does not read, and the setting it probably means."""

    name: str
    suggestion: str
    source: str | None = None  # the env file it is in; None: the process environment

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        return f"unknown setting {self.name}{where} (did you mean {self.suggestion}?)"


def _is_other_software(upper: str, value: str) -> bool:
    if upper in _WELL_KNOWN or _SERVICE_LINK.fullmatch(upper):
        return True
    _, _, last = upper.rpartition("_")
    pattern = _LINK_VALUE.get(last)
    return pattern is not None and pattern.match(value) is not None


def _suggestion(upper: str, prefix: str) -> str:
    if upper in _ALIASES:
        return _ALIASES[upper]
    close = difflib.get_close_matches(upper, KNOWN_NAMES, n=1, cutoff=_CLOSE)
    if close:
        return close[0]
    family = [name for name in KNOWN_NAMES if name.startswith(prefix + "_")]
    return difflib.get_close_matches(upper, sorted(family), n=1, cutoff=0.0)[0]


def _check(name: str, value: str) -> str | None:
    """The setting ``name`` probably means, or None when it is not a setting's typo."""
    if name in KNOWN_NAMES:
        return None
    upper = name.upper()
    if upper in KNOWN_NAMES:
        return upper  # the right name in the wrong case: environment names are exact
    if _is_other_software(upper, value):
        return None
    prefix, sep, _ = upper.partition("_")
    if not sep or prefix not in PREFIXES:
        return None
    return _suggestion(upper, prefix)


def find_unknown(env: Mapping[str, str], source: str | None = None) -> list[UnknownSetting]:
    """The variables of ``env`` that look like mistyped settings, by name."""
    found = []
    for name in sorted(env):
        suggestion = _check(name, env[name])
        if suggestion is not None:
            found.append(UnknownSetting(name, suggestion, source))
    return found


def unknown_settings(environ: Mapping[str, str], env_file: str | None) -> list[UnknownSetting]:
    """Mistyped settings in the process environment and in ``env_file`` (``--env-file``).

    A name in both is reported once, for the environment (its value is the one read).
    Call it once :func:`~edge.settings.environment` has read the same file: it reads
    it again, to know which names come from it.
    """
    found = {u.name: u for u in find_unknown(read_env_file(env_file), env_file)} if env_file else {}
    found.update((u.name, u) for u in find_unknown(environ))
    return [found[name] for name in sorted(found)]


def inline_comments(environ: Mapping[str, str], env_file: str | None) -> list[str]:
    """Settings whose value holds a comment (`` #``): systemd's ``EnvironmentFile=``
    keeps ``80  # public`` as the value, while ``--env-file`` drops the comment, so the
    two disagree. Lines of ``env_file`` and settings of the environment (where systemd
    put such a value); names only, never a value (it may be a secret)."""
    found = []
    if env_file:
        try:
            lines = Path(env_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []  # the settings' own reading reports that
        for lineno, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped.startswith("#") or "=" not in stripped:
                continue
            name, _, value = stripped.partition("=")
            if " #" in value or "\t#" in value:
                found.append(
                    f"{env_file}:{lineno}: {name.strip()}: a comment after the value; "
                    "systemd's EnvironmentFile= keeps it as part of the value: put it on "
                    "a line of its own"
                )
    for name in sorted(KNOWN_NAMES):
        value = environ.get(name, "")
        if " #" in value or "\t#" in value:
            found.append(
                f"{name} in the environment contains ' #': a comment that an "
                "EnvironmentFile= kept in the value? Put comments on lines of their own"
            )
    return found
