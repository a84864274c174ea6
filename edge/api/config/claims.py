"""Which names a wildcard may claim, for a token other than the admin.

A wildcard proxy ``*.zone`` serves every name under ``zone`` that has no proxy of its own,
so it may only cover names no other owner holds: a token other than the admin may claim
``*.zone`` only if no proxy and no certificate domain under it (any name ending in
``.zone``, the wildcard itself included) belongs to another owner. Records with no owner
and keys written by hand are the admin's. A wildcard of a single-label zone (``*.com``,
``*.test``) would take a whole top-level domain: the admin's to create.

The other way round, a wildcard another token holds makes its zone that token's: a token
other than the admin may not create an exact name under it either (the exact proxy would
beat the wildcard when routing, and so take over a name its owner serves). A wildcard
with no owner (the admin's, or written by hand) is a catch-all that leaves the names under
it free. The admin may claim anything.

The check runs inside the write's transaction; the caller's own records it reads are
watched, so one handed to another owner before ``EXEC`` makes the write run again.
"""

from __future__ import annotations

from edge.api.config.store import ConfigScope, loose_doc, owner_of
from edge.api.http import Conflict, Forbidden
from edge.api.tokens.store import ADMIN_NAME, record_key
from edge.auth.secrets import same_hash
from edge.config.schema import classify_key
from edge.store import keys
from edge.store.scan import as_text, scan_values
from edge.store.transaction import Txn

__all__ = ["check_wildcard_claim"]


def _any_case(text: str) -> str:
    """A SCAN pattern matching ``text`` in any letter case (``*`` matched literally)."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else ("\\*" if c == "*" else c) for c in text)


def _under(name: str, zone: str) -> bool:
    """Whether a ``*.zone`` wildcard covers ``name`` or is ``name``: it ends in ``.zone``."""
    return name.lower().endswith("." + zone)


async def _held(txn: Txn, zone: str) -> dict[str, tuple[str, str | None]]:
    """Every key naming something under ``zone``: key -> (name, owner)."""
    held: dict[str, tuple[str, str | None]] = {}
    # proxy:*.zone matches every proxy key ending in ".zone": deeper names, wildcards
    proxies = await scan_values(txn.reader, keys.PROXY + "*." + _any_case(zone))
    for key, raw in proxies.items():
        if classify_key(key) == "proxy":
            held[key] = (key[len(keys.PROXY) :].lower(), owner_of(raw))
    certs = await scan_values(txn.reader, keys.CERT + "*", lambda k: classify_key(k) == "cert")
    owners = {key[len(keys.CERT) :]: owner_of(raw) for key, raw in certs.items()}
    for key, raw in certs.items():
        domains = loose_doc(raw).get("domains")
        for domain in domains if isinstance(domains, list) else ():
            if isinstance(domain, str) and _under(domain, zone):
                held[key] = (domain.lower(), owners[key[len(keys.CERT) :]])
                break
    # a domain mapped to a certificate by hand: its certificate's owner (none: the admin)
    domains = await scan_values(txn.reader, keys.CERT_DOMAIN + "*." + _any_case(zone))
    for key, raw in domains.items():
        held[key] = (key[len(keys.CERT_DOMAIN) :].lower(), owners.get(as_text(raw).strip()))
    return held


async def check_wildcard_claim(txn: Txn, scope: ConfigScope, hostname: str) -> None:
    """Refuse (403/409, naming ``hostname``) a name the caller may not claim.

    ``txn`` is the write's transaction, still reading.
    """
    caller = scope.caller
    if caller.is_admin:
        return
    if not hostname.startswith("*."):
        await _check_exact_claim(txn, scope, hostname)
        return
    # a wildcard inside another token's zone takes its names too (the most specific
    # wildcard wins): the same rule as for an exact name
    await _check_exact_claim(txn, scope, hostname)
    zone = hostname[2:]
    if "." not in zone:
        raise Forbidden(
            "single-label wildcard",
            public_message=f"{hostname} would cover a whole top-level domain: only the admin "
            "token may create it",
            field="hostname",
        )
    mine: list[str] = []
    for key, (name, owner) in sorted((await _held(txn, zone)).items()):
        if owner is None or not same_hash(owner, caller.token_hash):
            raise Conflict(
                "wildcard covers another owner's name",
                code="wildcard_conflict",
                public_message=f"{hostname} would cover {name}, which another owner holds",
                field="hostname",
            )
        mine.append(key)
    if mine:
        await txn.watch(*mine)


async def _check_exact_claim(txn: Txn, scope: ConfigScope, hostname: str) -> None:
    """Refuse (409) a name (exact or wildcard) under a wildcard that another token holds."""
    labels = hostname.split(".")
    # every wildcard above the name (for "*.a.b": "*.b"; the name itself is not above it)
    above = [keys.proxy("*." + ".".join(labels[i:])) for i in range(1, len(labels))]
    above = [key for key in above if key != keys.proxy(hostname)]
    if not above:
        return
    admin_key = record_key(ADMIN_NAME)
    await txn.watch(*above, admin_key)
    values = await txn.mget(above)
    admin_hash = loose_doc(await txn.get(admin_key)).get("hash")
    for key, raw in zip(above, values, strict=True):
        if raw is None:
            continue
        owner = owner_of(raw)
        if owner is None or (isinstance(admin_hash, str) and same_hash(owner, admin_hash)):
            continue  # the admin's catch-all
        if not same_hash(owner, scope.caller.token_hash):
            raise Conflict(
                "name under another owner's wildcard",
                code="wildcard_conflict",
                public_message=f"{hostname} is under {key[len('proxy:') :]}, which another "
                "owner holds",
                field="hostname",
            )
