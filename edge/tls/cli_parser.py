"""The arguments of ``edge cert ...`` (kept apart from :mod:`edge.tls.cli`, whose imports
of Redis and cryptography only the ``cert`` command itself pays for)."""

from __future__ import annotations

import argparse
import math
from typing import TypeAlias

__all__ = ["LIST_DESCRIPTION", "add_cert_parser", "add_issue_parsers", "add_list_parser"]


Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

LIST_DESCRIPTION = """\
List the certificates: one table (NAME, DOMAINS, EXPIRES, DAYS, STATUS, PROBLEM), the
same whether they are read from Redis or through the admin API. 'edge cert list' and
'edge certs list' are the same command.

Where they are read from (--source api|redis says it outright):
  --env-file FILE                      Redis directly, with the settings of that file
  --api-url, --token or --profile,     the admin API (GET /api/v1/certificates/)
  API_URL, TOKEN or EDGE_PROFILE set,
  or a token saved by 'edge login'
  otherwise                            Redis directly: REDIS_URL, the embedded Redis in
                                       EDGE_STATE_DIR, or the one edge running here
                                       (works with the API down)

EXPIRES is the record's expires_at (written on import: the certificate's notAfter);
DAYS the whole days left, negative once expired. A record that cannot be served says
why under PROBLEM, marked '!'."""


def add_list_parser(commands: Sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``list`` in ``commands``: the one listing of both ``edge cert`` and ``edge certs``
    (run by :func:`edge.certs.listing.run_list`)."""
    lst = commands.add_parser(
        "list",
        help="list the certificates (from Redis, or through the API)",
        description=LIST_DESCRIPTION,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lst.add_argument("--env-file", help="read Redis with the settings (REDIS_URL) of this file")
    lst.add_argument(
        "--source",
        choices=("api", "redis"),
        help="read through the admin API or Redis directly (default: see above)",
    )
    lst.add_argument("--json", action="store_true", help="print a JSON array (as -o json)")
    lst.set_defaults(cert_list=True)
    return lst


ISSUE_DESCRIPTION = """\
Order a certificate from the edge's ACME CA, through the admin API: one DOMAIN orders
with POST /api/v1/certificates/, several with POST /api/v1/certificates/multi-domain.
The token used is recorded as the certificate's owner. The API answers at once (202);
the edge goes on with the order (pending, validating, issuing, then active or failed).

Without --wait the command prints the status document and exits 0. With --wait it
reads the status every second and prints one line per change of state, then exits
0 once active, 1 when the order failed (the CA's error and the next try on stderr),
or 124 when --timeout passes first (the order goes on: 'edge cert status NAME')."""

WAIT_TIMEOUT = 300.0


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return value


def _waiting_options() -> argparse.ArgumentParser:
    """The client options of ``create``, ``status`` and ``renew``: those of
    :func:`edge.client.options.common_options`, but ``--timeout`` bounds the whole command
    (the wait) rather than each HTTP call; the HTTP calls' own timeout, 10 s by default,
    is given before the group ('edge --timeout S cert ...') and never exceeds it."""
    from edge.client.options import DEFAULT_TIMEOUT, FORMATS

    options = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a value given before the group ('edge --token T cert ...') is kept
    s = argparse.SUPPRESS
    group = options.add_argument_group("connection and output")
    group.add_argument("--api-url", default=s, metavar="URL", help="the edge's admin API URL")
    group.add_argument(
        "--token", default=s, metavar="TOKEN", help="the API token ('-' reads it from stdin)"
    )
    group.add_argument("--profile", default=s, metavar="NAME", help="config file profile")
    group.add_argument(
        "-o", "--format", default=s, choices=FORMATS, help="output format (default: table)"
    )
    group.add_argument("--json", action="store_true", help="print JSON (as -o json)")
    group.add_argument("--debug", default=s, action="store_true", help="show requests, tracebacks")
    wait = options.add_argument_group("waiting")
    wait.add_argument(
        "--wait", action="store_true", help="follow the order until it is active or failed"
    )
    wait.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=_wait_seconds,
        default=WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long the command may take (default: {WAIT_TIMEOUT:g}); with --wait, "
        "exit status 124 when the order is still under way then (each HTTP call: at most "
        f"{DEFAULT_TIMEOUT:g}s, or 'edge --timeout S cert ...')",
    )
    return options


def add_issue_parsers(commands: Sub) -> None:
    """``create``, ``status`` and ``renew`` in ``commands``: ACME issuance through the admin
    API (run by :func:`edge.client.certs.run_cert_api`)."""
    waiting = _waiting_options()
    create = commands.add_parser(
        "create",
        help="order a certificate from the ACME CA (through the API)",
        description=ISSUE_DESCRIPTION,
        parents=[waiting],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name", metavar="NAME", help="certificate name (cert_name)")
    create.add_argument("domains", metavar="DOMAIN", nargs="+", help="the names to cover")
    create.add_argument("--staging", action="store_true", help="use the CA's staging directory")
    create.add_argument("--email", help="ACME account e-mail (default: the token's cert_email)")
    create.add_argument("--key-type", choices=("rsa", "ecdsa"), help="private key (default: rsa)")
    status = commands.add_parser(
        "status",
        help="show the state of a certificate's order (through the API)",
        description="Show a certificate's issuance: its state, domains, the last error and "
        "the next try, when it expires and when it is due for renewal "
        "(GET /api/v1/certificates/NAME/status). --wait follows an order under way "
        "(one 'edge cert create' answered 409 order_in_progress for, an automatic one...) "
        "as 'edge cert create --wait' does.",
        parents=[waiting],
    )
    status.add_argument("name", metavar="NAME")
    renew = commands.add_parser(
        "renew",
        help="renew an ACME certificate now (through the API)",
        description="Order a new certificate for the same names now "
        "(POST /api/v1/certificates/NAME/renew); an imported certificate cannot be renewed. "
        "--wait follows the order as 'edge cert create --wait' does.",
        parents=[waiting],
    )
    renew.add_argument("name", metavar="NAME")
    for parser in (create, status, renew):
        parser.set_defaults(cert_api=True)


def add_cert_parser(sub: Sub, common: argparse.ArgumentParser) -> None:
    """Add ``cert`` and its subcommands to the ``edge`` subparsers ``sub`` (``common``:
    the client options, which ``list`` takes)."""
    from edge.cli_help import examples

    cert = sub.add_parser(
        "cert",
        help="TLS certificates: import, list, show, delete; order from ACME (create, renew)",
        description="Import, list, show and delete the TLS certificates in Redis (cert:*).\n"
        "Without --env-file: REDIS_URL, the embedded Redis in EDGE_STATE_DIR, or else\n"
        "the one edge running on this machine.\n"
        "create, status and renew order certificates from the edge's ACME CA through the\n"
        "admin API (--api-url/--token/--profile, API_URL/TOKEN, or 'edge login').",
        epilog=examples("cert"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = cert.add_subparsers(dest="cert_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--env-file", help="read settings (REDIS_URL) from this .env file")
        return parser

    imp = command("import", "validate a certificate and its key and store them in Redis")
    imp.add_argument("name", metavar="NAME", help="certificate name (the key is cert:NAME)")
    imp.add_argument("--cert", required=True, help="PEM file: the leaf, then its issuers")
    imp.add_argument("--key", required=True, help="PEM file: the unencrypted private key")
    imp.add_argument(
        "--domains",
        help="comma-separated domains to serve (default: the certificate's SAN DNS names)",
    )
    imp.add_argument("--email", help="contact email stored with the record")
    imp.add_argument("--force", action="store_true", help="replace an existing cert:NAME")
    imp.add_argument(
        "--allow-expired", action="store_true", help="import even if the certificate expired"
    )

    add_list_parser(commands, common)

    show = command("show", "show one certificate (never its private key)")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--pem", action="store_true", help="also print the certificate chain")
    show.add_argument("--json", action="store_true", help="print a JSON object")

    delete = command("delete", "delete cert:NAME and the cert:domain: keys pointing at it")
    delete.add_argument("name", metavar="NAME")

    add_issue_parsers(commands)
