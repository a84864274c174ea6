"""The options every client command takes (``--api-url``, ``--token``, ``--format``...).

Kept apart from :mod:`edge.client.base` so that a command which only may call the API
(``edge cert list``) parses them without importing the HTTP client.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["API_OPTIONS", "DEFAULT_TIMEOUT", "FORMATS", "common_options"]

DEFAULT_TIMEOUT = 10.0
FORMATS = ("table", "json", "yaml", "csv")
# the options that say which edge's API to call (and so, for `edge cert list`, to call it)
API_OPTIONS = ("api_url", "token", "profile")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def common_options() -> argparse.ArgumentParser:
    """The options of every client command (accepted before or after the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a value given on the group is not reset by the subcommand's default
    s = argparse.SUPPRESS
    opts = common.add_argument_group("connection and output")
    opts.add_argument("--api-url", default=s, metavar="URL", help="the edge's admin API URL")
    opts.add_argument(
        "--token", default=s, metavar="TOKEN", help="the API token ('-' reads it from stdin)"
    )
    opts.add_argument("--profile", default=s, metavar="NAME", help="config file profile")
    opts.add_argument(
        "-o", "--format", default=s, choices=FORMATS, help="output format (default: table)"
    )
    opts.add_argument(
        "--timeout",
        default=s,
        type=_timeout,
        metavar="SECONDS",
        help=f"timeout of each HTTP call (default: {DEFAULT_TIMEOUT:g})",
    )
    opts.add_argument("--debug", default=s, action="store_true", help="show requests, tracebacks")
    return common
