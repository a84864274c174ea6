"""One ACME conversation with the CA, in a worker thread (certbot's ``acme`` is synchronous).

Nothing here touches Redis or the event loop: what an order must share with the other nodes
(its challenges, its progress) goes through the :class:`Hooks` the caller gives, and the
caller's ``check`` ends the order early (lease lost, order cancelled) between any two steps.
Every failure the CA or the network causes comes out as :class:`CaError`, with the CA's
own words and, when the CA said so, how long to wait before trying again.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.json_util import field as jose_field
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from edge.certs.acme.order import KeyType

__all__ = [
    "AccountKey",
    "CaError",
    "Hooks",
    "Issued",
    "OrderAbandoned",
    "OrderRequest",
    "Poll",
    "RenewalInfo",
    "cert_id",
    "fetch_renewal_info",
    "place_order",
    "register_account",
]

USER_AGENT = "edge-acme/1"
NETWORK_TIMEOUT = 30  # seconds per HTTP request to the CA
BAD_NONCE_RETRIES = 6  # Pebble refuses 5% of nonces; each retry gets a fresh one

Kind = Literal[
    "unreachable", "rate_limited", "validation", "refused", "replaces", "timeout", "account"
]
T = TypeVar("T")


class CaError(Exception):
    """The CA refused or could not be reached: ``message`` is what to show (the CA's
    problem document when there is one), ``retry_after`` seconds when the CA gave them."""

    def __init__(self, message: str, kind: Kind, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


class OrderAbandoned(Exception):
    """The caller's ``check`` stopped the order (lease lost, order cancelled)."""


@dataclass(frozen=True, slots=True)
class Poll:
    initial_wait: float
    interval: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class AccountKey:
    key_pem: str = ""
    uri: str = ""

    def __repr__(self) -> str:
        return f"AccountKey(uri={self.uri!r}, key_pem=<redacted>)"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    directory_url: str
    domains: tuple[str, ...]
    key_type: KeyType
    rsa_bits: int
    account: AccountKey
    ca_bundle: str | None
    poll: Poll
    replaces: str | None = None  # the ARI certID of the certificate this one replaces


@dataclass(frozen=True, slots=True)
class Issued:
    fullchain_pem: str
    private_key_pem: str
    order_url: str

    def __repr__(self) -> str:
        return f"Issued(order_url={self.order_url!r}, private_key_pem=<redacted>)"


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    """RFC 9773: the CA's suggested window, and when to ask again."""

    start: datetime
    end: datetime
    retry_after: float


class Hooks(Protocol):
    def publish(self, answers: list[tuple[str, str]]) -> None:
        """Make each ``(token, key authorization)`` answerable by every node."""

    def progress(self, state: Literal["validating", "issuing"], order_url: str) -> None: ...

    def check(self) -> None:
        """Raise :class:`OrderAbandoned` if the order must stop."""


# ---------------------------------------------------------------------------- network


class _Network(client.ClientNetwork):
    """The library's network, remembering the last response (its Retry-After header)."""

    last_response: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response


class _NewOrder(messages.NewOrder):
    """newOrder with RFC 9773's ``replaces``, which the library does not send."""

    replaces: str = jose_field("replaces", omitempty=True)


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _call(net: _Network, step: str, fn: Callable[[], T]) -> T:
    """``fn()`` with fresh nonces on ``badNonce``, and every failure as a :class:`CaError`."""
    for attempt in range(BAD_NONCE_RETRIES + 1):
        net.last_response = None
        try:
            return fn()
        except messages.Error as error:
            if error.code == "badNonce" and attempt < BAD_NONCE_RETRIES:
                continue
            raise _problem(step, error, net.last_response) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise CaError(
                f"{step}: the ACME server is unreachable ({exc})", "unreachable"
            ) from None
        except requests.RequestException as exc:
            raise CaError(f"{step}: {exc}", "unreachable") from None
        except errors.Error as exc:
            # a 5xx with no problem document: a proxy in front of the CA, or the CA down
            response = net.last_response
            down = response is not None and response.status_code >= 500
            kind: Kind = "unreachable" if down else "refused"
            raise CaError(f"{step}: {exc}", kind) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _problem(step: str, error: messages.Error, response: requests.Response | None) -> CaError:
    text = f"{step}: {error.typ or 'error'}: {error.detail or error.title or ''}".rstrip(": ")
    retry = _retry_after(response)
    if error.code == "rateLimited" or (response is not None and response.status_code == 429):
        return CaError(text, "rate_limited", retry)
    if error.code == "accountDoesNotExist":
        # the CA no longer knows the stored account (its data was reset, or the account
        # was deleted): the caller registers a new one
        return CaError(text, "account", retry)
    if error.code == "alreadyReplaced" or "replaces" in (error.detail or ""):
        return CaError(text, "replaces", retry)
    if error.code in ("connection", "dns", "incorrectResponse", "unauthorized", "tls"):
        return CaError(text, "validation", retry)
    return CaError(text, "refused", retry)


def _account_jwk(key_pem: str) -> tuple[JWK, JWASignature]:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    raise CaError("the stored ACME account key is neither EC nor RSA", "refused")


def _connect(directory_url: str, account: AccountKey, ca_bundle: str | None) -> client.ClientV2:
    jwk: JWK | None = None
    alg: JWASignature = ES256
    if account.key_pem:  # none: unauthenticated requests only (the directory, ARI)
        jwk, alg = _account_jwk(account.key_pem)
    regr = None
    if account.uri:
        regr = messages.RegistrationResource(body=messages.Registration(), uri=account.uri)
    net = _Network(jwk, account=regr, alg=alg, user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
    # the library passes ``verify=self.verify_ssl`` with every request, over the session's
    # own setting; requests takes a CA bundle's path there as well as a bool
    net.verify_ssl = ca_bundle if ca_bundle else True  # type: ignore[assignment]
    directory = _call(net, "directory", lambda: client.ClientV2.get_directory(directory_url, net))
    return client.ClientV2(directory, net)


def _net(acme: client.ClientV2) -> _Network:
    net = acme.net
    assert isinstance(net, _Network)
    return net


# ---------------------------------------------------------------------------- account


def register_account(directory_url: str, email: str | None, ca_bundle: str | None) -> AccountKey:
    """A new account (P-256 key) that agrees to the CA's terms; its key and URL."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    acme = _connect(directory_url, AccountKey(key_pem=key_pem), ca_bundle)
    fields: dict[str, Any] = {"terms_of_service_agreed": True}
    if email:
        fields["email"] = email
    new = messages.NewRegistration.from_data(**fields)
    regr = _call(_net(acme), "newAccount", lambda: acme.new_account(new))
    return AccountKey(key_pem=key_pem, uri=regr.uri)


# ---------------------------------------------------------------------------- order


def _key_and_csr(key_type: KeyType, rsa_bits: int, domains: list[str]) -> tuple[str, bytes]:
    """A new private key (PEM) and a CSR for ``domains`` signed with it (PEM), as the
    library's ``make_csr`` makes it, without parsing the key's PEM again: loading an RSA
    key checks it for tens of milliseconds while holding the GIL, which stalls the event
    loop's thread as much (the key was just generated: there is nothing to check)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in domains]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _new_order(acme: client.ClientV2, csr_pem: bytes, replaces: str | None) -> Any:
    identifiers = [
        messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
        for name in crypto_util.get_identifiers_from_x509(
            x509.load_pem_x509_csr(csr_pem).subject, x509.load_pem_x509_csr(csr_pem).extensions
        )[0]
    ]
    order = (
        _NewOrder(identifiers=identifiers, replaces=replaces)
        if replaces
        else _NewOrder(identifiers=identifiers)
    )
    response = acme._post(acme.directory["newOrder"], order)
    body = messages.Order.from_json(response.json())
    authorizations = [
        acme._authzr_from_response(acme._post_as_get(url), uri=url) for url in body.authorizations
    ]
    return messages.OrderResource(
        body=body,
        uri=response.headers.get("Location"),
        authorizations=authorizations,
        csr_pem=csr_pem,
    )


def _http01(authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if isinstance(challb.chall, challenges.HTTP01):
            return challb
    name = authzr.body.identifier.value
    raise CaError(f"the CA offers no http-01 challenge for {name}", "refused")


def _authz_error(authzr: messages.AuthorizationResource) -> CaError:
    name = authzr.body.identifier.value
    for challb in authzr.body.challenges:
        if challb.error is not None:
            err = challb.error
            return CaError(
                f"validation of {name} failed: {err.typ}: {err.detail or ''}".rstrip(": "),
                "validation",
            )
    return CaError(f"validation of {name} failed (the CA gave no reason)", "validation")


def place_order(req: OrderRequest, hooks: Hooks) -> Issued:
    """Order a certificate for ``req.domains`` and answer its HTTP-01 challenges."""
    acme = _connect(req.directory_url, req.account, req.ca_bundle)
    net = _net(acme)
    key_pem, csr_pem = _key_and_csr(req.key_type, req.rsa_bits, list(req.domains))
    hooks.check()
    orderr = _call(net, "newOrder", lambda: _new_order(acme, csr_pem, req.replaces))
    order_url = orderr.uri or ""
    pending = [a for a in orderr.authorizations if a.body.status != messages.STATUS_VALID]
    chosen = [(authzr, _http01(authzr)) for authzr in pending]
    answers = []
    for _authzr, challb in chosen:
        response, validation = challb.chall.response_and_validation(net.key)
        answers.append((challb.chall.encode("token"), validation, challb, response))
    hooks.publish([(token, validation) for token, validation, _, _ in answers])
    hooks.progress("validating", order_url)
    for _token, _validation, challb, response in answers:
        hooks.check()
        if challb.status == messages.STATUS_PENDING:
            _call(net, "challenge", functools.partial(acme.answer_challenge, challb, response))
    _await_authorizations(acme, net, pending, req.poll, hooks)
    hooks.progress("issuing", order_url)
    hooks.check()
    fullchain = _finalize(acme, net, orderr, req.poll, hooks)
    return Issued(fullchain_pem=fullchain, private_key_pem=key_pem, order_url=order_url)


def _await_authorizations(
    acme: client.ClientV2,
    net: _Network,
    pending: list[messages.AuthorizationResource],
    poll: Poll,
    hooks: Hooks,
) -> None:
    time.sleep(poll.initial_wait)
    for _attempt in range(poll.max_attempts):
        still = []
        for authzr in pending:
            hooks.check()
            updated, _ = _call(net, "authorization", functools.partial(acme.poll, authzr))
            status = updated.body.status
            if status == messages.STATUS_INVALID:
                raise _authz_error(updated)
            if status != messages.STATUS_VALID:
                still.append(updated)
        if not still:
            return
        pending = still
        time.sleep(poll.interval)
    names = ", ".join(a.body.identifier.value for a in pending)
    raise CaError(f"the CA did not validate {names} after {poll.max_attempts} polls", "timeout")


def _finalize(acme: client.ClientV2, net: _Network, orderr: Any, poll: Poll, hooks: Hooks) -> str:
    _call(net, "finalize", lambda: acme.begin_finalization(orderr))
    for _attempt in range(poll.max_attempts):
        hooks.check()
        response = _call(net, "order", lambda: acme._post_as_get(orderr.uri))
        body = messages.Order.from_json(response.json())
        if body.status == messages.STATUS_INVALID:
            err = body.error
            detail = f"{err.typ}: {err.detail}" if err is not None else "no reason given"
            raise CaError(f"the CA refused to issue: {detail}", "refused")
        if body.status == messages.STATUS_VALID and body.certificate is not None:
            url = body.certificate
            cert = _call(net, "certificate", functools.partial(acme._post_as_get, url))
            return str(cert.text)
        time.sleep(poll.interval)
    raise CaError(f"the CA did not issue after {poll.max_attempts} polls", "timeout")


# ---------------------------------------------------------------------------- renewal info


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_id(cert_pem: str) -> str | None:
    """The RFC 9773 certificate identifier (``replaces``, the renewalInfo path), or None
    for a certificate without an Authority Key Identifier."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if aki.key_identifier is None:
        return None
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{_b64(aki.key_identifier)}.{_b64(serial_der)}"


def fetch_renewal_info(
    directory_url: str, account: AccountKey, cert_pem: str, ca_bundle: str | None
) -> RenewalInfo | None:
    """The CA's suggested renewal window, or None when its directory has no renewalInfo."""
    acme = _connect(directory_url, account, ca_bundle)
    base = acme.directory.to_partial_json().get("renewalInfo")
    ident = cert_id(cert_pem)
    if not base or ident is None:
        return None
    net = _net(acme)
    url = f"{str(base).rstrip('/')}/{ident}"
    response = _call(net, "renewalInfo", lambda: net.get(url, content_type="application/json"))
    info = messages.RenewalInfo.from_json(response.json())
    window = info.suggested_window
    retry = _retry_after(response)
    return RenewalInfo(
        start=window.start.astimezone(UTC),
        end=window.end.astimezone(UTC),
        retry_after=retry if retry is not None else 6 * 3600.0,
    )


def leaf_times(fullchain_pem: str) -> tuple[datetime, datetime, str]:
    """(not before, not after, the leaf's SHA-256 fingerprint) of a chain's first cert."""
    cert = x509.load_pem_x509_certificate(fullchain_pem.encode())
    return (
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        cert.fingerprint(hashes.SHA256()).hex(),
    )
