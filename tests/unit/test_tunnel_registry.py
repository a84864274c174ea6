"""The registry of live tunnels: one end per tunnel, the drain's 1001, the totals."""

from __future__ import annotations

from edge.tunnels.bridge import GOING_AWAY
from edge.tunnels.registry import TunnelRegistry
from edge.tunnels.tickets import Ticket


def ticket(session: str) -> Ticket:
    return Ticket("database", "db_1", 5432, "p_1", "u_1", "pat_1", session, 1.0)


class Plain:
    """The least a tunnel is (``LiveTunnel``), with counters; closing ends it."""

    def __init__(self, registry: TunnelRegistry, session: str) -> None:
        self.ticket = ticket(session)
        self.started = 0.0
        self.bytes_in = 10
        self.bytes_out = 20
        self.codes: list[int] = []
        self.registry = registry

    def close(self, code: int, reason: str = "") -> None:
        self.codes.append(code)
        self.registry.remove(self)


def test_each_tunnel_ends_once_and_a_drain_closes_all_with_1001() -> None:
    ended: list[str] = []
    registry = TunnelRegistry(lambda t: ended.append(t.session_id))
    tunnels = [Plain(registry, f"s{i}") for i in range(3)]
    for tunnel in tunnels:
        registry.add(tunnel)
        registry.add(tunnel)  # twice is once
    assert registry.live() == tunnels
    assert registry.health() == {"open": 3, "opened": 3, "bytes_in": 30, "bytes_out": 60}
    registry.remove(tunnels[1])
    registry.remove(tunnels[1])
    assert ended == ["s1"]
    registry.going_away()  # each close removes itself while the registry walks
    assert [t.codes for t in tunnels] == [[GOING_AWAY], [], [GOING_AWAY]]
    assert ended == ["s1", "s0", "s2"]
    assert registry.health() == {"open": 0, "opened": 3, "bytes_in": 30, "bytes_out": 60}


def test_a_failing_on_closed_does_not_keep_the_tunnel() -> None:
    def broken(_: Ticket) -> None:
        raise RuntimeError("redis away")

    registry = TunnelRegistry(broken)
    tunnel = Plain(registry, "s")
    registry.add(tunnel)
    registry.remove(tunnel)
    assert registry.live() == []
