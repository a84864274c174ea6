"""The client side of the ``edge`` command line: commands that call an edge's admin API.

``edge login|logout|config|token|proxy|route|service|certs|resource|user|project|pat|logs``
(see ``docs/cli.md``). Settings come in layers (:mod:`edge.client.config`), calls go through
:mod:`edge.client.http` (a timeout on each) and answers are printed by
:mod:`edge.client.output`. A failure is one line on stderr, ``edge: ...``, and exit status
1 (2 for usage and settings problems); never a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.client.base import Sub

# the modules below are imported where used: importing this package for one of them
# (edge.client.options, by `edge cert list`) must not pull in the HTTP client

__all__ = ["add_client_parsers", "run_client"]


def add_client_parsers(sub: Sub, common: argparse.ArgumentParser | None = None) -> None:
    """Add the client commands to the ``edge`` subparsers ``sub`` (``common``: their
    options, also accepted before the command when the ``edge`` parser has them too)."""
    from edge.client.configs import add_config_parsers
    from edge.client.forward import add_forward_parser
    from edge.client.logs import add_logs_parsers
    from edge.client.oauth import add_oauth_parsers
    from edge.client.options import common_options
    from edge.client.people import add_people_parsers
    from edge.client.session import add_session_parsers
    from edge.client.targets import add_target_parsers
    from edge.client.tokens import add_token_parsers

    common = common_options() if common is None else common
    add_session_parsers(sub, common)
    add_token_parsers(sub, common)
    add_config_parsers(sub, common)
    add_people_parsers(sub, common)
    add_oauth_parsers(sub, common)
    add_target_parsers(sub, common)
    add_forward_parser(sub, common)
    add_logs_parsers(sub, common)


def run_client(args: argparse.Namespace) -> int:
    """Run a client command; its exit status. Never raises (but SystemExit)."""
    from edge.client.base import Context
    from edge.client.errors import ClientError, one_line

    ctx = Context(args)
    try:
        status = args.handler(ctx)
        return 0 if status is None else int(status)
    except ClientError as exc:
        print(f"edge: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("edge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (``edge proxy list | head``): quiet, like other tools
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as exc:  # a bug: one line unless asked for the details
        if ctx.debug:
            traceback.print_exc()
        detail = one_line(str(exc))[:200]
        print(
            f"edge: internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
            "(run again with --debug for a traceback)",
            file=sys.stderr,
        )
        return 1
