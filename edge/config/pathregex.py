"""Route path regular expressions, run by RE2: matching time is linear in the path length.

Python's ``re`` backtracks: a route such as ``^/(a+)+$`` and a 30-byte path keep a worker
busy for minutes, and a worker serves every host. RE2 (the ``google-re2`` package) never
backtracks, so it refuses what needs backtracking (backreferences, lookaround, atomic
groups, possessive repeats) and Python's ``\\Z`` (RE2 spells it ``\\z``); such patterns are
refused when the route is validated, never at request time.

Semantics users rely on are kept: a pattern matches from the start of the path (like
``re.match``), ``(?i)``, ``(?P<name>...)``, classes and counted repeats work as in Python.
"""

from __future__ import annotations

from typing import Any

import re2

__all__ = ["MAX_PATH_REGEX_LENGTH", "PATH_REGEX_MAX_MEM", "PathRegex", "compile_path_regex"]

# Longest pattern accepted, in characters: far beyond any real path pattern, short enough
# that validating one costs microseconds.
MAX_PATH_REGEX_LENGTH = 1024
# Memory RE2 may use for one compiled pattern (its program, then its DFA cache; RE2 falls
# back to a slower, still linear, matcher when the cache is full). A pattern whose program
# does not fit is refused: ``[\p{L}]{1000}`` is 14 characters but needs megabytes.
PATH_REGEX_MAX_MEM = 1 << 20


def _options() -> Any:
    options = re2.Options()
    options.max_mem = PATH_REGEX_MAX_MEM
    options.log_errors = False  # refusals are reported as config errors, not on stderr
    options.never_capture = True  # only whether it matches is used
    return options


_OPTIONS = _options()


class PathRegex:
    """A compiled route pattern: ``matches(path)`` anchors at the start of the path."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regex: Any = re2.compile(pattern, _OPTIONS)

    def matches(self, path: str) -> bool:
        # bytes in: the wrapper maps match offsets back to str offsets otherwise (3x slower)
        return self._regex.match(path.encode("utf-8", "surrogateescape")) is not None


def compile_path_regex(pattern: str) -> PathRegex:
    """Compile a route pattern; ValueError saying why RE2 refuses it."""
    if len(pattern) > MAX_PATH_REGEX_LENGTH:
        raise ValueError(
            f"invalid regular expression: longer than {MAX_PATH_REGEX_LENGTH} characters "
            f"({len(pattern)})"
        )
    try:
        return PathRegex(pattern)
    except UnicodeEncodeError:
        raise ValueError(f"invalid regular expression {pattern!r}: not valid Unicode") from None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"invalid regular expression {pattern!r}: {reason} (route patterns use RE2 "
            "syntax: no backreferences, lookaround, atomic groups or possessive repeats; "
            "\\z, not \\Z)"
        ) from None
