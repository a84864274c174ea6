"""``edge token ...``: the API tokens (``/api/v1/tokens``)."""

from __future__ import annotations

import argparse
import sys

from edge.client.base import Context, Sub, command, group
from edge.client.errors import ClientError
from edge.client.http import segment
from edge.client.output import Column

__all__ = ["add_token_parsers"]

PATH = "/api/v1/tokens"
COLUMNS = (
    Column("NAME", "name"),
    Column("CERT_EMAIL", "cert_email"),
    Column("CREATED", "created_at"),
    Column("CREATED_BY", "created_by"),
)
FLAGS = {"name": "NAME", "cert_email": "--email"}


def _issued(ctx: Context, doc: object) -> int:
    ctx.show(doc)
    print(
        "edge: store the token now: it is shown this once (the edge keeps only its hash)",
        file=sys.stderr,
    )
    return 0


def token_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", f"{PATH}/"), "tokens", COLUMNS)


def token_create(ctx: Context) -> int:
    body: dict[str, object] = {"name": ctx.args.name}
    if ctx.args.email is not None:
        body["cert_email"] = ctx.args.email
    return _issued(ctx, ctx.api.call("POST", f"{PATH}/", body, flags=FLAGS))


def token_generate(ctx: Context) -> int:
    body = {"cert_email": ctx.args.email} if ctx.args.email is not None else None
    return _issued(ctx, ctx.api.call("POST", f"{PATH}/generate", body, flags=FLAGS))


def token_info(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/info"))


def token_email(ctx: Context) -> int:
    if (ctx.args.email is None) == (not ctx.args.clear):
        raise ClientError("give an EMAIL or --clear (not both)", 2)
    body = {"cert_email": None if ctx.args.clear else ctx.args.email}
    return ctx.show(ctx.api.call("PUT", f"{PATH}/email", body, flags={"cert_email": "EMAIL"}))


def token_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/{segment(ctx.args.name)}"))


def token_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{PATH}/{segment(ctx.args.name)}")
    ctx.out.message(f"deleted token {ctx.args.name} (and what it owned)")
    return 0


def add_token_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    tokens = group(sub, "token", "manage API tokens (/api/v1/tokens)", common)
    command(tokens, "list", "list the tokens (admin)", token_list, common)
    create = command(
        tokens, "create", "create a token; its value is shown once (admin)", token_create, common
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--email", help="contact e-mail for its certificates (cert_email)")
    generate = command(
        tokens, "generate", "create a token with a generated name (admin)", token_generate, common
    )
    generate.add_argument("--email", help="contact e-mail for its certificates (cert_email)")
    command(tokens, "info", "show the calling token's own record", token_info, common)
    email = command(
        tokens, "email", "set (or --clear) the calling token's cert_email", token_email, common
    )
    email.add_argument("email", metavar="EMAIL", nargs="?")
    email.add_argument("--clear", action="store_true", help="remove the e-mail address")
    show = command(tokens, "show", "show one token (admin)", token_show, common)
    show.add_argument("name", metavar="NAME")
    delete = command(
        tokens, "delete", "delete a token and every record it owns (admin)", token_delete, common
    )
    delete.add_argument("name", metavar="NAME")
