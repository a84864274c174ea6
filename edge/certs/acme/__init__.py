"""ACME (RFC 8555) issuance and renewal with HTTP-01 challenges, shared by every node.

``order``: what may be ordered (names, key types) and the status document; ``challenges``:
the key authorizations every node answers; ``protocol``: one order against the CA, run in a
thread (certbot's ``acme`` is synchronous); ``accounts``: one account per directory and
e-mail, registered once; ``issuer``: an order under a lease, written behind a fence;
``budget``: the CA's limits mirrored in Redis; ``renewal``: when to renew; ``service``: the
worker's background job that runs due orders; ``ondemand``: the gate of on-demand TLS.
"""
