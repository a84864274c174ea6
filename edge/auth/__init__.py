"""Credentials: admin tokens (:mod:`edge.auth.secrets`) and personal access tokens
(:mod:`edge.auth.pat`).

Both start with ``edge_`` so secret scanners can find them:

- admin token: ``edge_`` + 44 base58 characters (256 random bits), stored as ``sha256:<hex>``;
- PAT: ``edge_{8 base58 prefix}_{33 base58 secret with a 32-bit checksum}``, stored as an
  Argon2id PHC string and verified off the event loop by :class:`PatVerifier`.
"""

from __future__ import annotations

from edge.auth.pat import (
    PAT_PATTERN,
    PAT_REGEX,
    NewPat,
    ParsedPat,
    PatVerifier,
    hash_secret,
    needs_rehash,
    new_pat,
    parse_pat,
    verify_secret,
)
from edge.auth.secrets import (
    ADMIN_TOKEN_PATTERN,
    AuthFailed,
    AuthFailure,
    AuthOverloaded,
    looks_like_admin_token,
    new_admin_token,
    same_hash,
    token_hash,
)

__all__ = [
    "ADMIN_TOKEN_PATTERN",
    "PAT_PATTERN",
    "PAT_REGEX",
    "AuthFailed",
    "AuthFailure",
    "AuthOverloaded",
    "NewPat",
    "ParsedPat",
    "PatVerifier",
    "hash_secret",
    "looks_like_admin_token",
    "needs_rehash",
    "new_admin_token",
    "new_pat",
    "parse_pat",
    "same_hash",
    "token_hash",
    "verify_secret",
]
