"""Every Redis key the edge reads or writes, spelled here and nowhere else.

Three families share one Redis (and every node):

* **configuration**, edited by hand with ``redis-cli`` as much as through the API, and
  watched by every worker (keyspace notifications on the ``WATCHED_PREFIXES``);
* **the API's records**: tokens, users, projects, memberships, personal access tokens;
* **the edge's own bookkeeping** under ``edge:``: leases, markers, shared state no user
  edits.

A key is built by a function (or is a constant) named for what it holds; a prefix is
exported where code scans for or classifies keys. This module imports nothing of edge.
"""

from __future__ import annotations

# ------------------------------------------------------------------ configuration

PROXY = "proxy:"
ROUTE = "route:"
ROUTE_UNIQUE = "route:unique:"
ROUTE_PRIORITY = "route:priority:"
# the route index keys live among the route documents but are not documents
ROUTE_INDEXES = (ROUTE_UNIQUE, ROUTE_PRIORITY)
SERVICE = "service:"
SERVICE_URL = "service:url:"
SERVICE_EXTERNAL = "service:external:"
CERT = "cert:"
CERT_DOMAIN = "cert:domain:"
# an ACME certificate's progress (pending, validating, issuing, active, failed): beside the
# records, read by people as much as by the edge, but no configuration
CERT_STATUS = "cert:status:"
RESOURCE = "resource:"
# port-forward targets, per project (edge.config.targets): fixed by the admin, a user only
# ever names one by id
APP = "app:"
APP_RESOURCE = "app_resource:"
DATABASE = "database:"
TARGET_PREFIXES = (APP, APP_RESOURCE, DATABASE)

# what the config watcher subscribes to and resyncs
WATCHED_PREFIXES = (PROXY, ROUTE, SERVICE, CERT, *TARGET_PREFIXES)
# what a full config scan reads (the documents and the cert:domain: index)
CONFIG_PATTERNS = (
    PROXY + "*",
    ROUTE + "*",
    SERVICE_URL + "*",
    SERVICE_EXTERNAL + "*",
    CERT + "*",
    *(prefix + "*" for prefix in TARGET_PREFIXES),
)

# the names of every external service (a set), kept beside their documents
SERVICES_SET = "services:external"


def proxy(hostname: str) -> str:
    return PROXY + hostname


def route(route_id: str) -> str:
    return ROUTE + route_id


def route_unique(path_pattern: str, priority: int) -> str:
    """-> the route id holding that (path pattern, priority) pair."""
    return f"{ROUTE_UNIQUE}{path_pattern}:{priority}"


def route_priority(priority: int, route_id: str) -> str:
    """-> the route id (an index ordered by priority)."""
    return f"{ROUTE_PRIORITY}{priority}:{route_id}"


def service_url(name: str) -> str:
    return SERVICE_URL + name


def service_external(name: str) -> str:
    return SERVICE_EXTERNAL + name


def cert(name: str) -> str:
    return CERT + name


def cert_domain(domain: str) -> str:
    """-> the name of the certificate serving ``domain``."""
    return CERT_DOMAIN + domain


def cert_status(name: str) -> str:
    """-> the JSON status document of certificate ``name``'s ACME issuance."""
    return CERT_STATUS + name


def resource(uri: str) -> str:
    return RESOURCE + uri


def app(app_id: str) -> str:
    return APP + app_id


def app_resource(resource_id: str) -> str:
    return APP_RESOURCE + resource_id


def database(database_id: str) -> str:
    return DATABASE + database_id


# ------------------------------------------------------------------ port-forward tunnels

PORT_FORWARD_TICKET = "port_forward_ticket:"


def port_forward_ticket(ticket: str) -> str:
    """-> what a one-time tunnel ticket opens (JSON, TTL 60 s, taken with GETDEL)."""
    return PORT_FORWARD_TICKET + ticket


def port_forward_sessions(project_id: str) -> str:
    """-> the project's live tunnel sessions (a sorted set: session id -> until when its
    slot is held, Unix seconds; heartbeats push it on, a dead node's slots run out)."""
    return f"port_forward:sessions:{project_id}"


# ------------------------------------------------------------------ ACME, shared by every node

ACME_CHALLENGE = "acme:challenge:"
# optional: when this set exists, on-demand TLS only asks for names it lists (exact names,
# or "*.example.com" for any name directly under example.com)
ACME_ON_DEMAND_ALLOWLIST = "acme:on-demand:allowlist"


def acme_challenge(token: str) -> str:
    """-> the HTTP-01 key authorization to answer for ``token`` (with a TTL)."""
    return ACME_CHALLENGE + token


# ------------------------------------------------------------------ API records

TOKEN = "token:"
TOKEN_HASH = "token:hash:"


def token(name: str) -> str:
    return TOKEN + name


def token_by_hash(token_hash: str) -> str:
    """-> the token's name."""
    return TOKEN_HASH + token_hash


USER_IDS = "user:ids"
PROJECT_IDS = "project:ids"


def user(uid: str) -> str:
    return f"user:{uid}"


def user_by_email(email: str) -> str:
    return f"user:email:{email.lower()}"


def user_projects(uid: str) -> str:
    return f"user:{uid}:projects"


def project(pid: str) -> str:
    return f"project:{pid}"


def project_by_name(name: str) -> str:
    return f"project:name:{name}"


def project_members(pid: str) -> str:
    return f"project:{pid}:members"


def project_member(pid: str, uid: str) -> str:
    return f"project:{pid}:member:{uid}"


PAT_LAST_USED = "pat_last_used:"


def pat(tid: str) -> str:
    return f"pat:{tid}"


def pat_by_prefix(prefix: str) -> str:
    return f"pat:prefix:{prefix}"


def pat_owner(pid: str, uid: str) -> str:
    return f"pat:owner:{pid}:{uid}"


def pat_last_used(tid: str) -> str:
    """-> when the PAT was last used, until the flush copies it into ``pat:{id}``."""
    return PAT_LAST_USED + tid


# ------------------------------------------------------------------ the edge's own

# rejected config values' last good ones, shared by every worker (a hash: key -> value)
CONFIG_LAST_GOOD = "edge:config:last-good"
TOKEN_DELETING = "edge:token-deleting:"
# the self-signed default certificate, and the lease of whoever generates it
TLS_DEFAULT = "edge:tls:default"
TLS_DEFAULT_LEASE = "edge:tls:default:lock"
# the lease of the node copying pat_last_used:* into the PAT records
PAT_LAST_USED_LEASE = "lock:pat_last_used"


# ACME: the orders due (a sorted set: certificate name -> when, Unix seconds), each order's
# lease, the accounts (one per directory URL and e-mail), the budgets that mirror the CA's
# limits, the renewal time chosen for each certificate
ACME_QUEUE = "edge:acme:queue"
ACME_BUDGET = "edge:acme:budget:"


def acme_lease(name: str) -> str:
    return f"edge:acme:lease:{name}"


def acme_account(account_id: str) -> str:
    return f"edge:acme:account:{account_id}"


def acme_account_lease(account_id: str) -> str:
    return f"edge:acme:account:{account_id}:lock"


def acme_budget(kind: str, subject: str, window: int) -> str:
    """-> a counter of ``kind`` (orders, failures...) for ``subject`` in time window ``window``."""
    return f"{ACME_BUDGET}{kind}:{subject}:{window}"


def acme_renewal(name: str) -> str:
    """-> when certificate ``name`` is to be renewed, chosen once for every node."""
    return f"edge:acme:renewal:{name}"


def token_deleting(token_hash: str) -> str:
    """Set while that token's delete runs: its writes are refused meanwhile."""
    return TOKEN_DELETING + token_hash


# ------------------------------------------------------------------ the OAuth server
# Short-lived keys carry a TTL; one-shot ones (states, codes) are taken with GETDEL so two
# nodes can never both redeem one.

OAUTH_CLIENT = "oauth:client:"
OAUTH_TOKEN = "oauth:token:"
OAUTH_SESSION = "oauth:session:"
# the signing keys (a hash: kid -> JSON document), shared by every node
OAUTH_KEYS = "oauth:keys"
# the lease of whoever generates the first signing key or rotates it
OAUTH_KEYS_LEASE = "edge:oauth:keys:lock"
# revoked access tokens (a sorted set: jti -> when the token expires, Unix seconds), read
# into every worker's memory; members are dropped once their token has expired anyway
OAUTH_REVOKED = "oauth:revoked"
# the same revocations as a stream (capped), which every worker follows with XREAD BLOCK so
# a revocation reaches every node within a second; the sorted set is read whole on (re)connect
OAUTH_REVOCATIONS = "oauth:revocations"


def oauth_client(client_id: str) -> str:
    """-> a registered client's JSON document (dynamic registration or the admin's)."""
    return OAUTH_CLIENT + client_id


def oauth_state(state: str) -> str:
    """-> the authorization request waiting for GitHub's answer (TTL, taken with GETDEL)."""
    return f"oauth:state:{state}"


def oauth_code(code: str) -> str:
    """-> an authorization code's grant (TTL, taken with GETDEL)."""
    return f"oauth:code:{code}"


def oauth_code_used(code_hash: str) -> str:
    """-> the family a redeemed code started, kept until the code would have expired: a
    second redemption revokes that family."""
    return f"oauth:code_used:{code_hash}"


def oauth_token(jti: str) -> str:
    """-> an issued access token's record (TTL: the token's own lifetime)."""
    return OAUTH_TOKEN + jti


def oauth_refresh(token_hash: str) -> str:
    """-> a refresh token's record, by the SHA-256 of the token (never the token)."""
    return f"oauth:refresh:{token_hash}"


def oauth_family(family_id: str) -> str:
    """-> the grant family's record: what one authorization produced, refreshes included
    (a set of ``jti:...`` and ``refresh:...`` members, revoked together)."""
    return f"oauth:family:{family_id}"


def oauth_family_revoked(family_id: str) -> str:
    """-> set when the family was revoked (TTL): no token is issued into it any more."""
    return f"oauth:family_revoked:{family_id}"


def oauth_user_tokens(user: str) -> str:
    """-> the grant families of a user (``github:{id}``), a set."""
    return f"oauth:user_tokens:{user}"


def oauth_client_tokens(client_id: str) -> str:
    """-> the grant families of a client, a set."""
    return f"oauth:client_tokens:{client_id}"


def oauth_session(session_id_hash: str) -> str:
    """-> a browser session, by the SHA-256 of its cookie value (TTL)."""
    return OAUTH_SESSION + session_id_hash


def oauth_request(request_id: str) -> str:
    """-> an authorization request waiting at the consent page (TTL)."""
    return f"oauth:request:{request_id}"


def oauth_proxy_login(state_hash: str) -> str:
    """-> a browser sign-in to a proxy in redirect mode, waiting for its callback, by the
    SHA-256 of its state (TTL)."""
    return f"oauth:proxy_login:{state_hash}"


def oauth_consent(user: str, client_id: str) -> str:
    """-> the scopes ``user`` approved for ``client_id`` (a JSON list)."""
    return f"oauth:consent:{user}:{client_id}"


# ------------------------------------------------------------------ the request log
# Written by every worker (edge.observe.reqlog), read by the logs API and CLI. Every key
# expires (LOG_RETENTION_HOURS); the indexes are sorted sets of request keys scored by the
# request's Unix time, trimmed by score. ``hour`` is ``YYYYMMDD:HH`` (UTC).

REQ_LOG = "req:"
REQ_INDEX = "idx:req:"
# every request with a 4xx or 5xx status, and every one slower than LOG_SLOW_MS
REQ_INDEX_ERRORS = "idx:req:errors"
REQ_INDEX_SLOW = "idx:req:slow"
# connection events with no HTTP exchange: TLS handshake failures, refused PROXY headers
REQ_INDEX_EVENTS = "idx:req:events"
# every entry, oldest first: past LOG_MAX_ENTRIES the oldest are removed with their
# index members
REQ_INDEX_ALL = "idx:req:all"
# every request, capped (XADD MAXLEN ~): what ``edge logs follow`` tails
REQ_STREAM = "stream:requests"


def req_log(timestamp: str, ip: str) -> str:
    """-> one request's hash (its fields: edge.observe.reqlog.ReqLogEntry)."""
    return f"{REQ_LOG}{timestamp}:{ip}"


def req_index_ip(ip: str) -> str:
    return f"{REQ_INDEX}ip:{ip}"


def req_index_host(hostname: str) -> str:
    return f"{REQ_INDEX}host:{hostname}"


def req_index_user(username: str) -> str:
    return f"{REQ_INDEX}user:{username}"


def req_index_client(client_id: str) -> str:
    return f"{REQ_INDEX}client:{client_id}"


def req_index_status(code: int) -> str:
    return f"{req_index_status_prefix()}{code}"


def req_index_status_prefix() -> str:
    return f"{REQ_INDEX}status:"


def req_index_path(method: str, path: str) -> str:
    """``path`` normalised first (edge.observe.reqlog.normalise_path), so ids in it do not
    make a key each."""
    return f"{REQ_INDEX}path:{method}:{path}"


def req_stats_requests(hour: str) -> str:
    """-> how many requests were logged in that hour (a counter)."""
    return f"stats:requests:{hour}"


def req_stats_errors(hour: str) -> str:
    """-> how many of them had a 4xx or 5xx status (a counter)."""
    return f"stats:errors:{hour}"


def req_stats_unique_ips(hostname: str, hour: str) -> str:
    """-> the client IPs seen for ``hostname`` in that hour (a HyperLogLog); ``*`` (never a
    hostname) for every host together."""
    return f"stats:unique_ips:{hostname}:{hour}"


def req_stats_duration(hour: str) -> str:
    """-> the hour's request durations (a hash: bucket index -> count; buckets:
    edge.observe.reqlog.duration_bucket)."""
    return f"stats:duration:{hour}"


# every key of the request log starts with one of these (``DELETE /api/v1/logs`` scans
# for them): the hashes, the indexes, the stream and the hourly counters
REQ_LOG_PREFIXES = (
    REQ_LOG,
    REQ_INDEX,
    REQ_STREAM,
    "stats:requests:",
    "stats:errors:",
    "stats:unique_ips:",
    "stats:duration:",
)
