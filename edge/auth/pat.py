"""Personal access tokens (PATs): format, offline checksum, Argon2id storage, bounded verify.

Token format (47 ASCII characters)::

    edge_{prefix}_{secret}
    edge_ 8 base58 chars _ 33 base58 chars

- ``prefix``: 8 characters drawn uniformly from the Bitcoin base58 alphabet (~46.9 bits). It
  is not secret: it is the Redis lookup key (an index from prefix to PAT ids, a set because
  prefixes may collide) and may appear in logs.
- ``secret``: ``R || C`` (24 bytes) as a 33-digit fixed-width big-endian base58 number
  (left-padded with ``1``, base58's zero), where

  - ``R`` is 20 random bytes (160 bits) from :func:`secrets.token_bytes`;
  - ``C = SHA-256(b"edge-pat-v1\\x00" || prefix_ascii || R)[:4]`` (32 bits).

  The checksum covers the prefix too, so a typo anywhere after ``edge_`` is caught.
  :func:`parse_pat` rejects a mistyped, truncated or padded token before any Redis or Argon2
  work: a changed length or a non-base58 character fails the regex; a same-length base58
  substitution changes ``R`` or ``C`` and passes only with probability 2**-32 (or
  never, when only ``C`` changed). Secret scanners can run the same check offline.

Storage: the whole token string is hashed with Argon2id into the standard PHC string
``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>``, so the parameters travel with the hash and
can be raised later (:func:`needs_rehash`).

Hashing and verifying cost tens of milliseconds of CPU: :func:`hash_secret`,
:func:`verify_secret` and :func:`new_pat` block and must not be called on the event loop.
:class:`PatVerifier` is the loop-side shell: it runs :func:`verify_secret` in an executor with
bounded concurrency and caches recent successes.

No token value appears in a log line, exception message or repr produced here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION

from edge.auth.secrets import (
    B58_CLASS,
    BASE58_ALPHABET,
    TOKEN_PREFIX,
    AuthOverloaded,
    b58decode_fixed,
    b58encode_fixed,
    b58width,
)

__all__ = [
    "ARGON2_MEMORY_COST",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "DEFAULT_HASHER",
    "PAT_LENGTH",
    "PAT_PATTERN",
    "PAT_REGEX",
    "NewPat",
    "ParsedPat",
    "PatVerifier",
    "hash_secret",
    "needs_rehash",
    "new_pat",
    "new_pat_token",
    "parse_pat",
    "verify_secret",
]

log = logging.getLogger("edge.auth")

PAT_PREFIX_LENGTH = 8
PAT_RANDOM_BYTES = 20  # 160 bits
PAT_CHECKSUM_BYTES = 4  # 32 bits
_SECRET_BYTES = PAT_RANDOM_BYTES + PAT_CHECKSUM_BYTES
_SECRET_WIDTH = b58width(_SECRET_BYTES)  # 33
_CHECKSUM_DOMAIN = b"edge-pat-v1\x00"

#: The PAT shape, unanchored, for secret scanners (wrap in ``\b...\b`` when scanning text).
PAT_PATTERN = f"{TOKEN_PREFIX}{B58_CLASS}{{{PAT_PREFIX_LENGTH}}}_{B58_CLASS}{{{_SECRET_WIDTH}}}"
#: Matches exactly a PAT-shaped string and nothing around it (the checksum is separate).
PAT_REGEX = re.compile(rf"\A{PAT_PATTERN}\Z")
PAT_LENGTH = len(TOKEN_PREFIX) + PAT_PREFIX_LENGTH + 1 + _SECRET_WIDTH  # 47
_SECRET_START = PAT_LENGTH - _SECRET_WIDTH
# Longest input parse_pat looks at: "Bearer", some blanks and a token. Anything longer is
# rejected before stripping or matching.
_MAX_INPUT = 256

# Argon2id parameters: the first configuration of the OWASP Password Storage Cheat Sheet
# (m=19 MiB, t=2, p=1). Chosen over the equivalent m=46 MiB, t=1 because each worker runs
# up to `max_concurrency` verifications at once and memory per verification is what adds up
# on small VMs (19 MiB x 2 per worker); it also measured ~40 ms vs ~80 ms per verify here.
# p=1: concurrency comes from the verifier's semaphore, not from lanes inside one hash.
# The secret already has 160 random bits, so Argon2 is defence in depth for a leaked Redis
# dump, not what makes the token unguessable. Raise these and `needs_rehash` reports old hashes.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST = 19456  # KiB
ARGON2_PARALLELISM = 1
DEFAULT_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)
# A stored hash asking for more than this is corrupt or planted: verifying it would let
# whoever wrote it make every request allocate gigabytes or burn seconds.
_MAX_MEMORY_COST = 1024 * 1024  # KiB = 1 GiB
_MAX_TIME_COST = 16
_MAX_PARALLELISM = 8


@dataclass(frozen=True, slots=True)
class NewPat:
    """A freshly minted PAT. Show ``token`` to the user once; store only ``secret_hash``."""

    token: str = field(repr=False)
    prefix: str
    secret_hash: str

    def __repr__(self) -> str:
        return f"NewPat(prefix={self.prefix!r}, token=<redacted>)"


@dataclass(frozen=True, slots=True)
class ParsedPat:
    """A syntactically valid PAT whose checksum matches: worth a Redis lookup by ``prefix``."""

    prefix: str
    token: str = field(repr=False)

    def __repr__(self) -> str:
        return f"ParsedPat(prefix={self.prefix!r}, token=<redacted>)"


def _checksum(prefix: str, random: bytes) -> bytes:
    digest = hashlib.sha256(_CHECKSUM_DOMAIN + prefix.encode("ascii") + random).digest()
    return digest[:PAT_CHECKSUM_BYTES]


def new_pat_token() -> str:
    """A new PAT string (fast, no hashing). See the module docstring for the construction."""
    prefix = "".join(secrets.choice(BASE58_ALPHABET) for _ in range(PAT_PREFIX_LENGTH))
    random = secrets.token_bytes(PAT_RANDOM_BYTES)
    secret = b58encode_fixed(random + _checksum(prefix, random), _SECRET_WIDTH)
    return f"{TOKEN_PREFIX}{prefix}_{secret}"


def new_pat(hasher: PasswordHasher | None = None) -> NewPat:
    """Mint a PAT and its Argon2id PHC hash. Blocks ~tens of ms: call it off the event loop."""
    token = new_pat_token()
    return NewPat(token, token[len(TOKEN_PREFIX) : _SECRET_START - 1], hash_secret(token, hasher))


def parse_pat(value: str) -> ParsedPat | None:
    """Validate a PAT from a header value without I/O or hashing (a few microseconds).

    Accepts the bare token or ``Bearer <token>`` (scheme case-insensitive, RFC 9110 section
    11.1; blanks around it ignored). Returns ``None`` for anything that is not exactly a PAT
    with a matching checksum; callers answer every ``None`` the same way.
    """
    if len(value) > _MAX_INPUT:
        return None
    text = value.strip()
    if len(text) > 6 and text[6] in " \t" and text[:6].lower() == "bearer":
        text = text[7:].lstrip(" \t")
    if len(text) != PAT_LENGTH or PAT_REGEX.match(text) is None:
        return None
    raw = b58decode_fixed(text[_SECRET_START:], _SECRET_BYTES)
    if raw is None:  # 33 base58 digits can exceed 2**192
        return None
    prefix = text[len(TOKEN_PREFIX) : _SECRET_START - 1]
    random, check = raw[:PAT_RANDOM_BYTES], raw[PAT_RANDOM_BYTES:]
    if not hmac.compare_digest(check, _checksum(prefix, random)):
        return None
    return ParsedPat(prefix, text)


def hash_secret(token: str, hasher: PasswordHasher | None = None) -> str:
    """The Argon2id PHC string of ``token``. Blocking (CPU-heavy)."""
    return (hasher or DEFAULT_HASHER).hash(token)


def verify_secret(phc: str, token: str, hasher: PasswordHasher | None = None) -> bool:
    """Whether ``token`` matches the stored PHC string. Blocking (CPU-heavy).

    A mismatch is ``False``. A malformed or implausible stored hash is also ``False``, with a
    warning that names neither the token nor the hash.
    """
    try:
        params = extract_parameters(phc)
    except InvalidHashError:
        log.warning("stored PAT hash is not an Argon2 PHC string; refusing the token")
        return False
    if (
        params.memory_cost > _MAX_MEMORY_COST
        or params.time_cost > _MAX_TIME_COST
        or params.parallelism > _MAX_PARALLELISM
    ):
        log.warning(
            "stored PAT hash has implausible Argon2 parameters (m=%d, t=%d, p=%d); refusing",
            params.memory_cost,
            params.time_cost,
            params.parallelism,
        )
        return False
    try:
        return (hasher or DEFAULT_HASHER).verify(phc, token)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError) as exc:
        # libargon2's messages ("Decoding failed") carry no input, but log only the type.
        log.warning("stored PAT hash could not be verified (%s); refusing", type(exc).__name__)
        return False


def needs_rehash(phc: str, hasher: PasswordHasher | None = None) -> bool:
    """Whether ``phc`` is weaker than ``hasher``'s parameters (so rehash after a verify).

    Unlike ``PasswordHasher.check_needs_rehash`` (any difference), only a weaker hash counts:
    a different type or version, less memory, fewer passes, a shorter salt or output. Two
    processes with different settings then cannot flip a hash back and forth. A malformed
    hash needs rehashing.
    """
    h = hasher or DEFAULT_HASHER
    try:
        p = extract_parameters(phc)
    except InvalidHashError:
        return True
    return (
        p.type is not h.type
        or p.version != ARGON2_VERSION
        or p.memory_cost < h.memory_cost
        or p.time_cost < h.time_cost
        or p.salt_len < h.salt_len
        or p.hash_len < h.hash_len
    )


@dataclass(slots=True)
class _Flight:
    """One Argon2 verification that several identical requests may be waiting for."""

    task: asyncio.Task[bool] | None = None
    waiters: int = 0
    started: bool = False


class PatVerifier:
    """The event-loop shell around :func:`verify_secret`.

    - At most ``max_concurrency`` Argon2 computations run at once (a semaphore held until the
      thread really finishes, even if every caller was cancelled), in ``executor`` (the
      loop's default executor if ``None``). A flood of wrong tokens therefore takes at most
      that many pool threads and never the loop.
    - Distinct computations waiting for a slot are bounded by ``max_waiting``; beyond that
      :meth:`verify` raises :class:`~edge.auth.secrets.AuthOverloaded` (503) at once.
    - Concurrent verifications of the same (token, hash) share one computation.
    - Successes are cached for ``cache_ttl`` seconds (from the verification, not extended by
      hits), at most ``cache_size`` entries, keyed by HMAC-SHA256 of the token under a random
      per-instance key; the entry also holds an HMAC of the PHC string, so a changed hash
      misses. Failures are never cached. Plaintext tokens are never stored.

    Counters (``hits``, ``misses``, ``in_flight``, ...) are plain attributes for tests and
    health checks; :meth:`stats` returns them all.
    """

    def __init__(
        self,
        max_concurrency: int = 2,
        cache_ttl: float = 30.0,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_waiting: int = 64,
        hasher: PasswordHasher | None = None,
        executor: Executor | None = None,
    ) -> None:
        if max_concurrency < 1 or max_waiting < 0 or cache_size < 0 or cache_ttl < 0:
            raise ValueError("PatVerifier limits must be positive")
        self._max_concurrency = max_concurrency
        self._max_waiting = max_waiting
        self._ttl = cache_ttl
        self._size = cache_size
        self._clock = clock
        self._hasher = hasher or DEFAULT_HASHER
        self._executor = executor
        self._sem = asyncio.Semaphore(max_concurrency)
        self._key = secrets.token_bytes(32)
        # HMAC(token) -> (HMAC(phc), expiry); insertion order is expiry order (constant TTL).
        self._cache: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}
        # Bumped by invalidate()/clear(): a verification that started before does not cache.
        self._epoch = 0
        self.hits = 0
        self.misses = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.argon2_calls = 0
        self.coalesced = 0
        self.rejected = 0
        self.failures = 0  # verifications that found the token wrong

    def __repr__(self) -> str:
        return (
            f"PatVerifier(max_concurrency={self._max_concurrency}, in_flight={self.in_flight}, "
            f"cached={len(self._cache)}, hits={self.hits}, misses={self.misses})"
        )

    @property
    def waiting(self) -> int:
        """Distinct computations queued for a slot."""
        return sum(1 for f in self._flights.values() if not f.started)

    def stats(self) -> dict[str, int]:
        """All counters, for a health endpoint."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "waiting": self.waiting,
            "argon2_calls": self.argon2_calls,
            "coalesced": self.coalesced,
            "rejected": self.rejected,
            "failures": self.failures,
            "cached": len(self._cache),
        }

    def _mac(self, domain: bytes, value: str) -> bytes:
        data = domain + value.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    async def verify(self, phc: str, token: str) -> bool:
        """Whether ``token`` matches ``phc``; Argon2 runs off the loop, bounded and cached.

        Raises :class:`~edge.auth.secrets.AuthOverloaded` if too many are queued.
        """
        tkey = self._mac(b"token\x00", token)
        pkey = self._mac(b"phc\x00", phc)
        if self._cached(tkey, pkey):
            self.hits += 1
            return True
        self.misses += 1
        fkey = tkey + pkey
        flight = self._flights.get(fkey)
        if flight is None:
            if len(self._flights) >= self._max_concurrency + self._max_waiting:
                self.rejected += 1
                raise AuthOverloaded
            flight = _Flight()
            flight.task = asyncio.get_running_loop().create_task(
                self._fly(flight, tkey, pkey, phc, token)
            )
            self._flights[fkey] = flight
            flight.task.add_done_callback(functools.partial(self._landed, fkey, flight))
        else:
            self.coalesced += 1
        task = flight.task
        assert task is not None
        flight.waiters += 1
        try:
            matched = await asyncio.shield(task)
            if not matched:
                self.failures += 1
            return matched
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.started and not task.done():
                # Every caller gave up before Argon2 started: drop the queued work, and
                # forget the flight now so a new caller cannot join a cancelled task.
                self._landed(fkey, flight, task)
                task.cancel()

    def invalidate(self, token: str) -> None:
        """Forget a cached success for ``token`` (e.g. on revocation)."""
        self._cache.pop(self._mac(b"token\x00", token), None)
        self._epoch += 1

    def clear(self) -> None:
        """Forget every cached success."""
        self._cache.clear()
        self._epoch += 1

    def _cached(self, tkey: bytes, pkey: bytes) -> bool:
        entry = self._cache.get(tkey)
        if entry is None:
            return False
        cached_pkey, expires = entry
        if self._clock() >= expires:
            del self._cache[tkey]
            return False
        return hmac.compare_digest(cached_pkey, pkey)

    def _store(self, tkey: bytes, pkey: bytes) -> None:
        if self._size == 0 or self._ttl == 0:
            return
        now = self._clock()
        self._cache.pop(tkey, None)
        self._cache[tkey] = (pkey, now + self._ttl)
        cache = self._cache
        while cache:
            oldest = next(iter(cache.values()))
            if len(cache) <= self._size and oldest[1] > now:
                break
            cache.popitem(last=False)

    def _landed(self, fkey: bytes, flight: _Flight, _task: object) -> None:
        if self._flights.get(fkey) is flight:
            del self._flights[fkey]

    async def _fly(self, flight: _Flight, tkey: bytes, pkey: bytes, phc: str, token: str) -> bool:
        await self._sem.acquire()
        flight.started = True
        epoch = self._epoch
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.argon2_calls += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, verify_secret, phc, token, self._hasher
            )
        except BaseException:
            self._release(None)
            raise
        # The slot is freed when the thread is done, not when this task is: a cancelled
        # await must not let more than `max_concurrency` threads run Argon2.
        future.add_done_callback(self._release)
        ok = await asyncio.shield(future)
        if ok and epoch == self._epoch:
            self._store(tkey, pkey)
        return ok

    def _release(self, _future: object) -> None:
        self.in_flight -= 1
        self._sem.release()
