"""The arguments of ``edge cert ...`` (kept apart from :mod:`edge.tls.cli`, whose imports
of Redis and cryptography only the ``cert`` command itself pays for)."""

from __future__ import annotations

import argparse
from typing import TypeAlias

__all__ = ["LIST_DESCRIPTION", "add_cert_parser", "add_list_parser"]


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


def add_cert_parser(sub: Sub, common: argparse.ArgumentParser) -> None:
    """Add ``cert`` and its subcommands to the ``edge`` subparsers ``sub`` (``common``:
    the client options, which ``list`` takes)."""
    from edge.cli_help import examples

    cert = sub.add_parser(
        "cert",
        help="import, list, show and delete TLS certificates in Redis",
        description="Import, list, show and delete the TLS certificates in Redis (cert:*).\n"
        "Without --env-file: REDIS_URL, the embedded Redis in EDGE_STATE_DIR, or else\n"
        "the one edge running on this machine.",
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
