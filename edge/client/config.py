"""Client settings in layers: flags > environment > config file > defaults.

* API URL: ``--api-url`` > ``API_URL`` > ``api_url`` of the profile > ``http://127.0.0.1:9000``
* token:   ``--token`` > ``TOKEN`` > ``ADMIN_TOKEN`` > ``token`` of the profile > none
* profile: ``--profile`` > ``EDGE_PROFILE`` > ``default_profile`` of the file > ``default``

The file is ``$XDG_CONFIG_HOME/edge/config.toml`` (``~/.config/edge/config.toml`` when
``XDG_CONFIG_HOME`` is unset)::

    default_profile = "prod"

    [profiles.prod]
    api_url = "https://edge-api.example.com"
    token = "edge_..."

It is read with :mod:`tomllib` and written by :func:`write_config` (a small TOML subset:
tables, strings, numbers, booleans and lists of those; comments are not kept), atomically
(a temporary file in the same directory, then ``os.replace``) with mode 0600 in a directory
created with mode 0700, since it holds tokens. A token value is never printed: messages show
:func:`mask` of it at most.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.client.errors import ClientError

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_PROFILE",
    "PROFILE_KEYS",
    "Settings",
    "config_path",
    "dump_toml",
    "mask",
    "read_config",
    "resolve",
    "valid_profile_name",
    "write_config",
]

DEFAULT_API_URL = "http://127.0.0.1:9000"
DEFAULT_PROFILE = "default"
PROFILE_KEYS = ("api_url", "token")
_PROFILE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def mask(token: str | None) -> str:
    """A token fit to print: ``edge_abc…xyz`` (the start and the end), never the value."""
    if not token:
        return "(none)"
    if len(token) < 20:
        return "…"
    return f"{token[:8]}…{token[-3:]}"


def valid_profile_name(name: str) -> bool:
    return _PROFILE_RE.fullmatch(name) is not None


def config_path(env: Mapping[str, str]) -> Path:
    """Where the config file is (whether or not it exists)."""
    base = env.get("XDG_CONFIG_HOME", "").strip()
    if base and os.path.isabs(base):  # the XDG spec: a relative path is to be ignored
        root = Path(base)
    else:
        home = env.get("HOME", "").strip()
        try:
            root = (Path(home) if home else Path.home()) / ".config"
        except RuntimeError:  # no HOME and no passwd entry
            raise ClientError(
                "cannot find the config file: set HOME or XDG_CONFIG_HOME", 2
            ) from None
    return root / "edge" / "config.toml"


# ---------------------------------------------------------------------------- reading


def read_config(path: Path, *, warn: bool = True) -> dict[str, Any]:
    """The parsed file (``{}`` when there is none); ClientError (exit 2) when unreadable."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or type(exc).__name__}", 2) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"invalid config file {path}: {exc}", 2) from None
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ClientError(f"invalid config file {path}: [profiles.NAME] must be tables", 2)
    for name, profile in profiles.items():
        for key in PROFILE_KEYS:
            if key in profile and not isinstance(profile[key], str):
                raise ClientError(
                    f"invalid config file {path}: profiles.{name}.{key} must be a string", 2
                )
    default = doc.get("default_profile")
    if default is not None and not isinstance(default, str):
        raise ClientError(f"invalid config file {path}: default_profile must be a string", 2)
    has_token = any(p.get("token") for p in profiles.values())
    if warn and has_token and stat.S_IMODE(mode) & 0o077:
        print(
            f"edge: warning: {path} holds tokens and is readable by others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
            file=sys.stderr,
        )
    return doc


# ---------------------------------------------------------------------------- writing


def _key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _string(key)


def _string(value: str) -> str:
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(item, where) for item in value) + "]"
    raise ValueError(f"{where}: cannot write a {type(value).__name__} value")


def dump_toml(doc: Mapping[str, Any]) -> str:
    """``doc`` as TOML: plain keys first, then one ``[table]`` per nested mapping."""
    lines: list[str] = []

    def table(prefix: list[str], mapping: Mapping[str, Any]) -> None:
        plain = [(k, v) for k, v in mapping.items() if not isinstance(v, Mapping)]
        nested = [(k, v) for k, v in mapping.items() if isinstance(v, Mapping)]
        if prefix and (plain or not nested):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
        for key, value in plain:
            lines.append(f"{_key(key)} = {_value(value, '.'.join([*prefix, key]))}")
        for key, value in nested:
            table([*prefix, key], value)

    table([], doc)
    return "\n".join(lines) + "\n"


def write_config(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace the file with ``doc`` atomically; mode 0600, its directory made 0700."""
    import tempfile

    text = dump_toml(doc)
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
    except OSError as exc:
        raise ClientError(f"cannot write {path}: {exc.strerror or type(exc).__name__}", 1) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # mkstemp makes 0600 already; say it anyway
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ClientError(f"cannot write {path}: {exc.strerror or type(exc).__name__}", 1) from None


# ---------------------------------------------------------------------------- resolving


@dataclass(frozen=True, slots=True)
class Settings:
    """What a command runs with, and where each value came from (for ``edge config show``)."""

    config_path: Path
    profile: str
    profile_source: str
    api_url: str
    api_url_source: str
    token: str | None
    token_source: str | None

    def describe(self) -> dict[str, Any]:
        """The settings fit to print: the token masked."""
        return {
            "profile": self.profile,
            "profile_source": self.profile_source,
            "api_url": self.api_url,
            "api_url_source": self.api_url_source,
            "token": mask(self.token) if self.token else None,
            "token_source": self.token_source,
            "config_file": str(self.config_path),
        }


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def check_api_url(url: str, source: str) -> str:
    """``url`` without a trailing slash; ClientError (exit 2) unless it is http(s)://host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ClientError(f"invalid API URL {url!r} (from {source}): {exc}", 2) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(
            f"invalid API URL {url!r} (from {source}): expected http://host[:port] "
            "or https://host[:port]",
            2,
        )
    if parts.query or parts.fragment:
        raise ClientError(
            f"invalid API URL {url!r} (from {source}): no query or fragment allowed", 2
        )
    return url.rstrip("/")


def select_profile(
    doc: Mapping[str, Any], flag: str | None, env: Mapping[str, str]
) -> tuple[str, str]:
    """The profile name to use and where the choice came from."""
    if flag:
        name, source = flag, "--profile"
    elif (value := _env(env, "EDGE_PROFILE")) is not None:
        name, source = value, "env EDGE_PROFILE"
    elif isinstance(doc.get("default_profile"), str):
        name, source = doc["default_profile"], "default_profile in the config file"
    else:
        name, source = DEFAULT_PROFILE, "default"
    if not valid_profile_name(name):
        raise ClientError(
            f"invalid profile name {name!r} (from {source}): use 1 to 64 of A-Z a-z 0-9 _ -", 2
        )
    return name, source


def resolve(
    env: Mapping[str, str],
    *,
    api_url: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    must_exist: bool = True,
) -> Settings:
    """The layered settings. ``must_exist``: a profile chosen by name must be in the file."""
    path = config_path(env)
    doc = read_config(path)
    name, profile_source = select_profile(doc, profile, env)
    profiles = doc.get("profiles", {})
    section = profiles.get(name)
    if section is None:
        if must_exist and profile_source != "default":
            raise ClientError(f"no profile {name!r} in {path} (create it with: edge login)", 2)
        section = {}
    where = f"profile {name!r} of {path}"
    if api_url:
        url, url_source = api_url, "--api-url"
    elif (value := _env(env, "API_URL")) is not None:
        url, url_source = value, "env API_URL"
    elif section.get("api_url"):
        url, url_source = section["api_url"], where
    else:
        url, url_source = DEFAULT_API_URL, "default"
    secret: str | None
    if token:
        secret, token_source = token, "--token"
    elif (value := _env(env, "TOKEN")) is not None:
        secret, token_source = value, "env TOKEN"
    elif (value := _env(env, "ADMIN_TOKEN")) is not None:
        secret, token_source = value, "env ADMIN_TOKEN"
    elif section.get("token"):
        secret, token_source = section["token"], where
    else:
        secret, token_source = None, None
    return Settings(
        config_path=path,
        profile=name,
        profile_source=profile_source,
        api_url=check_api_url(url, url_source),
        api_url_source=url_source,
        token=secret,
        token_source=token_source,
    )
