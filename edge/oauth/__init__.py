"""The OAuth 2.1 authorization server's domain: clients, grants, tokens, keys, sessions.

Nothing here speaks HTTP to the edge's own clients (that is :mod:`edge.handlers.oauth`);
it reads and writes Redis (every key from :mod:`edge.store.keys`) and keeps in memory what
the request path must answer from (signing keys, revoked token ids).
"""
