"""Token primitives shared by admin tokens and personal access tokens, and the auth errors.

Admin tokens
    ``edge_`` followed by 44 base58 characters (Bitcoin alphabet) that encode 32 random
    bytes (256 bits) as a fixed-width big-endian number, left-padded with ``1`` (base58's
    zero digit). 58**44 > 2**256, so 44 digits always suffice. Example shape::

        edge_4MmuwqrQ2GnWq9wy8Wq8pmc9Wv6Cq8WcFmdxQBiz7Xo3

    Base58 rather than urlsafe base64 so the token has no ``-`` or ``_`` after ``edge_``:
    double-click selects all of it, and it can never be mistaken for a personal access token
    (``edge_{prefix}_{secret}``, see :mod:`edge.auth.pat`), which has a second ``_``.

    Only ``sha256:<64 lowercase hex>`` of the whole token string is stored. A plain SHA-256
    is enough here: the token carries 256 bits of randomness, so there is nothing to
    brute-force and no need for a slow hash on the hot path.

Nothing in this module logs or puts a token value into an exception or a repr.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets

from edge.errors import EdgeError, ServiceUnavailable

__all__ = [
    "ADMIN_TOKEN_PATTERN",
    "ADMIN_TOKEN_RANDOM_BYTES",
    "BASE58_ALPHABET",
    "TOKEN_PREFIX",
    "AuthFailed",
    "AuthFailure",
    "AuthOverloaded",
    "b58decode_fixed",
    "b58encode_fixed",
    "b58width",
    "looks_like_admin_token",
    "new_admin_token",
    "same_hash",
    "token_hash",
]

#: The Bitcoin base58 alphabet: no ``0``, ``O``, ``I`` or ``l``.
BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
#: The same alphabet as a regex character class.
B58_CLASS = "[1-9A-HJ-NP-Za-km-z]"
_B58_INDEX = {c: i for i, c in enumerate(BASE58_ALPHABET)}

#: Every token this edge issues starts with this, so secret scanners can find them.
TOKEN_PREFIX = "edge_"
ADMIN_TOKEN_RANDOM_BYTES = 32
_HASH_SCHEME = "sha256:"


def b58width(nbytes: int) -> int:
    """The number of base58 digits that can hold any ``nbytes``-byte number."""
    width, limit = 0, 1
    while limit < 256**nbytes:
        limit *= 58
        width += 1
    return width


_ADMIN_WIDTH = b58width(ADMIN_TOKEN_RANDOM_BYTES)  # 44
#: The admin token shape, unanchored (for secret scanners).
ADMIN_TOKEN_PATTERN = f"{TOKEN_PREFIX}{B58_CLASS}{{{_ADMIN_WIDTH}}}"
_ADMIN_RE = re.compile(rf"\A{ADMIN_TOKEN_PATTERN}\Z")
_HASH_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")


def b58encode_fixed(data: bytes, width: int | None = None) -> str:
    """Encode ``data`` as a big-endian number in exactly ``width`` base58 digits.

    ``width`` defaults to :func:`b58width` of ``len(data)``. Unlike Bitcoin's variable-length
    base58 (one ``1`` per leading zero byte), a fixed width makes every encoding of the same
    byte length the same length, so the token formats are fixed-length regexes.
    """
    if width is None:
        width = b58width(len(data))
    n = int.from_bytes(data, "big")
    digits: list[str] = []
    while n:
        n, r = divmod(n, 58)
        digits.append(BASE58_ALPHABET[r])
    if len(digits) > width:
        raise ValueError("value does not fit in the requested base58 width")
    return "".join(reversed(digits)).rjust(width, BASE58_ALPHABET[0])


def b58decode_fixed(text: str, nbytes: int) -> bytes | None:
    """Decode fixed-width base58 into exactly ``nbytes`` bytes.

    Returns ``None`` (never raises) for a non-base58 character or a value that does not fit
    in ``nbytes`` bytes, so callers can treat any malformed input the same way.
    """
    n = 0
    index = _B58_INDEX
    for c in text:
        d = index.get(c)
        if d is None:
            return None
        n = n * 58 + d
    if n >> (8 * nbytes):
        return None
    return n.to_bytes(nbytes, "big")


def new_admin_token() -> str:
    """A new admin token: ``edge_`` + 256 random bits in 44 fixed-width base58 digits."""
    return TOKEN_PREFIX + b58encode_fixed(secrets.token_bytes(ADMIN_TOKEN_RANDOM_BYTES))


def looks_like_admin_token(value: str) -> bool:
    """Cheap syntactic check: ``edge_`` and 44 base58 characters, nothing else.

    No hashing and no decoding; a ``True`` here only means the value is worth a hash lookup.
    """
    return len(value) == len(TOKEN_PREFIX) + _ADMIN_WIDTH and _ADMIN_RE.match(value) is not None


def token_hash(value: str) -> str:
    """The stored form of an admin token: ``sha256:`` + lowercase hex of SHA-256(UTF-8)."""
    return _HASH_SCHEME + hashlib.sha256(value.encode()).hexdigest()


def is_token_hash(value: str) -> bool:
    """Whether ``value`` has the exact ``sha256:<64 lowercase hex>`` shape."""
    return _HASH_RE.match(value) is not None


def same_hash(a: str, b: str) -> bool:
    """Constant-time equality of two stored hashes (or any two secrets).

    ``hmac.compare_digest`` on the ASCII bytes; a non-ASCII argument compares unequal
    instead of raising (``compare_digest`` rejects non-ASCII ``str``).
    """
    try:
        return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))
    except UnicodeEncodeError:
        return False


class AuthFailure(enum.Enum):
    """Why authentication failed: logged, never told to the client."""

    MISSING = "no credentials"
    MALFORMED = "malformed token"
    UNKNOWN = "unknown token"
    MISMATCH = "token does not match"
    REVOKED = "token revoked"
    EXPIRED = "token expired"
    FORBIDDEN_SCOPE = "token lacks the required scope"


class AuthFailed(EdgeError):
    """401: the client did not authenticate.

    The public message is the same whatever failed, so a client cannot tell a malformed token
    from an unknown or a wrong one. The reason is an :class:`AuthFailure` (a fixed string, never
    the token) so ``str(exc)`` is safe to log. :meth:`headers` carries
    ``WWW-Authenticate: {www_authenticate}`` (RFC 6750 section 3; RFC 9110 section 15.5.2
    requires the header on a 401).
    """

    status = 401
    public_message = "authentication required"
    www_authenticate = 'Bearer realm="edge"'

    def __init__(self, reason: AuthFailure = AuthFailure.MISMATCH) -> None:
        super().__init__(f"authentication failed: {reason.value}")
        self.reason = reason

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", self.www_authenticate.encode("ascii"))]

    def __repr__(self) -> str:
        return f"AuthFailed({self.reason.name})"


class AuthOverloaded(ServiceUnavailable):
    """503: too many token verifications are queued; the client should retry shortly."""

    public_message = "service busy, retry shortly"
    retry_after = 1

    def __init__(self) -> None:
        super().__init__("token verification queue is full")
