"""``edge cert create|status|renew`` without an edge: what the command line parses to, and
how ``--wait`` turns the status documents read into progress lines, an outcome and an
exit (a scripted clock: no sleeping)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from edge.cli import _parser
from edge.client.certs import (
    EXIT_TIMEOUT,
    Outcome,
    Progress,
    follow,
    progress_line,
    status_view,
)

EXPIRES = "2031-03-01T12:00:00+00:00"


def parse(*argv: str) -> argparse.Namespace:
    return _parser(with_client=False, command="cert").parse_args(list(argv))


def doc(status: str, **fields: Any) -> dict[str, Any]:
    return {"cert_name": "app", "status": status, "domains": ["app.example.com"], **fields}


# ---------------------------------------------------------------------------- parsing


def test_create_parses_names_options_and_defaults() -> None:
    args = parse("cert", "create", "app", "app.example.com")
    assert args.cert_api and args.cert_command == "create"
    assert (args.name, args.domains) == ("app", ["app.example.com"])
    assert (args.wait, args.wait_timeout, args.staging) == (False, 300.0, False)
    assert args.email is None and args.key_type is None and not args.json
    # the client options are left unset unless given (the settings' layers decide)
    assert not any(hasattr(args, name) for name in ("api_url", "token", "timeout", "format"))

    args = parse(
        "cert",
        "create",
        "app",
        "a.example.com",
        "b.example.com",
        "--staging",
        "--email",
        "ops@example.com",
        "--key-type",
        "ecdsa",
        "--wait",
        "--timeout",
        "42.5",
        "--token",
        "T",
        "-o",
        "yaml",
    )
    assert args.domains == ["a.example.com", "b.example.com"]
    assert (args.staging, args.email, args.key_type) == (True, "ops@example.com", "ecdsa")
    assert (args.wait, args.wait_timeout, args.token, args.format) == (True, 42.5, "T", "yaml")


def test_timeout_after_the_command_is_the_wait_before_it_each_call() -> None:
    args = parse("--timeout", "3", "--api-url", "http://h:1", "cert", "renew", "app", "--wait")
    assert (args.timeout, args.wait_timeout, args.api_url) == (3.0, 300.0, "http://h:1")
    args = parse("cert", "renew", "app", "--timeout", "7")
    assert args.wait_timeout == 7.0 and not hasattr(args, "timeout")


def test_status_parses_json_and_wait() -> None:
    args = parse("cert", "status", "app", "--json")
    assert (args.cert_command, args.name, args.json, args.wait) == ("status", "app", True, False)
    args = parse("cert", "status", "app", "--wait", "--timeout", "9", "--profile", "prod")
    assert (args.wait, args.wait_timeout, args.profile) == (True, 9.0, "prod")


@pytest.mark.parametrize(
    "argv",
    [
        ("cert", "create", "app"),  # no domain
        ("cert", "create", "app", "a.example.com", "--key-type", "dsa"),
        ("cert", "create", "app", "a.example.com", "--timeout", "0"),
        ("cert", "create", "app", "a.example.com", "--timeout", "nan"),
        ("cert", "create", "app", "a.example.com", "--timeout", "soon"),
        ("cert", "renew"),
        ("cert", "status"),
        ("cert", "status", "app", "--staging"),  # create's only
    ],
)
def test_usage_errors_exit_2(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert "usage: edge" in capsys.readouterr().err


def test_the_redis_commands_are_not_marked_for_the_api() -> None:
    assert not getattr(parse("cert", "show", "app"), "cert_api", False)
    assert not getattr(parse("cert", "list"), "cert_api", False)


# ---------------------------------------------------------------------------- progress


def test_progress_prints_each_change_of_state_once() -> None:
    progress = Progress()
    seen = [
        progress.see(doc("pending")),
        progress.see(doc("pending", attempts=0)),
        progress.see(doc("validating")),
        progress.see(doc("validating")),
        progress.see(doc("issuing")),
    ]
    assert seen == ["pending", None, "validating", None, "issuing"]
    assert progress.outcome is None
    assert progress.see(doc("active", expires_at=EXPIRES)) == f"active (expires {EXPIRES})"
    assert progress.outcome is Outcome.ACTIVE


def test_progress_lines_of_the_states_that_end() -> None:
    assert progress_line(doc("active")) == "active"
    nxt = "2030-01-01T00:05:00+00:00"
    assert progress_line(doc("failed", next_try_at=nxt)) == f"failed (next try {nxt})"
    assert progress_line(doc("failed")) == "failed (no retry scheduled)"
    # nothing the API sends can break the line in two
    assert progress_line(doc("pend\ning")) == "pend ing"
    assert progress_line({}) == "unknown"
    for state, outcome in (("failed", Outcome.FAILED), ("imported", Outcome.ACTIVE)):
        progress = Progress()
        progress.see(doc(state))
        assert progress.outcome is outcome


class Script:
    """A clock that moves only when slept, and a status read from a timetable of
    documents: (from this time on, this document)."""

    def __init__(self, timetable: Sequence[tuple[float, Mapping[str, Any]]]) -> None:
        self.now = 0.0
        self.timetable = timetable
        self.reads: list[tuple[float, float]] = []  # (when, the seconds left given)
        self.lines: list[str] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= 1.0
        self.now += seconds

    def read(self, left: float) -> Mapping[str, Any]:
        self.reads.append((self.now, left))
        current = self.timetable[0][1]
        for start, found in self.timetable:
            if self.now >= start:
                current = found
        return current

    def follow(self, first: Mapping[str, Any], timeout: float) -> tuple[Outcome, Any]:
        return follow(
            first,
            self.read,
            self.lines.append,
            timeout=timeout,
            clock=self.clock,
            sleep=self.sleep,
        )


def test_follow_to_active_reads_every_second() -> None:
    script = Script(
        [
            (0, doc("pending")),
            (2, doc("validating")),
            (4, doc("issuing")),
            (5, doc("active", expires_at=EXPIRES)),
        ]
    )
    outcome, last = script.follow(doc("pending"), timeout=300)
    assert outcome is Outcome.ACTIVE and last["expires_at"] == EXPIRES
    assert script.lines == ["pending", "validating", "issuing", f"active (expires {EXPIRES})"]
    assert [when for when, _ in script.reads] == [1, 2, 3, 4, 5]
    assert script.reads[0][1] == 299


def test_follow_stops_at_a_failure_with_its_document() -> None:
    failed = doc("failed", error="urn:ietf:params:acme:error:dns: NXDOMAIN", attempts=1)
    script = Script([(0, doc("validating")), (3, failed)])
    outcome, last = script.follow(doc("pending"), timeout=60)
    assert (outcome, last) == (Outcome.FAILED, failed)
    assert script.lines == ["pending", "validating", "failed (no retry scheduled)"]


def test_follow_times_out_after_a_last_read_at_the_deadline() -> None:
    script = Script([(0, doc("pending"))])
    outcome, last = script.follow(doc("pending"), timeout=2.5)
    assert outcome is Outcome.TIMED_OUT and last["status"] == "pending"
    assert script.lines == ["pending"]
    assert script.reads == [(1, 1.5), (2, 0.5), (2.5, 0)]
    assert EXIT_TIMEOUT not in (0, 1, 2)


def test_follow_seen_active_at_the_deadline_is_active() -> None:
    script = Script([(0, doc("issuing")), (2, doc("active"))])
    outcome, _ = script.follow(doc("issuing"), timeout=2)
    assert outcome is Outcome.ACTIVE and script.lines == ["issuing", "active"]


def test_follow_a_document_already_at_its_end_reads_nothing() -> None:
    script = Script([(0, doc("pending"))])
    outcome, _ = script.follow(doc("active", expires_at=EXPIRES), timeout=10)
    assert outcome is Outcome.ACTIVE and script.reads == []


# ---------------------------------------------------------------------------- status view


def test_status_view_leads_with_what_matters() -> None:
    full = doc(
        "failed",
        email="ops@example.com",
        directory_url="https://acme.example/directory",
        staging=False,
        key_type="rsa",
        reason="requested",
        owner_token_hash="abc",
        requested_at="2030-01-01T00:00:00+00:00",
        updated_at="2030-01-01T00:01:00+00:00",
        attempts=2,
        error="connection refused",
        next_try_at="2030-01-01T00:05:00+00:00",
        expires_at=None,
        renew_at=None,
        order_url=None,
    )
    view = status_view(full)
    assert list(view)[:7] == [
        "name",
        "state",
        "domains",
        "error",
        "next try",
        "expires",
        "renew at",
    ]
    assert view["state"] == "failed" and view["error"] == "connection refused"
    assert view["attempts"] == 2 and view["staging"] is False and "order" not in view
    assert "owner_token_hash" not in view and "abc" not in view.values()
    # a document made from an imported record: the few fields it has
    imported = {"cert_name": "old", "status": "imported", "domains": ["x.example.com"]}
    assert list(status_view(imported)) == list(view)[:7]
