"""``edge forward [LOCAL_ADDR:]LOCAL_PORT resource/ID[:PORT] | database/ID``: a local port
forwarded through the edge to one of a project's private TCP services.

It listens on ``LOCAL_ADDR`` (``127.0.0.1`` unless given; ``[::1]`` in brackets; port 0
picks a free port, printed). Each accepted connection gets a tunnel of its own: a ticket
bought with a personal access token (:mod:`edge.client.ticket`, retried while the edge
cannot be reached), then a WebSocket at the ticket's path on the same host carrying the
bytes both ways (:mod:`edge.client.wstunnel`). A connection the edge refuses (or a
tunnel it ends abnormally) is one line on stderr that explains the HTTP status or the
close code. On a terminal a status line (live connections, bytes in and out) is
refreshed every second; otherwise each connection's start and end is a plain line.
SIGINT (Ctrl-C) and SIGTERM close the listener and every tunnel, and the command exits 0.

Settings: the edge's URL as for every client command (``--api-url``, ``API_URL``, the
profile's ``api_url``); the token from ``--token``, else ``EDGE_PAT``, else the profile's
``token`` (``TOKEN`` and ``ADMIN_TOKEN`` are admin tokens: not used here). It must be a
personal access token: the ticket endpoint takes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TextIO

from edge.client.errors import ClientError, one_line
from edge.client.options import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from edge.client.base import Context, Sub
    from edge.client.ticket import Endpoint
    from edge.client.wstunnel import Tunnel

__all__ = [
    "DEFAULT_LOCAL_ADDR",
    "Target",
    "add_forward_parser",
    "format_address",
    "parse_local",
    "parse_target",
    "run_forward",
]

DEFAULT_LOCAL_ADDR = "127.0.0.1"
TARGET_KINDS = ("resource", "database")
SHUTDOWN_WAIT = 2.0  # seconds for the tunnels to finish their closing handshakes on exit
STATUS_INTERVAL = 1.0

EXAMPLES = (
    "edge forward 5433 database/db_1",
    "edge forward 8080 resource/res_7:8080",
    "edge forward 0.0.0.0:6380 database/cache --profile prod",
    "edge forward [::1]:0 resource/res_7:9090",
    "EDGE_PAT=edge_... edge forward 15432 database/db_1 --api-url https://edge.example.com",
)


# ---------------------------------------------------------------------------- arguments


@dataclass(frozen=True, slots=True)
class Target:
    """What a tunnel reaches: a resource (at one of its allowed ports) or a database."""

    kind: Literal["resource", "database"]
    id: str
    port: int | None = None  # a resource's port; None: the resource's config_port

    def request(self) -> dict[str, object]:
        """The body of ``POST /port-forward/ticket``."""
        body: dict[str, object] = {"target_type": self.kind, "target_id": self.id}
        if self.port is not None:
            body["port"] = self.port
        return body

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.kind}/{self.id}{port}"


def _port(text: str, what: str, *, zero: bool) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"{what} must be a number, got {text!r}")
    port = int(text)
    if port > 65535 or (port == 0 and not zero):
        low = 0 if zero else 1
        raise ValueError(f"{what} must be {low} to 65535, got {port}")
    return port


def parse_target(text: str) -> Target:
    """``resource/ID:PORT``, ``resource/ID`` or ``database/ID``; ValueError otherwise."""
    kind, slash, rest = text.partition("/")
    if not slash or kind not in TARGET_KINDS:
        raise ValueError(f"expected resource/ID:PORT or database/ID, got {text!r}")
    port: int | None = None
    if kind == "resource":
        ident, colon, port_text = rest.rpartition(":")
        if colon:
            port = _port(port_text, "the resource's PORT", zero=False)
        else:
            ident = rest
    else:
        ident = rest
        if ":" in ident:
            raise ValueError(
                f"a database has no PORT to choose (the edge knows it): database/ID, got {text!r}"
            )
    if not ident:
        raise ValueError(f"no ID in {text!r}")
    if "/" in ident or any(c.isspace() or not c.isprintable() for c in ident):
        raise ValueError(f"invalid ID {ident!r}: no slash, space or control character")
    return Target(kind, ident, port)  # type: ignore[arg-type]  # kind checked above


def parse_local(text: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT`` -> ``(addr, port)``; port 0 is "any
    free port". ``ADDR`` is an IP address or a host name; ValueError otherwise."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {inside!r}") from None
        return inside, _port(rest[1:], "LOCAL_PORT", zero=True)
    if ":" not in text:
        return DEFAULT_LOCAL_ADDR, _port(text, "LOCAL_PORT", zero=True)
    host, _, port_text = text.rpartition(":")
    if ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port_text}")
    if not host or any(c.isspace() or not c.isprintable() or c in "/[]@" for c in host):
        raise ValueError(f"invalid LOCAL_ADDR {host!r}")
    return host, _port(port_text, "LOCAL_PORT", zero=True)


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:5433``, ``[::1]:5433``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where tickets are bought, and with which personal access token."""

    api_url: str
    token: str
    token_source: str


def credentials(
    env: Mapping[str, str], *, api_url: str | None, token: str | None, profile: str | None
) -> Credentials:
    """The edge's URL (as every client command finds it) and the PAT: ``--token``, else
    ``EDGE_PAT``, else the profile's token. ClientError (exit 2) when there is none."""
    from edge.client.config import resolve
    from edge.client.session import looks_like_pat

    if token == "-":  # read from stdin: not in the process list nor the history
        token = sys.stdin.readline().strip()
        if not token:
            raise ClientError("--token -: no token on stdin", 2)
    pat = env.get("EDGE_PAT", "").strip()
    source = "--token" if token else "env EDGE_PAT" if pat else None
    # TOKEN and ADMIN_TOKEN name admin API tokens: never sent for a ticket
    without_admin = {k: v for k, v in env.items() if k not in ("TOKEN", "ADMIN_TOKEN")}
    found = resolve(without_admin, api_url=api_url, token=token or pat or None, profile=profile)
    if found.token is None:
        raise ClientError(
            "no token: pass --token, set EDGE_PAT, or save a personal access token with "
            "'edge login --token edge_...'",
            2,
        )
    source = source or found.token_source or "the config file"
    if not looks_like_pat(found.token):
        raise ClientError(
            f"the token from {source} is not a personal access token (edge_XXXXXXXX_...): "
            "the tunnels need one (--token, EDGE_PAT or 'edge login --token')",
            2,
        )
    return Credentials(found.api_url, found.token, source)


# ---------------------------------------------------------------------------- display


def human_bytes(count: float) -> str:
    """``532 B``, ``12.3 kB``, ``1.5 GB`` (powers of 1000)."""
    if count < 1000:
        return f"{int(count)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000
        if count < 1000 or unit == "TB":
            break
    return f"{count:.1f} {unit}"


class Display:
    """stderr: on a terminal, a status line redrawn in place with lines printed above it;
    otherwise plain lines only."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._status = ""

    def line(self, text: str) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        if self.live and self._status:
            self.stream.write(self._status)
        self.stream.flush()

    def status(self, text: str) -> None:
        if self.live and text != self._status:
            self._status = text
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def finish(self) -> None:
        if self.live and self._status:
            self.stream.write("\n")
            self.stream.flush()
            self._status = ""


# ---------------------------------------------------------------------------- the listener


class Forwarder:
    """The listener's side of the tunnels: one ticket and one WebSocket per local
    connection, each served by a task of its own."""

    def __init__(
        self,
        target: Target,
        endpoint: Endpoint,
        token: str,
        display: Display,
        *,
        timeout: float,
        debug: bool = False,
    ) -> None:
        self.target = target
        self.endpoint = endpoint
        self._token = token
        self.display = display
        self.timeout = timeout
        self.debug = debug
        self._numbers = itertools.count(1)
        self._tasks: dict[asyncio.Task[None], Tunnel] = {}
        self.opened = 0
        self.refused = 0
        self._bytes_in = 0  # of the tunnels that ended
        self._bytes_out = 0

    @property
    def live(self) -> int:
        return len(self._tasks)

    @property
    def bytes_in(self) -> int:
        return self._bytes_in + sum(t.bytes_in for t in self._tasks.values())

    @property
    def bytes_out(self) -> int:
        return self._bytes_out + sum(t.bytes_out for t in self._tasks.values())

    def summary(self) -> str:
        return (
            f"{self.live} live, {self.opened} opened, {self.refused} refused, "
            f"in {human_bytes(self.bytes_in)}, out {human_bytes(self.bytes_out)}"
        )

    def protocol(self) -> asyncio.Protocol:
        """The listener's protocol factory: a tunnel per accepted connection."""
        from edge.client.wstunnel import Tunnel

        return Tunnel(timeout=self.timeout, on_local=self._accepted).local_protocol()

    def _accepted(self, tunnel: Tunnel) -> None:
        number = next(self._numbers)
        name = f"connection {number}"
        if tunnel.peer is not None:
            name += f" from {format_address(*tunnel.peer)}"
        task = asyncio.get_running_loop().create_task(self._serve(name, tunnel))
        self._tasks[task] = tunnel

    async def _serve(self, name: str, tunnel: Tunnel) -> None:
        """One local connection, from its ticket to its end."""
        try:
            await self._tunnel(name, tunnel)
        finally:
            tunnel.abort()
            self._bytes_in += tunnel.bytes_in
            self._bytes_out += tunnel.bytes_out
            task = asyncio.current_task()
            assert task is not None
            del self._tasks[task]

    async def _tunnel(self, name: str, tunnel: Tunnel) -> None:
        from edge.client.ticket import Refused, buy_ticket, failure_reason

        def retrying(attempt: int, pause: float, why: str) -> None:
            if self.debug:
                self.display.line(
                    f"edge: {name}: ticket try {attempt} failed ({why}), again in {pause:g}s"
                )

        endpoint = self.endpoint
        try:
            ticket = await buy_ticket(
                endpoint, self._token, self.target.request(), timeout=self.timeout,
                on_retry=retrying,
            )  # fmt: skip
            if tunnel.local_gone:  # the client left meanwhile: the ticket expires unused
                return
            try:
                await tunnel.connect(endpoint, endpoint.prefix + ticket.websocket_path)
            except (OSError, TimeoutError) as exc:
                reason = failure_reason(exc, self.timeout)
                raise Refused(f"cannot reach the edge at {endpoint.url}: {reason}") from None
        except Refused as exc:
            self.refused += 1
            self.display.line(f"edge: {name} refused: {exc}")
            return
        ending = await tunnel.run()
        if ending.problem is not None and ending.refused:
            self.refused += 1
            self.display.line(f"edge: {name} refused: {ending.problem}")
            return
        self.opened += 1
        if ending.problem is not None:
            self.display.line(f"edge: {name} closed by the edge: {ending.problem}")
        if not self.display.live:
            self.display.line(
                f"edge: {name} ended: in {human_bytes(tunnel.bytes_in)}, "
                f"out {human_bytes(tunnel.bytes_out)}"
            )

    async def shutdown(self) -> None:
        """Close every tunnel: a Close 1001 to the edge for the open ones, the others
        (still buying a ticket or upgrading) cancelled; at most :data:`SHUTDOWN_WAIT`
        seconds for the edge to answer."""
        for task, tunnel in list(self._tasks.items()):
            if tunnel.accepted:
                tunnel.stop()
            else:
                task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=SHUTDOWN_WAIT)


async def serve(forwarder: Forwarder, host: str, port: int, out: TextIO = sys.stdout) -> None:
    """Listen, print where, and forward until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            server = await loop.create_server(forwarder.protocol, host, port)
        except OSError as exc:  # asyncio's text repeats the address: the errno's says it all
            why = os.strerror(exc.errno) if exc.errno else one_line(str(exc))
            raise ClientError(f"cannot listen on {format_address(host, port)}: {why}") from None
        addresses = [format_address(*s.getsockname()[:2]) for s in server.sockets]
        out.write(
            f"forwarding {', '.join(addresses)} -> {forwarder.target} "
            f"through {forwarder.endpoint.url}\n"
        )
        out.flush()
        display = forwarder.display
        waiting = asyncio.create_task(stop.wait())
        while not stop.is_set():
            display.status(f"{', '.join(addresses)} -> {forwarder.target}: {forwarder.summary()}")
            await asyncio.wait({waiting}, timeout=STATUS_INTERVAL if display.live else None)
        server.close()
        await forwarder.shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), SHUTDOWN_WAIT)
        display.finish()
        display.line(f"edge: stopped: {forwarder.summary()}")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency; the default loop works too
        return None
    return uvloop.new_event_loop


def run_forward(ctx: Context) -> int:
    """The handler of ``edge forward``."""
    from edge.client.ticket import Endpoint

    try:
        host, port = parse_local(ctx.args.local)
        target = parse_target(ctx.args.target)
    except ValueError as exc:
        raise ClientError(str(exc), 2) from None
    found = credentials(
        ctx.env,
        api_url=ctx.option("api_url"),
        token=ctx.option("token"),
        profile=ctx.option("profile"),
    )
    display = Display(sys.stderr, live=sys.stderr.isatty())
    forwarder = Forwarder(
        target,
        Endpoint.parse(found.api_url),
        found.token,
        display,
        timeout=ctx.option("timeout", DEFAULT_TIMEOUT),
        debug=ctx.debug,
    )
    factory = _event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(forwarder, host, port))
    return 0


def add_forward_parser(sub: Sub, common: argparse.ArgumentParser) -> None:
    """``edge forward`` among the client commands."""
    description = (
        "Forward a local TCP port through the edge to a project's resource (at one of its\n"
        "allowed ports; without :PORT its config_port) or database. Each local connection\n"
        "buys a one-time ticket (POST /port-forward/ticket) with a personal access token\n"
        "(--token, else EDGE_PAT, else the profile's token) and opens its own WebSocket\n"
        "tunnel (subprotocol edge-tunnel.v1: a local half-close reaches the target).\n"
        "LOCAL_ADDR is 127.0.0.1 unless given ([::1]:PORT for IPv6); LOCAL_PORT 0 picks\n"
        "a free port, printed. A refused connection is one line on stderr explaining why;\n"
        "on a terminal a status line shows the live connections and the bytes in and out.\n"
        "Ctrl-C or SIGTERM closes the listener and every tunnel, and exits 0.\n"
        "\n"
        "--api-url (API_URL, the profile's api_url) is where the edge serves its public\n"
        "API: API_PORT, or API_HOSTNAME through its public listeners (behind HAProxy).\n"
        "TOKEN and ADMIN_TOKEN are not used: they hold admin tokens."
    )
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES)
    parser = sub.add_parser(
        "forward",
        help="forward a local port to a project's resource or database through the edge",
        description=description,
        epilog=epilog,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "local",
        metavar="[LOCAL_ADDR:]LOCAL_PORT",
        help="where to listen: 5433, 0.0.0.0:5433, [::1]:5433 (port 0: any free port)",
    )
    parser.add_argument(
        "target",
        metavar="resource/ID[:PORT] | database/ID",
        help="what to reach: resource/ID:PORT (or resource/ID: its config_port), database/ID",
    )
    parser.set_defaults(handler=run_forward)
