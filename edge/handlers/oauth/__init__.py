"""The OAuth 2.1 authorization server's HTTP endpoints, on the issuer host and on every
proxy whose ``hostname`` routes lead there (see :mod:`edge.handlers.oauth.endpoints`)."""
