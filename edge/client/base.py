"""What every client command shares: its options, its context, and small parsers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from edge.client.config import Settings, resolve
from edge.client.errors import ClientError
from edge.client.http import Api
from edge.client.options import DEFAULT_TIMEOUT, common_options
from edge.client.output import Column, Printer

__all__ = [
    "Context",
    "Handler",
    "Sub",
    "add_set_option",
    "command",
    "common_options",
    "group",
    "items",
    "key_values",
    "set_fields",
]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[["Context"], int | None]


def group(sub: Sub, name: str, help_text: str, common: argparse.ArgumentParser) -> Sub:
    """A command group (``edge proxy``) and the subparsers of its commands."""
    from edge.cli_help import examples

    parser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        parents=[common],
        epilog=examples(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands: Sub = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    return commands


def command(
    sub: Sub,
    name: str,
    help_text: str,
    handler: Handler,
    common: argparse.ArgumentParser,
    *,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A leaf command that runs ``handler(context)`` (also called by its ``aliases``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, parents=[common], aliases=list(aliases)
    )
    parser.set_defaults(handler=handler)
    return parser


@dataclass
class Context:
    """One command's parsed arguments, settings, API client and printer (made when used)."""

    args: argparse.Namespace
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    _settings: Settings | None = None
    _api: Api | None = None
    _out: Printer | None = None

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default)

    @property
    def debug(self) -> bool:
        return bool(self.option("debug", False))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            token = self.option("token")
            if token == "-":  # read from stdin: not in the process list nor the history
                token = sys.stdin.readline().strip()
                if not token:
                    raise ClientError("--token -: no token on stdin", 2)
            self._settings = resolve(
                self.env,
                api_url=self.option("api_url"),
                token=token,
                profile=self.option("profile"),
            )
        return self._settings

    @property
    def api(self) -> Api:
        if self._api is None:
            settings = self.settings
            self._api = Api(
                settings.api_url,
                settings.token,
                timeout=self.option("timeout", DEFAULT_TIMEOUT),
                debug=self.debug,
            )
        return self._api

    @property
    def out(self) -> Printer:
        if self._out is None:
            self._out = Printer(self.option("format", "table"), env=self.env)
        return self._out

    def list(self, doc: Any, key: str | None, columns: Sequence[Column]) -> int:
        self.out.records(items(doc, key), columns)
        return 0

    def show(self, doc: Any, status_fields: Sequence[str] = ("status",)) -> int:
        if not isinstance(doc, dict):
            raise ClientError("unexpected answer from the API: not a JSON object")
        self.out.record(doc, status_fields)
        return 0


def items(doc: Any, key: str | None) -> list[dict[str, Any]]:
    """The records of a list answer (``{key: [...]}``, or a bare list when ``key`` is None)."""
    found = doc.get(key) if isinstance(doc, dict) and key is not None else doc
    if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
        what = f"a {key!r} list" if key else "a list"
        raise ClientError(f"unexpected answer from the API: expected {what} of records")
    return found


def key_values(pairs: Sequence[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict (the value may be empty; the name may not)."""
    result: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ClientError(f"{option} {pair!r}: expected NAME=VALUE", 2)
        result[name.strip()] = value
    return result


def set_fields(doc: dict[str, Any], pairs: Sequence[str] | None) -> None:
    """Apply ``--set FIELD=VALUE`` options: the value as JSON if it parses, else a string."""
    for name, text in key_values(pairs, "--set").items():
        try:
            doc[name] = json.loads(text)
        except ValueError:
            doc[name] = text


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="set any field of the document (VALUE is JSON, or else a string); repeatable",
    )
