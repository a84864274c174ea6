"""TLS for the edge's listeners: certificate material, the one context factory, SNI.

* :mod:`edge.tls.material`   -- ``cert:{name}`` records and checks of PEM chains and keys
* :mod:`edge.tls.contexts`   -- the single :class:`ssl.SSLContext` factory (Mozilla
  intermediate profile, ALPN ``http/1.1``, resumption pinned to one certificate)
* :mod:`edge.tls.sni`        -- the immutable certificate index and the SNI callback
* :mod:`edge.tls.selfsigned` -- the default certificate served for unknown names
"""
