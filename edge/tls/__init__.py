"""TLS for the edge's listeners: certificate material, the one context factory, SNI.

* :mod:`edge.tls.material`   -- ``cert:{name}`` records and checks of PEM chains and keys
* :mod:`edge.tls.contexts`   -- the single :class:`ssl.SSLContext` factory (Mozilla
  intermediate profile, ALPN ``http/1.1``, resumption pinned to one certificate)
* :mod:`edge.tls.sni`        -- the immutable certificate index and the SNI callback
* :mod:`edge.tls.selfsigned` -- the default certificate served for unknown names
"""

from __future__ import annotations

from edge.tls.contexts import listener_context, server_context
from edge.tls.material import (
    CertInfo,
    CertRecord,
    MaterialError,
    decode_cert,
    validate_material,
    validate_record,
)
from edge.tls.selfsigned import generate_self_signed
from edge.tls.sni import (
    CertIndex,
    SelectedCert,
    make_sni_callback,
    requested_server_name,
    selected_cert,
)

__all__ = [
    "CertIndex",
    "CertInfo",
    "CertRecord",
    "MaterialError",
    "SelectedCert",
    "decode_cert",
    "generate_self_signed",
    "listener_context",
    "make_sni_callback",
    "requested_server_name",
    "selected_cert",
    "server_context",
    "validate_material",
    "validate_record",
]
