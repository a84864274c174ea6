"""Choosing the certificate for a TLS handshake by SNI, from memory only.

:class:`CertIndex` is an immutable snapshot (host name -> certificate context) that a
background watcher rebuilds when Redis changes and swaps in whole; :func:`make_sni_callback`
makes the listener's ``sni_callback``, which reads the current index and never does I/O.

The callback records what it chose on the server's ``ssl.SSLObject`` (plain attributes:
``SSLObject`` is an ordinary Python object); the HTTP layer reads them back with
:func:`requested_server_name` and :func:`selected_cert` from
``transport.get_extra_info("ssl_object")`` -- e.g. to answer 421 Misdirected Request
(RFC 9110 section 15.5.20) when the Host is not covered by the certificate.

TLS 1.2 resumption: OpenSSL passes the callback the server name stored in the resumed
session, not the one in this ClientHello (see :mod:`edge.tls.contexts`), so on a resumed
TLS 1.2 connection the recorded name is the session's and the certificate is that name's.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping

from edge.store import keys
from edge.tls.contexts import SniCallback
from edge.tls.material import CertInfo, san_covers

__all__ = [
    "CertIndex",
    "SelectedCert",
    "make_sni_callback",
    "normalize_server_name",
    "requested_server_name",
    "selected_cert",
]

log = logging.getLogger("edge.tls")

# attribute names set on the server-side SSLObject by the SNI callback
SERVER_NAME_ATTR = "edge_server_name"
SELECTED_CERT_ATTR = "edge_selected_cert"


def normalize_server_name(name: str) -> str:
    """Lowercase and strip one trailing dot (``"A.Example.COM."`` -> ``"a.example.com"``)."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


@dataclasses.dataclass(frozen=True, slots=True)
class SelectedCert:
    """The certificate a connection was given: its record name and SAN DNS names."""

    name: str
    san: frozenset[str]

    def covers(self, host: str) -> bool:
        """Whether this certificate authenticates the HTTP Host ``host`` (no port)."""
        return san_covers(self.san, normalize_server_name(host))


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    context: ssl.SSLContext
    selected: SelectedCert
    domains: tuple[str, ...]
    info: CertInfo


class CertIndex:
    """Immutable map from TLS server names to certificate contexts.

    Built from ``certs`` (``{cert_name: (context, domains, info)}``, the contexts made by
    :func:`edge.tls.contexts.server_context`) and ``domain_map`` (the ``cert:domain:``
    keys without their prefix: ``{domain: cert_name}``).  A domain listed in
    ``domain_map`` goes to that certificate; otherwise to the certificate whose
    ``domains`` list it (when several do, the one expiring last, then by name).  An entry
    pointing at an unknown certificate or at one whose SAN does not cover the domain is
    left out and described in :attr:`problems`; the rest keeps working.
    """

    __slots__ = ("_by_context", "_by_name", "_hosts", "problems")

    _by_name: Mapping[str, _Entry]
    _by_context: Mapping[int, _Entry]
    _hosts: Mapping[str, ssl.SSLContext]
    problems: tuple[str, ...]

    def __init__(
        self,
        certs: Mapping[str, tuple[ssl.SSLContext, Iterable[str], CertInfo]] | None = None,
        domain_map: Mapping[str, str] | None = None,
    ) -> None:
        by_name: dict[str, _Entry] = {}
        for name, (context, domains, info) in (certs or {}).items():
            selected = SelectedCert(name, frozenset(info.san))
            by_name[name] = _Entry(context, selected, tuple(domains), info)
        problems: list[str] = []
        hosts: dict[str, ssl.SSLContext] = {}

        def assign(domain: str, name: str, source: str) -> None:
            entry = by_name.get(name)
            if entry is None:
                problems.append(f"{source}: certificate {name!r} is not loaded")
            elif not san_covers(entry.selected.san, domain):
                problems.append(f"{source}: certificate {name!r} does not cover {domain}")
            else:
                hosts[domain] = entry.context

        for domain, name in sorted((domain_map or {}).items()):
            assign(normalize_server_name(domain), name, keys.cert_domain(domain))
        # latest expiry first so that it wins; then the name for a stable order
        ordered = sorted(
            by_name.items(), key=lambda item: (-item[1].info.not_after.timestamp(), item[0])
        )
        for name, entry in ordered:
            for domain in entry.domains:
                domain = normalize_server_name(domain)
                if domain not in hosts:
                    assign(domain, name, f"{keys.cert(name)} domain {domain}")

        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_context", {id(e.context): e for e in by_name.values()})
        object.__setattr__(self, "_hosts", hosts)
        object.__setattr__(self, "problems", tuple(problems))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CertIndex is immutable; build a new one")

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"CertIndex(certs={len(self._by_name)}, hosts={len(self._hosts)})"

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host name (and wildcard) the index answers, sorted."""
        return tuple(sorted(self._hosts))

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for ``server_name``: exact name first, then the parent's wildcard.

        ``a.b.example.com`` may be served by ``*.b.example.com`` only.  Case-insensitive,
        one trailing dot ignored.  ``None`` when nothing matches (or no name was sent).
        """
        if not server_name:
            return None
        name = normalize_server_name(server_name)
        context = self._hosts.get(name)
        if context is not None:
            return context
        _, dot, parent = name.partition(".")
        if not dot or not parent:
            return None
        return self._hosts.get("*." + parent)

    def _entry(self, context_or_name: ssl.SSLContext | str) -> _Entry | None:
        if isinstance(context_or_name, str):
            return self._by_name.get(context_or_name)
        entry = self._by_context.get(id(context_or_name))
        return entry if entry is not None and entry.context is context_or_name else None

    def selected(self, context_or_name: ssl.SSLContext | str) -> SelectedCert | None:
        """Name and SAN of a certificate of this index, by context or certificate name."""
        entry = self._entry(context_or_name)
        return entry.selected if entry is not None else None

    def info(self, context_or_name: ssl.SSLContext | str) -> CertInfo | None:
        """What was learnt about a certificate of this index when it was validated."""
        entry = self._entry(context_or_name)
        return entry.info if entry is not None else None

    def covers(self, context_or_name: ssl.SSLContext | str, host: str) -> bool:
        """Whether that certificate authenticates the HTTP Host ``host`` (no port).

        False for a context or name that is not in this index (e.g. the default
        certificate).  A connection outlives index swaps: prefer :func:`selected_cert`,
        which keeps what was chosen at handshake time.
        """
        entry = self._entry(context_or_name)
        return entry is not None and entry.selected.covers(host)


def requested_server_name(ssl_object: object) -> str | None:
    """The normalised server name recorded by the SNI callback (None: no SNI/unknown).

    For a resumed TLS 1.2 session this is the name the session was created for.
    """
    value = getattr(ssl_object, SERVER_NAME_ATTR, None)
    return value if isinstance(value, str) else None


def selected_cert(ssl_object: object) -> SelectedCert | None:
    """The certificate the SNI callback chose (None: the default certificate)."""
    value = getattr(ssl_object, SELECTED_CERT_ATTR, None)
    return value if isinstance(value, SelectedCert) else None


def make_sni_callback(
    get_index: Callable[[], CertIndex],
    default: Callable[[], ssl.SSLContext | None],
    strict: Callable[[], bool],
) -> SniCallback:
    """The ``sni_callback`` for a listener context (:func:`edge.tls.contexts.listener_context`).

    Switches the handshake to the certificate :meth:`CertIndex.select` picks for the
    server name.  With no match (or no SNI): in strict mode the handshake is refused with
    an ``unrecognized_name`` alert, otherwise the ``default()`` context is served (refused
    likewise when there is none).  OpenSSL queues the alert, but the loop's SSL transport
    (asyncio's and uvloop's) closes the socket on a failed handshake without flushing it,
    so clients see the connection closed.  The callback never raises -- an exception would abort
    the handshake with an unexplained ``internal_error`` alert and print to stderr -- it
    logs and takes the same no-match path (default certificate, or refusal when strict).
    """

    def fallback(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> int | None:
        try:
            setattr(ssl_object, SELECTED_CERT_ATTR, None)
            if strict():
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            context = default()
            if context is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if ssl_object.context is not context:
                ssl_object.context = context
            return None
        except Exception:
            log.exception("TLS SNI fallback failed; refusing the handshake")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

    def sni_callback(
        ssl_object: ssl.SSLObject | ssl.SSLSocket,
        server_name: str | None,
        _listener: ssl.SSLContext,
    ) -> int | None:
        try:
            name = normalize_server_name(server_name) if server_name else None
            setattr(ssl_object, SERVER_NAME_ATTR, name)
            index = get_index()
            context = index.select(name)
            if context is not None:
                if ssl_object.context is not context:
                    ssl_object.context = context
                setattr(ssl_object, SELECTED_CERT_ATTR, index.selected(context))
                return None
        except Exception:
            # the name comes from the client: %r keeps control characters out of the log
            log.exception("TLS SNI selection failed for %r; using the fallback", server_name)
        return fallback(ssl_object)

    return sni_callback
