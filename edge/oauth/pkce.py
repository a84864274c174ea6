"""PKCE (RFC 7636), S256 only: OAuth 2.1 and the MCP specification refuse ``plain``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

# RFC 7636 section 4.1: 43 to 128 unreserved characters (and a challenge, the base64url of
# a SHA-256 without padding, is always 43)
_VERIFIER = re.compile(r"\A[A-Za-z0-9._~-]{43,128}\Z")
_CHALLENGE = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")


def valid_verifier(verifier: str) -> bool:
    return _VERIFIER.match(verifier) is not None


def valid_challenge(challenge: str) -> bool:
    return _CHALLENGE.match(challenge) is not None


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Does ``verifier`` (as the token request sent it) answer ``challenge``?"""
    if _VERIFIER.match(verifier) is None:
        return False
    return hmac.compare_digest(s256(verifier), challenge)
