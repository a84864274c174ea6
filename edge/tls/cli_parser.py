"""The arguments of ``edge cert ...`` (kept apart from :mod:`edge.tls.cli`, whose imports
of Redis and cryptography only the ``cert`` command itself pays for)."""

from __future__ import annotations

import argparse

__all__ = ["add_cert_parser"]


def add_cert_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cert`` and its subcommands to the ``edge`` subparsers ``sub``."""
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

    lst = command("list", "list the certificate records (cert:*)")
    lst.add_argument("--json", action="store_true", help="print a JSON array")

    show = command("show", "show one certificate (never its private key)")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--pem", action="store_true", help="also print the certificate chain")
    show.add_argument("--json", action="store_true", help="print a JSON object")

    delete = command("delete", "delete cert:NAME and the cert:domain: keys pointing at it")
    delete.add_argument("name", metavar="NAME")
