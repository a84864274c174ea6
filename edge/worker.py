"""One worker process: its own uvloop loop, listeners, config watcher and upstream pool.

Shutdown (SIGTERM, or a first SIGINT) drains: stop accepting, ``Connection: close`` on
the next responses, close idle keep-alives after ``DRAIN_IDLE_GRACE`` (lingeringly), wait
for in-flight exchanges up to ``DRAIN_TIMEOUT``, then abort what is left. A second SIGINT
exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from edge.admin_token import FILE_ENV, read_token
from edge.api.config.acme import AcmeDefaults
from edge.api.metrics import MetricsApi
from edge.api.oauth.endpoints import OAuthAdminDeps
from edge.api.people.auth import LastUsedFlusher
from edge.api.redis_store import RedisHandle
from edge.api.tokens.store import ADMIN_NAME, CorruptRecord, TokenStore
from edge.certs.acme.ondemand import OnDemand
from edge.certs.acme.service import AcmeService
from edge.config.watcher import ConfigWatcher
from edge.handlers.acme import ACME_CHALLENGE_PREFIX, ChallengeResponder
from edge.handlers.api import ApiApp, default_groups
from edge.handlers.external_auth import ExternalAuth
from edge.handlers.forward import Forwarder
from edge.handlers.forwardauth import OwnTokenAuth, ResourceMetadata
from edge.handlers.live_access import LiveAccess
from edge.handlers.oauth.endpoints import OAuthEndpoints
from edge.handlers.tunnel import PortForwardSockets
from edge.health import HealthView, Report
from edge.http1.connection import HttpConnection
from edge.http1.hub import Hub
from edge.lifecycle import ServiceRunner, TaskService
from edge.net.hello import HelloListener
from edge.net.listener import EXIT_LISTEN_FAILED, reuseport_socket
from edge.net.preface import PrefaceProtocol, ProxyStage, TrustedPeers, stages_report
from edge.net.proxied import ProxyListener
from edge.net.proxy_protocol import ProxyHeader
from edge.oauth.server import AuthorizationServer
from edge.observe.metrics_worker import WorkerMetrics
from edge.observe.reqlog import RequestLogWriter
from edge.routing.dispatch import Dispatcher
from edge.routing.middleware import Phase
from edge.routing.mount import Mount
from edge.sdnotify import WorkerReporter
from edge.settings import Settings
from edge.store.client import redis_client
from edge.tls.store import TlsStore
from edge.tunnels.keeper import SessionKeeper
from edge.tunnels.registry import TunnelRegistry
from edge.upstream.pool import UpstreamPool
from edge.upstream.subrequest import Subrequests

log = logging.getLogger("edge.worker")

FIRST_SYNC_WAIT = 5.0  # serve after the first config sync, or after this long without one
ADMIN_RETRY_CAP = 30.0  # seconds between attempts to store the ADMIN_TOKEN hash
ADMIN_CHECK_INTERVAL = 5.0  # seconds between checks that the stored admin token is there


class Worker:
    def __init__(self, settings: Settings, worker_id: int) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        self.hub = Hub(settings, self.loop, worker_id)
        # the request log in Redis (REQUEST_LOG): its own client, written in batches by
        # its service; the request path only appends to its bounded queue
        self.reqlog: RequestLogWriter | None = None
        self.reqlog_client: Redis | None = None
        if settings.request_log:
            self.reqlog_client = redis_client(settings.redis_target())
            access_log = self.hub.access_log
            self.reqlog = RequestLogWriter(
                self.reqlog_client,
                node=settings.node_name or socket.gethostname(),
                worker=worker_id,
                batch_ms=settings.log_batch_ms,
                queue_size=settings.log_queue_size,
                retention_hours=settings.log_retention_hours,
                slow_ms=settings.log_slow_ms,
                stream_maxlen=settings.log_stream_max,
                skip=access_log.skipped if settings.access_log_skip_paths else None,
                max_entries=settings.log_max_entries,
                known_host=self._served_host,
            )
        # Prometheus metrics: plain counters on the request path, published once a second
        # into the node's metrics directory (GET /metrics on the API port sums them)
        self.metrics = WorkerMetrics(worker_id)
        # end-of-exchange observers, in the order they hear each record: the JSON access
        # log first, then the request log and the metrics (never awaiting on the request)
        self.hub.install_observers(
            (self.hub.access_log,)
            + ((self.reqlog,) if self.reqlog is not None else ())
            + (self.metrics.observer,)
        )
        self.watcher = ConfigWatcher(settings.redis_target(), settings.config_resync_interval)
        self.pool = UpstreamPool(
            self.loop,
            settings.upstream_idle_limit,
            settings.upstream_idle_timeout,
            settings.proxy_connect_timeout,
        )
        self.forwarder = Forwarder(
            self.pool, settings.proxy_request_timeout, settings.proxy_total_timeout
        )
        # the edge's own requests to origins (external ForwardAuth), on the same pool
        self.subrequests = Subrequests(self.pool)
        # the API's own Redis client (commands with deadlines), created on first use
        self.tokens = TokenStore(RedisHandle(settings.redis_target()))
        self.tls: TlsStore | None = None
        if settings.https_port or settings.proxy_protocol_tls_port:
            self.tls = TlsStore(settings)
            self.watcher.on_install.append(self.tls.update)
        # ACME: this worker's share of the orders (automatic HTTPS when it serves TLS),
        # and the HTTP-01 answers every node gives
        self.acme_client = redis_client(settings.redis_target())
        issuer = settings.oauth_issuer
        own_hosts = (
            (settings.auth_hostname,)
            if settings.auth_hostname and issuer and issuer.startswith("https://")
            else ()
        )
        self.acme = AcmeService(
            settings, self.acme_client, auto=self.tls is not None, own_hosts=own_hosts
        )
        self.watcher.on_install.append(self.acme.note_snapshot)
        self.challenges = ChallengeResponder(self.acme_client)
        # on-demand TLS: a name under a wildcard proxy gets its certificate at its first
        # handshake, which the TLS listeners hold until then
        self.on_demand: OnDemand | None = None
        if settings.on_demand_tls and self.tls is not None:
            tls = self.tls
            self.on_demand = OnDemand(
                self.acme_client,
                self.acme,
                lambda name: tls.index.select(name) is not None,
                lambda: self.watcher.snapshot,
                wait=settings.on_demand_tls_wait,
                max_per_hour=settings.on_demand_tls_max_per_hour,
            )
            tls.on_index.append(self.on_demand.certificates_changed)
        # the OAuth 2.1 authorization server, on its issuer host (and wherever a proxy's
        # hostname route leads there), when one is configured; it reads the routing table
        # of the moment (which proxies exist) when a request asks
        self.oauth: AuthorizationServer | None = None
        self.oauth_endpoints: OAuthEndpoints | None = None
        self.oauth_client = redis_client(settings.redis_target())
        if settings.oauth_issuer is not None:
            self.oauth = AuthorizationServer(
                settings, self.oauth_client, lambda host: self.dispatcher.table.find_proxy(host)
            )
        oauth_admin = None
        if self.oauth is not None:
            oauth_admin = OAuthAdminDeps(
                signing=self.oauth.signing,
                revoked=self.oauth.revoked,
                issuer=self.oauth.config.issuer,
                auth_hostname=self.oauth.config.auth_hostname,
            )
        # port-forward tunnels: this worker's live ones (the keeper gives each one's session
        # slot back when it ends) and their WebSocket endpoints on the API
        self.keeper = SessionKeeper(
            self.tokens.redis.client,
            lambda: self.tunnels.live(),
            slot_seconds=settings.port_forward_slot_seconds,
        )
        self.tunnels = TunnelRegistry(self.keeper.released)
        tunnel_sockets = PortForwardSockets(
            lambda: self.tokens.redis.client, lambda: self.watcher.snapshot, settings, self.tunnels
        )
        self.api = ApiApp(
            lambda: self.health(),
            [
                *default_groups(
                    self.tokens,
                    pat_cache_ttl=settings.pat_verify_cache_ttl,
                    acme=AcmeDefaults(
                        directory_url=settings.acme_directory_url,
                        staging_url=settings.acme_staging_url,
                        admin_email=settings.admin_email,
                        token_email=self._token_email,
                        kick=self.acme.kick,
                    ),
                    oauth=oauth_admin,
                    targets=lambda: self.watcher.snapshot,
                    max_sessions=settings.port_forward_max_sessions,
                    log_retention_hours=settings.log_retention_hours,
                    log_slow_ms=settings.log_slow_ms,
                ),
                tunnel_sockets,
                MetricsApi(
                    self.metrics.directory, self.metrics.publisher.publish, settings.api_port
                ),
            ],
        )
        self.dispatcher = Dispatcher(
            self.forwarder,
            self.api,
            settings.api_hostname,
            tls_covers=self.tls.covers if self.tls is not None else None,
        )
        self.dispatcher.mount(Mount(ACME_CHALLENGE_PREFIX, self.challenges, scheme="http"))
        own: OwnTokenAuth | None = None
        self.own_auth: OwnTokenAuth | None = None
        self.live_access: LiveAccess | None = None
        if self.oauth is not None:
            self.oauth_endpoints = OAuthEndpoints(self.oauth)
            self.dispatcher.serve_host(self.oauth.config.auth_hostname, self.oauth_endpoints)
            # proxies protected by the edge's own tokens: their metadata, then the check
            # requests let in with a token, re-checked so a revocation cuts live ones
            hub = self.hub
            self.live_access = LiveAccess(
                self.oauth, lambda: [conn.current for conn in hub.connections]
            )
            own = self.own_auth = OwnTokenAuth(self.oauth)
            metadata = ResourceMetadata(self.oauth, self.subrequests)
            self.dispatcher.use("resource-metadata", metadata.factory)
            self.dispatcher.use("browser-login", own.login.factory)
            self.dispatcher.use("forwardauth", own.factory, phase=Phase.ACCESS, authenticates=True)
        # proxies whose auth_proxy is another service: asked about each request
        external = ExternalAuth(
            self.subrequests,
            settings.forward_auth_timeout,
            self.oauth.protects if self.oauth is not None else None,
        )
        self.dispatcher.use(
            "forwardauth-external", external.factory, phase=Phase.ACCESS, authenticates=True
        )
        # each snapshot's routing table is compiled as it is installed
        self.watcher.on_install.append(self.dispatcher.install)
        self.watcher.on_install.append(self.metrics.observer.config_installed)
        self.servers: list[asyncio.Server] = []
        self.proxy_listeners: list[ProxyListener] = []
        self.proxy_stages: list[ProxyStage] = []
        self.hello_listeners: list[HelloListener] = []
        # the background jobs (watcher, PAT flush, admin token, default certificate):
        # tracked, restarted when one crashes, stopped together after the drain
        self.services = ServiceRunner()
        self.stop = asyncio.Event()
        self.started = time.time()
        self._interrupts = 0
        self.health = self._health_view()
        self.metrics.read_from(self)

    def _health_view(self) -> HealthView:
        """``/health``: what each part says of itself, in this order."""
        view = HealthView()
        view.add(self.watcher.health_report)
        view.add(self._identity_report)
        view.add(self.hub.health_report)
        tls = self.tls
        view.add(tls.health_report if tls is not None else lambda: Report({"tls": None}))
        view.add(self.pool.health_report)
        view.add(lambda: stages_report(self.proxy_stages))
        view.add(self.services.health_report)
        oauth = self.oauth
        view.add(lambda: Report({"oauth": oauth.health() if oauth is not None else None}))
        view.add(lambda: Report({"tunnels": self.tunnels.health()}))
        return view

    def _served_host(self, host: str) -> bool:
        """Whether the edge serves ``host`` (a proxy's, or the API's or OAuth's own)."""
        settings = self.settings
        if host in (settings.api_hostname, settings.auth_hostname):
            return True
        return self.dispatcher.table.find_proxy(host) is not None

    async def _token_email(self, name: str) -> str | None:
        record = await self.tokens.get(name)
        return record.cert_email if record is not None else None

    def _identity_report(self) -> Report:
        fields = {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
        }
        return Report(fields)

    async def run(self) -> int:
        """Serve until told to stop; the process exit status."""
        s = self.settings
        self._install_signals()
        self.services.start(TaskService("config-watcher", self.watcher.run))
        if self.reqlog is not None:
            self.services.start(self.reqlog)
        self.services.start(self.metrics.publisher)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watcher.synced.wait(), FIRST_SYNC_WAIT)
        if not self.watcher.synced.is_set():
            log.warning("starting without configuration: redis not reachable yet")
        else:
            # an empty configuration installs no new snapshot: tell the ACME service the
            # first sync is done anyway (the issuer host may want a certificate)
            self.acme.note_snapshot(self.watcher.snapshot)
        if self.tls is not None:
            await self._prepare_tls()
        await self._bootstrap_admin()
        if self.oauth is not None:
            await self._start_oauth(self.oauth)
        # PAT last_used_at: one node at a time copies the recent uses into the records
        flusher = LastUsedFlusher(self.tokens.redis, s.pat_last_used_flush_interval)
        self.services.start(
            TaskService("pat-last-used", flusher.run, lambda: {"flushed": flusher.flushed})
        )
        # port-forward tunnels: revocations cut live ones, heartbeats keep their slots
        keeper = self.keeper
        self.services.start(TaskService("tunnel-keeper", keeper.run, keeper.health))
        on_demand = self.on_demand
        self.services.start(
            TaskService(
                "acme",
                self.acme.run,
                lambda: {
                    **self.acme.health(),
                    "on_demand": on_demand.health() if on_demand is not None else None,
                },
            )
        )
        hub, dispatch, api = self.hub, self.dispatcher, self.api.handle
        wanted = (
            ("HTTP_PORT", s.server_host, s.http_port),
            ("HTTPS_PORT", s.server_host, s.https_port),
            ("PROXY_PROTOCOL_PORT", s.server_host, s.proxy_protocol_port),
            ("PROXY_PROTOCOL_TLS_PORT", s.server_host, s.proxy_protocol_tls_port),
            ("API_PORT", s.api_host, s.api_port),
        )
        socks: dict[str, socket.socket] = {}
        for name, host, port in wanted:
            if port == 0 and name not in ("HTTP_PORT", "API_PORT"):
                continue  # 0 disables the optional listeners
            try:
                socks[name] = reuseport_socket(host, port, s.listen_backlog)
            except OSError as exc:
                fields = {"address": f"{host}:{port}", "setting": name, "error": exc.strerror}
                log.critical("cannot listen", extra={"fields": fields})
                for sock in socks.values():
                    sock.close()
                await self.services.stop()
                return EXIT_LISTEN_FAILED
        loop = self.loop
        # create_server listens again, with its own default backlog (100) unless given one
        backlog = s.listen_backlog
        self.servers.append(
            await loop.create_server(
                lambda: HttpConnection(hub, dispatch), sock=socks["HTTP_PORT"], backlog=backlog
            )
        )
        if "HTTPS_PORT" in socks and self.tls is not None:
            # accepted here, not by create_server: each handshake's outcome is seen (the
            # request log's and the metrics' TLS events); with on-demand TLS, the
            # ClientHello's name is read first
            hello = HelloListener(
                loop,
                socks["HTTPS_PORT"],
                lambda: HttpConnection(hub, dispatch, "https"),
                self.tls.listener,
                self.on_demand,
                s.tls_handshake_timeout,
                s.on_demand_tls_wait if self.on_demand is not None else 0.0,
                hub.event,
            )
            hello.start()
            self.hello_listeners.append(hello)
        trusted = TrustedPeers(s.proxy_trusted_cidrs)
        if "PROXY_PROTOCOL_PORT" in socks:
            # plain: the header is read, then the transport and the bytes after it go to HTTP

            def make_plain(
                header: ProxyHeader, client: tuple[str, int], port: int
            ) -> HttpConnection:
                return HttpConnection(hub, dispatch, "http", header, client, port)

            plain = ProxyStage(trusted, s.proxy_protocol_timeout)
            plain.on_event = hub.event
            self.proxy_stages.append(plain)
            self.servers.append(
                await loop.create_server(
                    lambda: PrefaceProtocol(plain, make_plain),
                    sock=socks["PROXY_PROTOCOL_PORT"],
                    backlog=backlog,
                )
            )
        if "PROXY_PROTOCOL_TLS_PORT" in socks and self.tls is not None:
            # TLS: the header is peeked and consumed before the TLS layer takes the socket

            def make(header: ProxyHeader, client: tuple[str, int], port: int) -> HttpConnection:
                return HttpConnection(hub, dispatch, "https", header, client, port)

            stage = ProxyStage(trusted, s.proxy_protocol_timeout)
            stage.on_event = hub.event
            self.proxy_stages.append(stage)
            listener = ProxyListener(
                loop,
                socks["PROXY_PROTOCOL_TLS_PORT"],
                stage,
                make,
                tls=self.tls.listener,
                handshake_timeout=s.tls_handshake_timeout,
                gate=self.on_demand,
                gate_wait=s.on_demand_tls_wait,
            )
            listener.start()
            self.proxy_listeners.append(listener)
        self.servers.append(
            await loop.create_server(
                lambda: HttpConnection(hub, api), sock=socks["API_PORT"], backlog=backlog
            )
        )
        log.info(
            "worker serving",
            extra={"fields": {"http": f"{s.server_host}:{s.http_port}", "api_port": s.api_port}},
        )
        WorkerReporter.start(self.loop, self.worker_id)  # the supervisor's READY, watchdog
        await self.stop.wait()
        await self.drain()
        await self.keeper.close()  # the ended tunnels' slots given back
        await self.services.stop()  # before the API's Redis client the flush uses closes
        await self.api.close()
        await self.challenges.close()  # closes the ACME client too
        if self.oauth_endpoints is not None:
            await self.oauth_endpoints.close()
        await self.oauth_client.aclose()
        if self.reqlog_client is not None:
            await self.reqlog_client.aclose()
        await self.tokens.redis.close()
        self.metrics.close()  # after the services' stop: the publisher's last write is done
        self.hub.access_log.flush()
        return 0

    async def _start_oauth(self, oauth: AuthorizationServer) -> None:
        """Signing keys before the first request (a Redis away at start: loaded by the
        key service once it is back; tokens are refused with 503 meanwhile), then the
        services that keep keys and revocations fresh in memory."""
        try:
            async with asyncio.timeout(FIRST_SYNC_WAIT):
                await oauth.start()
        except (TimeoutError, OSError, RedisError) as exc:
            log.warning(
                "oauth: signing keys not loaded yet",
                extra={"fields": {"error": type(exc).__name__}},
            )
        self.services.start(TaskService("oauth-keys", oauth.signing.run, oauth.signing.health))
        self.services.start(
            TaskService("oauth-revocations", oauth.revoked.run, oauth.revoked.health)
        )
        live = self.live_access
        if live is not None:
            self.services.start(
                TaskService(
                    "live-access",
                    live.run,
                    lambda: {"watched": live.watched, "withdrawn": live.withdrawn},
                )
            )

    async def drain(self) -> None:
        log.info("draining", extra={"fields": {"connections": len(self.hub.connections)}})
        for server in self.servers:
            server.close()
        for listener in self.proxy_listeners:
            listener.close()
        for hello in self.hello_listeners:
            hello.close()
        self.hub.start_drain()
        s = self.settings
        # tunnels (WebSockets) have no end of their own: after a grace they are told to go
        # away (close 1001 both ways), leaving at least half the drain for the close
        grace = min(s.drain_websocket_grace, s.drain_timeout / 2)
        going_away = self.loop.call_later(grace, self._going_away)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(s.drain_timeout):
                await self._idle()
        going_away.cancel()
        for stage in self.proxy_stages:
            stage.abort()
        for hello in self.hello_listeners:
            hello.pending.abort()
        for conn in list(self.hub.connections):
            conn.abort()
        self.pool.close_all()
        logins = self.own_auth.login.tasks if self.own_auth is not None else ()
        for task in [*self.forwarder.tasks, *self.subrequests.tasks, *logins]:
            task.cancel()
        log.info("drained", extra={"fields": {"aborted": len(self.hub.connections)}})

    def _going_away(self) -> None:
        """The drain's grace is over: WebSockets and tunnels close with 1001, tunnels
        still connecting to their target included."""
        self.hub.going_away()
        self.tunnels.going_away()

    async def _idle(self) -> None:
        """Return once no connection is left: none in HTTP, none in a PROXY preface or
        its TLS handshake. Each waits on its own event; after any wake-up all are checked
        again in one pass, since a connection leaving a preface joins the hub."""
        events = (
            self.hub.idle,
            *(stage.idle for stage in self.proxy_stages),
            *(hello.pending.idle for hello in self.hello_listeners),
        )
        while True:
            for event in events:
                if not event.is_set():
                    await event.wait()
                    break
            else:
                return

    async def _bootstrap_admin(self) -> None:
        """Store the ADMIN_TOKEN hash as the ``admin`` token before the API listens, then
        keep it there.

        Every worker does it (the transaction is idempotent). If Redis is not reachable
        yet, serve anyway and keep trying in the background. Once stored, a record that
        disappears (a Redis restarted without persistence, a flush) is stored again.
        """
        if self._admin_token() is None:
            log.info("ADMIN_TOKEN not set: the admin token in redis (if any) is unchanged")
            return
        stored = True
        try:
            await self._store_admin_token()
        except Exception as exc:
            stored = False
            log.warning(
                "admin token not stored yet; retrying",
                extra={"fields": {"error": type(exc).__name__, "detail": str(exc)[:200]}},
            )
        self.services.start(TaskService("admin-token", lambda: self._keep_admin(stored)))

    def _admin_token(self) -> str | None:
        """ADMIN_TOKEN, else the embedded edge's token file (read again each time: ``edge
        admin-token rotate`` replaces it), else None. Raises AdminTokenError."""
        if self.settings.admin_token is not None:
            return self.settings.admin_token
        path = os.environ.get(FILE_ENV)
        return read_token(Path(path)) if path else None

    async def _store_admin_token(self) -> None:
        token = self._admin_token()
        assert token is not None
        changed = await self.tokens.bootstrap_admin(token)
        # never the token, nor its hash: only whether redis changed
        log.info("admin token ready", extra={"fields": {"changed": changed}})

    async def _admin_present(self) -> bool:
        try:
            return await self.tokens.get(ADMIN_NAME) is not None
        except CorruptRecord:
            return False  # stored again (the bootstrap replaces a corrupt record)

    async def _keep_admin(self, stored: bool) -> None:
        """Until the token is stored, retry with back-off, logging each failure; then check
        every ADMIN_CHECK_INTERVAL and store it again if it is gone (an outage logged once)."""
        delay = 1.0
        outage = False
        while True:
            await asyncio.sleep(ADMIN_CHECK_INTERVAL if stored else delay)
            try:
                if stored and await self._admin_present():
                    outage = False
                    continue
                if stored:
                    log.warning("admin token missing from redis; storing it again")
                await self._store_admin_token()
                stored, outage = True, False
            except Exception as exc:
                error = type(exc).__name__
                if not stored:
                    delay = min(delay * 2, ADMIN_RETRY_CAP)
                    log.warning(
                        "admin token not stored yet; retrying",
                        extra={"fields": {"error": error, "retry_in": delay}},
                    )
                elif not outage:
                    outage = True
                    log.warning(
                        "admin token check failed; retrying",
                        extra={"fields": {"error": error, "retry_in": ADMIN_CHECK_INTERVAL}},
                    )

    async def _prepare_tls(self) -> None:
        """Certificates built and the default certificate loaded before TLS listeners open."""
        assert self.tls is not None and self.settings.redis_url is not None
        tls = self.tls
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tls.settled(), FIRST_SYNC_WAIT)
        client = redis_client(self.settings.redis_target())
        try:
            await asyncio.wait_for(tls.load_default(client), FIRST_SYNC_WAIT * 2)
        except Exception as exc:  # serve configured certificates; retry the default later
            log.warning("no default certificate yet", extra={"fields": {"error": str(exc)}})
            # ends (state "stopped") once the default certificate is loaded
            self.services.start(TaskService("tls-default", self._retry_default))
        finally:
            await client.aclose()

    async def _retry_default(self) -> None:
        assert self.tls is not None and self.settings.redis_url is not None
        delay = 1.0
        while self.tls.default is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            client = redis_client(self.settings.redis_target())
            try:
                await self.tls.load_default(client)
                log.info("default certificate loaded")
            except Exception as exc:
                log.warning("no default certificate yet", extra={"fields": {"error": str(exc)}})
            finally:
                await client.aclose()

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self._interrupt)
        # a reload: read every configuration key again now
        self.loop.add_signal_handler(signal.SIGHUP, self.watcher.request_resync)

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            self.hub.access_log.flush()
            os._exit(130)
        self.stop.set()


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies, so no worker is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_worker(settings: Settings, worker_id: int, use_uvloop: bool = True) -> int:
    """Run one worker to completion; returns its exit status."""
    _die_with_parent()

    async def main() -> int:
        return await Worker(settings, worker_id).run()

    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())
