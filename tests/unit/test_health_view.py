"""The /health document as a view of its parts' reports."""

from __future__ import annotations

from edge.health import HealthView, Report, Verdict


def test_the_status_is_the_worst_verdict_of_the_parts() -> None:
    verdicts = {"a": Verdict.OK, "b": Verdict.OK}
    view = HealthView()
    view.add(lambda: Report({"a": 1}, verdicts["a"]))
    view.add(lambda: Report({"b": 2}, verdicts["b"]))
    assert view() == {"status": "ok", "a": 1, "b": 2}
    verdicts["b"] = Verdict.DEGRADED
    assert view()["status"] == "degraded"
    verdicts["a"] = Verdict.DRAINING  # draining wins over degraded, whatever the order
    assert view()["status"] == "draining"
    verdicts["b"] = Verdict.OK
    assert view()["status"] == "draining"


def test_parts_are_asked_on_every_call_and_keep_their_order() -> None:
    calls: list[str] = []
    view = HealthView()

    def part(name: str) -> Report:
        calls.append(name)
        return Report({name: len(calls)})

    view.add(lambda: part("first"))
    view.add(lambda: part("second"))
    assert list(view()) == ["status", "first", "second"]
    assert view() == {"status": "ok", "first": 3, "second": 4}
    assert calls == ["first", "second", "first", "second"]


def test_no_parts_is_ok() -> None:
    assert HealthView()() == {"status": "ok"}
