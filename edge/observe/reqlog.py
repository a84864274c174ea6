"""The request log in Redis: one hash per finished exchange, indexes, a stream, counters.

``RequestLogWriter`` is an ``ExchangeObserver`` (edge/observe/observer.py) and a service
(edge/lifecycle.py). On the request path ``exchange_done`` only appends the shared record
to a bounded per-worker deque (``deque(maxlen=...)``: when it is full the oldest entry goes
and is counted as dropped); nothing is built, encoded or awaited there. ``run`` wakes every
``batch_ms`` (or as soon as ``batch_size`` entries wait) and writes each batch with ONE
Redis call, ``EVALSHA`` of a small Lua script given one JSON array per entry, which runs
what a pipeline would have sent:

* ``req:{timestamp}:{ip}`` -- a hash of the entry's non-empty fields (``ReqLogEntry``),
  with ``EXPIRE`` of the retention;
* ``ZADD`` of the request key, scored by the request's Unix time in seconds (millisecond
  precision), into ``idx:req:ip:{ip}``, ``idx:req:host:{hostname}``,
  ``idx:req:user:{username}``, ``idx:req:client:{client_id}``, ``idx:req:status:{code}``,
  ``idx:req:errors`` (4xx and 5xx), ``idx:req:slow`` (over ``slow_ms``),
  ``idx:req:events`` (connection events: TLS handshake or PROXY header failures, which
  are neither requests nor counted as such) and ``idx:req:path:{method}:{path}``
  (``normalise_path``, methods outside the standard ones folded into ``OTHER``); each
  index touched by a batch then gets one ``ZREMRANGEBYSCORE`` of what is older than the
  retention and one ``EXPIRE``;
* ``XADD stream:requests MAXLEN ~ stream_maxlen`` of the same fields plus ``key``; the
  stream is also trimmed of entries older than the retention (``XTRIM MINID ~``) and
  expires with it;
* ``INCRBY stats:requests:{YYYYMMDD:HH}`` / ``stats:errors:{YYYYMMDD:HH}``, ``PFADD
  stats:unique_ips:{hostname}:{YYYYMMDD:HH}`` (and ``stats:unique_ips:*:{YYYYMMDD:HH}``
  for every host together), ``HINCRBY stats:duration:{YYYYMMDD:HH}`` of the duration's
  bucket (``duration_bucket``: 4 a doubling from 10 us, so percentiles read from it are
  at most 19% high), each with ``EXPIREAT`` the end of its hour plus the retention.

Why a script and not a pipeline: the cost is the client. A pipeline of the same commands
(about 6 per entry, grouped per batch) cost redis-py (pure Python, no hiredis) 128 us of
worker CPU per entry, mostly packing commands and parsing replies; the script call costs
about 6 us per entry to build (``_args``: the entry's fields, the index names, the JSON),
and ``exchange_done`` about 0.1 us. Redis runs about 50 us per entry (each index's new
members go in one ZADD a batch; a batch of 200 holds Redis about 10 ms, during which it
serves no one else: hence the batch cap). No MULTI semantics are needed; a script is
merely atomic anyway.

Every key written gets its TTL in the same call, so a key can never be left without
one (not even one recreated after ``DELETE /api/v1/logs``).

**The timestamp.** ``{timestamp}`` is ``{unix microseconds}-{writer tag}``, e.g.
``req:1764778499123000-9f3a01bc:203.0.113.7``. The microseconds come from the record's
time (millisecond precision) and are made strictly increasing within one writer (a second
request of the same millisecond gets ``...001``), so one worker never reuses a key; the tag
is 32 random bits drawn when the writer starts, so two workers or nodes logging one IP in
the same microsecond still write two keys (unless their tags also collide: about one in
four billion per pair of writers). The key keeps the ``req:{timestamp}:{ip}`` shape: split
at the first two ``:`` (an IPv6 address has more).

**When Redis is slow or down** a batch that fails or takes longer than ``write_timeout``
is dropped and counted in ``failed`` (one that timed out may still have landed), never
retried; after a failure the next attempt waits ``retry_pause`` while the deque keeps the
newest entries. Nothing on the request path ever
waits for Redis.

**Secrets never enter it**: the path is stored without its query string or fragment (a
tunnel ticket, an OAuth code or state all travel in the query), no request header is read
at all (Authorization, cookies, tickets and tokens cannot get in), and the upstream is
stored without userinfo or query.

**Memory, measured** (redis-server 7.0, jemalloc, ``INFO memory`` ``used_memory`` before and
after 10,000 entries, tests/integration/test_reqlog_writer.py ``test_memory_per_entry``):
about 1,500 bytes of Redis memory per logged request (1,374 by ``MEMORY USAGE`` of every
key), for 10,000 requests from 2,000 IPs to 5 hosts over 50 path shapes, 5% errors, 23%
slow: the hash about 430, the index members (5-6 per request, ``idx:req:all`` included)
about 640, the stream entry 240, counters and HyperLogLogs about 1. The stream is capped
(100,000 entries by default, about 24 MB) and so is the whole log: past ``max_entries``
(LOG_MAX_ENTRIES, 500,000) each batch removes the oldest entries, hash and index members
(at most ``EVICT_PER_BATCH`` a batch, which bounds its time), so the defaults hold about
0.65 GB at most whatever the traffic.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import math
import re
import secrets
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from edge.observe.observer import TLS_OK, TUNNEL_OPENED
from edge.store import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from edge.observe.accesslog import AccessRecord

__all__ = [
    "ReqLogEntry",
    "RequestLogWriter",
    "bucket_upper_ms",
    "duration_bucket",
    "entry_from_record",
    "hour_of",
    "index_method",
    "normalise_path",
]

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode

BATCH_MS = 100  # LOG_BATCH_MS
BATCH_SIZE = 200  # entries per script call at most (one call blocks Redis ~40 µs an entry;
# an index's ZADD unpacks 2 values an entry: Lua allows 8,000)
QUEUE_SIZE = 10_000  # entries waiting per worker at most; beyond, the oldest go
RETENTION_HOURS = 24  # LOG_RETENTION_HOURS
SLOW_MS = 1000  # LOG_SLOW_MS
STREAM_MAXLEN = 100_000  # stream:requests, approximately (MAXLEN ~)
WRITE_TIMEOUT = 2.0  # seconds one batch's call may take before it is counted as failed
RETRY_PAUSE = 1.0  # seconds after a failed batch before the next attempt
MAX_PATH = 1024  # characters of path kept in the hash (a request line may hold 8 KiB)
MAX_ENTRIES = 500_000  # LOG_MAX_ENTRIES: entries kept at most over every node (~0.7 GB)
EVICT_PER_BATCH = 1000  # oldest entries removed by one batch at most (bounds its time)
CACHE_SIZE = 4096  # paths' shapes and hosts' standing remembered by a writer
OTHER_HOST = "{other}"  # the indexes and counters of hosts the edge does not serve
OTHER_PATH = "{other}"  # a request target that is no path (absolute URI, CONNECT)
MAX_HOST = 253  # characters of a host (a DNS name is never longer)
MAX_FIELD = 128  # characters of user, client id, error code, PROXY unique id


class ReqLogEntry(msgspec.Struct, omit_defaults=True, gc=False):
    """One logged exchange: the fields of its ``req:{timestamp}:{ip}`` hash.

    Empty values (``""``, ``None``, ``0`` ports) are left out of the hash.
    """

    time: str  # ISO 8601 UTC with milliseconds, when the exchange ended
    node: str
    worker: int
    request_id: str
    client_ip: str
    method: str
    host: str
    path: str  # without query string or fragment
    status: int  # 0 for an event with no HTTP answer (a TLS or PROXY failure)
    bytes_in: int
    bytes_out: int
    duration_ms: float
    client_port: int = 0
    proxy_unique_id: str = ""
    sni: str = ""
    upstream: str = ""
    upstream_ms: float | None = None
    user: str = ""
    client_id: str = ""  # the OAuth client the request's token was issued to
    error: str = ""  # the edge's error code, when it answered with one
    # a connection-level event with no HTTP exchange (tls_handshake_failed,
    # proxy_header_refused): status 0, indexed in idx:req:events, not counted as a request
    event: str = ""

    def flat(self) -> list[str]:
        """:meth:`fields` as ``[field, value, ...]``, every value a string."""
        out = [
            "time", self.time, "node", self.node, "worker", str(self.worker),
            "request_id", self.request_id, "client_ip", self.client_ip,
            "method", self.method, "host", self.host, "path", self.path,
            "status", str(self.status), "bytes_in", str(self.bytes_in),
            "bytes_out", str(self.bytes_out), "duration_ms", str(self.duration_ms),
        ]  # fmt: skip
        if self.client_port:
            out += ("client_port", str(self.client_port))
        if self.proxy_unique_id:
            out += ("proxy_unique_id", self.proxy_unique_id)
        if self.sni:
            out += ("sni", self.sni)
        if self.upstream:
            out += ("upstream", self.upstream)
        if self.upstream_ms is not None:
            out += ("upstream_ms", str(self.upstream_ms))
        if self.user:
            out += ("user", self.user)
        if self.client_id:
            out += ("client_id", self.client_id)
        if self.error:
            out += ("error", self.error)
        if self.event:
            out += ("event", self.event)
        return out

    def fields(self) -> dict[str, str]:
        """The hash's fields, as Redis gives them back (the stream entry adds ``key``)."""
        flat = self.flat()
        return dict(zip(flat[::2], flat[1::2], strict=True))


# ------------------------------------------------------------------ scrubbing


def clean_path(target: str) -> str:
    """The path as the log keeps it: no query string, fragment or ``;`` parameters (a
    ``;jsessionid=`` is a session), at most ``MAX_PATH`` characters; a target that is no
    path (an absolute URI the edge refused, a CONNECT authority, which may carry
    userinfo) is ``{other}``, and ``OPTIONS *`` is ``*``."""
    path = strip_query(target)
    if not path.startswith("/"):
        return "*" if path == "*" else OTHER_PATH
    if ";" in path:
        path = "/".join(segment.partition(";")[0] for segment in path.split("/"))
    return path


def strip_query(path: str) -> str:
    """``path`` without its query string and fragment, at most ``MAX_PATH`` characters."""
    cut = len(path)
    for mark in ("?", "#"):
        at = path.find(mark)
        if 0 <= at < cut:
            cut = at
    return path[: min(cut, MAX_PATH)]


def clean_upstream(upstream: str) -> str:
    """The upstream without userinfo (``user:pass@``) or query string."""
    upstream = strip_query(upstream)
    scheme, sep, rest = upstream.rpartition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def entry_from_record(record: AccessRecord, node: str, worker: int) -> ReqLogEntry:
    """The log entry of an access record."""
    return ReqLogEntry(
        time=record.time,
        node=node,
        worker=worker,
        request_id=record.request_id,
        client_ip=record.client,
        method=record.method[:16],
        host=record.host[:MAX_HOST].lower(),
        path=clean_path(record.path),
        status=record.status,
        bytes_in=record.bytes_in,
        bytes_out=record.bytes_out,
        duration_ms=record.duration_ms,
        client_port=record.client_port,
        proxy_unique_id=(record.proxy_unique_id or "")[:MAX_FIELD],
        sni=(record.sni or "")[:MAX_HOST],
        upstream=clean_upstream(record.upstream)[:MAX_HOST] if record.upstream else "",
        upstream_ms=record.upstream_ms,
        user=record.user[:MAX_FIELD],
        client_id=record.client_id[:MAX_FIELD],
        error=record.error[:MAX_FIELD],
    )


def record_flat(record: AccessRecord, node: str, worker: str) -> tuple[list[str], str, str]:
    """``entry_from_record(record, node, int(worker)).flat()``, the host and the path, built
    directly: the common record (a clean origin-form path, a short host, an upstream
    without userinfo) is taken as it is, anything else goes through the same cleaning."""
    path = record.path
    if len(path) > MAX_PATH or path[:1] != "/" or "?" in path or "#" in path or ";" in path:
        path = clean_path(path)
    host = record.host
    host = (host if len(host) <= MAX_HOST else host[:MAX_HOST]).lower()
    method = record.method
    if len(method) > 16:
        method = method[:16]
    flat = [
        "time", record.time, "node", node, "worker", worker,
        "request_id", record.request_id, "client_ip", record.client,
        "method", method, "host", host, "path", path,
        "status", str(record.status), "bytes_in", str(record.bytes_in),
        "bytes_out", str(record.bytes_out), "duration_ms", str(record.duration_ms),
    ]  # fmt: skip
    if record.client_port:
        flat += ("client_port", str(record.client_port))
    if record.proxy_unique_id:
        flat += ("proxy_unique_id", record.proxy_unique_id[:MAX_FIELD])
    if record.sni:
        flat += ("sni", record.sni[:MAX_HOST])
    upstream = record.upstream
    if upstream:
        if len(upstream) > MAX_HOST or "@" in upstream or "?" in upstream or "#" in upstream:
            upstream = clean_upstream(upstream)[:MAX_HOST]
        if upstream:
            flat += ("upstream", upstream)
    if record.upstream_ms is not None:
        flat += ("upstream_ms", str(record.upstream_ms))
    if record.user:
        flat += ("user", record.user[:MAX_FIELD])
    if record.client_id:
        flat += ("client_id", record.client_id[:MAX_FIELD])
    if record.error:
        flat += ("error", record.error[:MAX_FIELD])
    return flat, host, path


# ------------------------------------------------------------------ path normalisation

MAX_SEGMENTS = 8  # segments kept in an index key; the rest become one "{more}"
MAX_SEGMENT = 64  # a longer segment is an id (or garbage) whatever it looks like
ID = "{id}"
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_HEX = re.compile(r"[0-9a-fA-F]{12,}")
# t_..., u_..., pat_..., tok_...: a short lowercase prefix, an underscore, an id
_PREFIXED = re.compile(r"[a-z]{1,5}_([A-Za-z0-9_-]{6,})")
# base58, base62, base64url ids: long runs of letters and digits
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,5}")
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[A-Za-z]")


def _is_id(segment: str) -> bool:
    if segment.isdigit():
        return True
    if _UUID.fullmatch(segment):
        return True
    has_digit = _DIGIT.search(segment) is not None
    if has_digit and _HEX.fullmatch(segment):
        return True
    prefixed = _PREFIXED.fullmatch(segment)
    if prefixed is not None:
        tail = prefixed.group(1)
        if _DIGIT.search(tail) or len(tail) >= 16:
            return True
    return has_digit and _LETTER.search(segment) is not None and bool(_TOKEN.fullmatch(segment))


def _segment(segment: str) -> str:
    if len(segment) > MAX_SEGMENT:
        return ID
    if _is_id(segment):
        return ID
    stem, dot, extension = segment.rpartition(".")
    if dot and stem and _EXTENSION.fullmatch(extension) and _is_id(stem):
        return f"{ID}.{extension}"  # 12345.json, <uuid>.png
    return segment


def normalise_path(path: str) -> str:
    """The path as an index key holds it: no query, ids folded into ``{id}``, at most
    ``MAX_SEGMENTS`` segments of at most ``MAX_SEGMENT`` characters.

    Ids are numbers, UUIDs, hex runs of 12 or more with a digit, ``t_...``-style prefixed
    ids whose tail has a digit or 16+ characters, and runs of 16+ letters, digits, ``-``
    and ``_`` with both a letter and a digit (base58/62/64url). Words (``users``,
    ``user_profile``, ``v2``, ``2024-01-31``) stay, so paths still read as routes. A
    target that is not a path (``*``, an absolute URI) becomes ``*`` or ``{other}``.
    """
    path = strip_query(path)
    if not path.startswith("/"):
        return "*" if path == "*" else "{other}"
    segments = path[1:].split("/")
    more = len(segments) > MAX_SEGMENTS
    out = [_segment(s) for s in segments[:MAX_SEGMENTS]]
    if more:
        out.append("{more}")
    return "/" + "/".join(out)


def index_method(method: str) -> str:
    """The method as an index key holds it: the standard ones, else ``OTHER``."""
    return method if method in _METHODS else "OTHER"


BUCKET_BASE_MS = 0.01  # bucket 0 holds durations up to 10 us
BUCKETS_PER_DOUBLING = 4  # each bucket's bound is 2 ** (1/4) (19%) above the previous one


def duration_bucket(ms: float) -> int:
    """The ``stats:duration:{hour}`` bucket of a duration: the least ``i`` with
    ``ms <= bucket_upper_ms(i)`` (a percentile read from the buckets is at most 19% high)."""
    if ms <= BUCKET_BASE_MS:
        return 0
    i = math.ceil(math.log2(ms / BUCKET_BASE_MS) * BUCKETS_PER_DOUBLING - 1e-9)
    return max(i, 0)


def bucket_upper_ms(i: int) -> float:
    """The largest duration (ms) bucket ``i`` holds."""
    return float(BUCKET_BASE_MS * 2 ** (i / BUCKETS_PER_DOUBLING))


# bucket i's largest duration, for bisect (a duration above the last counts in the last)
_BUCKET_BOUNDS = [bucket_upper_ms(i) for i in range(160)]


def hour_of(unix_seconds: float) -> str:
    """``YYYYMMDD:HH`` (UTC), the hour of the hourly counters."""
    return time.strftime("%Y%m%d:%H", time.gmtime(unix_seconds))


# ------------------------------------------------------------------ the writer

# One call per batch. ARGV: retention seconds, "(oldest score" to trim below, the stream's
# cap, the stream's key, then one JSON array per entry [key, score, [field, value, ...],
# [index keys]], then the batch's sums [[counter, n]...], [[hll, [ip...]]...], [[hourly
# key, expire at]...]. Every command runs with pcall: one bad key (WRONGTYPE after a hand
# edit) costs its own write, not the batch; the first such error comes back with a count.
# Keys are named in ARGV, not KEYS: fine on one Redis (or a Sentinel pair), not on Cluster.
_WRITE = """
local ttl = tonumber(ARGV[1])
local oldest = ARGV[2]
local maxlen = ARGV[3]
local stream = ARGV[4]
local conf = cjson.decode(ARGV[5])
local errors, first = 0, ''
local function call(...)
  local ok = redis.pcall(...)
  if type(ok) == 'table' and ok.err then
    errors = errors + 1
    if first == '' then first = ok.err end
    return nil
  end
  return ok
end
local all = conf.all
-- each index's new members, added with one ZADD a batch (a command per member cost
-- twice as much: each one's dispatch and keyspace notification)
local adds = {[all] = {}}
for i = 6, #ARGV - 1 do
  local e = cjson.decode(ARGV[i])
  local key, score, fields = e[1], e[2], e[3]
  call('HSET', key, unpack(fields))
  call('EXPIRE', key, ttl)
  call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'key', key, unpack(fields))
  local add = adds[all]
  add[#add + 1] = score
  add[#add + 1] = key
  for _, index in ipairs(e[4]) do
    add = adds[index]
    if add == nil then add = {}; adds[index] = add end
    add[#add + 1] = score
    add[#add + 1] = key
  end
end
if #ARGV > 6 then
  -- the stream: capped by MAXLEN ~, trimmed by age, and expiring like every other key
  local minid = string.format('%d', math.floor(tonumber(string.sub(oldest, 2)) * 1000))
  call('XTRIM', stream, 'MINID', '~', minid)
  call('EXPIRE', stream, ttl)
end
for index, add in pairs(adds) do
  if #add > 0 then call('ZADD', index, unpack(add)) end
  call('ZREMRANGEBYSCORE', index, '-inf', oldest)
  call('EXPIRE', index, ttl)
end
-- at most max entries kept, whatever the traffic: the oldest go, hash and index members
local over = (call('ZCARD', all) or 0) - conf.max
if over > 0 then
  if over > conf.evict then over = conf.evict end
  local victims = call('ZPOPMIN', all, over) or {}
  for v = 1, #victims, 2 do
    local key = victims[v]
    local f = call('HMGET', key, 'client_ip', 'host', 'user', 'client_id', 'status',
                   'method', 'path_shape')
    call('DEL', key)
    if f then
      local named = {conf.errors, conf.slow, conf.events}
      if f[1] then named[#named + 1] = conf.ip .. f[1] end
      if f[2] then
        named[#named + 1] = conf.host .. f[2]
        named[#named + 1] = conf.host .. conf.other  -- where an unserved host is indexed
      end
      if f[3] then named[#named + 1] = conf.user .. f[3] end
      if f[4] then named[#named + 1] = conf.client .. f[4] end
      if f[5] then named[#named + 1] = conf.status .. f[5] end
      if f[6] and f[7] then
        local method = f[6]
        if not conf.methods[method] then method = 'OTHER' end
        named[#named + 1] = conf.path .. method .. ':' .. f[7]
      end
      for _, index in ipairs(named) do call('ZREM', index, key) end
    end
  end
end
local sums = cjson.decode(ARGV[#ARGV])
for _, c in ipairs(sums[1]) do call('INCRBY', c[1], c[2]) end
for _, u in ipairs(sums[2]) do call('PFADD', u[1], unpack(u[2])) end
for _, d in ipairs(sums[4]) do
  for _, b in ipairs(d[2]) do call('HINCRBY', d[1], b[1], b[2]) end
end
for _, h in ipairs(sums[3]) do call('EXPIREAT', h[1], h[2]) end
return {errors, first}
"""


class _Prefixes:
    """The request log's key prefixes (edge.store.keys), joined to names in a batch."""

    __slots__ = ("client", "host", "ip", "log", "path", "status", "user")

    def __init__(self) -> None:
        self.log = keys.REQ_LOG
        self.ip = keys.req_index_ip("")
        self.host = keys.req_index_host("")
        self.user = keys.req_index_user("")
        self.client = keys.req_index_client("")
        self.status = keys.req_index_status_prefix()
        self.path = keys.req_index_path("", "")[:-1]  # ...path:{method}:{shape}


class RequestLogWriter:
    """One worker's request-log writer: an ``ExchangeObserver`` and a service.

    ``exchange_done(record)`` queues an access record as it is (the common case);
    ``log(entry)`` queues an entry built otherwise: a connection-level event (a failed
    TLS handshake, a refused PROXY header) with ``event`` set and no HTTP exchange. ``run(stop)``
    writes batches until ``stop`` is set, then what is still queued, once.
    """

    name = "request-log"

    def __init__(
        self,
        client: Redis,
        *,
        node: str,
        worker: int,
        batch_ms: int = BATCH_MS,
        batch_size: int = BATCH_SIZE,
        queue_size: int = QUEUE_SIZE,
        retention_hours: int = RETENTION_HOURS,
        slow_ms: int = SLOW_MS,
        stream_maxlen: int = STREAM_MAXLEN,
        write_timeout: float = WRITE_TIMEOUT,
        retry_pause: float = RETRY_PAUSE,
        clock: Callable[[], float] = time.time,
        skip: Callable[[AccessRecord], bool] | None = None,
        max_entries: int = MAX_ENTRIES,
        known_host: Callable[[str], bool] | None = None,
    ) -> None:
        self._client = client
        self.max_entries = max_entries
        # hosts with unique-IP counters of their own (the configured ones): None, all
        self.known_host = known_host
        self._served_cache: dict[str, bool] = {}
        self._shapes: dict[tuple[str, str], tuple[str, str]] = {}
        self._prefixes = _Prefixes()
        self._conf = _encode(
            {
                "max": max_entries,
                "evict": EVICT_PER_BATCH,
                "all": keys.REQ_INDEX_ALL,
                "ip": keys.req_index_ip(""),
                "host": keys.req_index_host(""),
                "user": keys.req_index_user(""),
                "client": keys.req_index_client(""),
                "status": keys.req_index_status_prefix(),
                "errors": keys.REQ_INDEX_ERRORS,
                "slow": keys.REQ_INDEX_SLOW,
                "events": keys.REQ_INDEX_EVENTS,
                "path": keys.req_index_path("", "")[:-1],
                "methods": {method: True for method in _METHODS},
                "other": OTHER_HOST,
            }
        )
        # records left out (the health checks the access log leaves out too)
        self.skip = skip
        self.node = node
        self.worker = worker
        self.batch_seconds = batch_ms / 1000
        self.batch_size = batch_size
        self.retention = retention_hours * 3600
        self.slow_ms = slow_ms
        self.stream_maxlen = stream_maxlen
        self.write_timeout = write_timeout
        self.retry_pause = retry_pause
        self._clock = clock
        self._queue: deque[AccessRecord | ReqLogEntry] = deque(maxlen=queue_size)
        self._full = asyncio.Event()
        self._script = client.register_script(_WRITE)
        self.tag = secrets.token_hex(4)
        self._last_us = 0
        self._second_text = ""
        self._second = 0
        self.written = 0
        self.dropped = 0  # oldest entries pushed out of a full queue
        self.failed = 0  # entries of batches that could not be written
        self.batches = 0
        self.command_errors = 0
        self.last_error: str | None = None
        self._failing = False

    # ------------------------------------------------------------ the request path
    def exchange_done(self, record: AccessRecord) -> None:
        """Queue ``record`` (O(1), never raises, never waits)."""
        skip = self.skip
        if skip is not None and skip(record):
            return
        if len(record.path) > MAX_PATH or len(record.host) > MAX_HOST:
            # (a queue of 16 KiB Host headers would hold far more memory than its length
            # says while Redis is away)
            record = msgspec.structs.replace(
                record, path=record.path[: MAX_PATH + 1], host=record.host[:MAX_HOST]
            )
        queue = self._queue
        if len(queue) == queue.maxlen:
            self.dropped += 1
        queue.append(record)
        if len(queue) == self.batch_size:
            self._full.set()

    def connection_event(self, kind: str, ip: str, port: int, sni: str, detail: str) -> None:
        """A connection-level event (edge.observe.observer.ConnectionEvents) as an entry;
        a handshake that succeeded is not one (its requests are logged)."""
        if kind == TLS_OK:
            return
        now = self._clock()
        second, milli = divmod(int(now * 1000), 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"
        self.log(
            ReqLogEntry(
                time=stamp,
                node=self.node,
                worker=self.worker,
                request_id="",
                client_ip=ip,
                method="",
                host="",
                path="",
                status=0,
                bytes_in=0,
                bytes_out=0,
                duration_ms=0.0,
                client_port=port,
                sni=sni,
                error=detail[:200],
                event=kind,
            )
        )

    def tunnel_opened(self, record: AccessRecord) -> None:
        """An exchange switched protocols: an event entry now (its request is logged when
        it ends, with the tunnel's whole duration and bytes)."""
        if self.skip is not None and self.skip(record):
            return
        entry = entry_from_record(record, self.node, self.worker)
        entry.event = TUNNEL_OPENED
        self.log(entry)

    def log(self, entry: ReqLogEntry) -> None:
        """Queue an entry built by the caller (O(1), never raises, never waits)."""
        queue = self._queue
        if len(queue) == queue.maxlen:
            self.dropped += 1
        queue.append(entry)
        if len(queue) == self.batch_size:
            self._full.set()

    # ------------------------------------------------------------ the service
    async def run(self, stop: asyncio.Event) -> None:
        relay = asyncio.ensure_future(self._relay(stop))
        try:
            while not stop.is_set():
                pause = self.retry_pause if self._failing else self.batch_seconds
                if not self._full.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), pause)
                self._full.clear()
                while self._queue and not stop.is_set():
                    if not await self.write_batch():
                        break
                    if len(self._queue) < self.batch_size:
                        break
        finally:
            relay.cancel()
            await asyncio.wait([relay])
        # what the drain left: once, each batch bounded, all of it within one write_timeout
        # more (a Redis that hangs must not hold the worker's exit)
        ends = time.monotonic() + self.write_timeout
        while self._queue and time.monotonic() < ends:
            if not await self.write_batch():
                break
        if self._queue:
            self.failed += len(self._queue)
            self._queue.clear()

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._full.set()

    async def flush(self) -> None:
        """Write everything queued now (batch by batch; a failed batch is dropped)."""
        while self._queue:
            await self.write_batch()

    def health(self) -> dict[str, object]:
        return {
            "queued": len(self._queue),
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "batches": self.batches,
            "command_errors": self.command_errors,
            "last_error": self.last_error,
            "redis": "unavailable" if self._failing else "ok",
        }

    # ------------------------------------------------------------ one batch
    async def write_batch(self) -> bool:
        """Take up to ``batch_size`` entries and write them with one script call; ``False``
        when the call failed (its entries are dropped and counted in ``failed``)."""
        queue = self._queue
        taken = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        if not taken:
            return True
        try:
            args = self._args(taken)
            result = await asyncio.wait_for(self._script(args=args), self.write_timeout)
        except Exception as exc:  # any failure drops the batch, never more
            self.failed += len(taken)
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            if not self._failing:
                log.warning("request log: a batch could not be written: %s", self.last_error)
            self._failing = True
            return False
        errors, message = (int(result[0]), result[1]) if isinstance(result, list) else (0, b"")
        if errors:
            self.command_errors += errors
            self.last_error = bytes(message).decode("utf-8", "replace")[:200]
        if self._failing:
            log.info("request log: writing again (%d entries lost so far)", self.failed)
        self._failing = False
        self.batches += 1
        self.written += len(taken)
        return True

    def _unix_ms(self, text: str) -> int:
        """``2026-12-03T16:14:59.123Z`` -> Unix milliseconds (the second cached)."""
        prefix = text[:19]
        if prefix != self._second_text:
            try:
                second = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                return int(self._clock() * 1000)
            self._second_text, self._second = prefix, second
        milli = text[20:23]
        return self._second * 1000 + (int(milli) if milli.isdigit() else 0)

    def _args(self, taken: list[AccessRecord | ReqLogEntry]) -> list[bytes | str | int]:
        """The script's arguments: settings, one JSON array per entry, the batch's sums.

        Built for speed (it runs for every request, off the request path but on the
        worker's loop): an access record becomes its fields' list directly
        (:func:`record_flat`, equal to ``entry_from_record(...).flat()``), index names are
        prefixes joined here, and what repeats (the hour's keys, a path's shape, a host's
        standing) is looked up, not computed again.
        """
        ttl = self.retention
        counters: dict[str, int] = {}
        uniques: dict[str, list[str]] = {}
        hours: dict[str, int] = {}  # hourly key -> when it expires
        durations: dict[str, dict[int, int]] = {}  # hourly key -> bucket -> count
        args: list[bytes | str | int] = [
            ttl,
            f"({self._clock() - ttl}",
            self.stream_maxlen,
            keys.REQ_STREAM,
            self._conf,
        ]
        p = self._prefixes
        node, worker, tag, slow_ms = self.node, str(self.worker), self.tag, self.slow_ms
        served_host, shape_of = self._served, self._shape
        hourly: tuple[int, str, int, str, str, str, str] | None = None
        last_us = self._last_us
        for item in taken:
            if isinstance(item, ReqLogEntry):
                entry = item
                flat = entry.flat()
                stamp, ip, host = entry.time, entry.client_ip, entry.host
                path, method, status = entry.path, entry.method, entry.status
                duration, user, client_id = entry.duration_ms, entry.user, entry.client_id
                event = entry.event
            else:
                flat, host, path = record_flat(item, node, worker)
                stamp, ip, method, status = item.time, item.client, flat[11], item.status
                duration, user, client_id = item.duration_ms, item.user, item.client_id
                event = ""
            us = self._unix_ms(stamp) * 1000
            if us <= last_us:
                us = last_us + 1
            last_us = us
            key = f"{p.log}{us}-{tag}:{ip}"
            score = f"{us / 1_000_000:.3f}"  # a string: Lua would print 17 digits
            if event:  # no request: its IP, host, user and the events; not counted
                named = [p.ip + ip, keys.REQ_INDEX_EVENTS]
                if host:
                    named.append(p.host + host)
                if user:
                    named.append(p.user + user)
                args.append(_encode((key, score, flat, named)))
                continue
            # a host the edge does not serve (a scan of random Host headers) has one
            # index, one counter and no path index of its own: no key per name or path
            served = not host or served_host(host)
            indexed_host = host if served else OTHER_HOST
            shape = shape_of(method, path) if served else (OTHER_PATH, method)
            named = [p.ip + ip, f"{p.path}{shape[1]}:{shape[0]}"]
            if host:
                named.append(p.host + indexed_host)
            if user:
                named.append(p.user + user)
            if client_id:
                named.append(p.client + client_id)
            if status:
                named.append(f"{p.status}{status}")
            error = 400 <= status < 600
            if error:
                named.append(keys.REQ_INDEX_ERRORS)
            if duration > slow_ms:
                named.append(keys.REQ_INDEX_SLOW)
            flat += ("path_shape", shape[0])  # what the path's index is named by
            args.append(_encode((key, score, flat, named)))

            hour_start = us // 3_600_000_000 * 3600
            if hourly is None or hourly[0] != hour_start:
                hour = hour_of(hour_start)
                hourly = (
                    hour_start,
                    hour,
                    hour_start + 3600 + ttl,
                    keys.req_stats_requests(hour),
                    keys.req_stats_errors(hour),
                    keys.req_stats_duration(hour),
                    keys.req_stats_unique_ips("*", hour),
                )
            _, hour, until, requests_key, errors_key, durations_key, every_host = hourly
            counters[requests_key] = counters.get(requests_key, 0) + 1
            hours[requests_key] = until
            if error:
                counters[errors_key] = counters.get(errors_key, 0) + 1
                hours[errors_key] = until
            unique = uniques.get(every_host)
            if unique is None:
                unique = uniques[every_host] = []
                hours[every_host] = until
            unique.append(ip)
            if host:
                unique_key = keys.req_stats_unique_ips(indexed_host, hour)
                unique = uniques.get(unique_key)
                if unique is None:
                    unique = uniques[unique_key] = []
                    hours[unique_key] = until
                unique.append(ip)
            bucket = bisect_left(_BUCKET_BOUNDS, duration)
            per_bucket = durations.get(durations_key)
            if per_bucket is None:
                per_bucket = durations[durations_key] = {}
                hours[durations_key] = until
            per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
        self._last_us = last_us
        args.append(
            _encode(
                (
                    list(counters.items()),
                    list(uniques.items()),
                    [(key, str(until)) for key, until in hours.items()],
                    [
                        [key, [(str(i), n) for i, n in per.items()]]
                        for key, per in durations.items()
                    ],
                )
            )
        )
        return args

    def _served(self, host: str) -> bool:
        """Whether ``host`` has indexes and counters of its own (remembered a while)."""
        known = self.known_host
        if known is None:
            return True
        cache = self._served_cache
        served = cache.get(host)
        if served is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()  # (a configuration change or a scan of names: start over)
            served = cache[host] = known(host)
        return served

    def _shape(self, method: str, path: str) -> tuple[str, str]:
        """(the path's shape, the method as indexed), remembered for recent paths."""
        cache = self._shapes
        shape = cache.get((method, path))
        if shape is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            shape = cache[(method, path)] = (normalise_path(path), index_method(method))
        return shape


if TYPE_CHECKING:  # the writer is both; mypy checks it here, before the worker installs it
    from edge.lifecycle import Service
    from edge.observe.observer import ExchangeObserver

    def _conforms(writer: RequestLogWriter) -> tuple[Service, ExchangeObserver]:
        return writer, writer
