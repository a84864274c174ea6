"""``edge cert create|status|renew``: ACME issuance through the admin API.

* ``create NAME DOMAIN...``: ``POST /api/v1/certificates/`` (one domain) or
  ``POST /api/v1/certificates/multi-domain`` (several); the token calling is recorded as
  the certificate's owner, so these commands always go through the API (never Redis).
* ``status NAME``: ``GET /api/v1/certificates/{name}/status``.
* ``renew NAME``: ``POST /api/v1/certificates/{name}/renew``.

The API answers an order with ``202`` and its status document at once; the order itself
runs on the edge. With ``--wait`` the command follows it (``status --wait`` follows one
under way, whoever asked for it): it reads the status every second
and prints one line each time the state changes (``pending``, ``validating``, ``issuing``,
``active (expires ...)``), until the certificate is active (exit 0), the order failed
(exit 1, the CA's error and the next try on stderr) or ``--timeout`` passed
(exit :data:`EXIT_TIMEOUT`; the order goes on without the command).

Following an order is split in two: :class:`Progress` turns the documents read into the
lines to print and the outcome, without I/O or clock; :func:`follow` is the loop around it
(reading, sleeping, the deadline), each passed in.
"""

from __future__ import annotations

import argparse
import enum
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from edge.client.base import Context, Handler
from edge.client.errors import ClientError, one_line
from edge.client.http import segment
from edge.client.output import parse_time, relative_time

__all__ = [
    "EXIT_FAILED",
    "EXIT_TIMEOUT",
    "POLL_INTERVAL",
    "Outcome",
    "Progress",
    "follow",
    "progress_line",
    "run_cert_api",
    "status_view",
]

PATH = "/api/v1/certificates"
POLL_INTERVAL = 1.0  # seconds between two reads of the status while waiting
EXIT_FAILED = 1
EXIT_TIMEOUT = 124  # as timeout(1): distinct from a failure (1) and a usage error (2)
# the API's field -> the option (or argument) that set it, named in a 400's message
FLAGS = {
    "cert_name": "NAME",
    "domain": "DOMAIN",
    "domains": "DOMAIN...",
    "email": "--email",
    "staging": "--staging",
    "key_type": "--key-type",
}


class Outcome(enum.Enum):
    """How following an order ended."""

    ACTIVE = "active"  # the certificate is in place
    FAILED = "failed"  # the last try failed (another may be scheduled: next_try_at)
    TIMED_OUT = "timed out"  # still under way at the deadline


# the states that end the wait; "imported": a record took the name meanwhile, nothing to
# wait for
_ENDS = {"active": Outcome.ACTIVE, "imported": Outcome.ACTIVE, "failed": Outcome.FAILED}


def _state(doc: Mapping[str, Any]) -> str:
    return one_line(str(doc.get("status") or "unknown"))


def progress_line(doc: Mapping[str, Any]) -> str:
    """The line a state prints: its name, with the expiry once active and the next try
    once failed."""
    state = _state(doc)
    if state == "active" and doc.get("expires_at"):
        return f"active (expires {one_line(str(doc['expires_at']))})"
    if state == "failed":
        nxt = doc.get("next_try_at")
        return f"failed (next try {one_line(str(nxt))})" if nxt else "failed (no retry scheduled)"
    return state


class Progress:
    """The status documents of one order, in the order read: a line for each change of
    state, and the outcome once a state ends the wait. No I/O, no clock."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.outcome: Outcome | None = None

    def see(self, doc: Mapping[str, Any]) -> str | None:
        """Take one document; the line to print (None: the state did not change)."""
        state = _state(doc)
        self.outcome = _ENDS.get(state)
        if state == self.state:
            return None
        self.state = state
        return progress_line(doc)


def follow(
    first: Mapping[str, Any],
    read: Callable[[float], Mapping[str, Any]],
    emit: Callable[[str], None],
    *,
    timeout: float,
    interval: float = POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Outcome, Mapping[str, Any]]:
    """Follow an order from its document ``first`` (the 202's) until a state ends it or
    ``timeout`` seconds pass; the outcome and the last document read.

    ``read(seconds_left)`` reads the status again; ``emit`` prints a progress line. The
    status is read once more at the deadline, so a wait that ends there still sees it.
    """
    progress = Progress()
    deadline = clock() + timeout
    doc = first
    while True:
        line = progress.see(doc)
        if line is not None:
            emit(line)
        if progress.outcome is not None:
            return progress.outcome, doc
        left = deadline - clock()
        if left <= 0:
            return Outcome.TIMED_OUT, doc
        sleep(min(interval, left))
        doc = read(max(deadline - clock(), 0.0))


# ---------------------------------------------------------------------------- output


def status_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The status document as the labelled fields a person reads, most useful first
    (``edge cert status`` in the table format; times are shown relative to now too)."""
    view: dict[str, Any] = {
        "name": doc.get("cert_name"),
        "state": doc.get("status"),
        "domains": doc.get("domains") or [],
        "error": doc.get("error"),
        "next try": doc.get("next_try_at"),
        "expires": doc.get("expires_at"),
        "renew at": doc.get("renew_at"),
    }
    extra = {
        "attempts": doc.get("attempts"),
        "reason": doc.get("reason"),
        "key type": doc.get("key_type"),
        "staging": doc.get("staging"),
        "email": doc.get("email"),
        "CA": doc.get("directory_url"),
        "order": doc.get("order_url"),
        "requested": doc.get("requested_at"),
        "updated": doc.get("updated_at"),
    }
    # a document made from an imported record has none of these: left out, not "-"
    view.update({label: value for label, value in extra.items() if value not in (None, "")})
    return view


def _show(ctx: Context, doc: dict[str, Any]) -> None:
    if ctx.out.format == "table":
        ctx.out.record(status_view(doc), status_fields=("state",))
    else:
        ctx.out.record(doc)


def _when(value: object) -> str:
    """An ISO time with how far it is from now (``2031-01-01T00:00:00+00:00 (in 3d)``)."""
    text = one_line(str(value))
    moment = parse_time(text)
    if moment is None:
        return text
    return f"{text} ({relative_time(moment, datetime.now(UTC))})"


# ---------------------------------------------------------------------------- commands


def _document(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ClientError("unexpected answer from the API: not a JSON object")
    return doc


def _ordered(ctx: Context, doc: Any) -> int:
    """After a 202: the document (no ``--wait``), or follow the order to its end."""
    doc = _document(doc)
    if ctx.args.wait:
        return _follow(ctx, doc)
    _show(ctx, doc)
    name = one_line(str(doc.get("cert_name") or ctx.args.name))
    ctx.out.message(f"follow the order with: edge cert status {name} --wait")
    return 0


def _follow(ctx: Context, doc: dict[str, Any]) -> int:
    """Follow the order of ``doc`` until it ends or ``--timeout`` passes: the exit status.
    Progress lines go to stdout (stderr with ``-o json|yaml|csv``, which print the last
    document on stdout); a failure or the timeout is one ``edge: ...`` line on stderr."""
    name = one_line(str(doc.get("cert_name") or ctx.args.name))
    api = ctx.api
    per_call = api.timeout
    path = f"{PATH}/{segment(name)}/status"

    def read(left: float) -> Mapping[str, Any]:
        # a read never outlasts the wait by much: each call's timeout is at most what is left
        api.timeout = min(per_call, max(left, 1.0))
        return _document(api.call("GET", path))

    outcome, last = follow(doc, read, ctx.out.message, timeout=ctx.args.wait_timeout)
    if ctx.out.format != "table":  # the last document, for a script to read
        ctx.out.record(dict(last))
    if outcome is Outcome.ACTIVE:
        return 0
    if outcome is Outcome.FAILED:
        error = one_line(str(last.get("error") or "no error given"))
        nxt = last.get("next_try_at")
        then = f"; next try {_when(nxt)}" if nxt else "; no retry scheduled"
        print(f"edge: {name}: the order failed: {error}{then}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"edge: {name}: still {_state(last)} after {ctx.args.wait_timeout:g}s; the order "
        f"goes on (follow it with: edge cert status {name} --wait)",
        file=sys.stderr,
    )
    return EXIT_TIMEOUT


def cert_create(ctx: Context) -> int:
    args = ctx.args
    domains: list[str] = args.domains
    body: dict[str, Any] = {"cert_name": args.name}
    if len(domains) == 1:
        body["domain"] = domains[0]
        path = f"{PATH}/"
    else:
        body["domains"] = domains
        path = f"{PATH}/multi-domain"
    if args.email is not None:
        body["email"] = args.email
    if args.staging:
        body["staging"] = True
    if args.key_type is not None:
        body["key_type"] = args.key_type
    return _ordered(ctx, ctx.api.call("POST", path, body, flags=FLAGS))


def cert_renew(ctx: Context) -> int:
    doc = ctx.api.call("POST", f"{PATH}/{segment(ctx.args.name)}/renew", flags=FLAGS)
    return _ordered(ctx, doc)


def cert_status(ctx: Context) -> int:
    doc = _document(ctx.api.call("GET", f"{PATH}/{segment(ctx.args.name)}/status"))
    if ctx.args.wait:
        return _follow(ctx, doc)
    _show(ctx, doc)
    return 0


HANDLERS: dict[str, Handler] = {
    "create": cert_create,
    "status": cert_status,
    "renew": cert_renew,
}


def run_cert_api(args: argparse.Namespace) -> int:
    """Run ``edge cert create|status|renew`` (parsed by :mod:`edge.tls.cli_parser`) as a
    client command: settings, errors and exit statuses as every other one."""
    from edge.client import run_client

    handler = HANDLERS[args.cert_command]

    def bounded(ctx: Context) -> int | None:
        # no HTTP call outlasts --timeout, the bound of the whole command
        ctx.api.timeout = min(ctx.api.timeout, args.wait_timeout)
        return handler(ctx)

    args.handler = bounded
    if getattr(args, "json", False):
        args.format = "json"
    return run_client(args)
