"""``/api/v1/certificates``: ACME issuance, asked for, followed and renewed.

* ``POST /api/v1/certificates/`` ``{"cert_name", "domain", "email"?, "staging"?,
  "key_type"?}`` and ``POST /api/v1/certificates/multi-domain`` (``"domains": [...]``):
  202 and the status document; the order runs on whichever node takes it
  (:mod:`edge.certs.acme`), and the caller's token is recorded as the owner.
* ``GET /api/v1/certificates/{name}/status``: the status document (a certificate with a
  record and no status document, imported or finished long ago, is described from its
  record).
* ``POST /api/v1/certificates/{name}/renew``: a new order for the same names now.

A caller other than the admin sees and renews only the certificates its token owns.
Nothing is written when a request is refused (400 naming the field, 404, 409).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from edge.api.config.store import ConfigScope, can_see, owner_of, read
from edge.api.http import Conflict, InvalidBody, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.certs.acme import records
from edge.certs.acme.order import CertStatus, check_domains
from edge.config.schema import ConfigError, classify_key
from edge.store import keys
from edge.tls.material import decode_cert

__all__ = ["AcmeDefaults", "add_acme_routes"]

PREFIX = "/api/v1/certificates"
_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_EMAIL_RE = re.compile(r"\A[^@\s]+@[^@\s]+\.[^@\s]+\Z")


@dataclass(frozen=True, slots=True)
class AcmeDefaults:
    """What a request leaves out: the CA (``ACME_DIRECTORY_URL`` / ``ACME_STAGING_URL``),
    the account's e-mail (the token's ``cert_email``, else ``ADMIN_EMAIL``), and who to
    tell that an order is waiting (this worker's ACME service, if it runs)."""

    directory_url: str
    staging_url: str
    admin_email: str | None = None
    token_email: Callable[[str], Awaitable[str | None]] | None = None
    kick: Callable[[], None] | None = None


class NewCertificate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cert_name: str
    domain: str
    email: str | None = None
    staging: bool = False
    key_type: Literal["rsa", "ecdsa"] = "rsa"


class NewMultiDomain(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cert_name: str
    domains: list[str]
    email: str | None = None
    staging: bool = False
    key_type: Literal["rsa", "ecdsa"] = "rsa"


def _not_found() -> NotFound:
    return NotFound(code="certificate_not_found", public_message="no certificate with this name")


def _invalid(field: str, message: str) -> InvalidBody:
    return InvalidBody(message, public_message=message, field=field)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name) or name.startswith(("domain:", "status:")):
        raise _invalid(
            "cert_name",
            "cert_name must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter "
            "or digit",
        )
    return name


def _document(status: CertStatus) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(status)
    return doc


class AcmeEndpoints:
    def __init__(self, defaults: AcmeDefaults) -> None:
        self.defaults = defaults

    async def _email(self, scope: ConfigScope, given: str | None) -> str | None:
        if given is not None:
            if not _EMAIL_RE.match(given):
                raise _invalid("email", "email must be an e-mail address such as ops@example.com")
            return given
        lookup = self.defaults.token_email
        if lookup is not None:
            found = await read(scope, lookup(scope.caller.name))
            if found:
                return found
        return self.defaults.admin_email

    async def _create(
        self,
        req: ApiRequest[ConfigScope],
        name: str,
        domains: tuple[str, ...],
        email: str | None,
        staging: bool,
        key_type: Literal["rsa", "ecdsa"],
    ) -> Response:
        scope = req.scope
        client = scope.redis.client
        d = self.defaults
        stamp = records.now_iso()
        wanted = CertStatus(
            cert_name=name,
            status="pending",
            domains=domains,
            email=await self._email(scope, email),
            directory_url=d.staging_url if staging else d.directory_url,
            staging=staging,
            key_type=key_type,
            reason="requested",
            owner_token_hash=scope.caller.token_hash,
            requested_at=stamp,
            updated_at=stamp,
        )
        raw = await read(scope, client.get(keys.cert(name)))
        if raw is not None:
            raise Conflict(
                "exists",
                code="certificate_exists",
                public_message="a certificate with this name exists (renew it, or delete it first)",
            )
        # a failed order waiting for its next try stands: DELETE cancels it
        status, created = await read(scope, records.request(client, wanted, replace_failed=False))
        if not created:
            if not can_see(scope, status.owner_token_hash):
                raise Conflict(
                    "exists",
                    code="certificate_exists",
                    public_message="a certificate with this name exists",
                )
            raise records.OrderInProgress(f"{name}: {status.status}")
        if d.kick is not None:
            d.kick()
        return Response(202, _document(status))

    async def create(self, req: ApiRequest[ConfigScope]) -> Response:
        body = await req.json(NewCertificate)
        assert body is not None
        name = _check_name(body.cert_name)
        domains = check_domains([body.domain], field="domain")
        return await self._create(req, name, domains, body.email, body.staging, body.key_type)

    async def create_multi(self, req: ApiRequest[ConfigScope]) -> Response:
        body = await req.json(NewMultiDomain)
        assert body is not None
        name = _check_name(body.cert_name)
        domains = check_domains(body.domains, field="domains")
        return await self._create(req, name, domains, body.email, body.staging, body.key_type)

    async def _current(
        self, req: ApiRequest[ConfigScope]
    ) -> tuple[CertStatus | None, bytes | None]:
        """The status and the record of ``{name}`` the caller may see; 404 if neither."""
        name = req.params["name"]
        if classify_key(keys.cert(name)) != "cert":
            raise _not_found()
        scope = req.scope
        client = scope.redis.client
        status = await read(scope, records.read_status(client, name))
        raw = await read(scope, client.get(keys.cert(name)))
        record = raw.encode() if isinstance(raw, str) else raw
        if status is not None and not can_see(scope, status.owner_token_hash):
            status = None
        if record is not None and not can_see(scope, owner_of(record)):
            record = None
        if status is None and record is None:
            raise _not_found()
        return status, record

    async def status(self, req: ApiRequest[ConfigScope]) -> Response:
        status, record = await self._current(req)
        if status is not None:
            return Response(200, _document(status))
        assert record is not None
        return Response(200, _from_record(req.params["name"], record))

    async def renew(self, req: ApiRequest[ConfigScope]) -> Response:
        status, record = await self._current(req)
        name = req.params["name"]
        scope = req.scope
        stamp = records.now_iso()
        if status is None:
            assert record is not None
            try:
                cert = decode_cert(keys.cert(name), record)
            except ConfigError:
                raise Conflict(
                    "invalid record",
                    code="invalid_document",
                    public_message="the certificate record is not valid",
                ) from None
            if cert.acme_directory_url is None:
                raise Conflict(
                    "imported",
                    code="not_acme",
                    public_message="this certificate was imported, not issued by ACME: "
                    "import its successor instead",
                )
            status = records.renewal_of(cert)
        if status.status in records.IN_PROGRESS:
            raise records.OrderInProgress(f"{name}: {status.status}")
        wanted = msgspec.structs.replace(
            status,
            status="pending",
            reason="renewal",
            error=None,
            next_try_at=None,
            attempts=0,
            requested_at=stamp,
            updated_at=stamp,
        )
        current, created = await read(scope, records.request(req.scope.redis.client, wanted))
        if not created:
            raise records.OrderInProgress(f"{name}: {current.status}")
        if self.defaults.kick is not None:
            self.defaults.kick()
        return Response(202, _document(wanted))


def _from_record(name: str, raw: bytes) -> dict[str, Any]:
    """A status document made from a record alone (its key never read into it)."""
    doc: dict[str, Any] = {}
    try:
        cert = decode_cert(keys.cert(name), raw)
    except ConfigError as exc:
        return {"cert_name": name, "status": "failed", "error": exc.message}
    acme = cert.acme_directory_url is not None
    doc = {
        "cert_name": name,
        "status": "active" if acme else "imported",
        "domains": list(cert.domains),
        "email": cert.email,
        "directory_url": cert.acme_directory_url,
        "expires_at": cert.expires_at,
        "owner_token_hash": cert.owner_token_hash,
        "error": None,
    }
    return doc


def add_acme_routes(
    router: Router[Endpoint[Any]], token: Authenticator[ConfigScope], defaults: AcmeDefaults
) -> None:
    ep = AcmeEndpoints(defaults)
    router.add("POST", f"{PREFIX}/", Endpoint(token, ep.create))
    router.add("POST", f"{PREFIX}/multi-domain", Endpoint(token, ep.create_multi))
    router.add("GET", f"{PREFIX}/{{name}}/status", Endpoint(token, ep.status))
    router.add("POST", f"{PREFIX}/{{name}}/renew", Endpoint(token, ep.renew))
