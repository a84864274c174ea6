"""The one place SSLContexts for the edge's TLS listeners are made.

Every server context -- the listener's base context and each certificate's context that
the SNI callback switches to -- comes from :func:`_profile_context`, so none of them can
lose ALPN, the protocol floor or the cipher list.  This matters twice over with OpenSSL's
``SSL_set_SSL_CTX`` (what assigning ``ssl_object.context`` in the SNI callback does):

* the certificate, the key and the ALPN selection are read from the *new* context (a
  certificate context without ALPN silently stops negotiating ``http/1.1``);
* the protocol versions, cipher list, options and ``num_tickets`` stay those the SSL
  object copied from the *listener's* context when the connection started, and the
  session cache and ticket keys are always the listener context's.

Profile: Mozilla "intermediate" (TLS 1.2 and 1.3, ECDHE AEAD suites for TLS 1.2, OpenSSL's
TLS 1.3 suites, which are Mozilla's; no compression; the client's cipher preference).

Session resumption (measured in ``tests/unit/test_tls_sni.py`` with OpenSSL 3.0):
because the cache and ticket keys belong to the listener's context and Python gives every
context the same session id context (``"Python"``), OpenSSL resumes a session across an
SNI switch.  In TLS 1.3 a ticket from ``a.test`` (cert A) resumes a handshake for
``b.test`` after the callback picked cert B, so TLS 1.3 tickets are turned off
(``num_tickets = 0``: no resumption in TLS 1.3 at all).  In TLS 1.2 OpenSSL hands the SNI
callback the name stored in the resumed session instead of the one the client sent, so
the callback re-selects the certificate of the session's own name: resumption works per
name and never switches to another name's certificate.  TLS 1.2 tickets are off too
(``OP_NO_TICKET``, as Mozilla advises: Python cannot rotate ticket keys, which would live
as long as the process); TLS 1.2 resumes through the listener's session-id cache
(OpenSSL's defaults, which Python cannot change: 20480 sessions, 7200 s each).

What remains for the HTTP layer: a resumed TLS 1.2 connection whose ClientHello said
``b.test`` carries ``a.test``'s session and certificate, so answer 421 when the Host is not
covered by the certificate (:func:`edge.tls.sni.selected_cert`).  And when the
certificate configured for a name changes, sessions made with the previous one resume for
that same name until they expire.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterator

from edge.tls.material import MaterialError

__all__ = [
    "ALPN_PROTOCOLS",
    "TLS12_CIPHERS",
    "SniCallback",
    "listener_context",
    "server_context",
]

ALPN_PROTOCOLS: tuple[str, ...] = ("http/1.1",)

# Mozilla intermediate (v5.7) TLS 1.2 suites, ECDHE only.  The DHE-RSA suites of the
# profile are left out on purpose: Python can only load DH parameters from a file and
# does not enable OpenSSL's automatic DH parameters, so without a dhparam file they could
# never be negotiated; every client the intermediate profile targets speaks ECDHE.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

SniCallback = Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], int | None]


def _profile_context() -> ssl.SSLContext:
    """A server context with the edge's TLS profile and no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)  # TLS 1.3 suites are OpenSSL's defaults == Mozilla's
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # intermediate: every offered suite is strong, let the client pick (e.g. ChaCha20 on
    # phones without AES instructions)
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # resumption must never cross certificates: see the module docstring
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def _refuse_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise MaterialError(
        "private_key_pem", "private key is encrypted; an unencrypted key is required"
    )


@contextlib.contextmanager
def _memory_file(name: str, data: str) -> Iterator[str]:
    """A path to ``data`` that lives only in memory (a memfd), closed on exit.

    ``SSLContext.load_cert_chain`` only reads paths; a private key must never be written
    to a regular file, so it goes through an anonymous memory file named by
    ``/proc/self/fd/N``.
    """
    create = getattr(os, "memfd_create", None)
    if create is None:
        raise MaterialError(
            "private_key_pem",
            "cannot load a private key here: os.memfd_create is unavailable (Linux only); "
            "the edge never writes private keys to disk",
        )
    try:
        fd = create(name, os.MFD_CLOEXEC)
    except OSError as exc:
        raise MaterialError(
            "private_key_pem", f"cannot create an in-memory file for the key: {exc.strerror}"
        ) from None
    try:
        view = memoryview(data.encode("utf-8"))
        while view:
            view = view[os.write(fd, view) :]
        path = f"/proc/self/fd/{fd}"
        if not os.path.exists(path):
            raise MaterialError(
                "private_key_pem", "cannot load a private key: /proc/self/fd is not available"
            )
        yield path
    finally:
        os.close(fd)


def server_context(fullchain_pem: str, private_key_pem: str) -> ssl.SSLContext:
    """A context serving one certificate chain, to be switched to by the SNI callback.

    Validate the material first (:func:`edge.tls.material.validate_material`) for precise
    messages; this raises :class:`MaterialError` with OpenSSL's reason (which never quotes
    the key) when OpenSSL refuses it.
    """
    ctx = _profile_context()
    try:
        with (
            _memory_file("edge-tls-chain", fullchain_pem) as chain_path,
            _memory_file("edge-tls-key", private_key_pem) as key_path,
        ):
            ctx.load_cert_chain(chain_path, key_path, password=_refuse_password)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.__class__.__name__
        raise MaterialError(
            "fullchain_pem", f"OpenSSL refused the certificate chain or key: {reason}"
        ) from None
    except UnicodeEncodeError:
        raise MaterialError("fullchain_pem", "certificate chain or key is not text PEM") from None
    return ctx


def listener_context(sni_callback: SniCallback) -> ssl.SSLContext:
    """The base context of a TLS listener: the profile, no certificate, ``sni_callback``.

    The callback must switch every accepted handshake to a certificate context (or
    refuse it); it runs even when the client sends no SNI.  The listener context decides
    the protocol versions, ciphers and resumption for all its connections (see the module
    docstring), which is why it comes from the same profile.
    """
    ctx = _profile_context()
    ctx.sni_callback = sni_callback
    return ctx
