"""Reading the request log that :mod:`edge.observe.reqlog` writes: search, stats, follow, clear.

No HTTP here (:mod:`edge.api.logs` serves it); every function takes the worker's asyncio
Redis client and answers plain data.

**Search.** A query names filters (:class:`Filters`) and a time window (``hours``).
The filters that have an index of their own (ip, user, client, host, an exact status,
errors, slow, events) each name a sorted set of request keys scored by Unix time; when
several are given, the one with the fewest members in the window (``ZCOUNT``, one round
trip) is walked newest first. With no indexed filter the walk is over
``stream:requests`` (``XREVRANGE``), whose entries carry the hash's fields. The walk runs
in a Lua script, ``CHUNK`` members a call, which reads each hash, checks the other
filters and answers only the matches: the client never parses what it does not show. It
stops at ``limit`` matches or after ``SCAN_BOUND`` members examined (then the answer is
``partial``); either way the answer has a cursor to go on from where it stopped. Keys
whose hash has expired are skipped.

**Cursors** are opaque to clients: base64url of ``z|{score}|{ties}`` (a sorted-set walk:
continue with the members scored at most ``score``, after the first ``ties`` of that
score: Redis always orders equal scores the same way, by member) or ``x|{stream id}``.

**Follow.** ``XREAD BLOCK`` on ``stream:requests`` from a stream id (``$``: the newest
now), until an entry matches or ``wait`` seconds passed; the answer's ``next`` is the
last id read, what the next call continues from, so nothing is missed between calls.

**Stats** read ``stats:requests``, ``stats:errors``, ``stats:unique_ips:*`` (or one
host's) and ``stats:duration`` per hour; the percentiles are the upper bounds of the
duration buckets (at most 19% above the true value).

**Clear** ``SCAN``s for every request-log key and ``UNLINK``s them in batches, at most
``CLEAR_MAX_KEYS`` per call (the caller calls again until ``complete``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.observe.reqlog import OTHER_HOST, SLOW_MS, bucket_upper_ms, hour_of
from edge.store import keys
from edge.store.scan import as_text

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "CLEAR_MAX_KEYS",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_WAIT",
    "SCAN_BOUND",
    "Cursor",
    "Filters",
    "FollowPage",
    "InvalidCursor",
    "Page",
    "clear",
    "follow",
    "percentile_ms",
    "search",
    "stats",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # entries per answer at most
SCAN_BOUND = 10_000  # index members or stream entries examined per call at most
PAGE = 250  # stream entries read per round trip by a follow
CHUNK = 250  # index members or stream entries one script call examines at most (~7 ms of Redis)
MAX_WAIT = 25.0  # seconds a follow call may wait for a new entry
CLEAR_MAX_KEYS = 50_000  # keys unlinked per clear call at most
CLEAR_BATCH = 1000  # keys per UNLINK
STREAM_ID = re.compile(r"\A[0-9]{1,20}(?:-[0-9]{1,20})?\Z")

# fields stored as text that answers give as numbers
_INTS = frozenset({"worker", "status", "bytes_in", "bytes_out", "client_port"})
_FLOATS = frozenset({"duration_ms", "upstream_ms"})


class InvalidCursor(ValueError):
    """A cursor that this module did not make."""


# ------------------------------------------------------------------ filters


@dataclass(frozen=True, slots=True)
class Filters:
    """What an entry must be to be listed (None or False: anything).

    ``status`` is an exact code, ``status_class`` its first digit (4 for ``4xx``);
    ``path`` a prefix of the stored path (which has no query string); ``method`` is
    compared upper-case; ``min_ms`` is a least duration; ``errors``: a 4xx or 5xx;
    ``slow``: in ``idx:req:slow`` (slower than the writer's ``LOG_SLOW_MS``);
    ``events``: a connection event (no HTTP exchange).
    """

    host: str | None = None
    ip: str | None = None
    status: int | None = None
    status_class: int | None = None
    method: str | None = None
    path: str | None = None
    user: str | None = None
    client: str | None = None
    min_ms: float | None = None
    errors: bool = False
    slow: bool = False
    events: bool = False

    def indexes(self) -> list[str]:
        """The sorted sets an entry matching these filters is in (some may be walked)."""
        named: list[str] = []
        if self.ip is not None:
            named.append(keys.req_index_ip(self.ip))
        if self.user is not None:
            named.append(keys.req_index_user(self.user))
        if self.client is not None:
            named.append(keys.req_index_client(self.client))
        if self.host is not None:
            named.append(keys.req_index_host(self.host.lower()))
        if self.status is not None:
            named.append(keys.req_index_status(self.status))
        if self.errors or self.status_class in (4, 5):
            named.append(keys.REQ_INDEX_ERRORS)
        if self.slow:
            named.append(keys.REQ_INDEX_SLOW)
        if self.events:
            named.append(keys.REQ_INDEX_EVENTS)
        return named

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether an entry's fields (as stored) pass every filter but ``slow`` (an index
        membership, checked apart)."""
        if self.ip is not None and fields.get("client_ip") != self.ip:
            return False
        if self.user is not None and fields.get("user") != self.user:
            return False
        if self.client is not None and fields.get("client_id") != self.client:
            return False
        if self.host is not None and fields.get("host") != self.host.lower():
            return False
        if self.method is not None and fields.get("method") != self.method.upper():
            return False
        if self.path is not None and not fields.get("path", "").startswith(self.path):
            return False
        if self.events and not fields.get("event"):
            return False
        status = _number(fields.get("status"))
        if self.status is not None and status != self.status:
            return False
        if self.status_class is not None and (status is None or status // 100 != self.status_class):
            return False
        if self.errors and (status is None or not 400 <= status < 600):
            return False
        if self.min_ms is not None:
            duration = _number(fields.get("duration_ms"))
            if duration is None or duration < self.min_ms:
                return False
        return True


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(reply: object) -> int:
    """A counter's reply as a count: 0 when absent, not a number, or an error."""
    if isinstance(reply, int):
        return reply
    if isinstance(reply, bytes | str):
        text = as_text(reply)
        return int(text) if text.isdigit() else 0
    return 0


def _iso(unix: float) -> str:
    """``unix`` as the entries' ``time`` reads (ISO 8601 UTC, ms): such texts sort as
    the times do."""
    second, milli = divmod(int(max(unix, 0) * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"


def entry_document(fields: Mapping[str, str], key: str) -> dict[str, Any]:
    """An entry as answers show it: its fields, numbers as numbers, and its ``key``."""
    doc: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _INTS and value.lstrip("-").isdigit():
            doc[name] = int(value)
        elif name in _FLOATS and _number(value) is not None:
            doc[name] = float(value)
        else:
            doc[name] = value
    doc["key"] = key
    return doc


def _text_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in raw.items()}


# ------------------------------------------------------------------ cursors


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a walk stopped: in a sorted set, below ``score`` after the first ``ties``
    members of that score; or in the stream, below ``stream_id``."""

    score: float | None = None
    ties: int = 0
    stream_id: str | None = None

    def encode(self) -> str:
        if self.stream_id is not None:
            text = f"x|{self.stream_id}"
        else:
            text = f"z|{self.score!r}|{self.ties}"
        return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``encode`` made; :class:`InvalidCursor` for anything else."""
        if not text or len(text) > 2048:
            raise InvalidCursor(text)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        except (binascii.Error, ValueError):
            raise InvalidCursor(text) from None
        kind, _, rest = raw.partition("|")
        if kind == "x" and STREAM_ID.fullmatch(rest):
            return cls(stream_id=rest)
        if kind == "z":
            score, sep, ties = rest.partition("|")
            value = _number(score)
            if sep and value is not None and ties.isdigit() and len(ties) <= 9:
                return cls(score=value, ties=int(ties))
        raise InvalidCursor(text)


# ------------------------------------------------------------------ search

# The walk runs in Redis, a chunk of members per call: a client reading every hash of a
# 10,000-member walk spent 4.8 s parsing replies (redis-py without hiredis); the script
# answers only the matches (at most ``want``): 0.27 s for the same walk, measured, about
# 7 ms of Redis per call of CHUNK members (the calls of other clients wait that long).
# Filters come as JSON (see _filter_json); each match as {key, score, {field, value...}}.
# ``ties``: how many members scored ``cur`` were passed, so a cursor (score, ties) goes on
# with ``ZREVRANGEBYSCORE ... LIMIT ties`` (equal scores always come in the same order).
_LUA_MATCH = """
local function match(f, key, flat)
  local e = {}
  for i = 1, #flat, 2 do e[flat[i]] = flat[i + 1] end
  if next(e) == nil then return false end
  if f.ip and e.client_ip ~= f.ip then return false end
  if f.user and e.user ~= f.user then return false end
  if f.client and e.client_id ~= f.client then return false end
  if f.host and e.host ~= f.host then return false end
  if f.method and e.method ~= f.method then return false end
  if f.path and string.sub(e.path or '', 1, #f.path) ~= f.path then return false end
  if f.events and (e.event or '') == '' then return false end
  local status = tonumber(e.status or '')
  if f.status and status ~= f.status then return false end
  if f.class and (not status or math.floor(status / 100) ~= f.class) then return false end
  if f.errors and (not status or status < 400 or status >= 600) then return false end
  if f.min_ms then
    local ms = tonumber(e.duration_ms or '')
    if not ms or ms < f.min_ms then return false end
  end
  if f.slow then
    local score = redis.pcall('ZSCORE', f.slow, key)
    if type(score) ~= 'string' then return false end
  end
  return true
end
"""

_WALK_INDEX = (
    _LUA_MATCH
    + """
local index, top, since = ARGV[1], ARGV[2], ARGV[3]
local offset, count, want = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local f = cjson.decode(ARGV[7])
local cur, ties = ARGV[8], tonumber(ARGV[9])
local members = redis.call('ZREVRANGEBYSCORE', index, top, since, 'WITHSCORES', 'LIMIT',
  offset, count)
local found, examined = {}, 0
for i = 1, #members, 2 do
  local key, score = members[i], members[i + 1]
  examined = examined + 1
  if cur ~= '' and tonumber(score) == tonumber(cur) then ties = ties + 1
  else cur, ties = score, 1 end
  -- a member that is no hash (a key written by hand) is skipped, not an error
  local flat = redis.pcall('HGETALL', key)
  if type(flat) ~= 'table' or flat.err then flat = {} end
  if match(f, key, flat) then
    found[#found + 1] = {key, score, flat}
    if #found >= want then break end
  end
end
return {examined, #members / 2, cur, ties, found}
"""
)


def _filter_json(filters: Filters, *, slow_index: str | None) -> str:
    """The filters as the scripts read them (absent: anything)."""
    f: dict[str, Any] = {}
    for name, value in (
        ("ip", filters.ip),
        ("user", filters.user),
        ("client", filters.client),
        ("host", None if filters.host is None else filters.host.lower()),
        ("method", None if filters.method is None else filters.method.upper()),
        ("path", filters.path),
        ("status", filters.status),
        ("class", filters.status_class),
        ("min_ms", filters.min_ms),
        ("slow", slow_index),
    ):
        if value is not None:
            f[name] = value
    if filters.errors:
        f["errors"] = True
    if filters.events:
        f["events"] = True
    return json.dumps(f)


@dataclass(slots=True)
class Page:
    """One answer of :func:`search`."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    partial: bool = False  # stopped at SCAN_BOUND, not at the end of the window
    examined: int = 0
    source: str = ""  # the index (or stream) walked


async def search(
    client: Redis,
    filters: Filters,
    *,
    hours: float,
    limit: int = DEFAULT_LIMIT,
    cursor: Cursor | None = None,
    scan_bound: int = SCAN_BOUND,
    clock: Callable[[], float] = time.time,
) -> Page:
    """The newest entries of the last ``hours`` matching ``filters`` (at most ``limit``),
    continuing below ``cursor`` when given."""
    since = clock() - hours * 3600
    # no indexed filter: every entry kept, oldest to newest (idx:req:all; the stream is
    # capped far lower and would miss most of a long window)
    candidates = filters.indexes() or [keys.REQ_INDEX_ALL]
    if cursor is not None and cursor.stream_id is not None:
        raise InvalidCursor("not a cursor of this query")
    if filters.host is not None:
        # a host the edge does not serve is indexed under {other} (a scan of random Host
        # headers makes no key per name): its entries are found there, by their host field
        named = keys.req_index_host(filters.host.lower())
        if not await client.exists(named):
            other = keys.req_index_host(OTHER_HOST)
            candidates = [other if key == named else key for key in candidates]
    index = await _most_selective(client, candidates, since)
    slow = keys.REQ_INDEX_SLOW if filters.slow and index != keys.REQ_INDEX_SLOW else None
    f = _filter_json(filters, slow_index=slow)
    return await _walk_index(client, index, f, since, limit, cursor, scan_bound)


async def _most_selective(client: Redis, candidates: Sequence[str], since: float) -> str:
    if len(candidates) == 1:
        return candidates[0]
    pipe = client.pipeline(transaction=False)
    for key in candidates:
        pipe.zcount(key, since, "+inf")
    counts = await pipe.execute()
    return min(zip(counts, range(len(candidates)), candidates, strict=True))[2]


def _flat_fields(flat: Sequence[Any]) -> dict[str, str]:
    return {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


async def _walk_index(
    client: Redis,
    index: str,
    f: str,
    since: float,
    limit: int,
    cursor: Cursor | None,
    scan_bound: int,
) -> Page:
    page = Page(source=index)
    top = "+inf" if cursor is None or cursor.score is None else repr(cursor.score)
    offset = 0 if cursor is None else cursor.ties  # members read below the fixed top
    cur, ties = ("", 0) if cursor is None else (top, cursor.ties)
    script = client.register_script(_WALK_INDEX)
    while page.examined < scan_bound:
        count = min(CHUNK, scan_bound - page.examined)
        want = limit - len(page.entries)
        reply: Any = await script(args=[index, top, repr(since), offset, count, want, f, cur, ties])
        examined, read, cur, ties, found = (
            int(reply[0]),
            int(reply[1]),
            reply[2],
            reply[3],
            reply[4],
        )
        cur, ties = as_text(cur), int(ties)
        page.examined += examined
        if cur:
            # the next chunk goes on below the last member examined, as a cursor does:
            # entries logged meanwhile (scored above it) cannot shift what comes next
            top, offset = cur, ties
        for key, _score, flat in found:
            page.entries.append(entry_document(_flat_fields(flat), as_text(key)))
        if len(page.entries) >= limit:
            page.next_cursor = Cursor(score=float(cur), ties=ties).encode()
            return page
        if read < count:
            return page  # the end of the window: no cursor
    page.partial = True
    if cur:
        page.next_cursor = Cursor(score=float(cur), ties=ties).encode()
    return page


# ------------------------------------------------------------------ follow


@dataclass(slots=True)
class FollowPage:
    """One answer of :func:`follow`: the matching entries and the id to continue from."""

    entries: list[dict[str, Any]]
    next: str


async def newest_id(client: Redis) -> str:
    """The id of the stream's newest entry (``0-0`` when it is empty)."""
    newest: Any = await client.xrevrange(keys.REQ_STREAM, "+", "-", count=1)
    return as_text(newest[0][0]) if newest else "0-0"


async def follow(
    client: Redis,
    filters: Filters,
    *,
    after: str,
    wait: float,
    limit: int = DEFAULT_LIMIT,
    slow_ms: float = SLOW_MS,
    scan_bound: int = SCAN_BOUND,
) -> FollowPage:
    """Entries added to ``stream:requests`` after ``after`` (a stream id, or ``$``: from
    now) that match ``filters``, waiting up to ``wait`` seconds for the first; returns as
    soon as a read brought matches (at most ``limit``), or after ``scan_bound`` entries
    read (a follower far behind catches up call by call). A stream entry does not say
    whether it was indexed as slow: ``filters.slow`` is a duration over ``slow_ms`` (the
    edge's ``LOG_SLOW_MS``) here."""
    last = await newest_id(client) if after == "$" else after
    entries: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    examined = 0
    while examined < scan_bound:
        remaining_ms = int((deadline - loop.time()) * 1000)
        count = min(PAGE, scan_bound - examined)
        # BLOCK 0 would wait forever: past the deadline, one read that does not block
        block = remaining_ms if remaining_ms > 0 else None
        reply: Any = await client.xread({keys.REQ_STREAM: last}, count=count, block=block)
        read: Any = reply[0][1] if reply else []
        for raw_id, raw in read:
            examined += 1
            last = as_text(raw_id)
            fields = _text_fields(raw)
            key = fields.pop("key", "")
            if filters.matches(fields) and (not filters.slow or _slow(fields, slow_ms)):
                entries.append(entry_document(fields, key))
                if len(entries) >= limit:
                    return FollowPage(entries, last)
        if entries or block is None:
            break
    return FollowPage(entries, last)


def _slow(fields: Mapping[str, str], slow_ms: float) -> bool:
    duration = _number(fields.get("duration_ms"))
    return duration is not None and duration > slow_ms


# ------------------------------------------------------------------ stats


def percentile_ms(buckets: Mapping[int, int], fraction: float) -> float | None:
    """The duration (ms) at or under which ``fraction`` of the counted requests fell: the
    upper bound of the bucket that holds it (None without any request)."""
    total = sum(n for n in buckets.values() if n > 0)
    if total <= 0:
        return None
    rank = max(math.ceil(fraction * total), 1)
    seen = 0
    for i in sorted(buckets):
        if buckets[i] <= 0:
            continue
        seen += buckets[i]
        if seen >= rank:
            return round(bucket_upper_ms(i), 3)
    return None  # pragma: no cover (seen reaches total)


async def stats(
    client: Redis,
    *,
    hours: int,
    host: str | None = None,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """Per hour, newest first (this hour included): requests, errors, unique client IPs
    (of ``host``, or of every host), and the p50/p95/p99 duration in ms."""
    now = int(clock())
    starts = [now // 3600 * 3600 - i * 3600 for i in range(hours)]
    pipe = client.pipeline(transaction=False)
    for start in starts:
        hour = hour_of(start)
        pipe.get(keys.req_stats_requests(hour))
        pipe.get(keys.req_stats_errors(hour))
        pipe.pfcount(keys.req_stats_unique_ips("*" if host is None else host.lower(), hour))
        pipe.hgetall(keys.req_stats_duration(hour))
    # a key of the wrong type or value (written by hand) counts as nothing, never fails
    # the answer
    replies = await pipe.execute(raise_on_error=False)
    out: list[dict[str, Any]] = []
    for n, start in enumerate(starts):
        requests, errors, unique, durations = replies[4 * n : 4 * n + 4]
        buckets: dict[int, int] = {}
        for raw_bucket, raw_count in (durations if isinstance(durations, dict) else {}).items():
            bucket, count = as_text(raw_bucket), as_text(raw_count)
            if bucket.isdigit() and count.isdigit():
                buckets[int(bucket)] = int(count)
        row: dict[str, Any] = {
            "hour": hour_of(start),
            "start": time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(start)),
            "requests": _count(requests),
            "errors": _count(errors),
            "unique_ips": _count(unique),
            "p50_ms": percentile_ms(buckets, 0.50),
            "p95_ms": percentile_ms(buckets, 0.95),
            "p99_ms": percentile_ms(buckets, 0.99),
        }
        if host is not None:
            row["host"] = host.lower()
        out.append(row)
    return out


# ------------------------------------------------------------------ clear


def is_log_key(key: str) -> bool:
    """Whether ``key`` is one of the request log's."""
    return key == keys.REQ_STREAM or key.startswith(keys.REQ_LOG_PREFIXES)


async def clear(client: Redis, *, max_keys: int = CLEAR_MAX_KEYS) -> tuple[int, bool]:
    """Unlink request-log keys, at most ``max_keys`` (rounded up to a whole batch): how
    many, and whether none is left (a key written meanwhile may be)."""
    deleted = 0
    batch: list[str] = []
    # one pass over the key space; the pattern lets Redis skip most other keys
    async for raw in client.scan_iter(match="[irs]*", count=CLEAR_BATCH):
        key = as_text(raw)
        if not is_log_key(key):
            continue
        batch.append(key)
        if len(batch) >= CLEAR_BATCH:
            deleted += await client.unlink(*batch)
            batch.clear()
            if deleted >= max_keys:
                return deleted, False
    if batch:
        deleted += await client.unlink(*batch)
    return deleted, True
