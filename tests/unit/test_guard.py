"""``HeadGuard``: hard limits and anti-smuggling checks, fed in any segmentation."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import ClientError, HeadersTooLarge, RequestLineTooLong
from edge.http1.guard import HeadGuard

MAX_LINE = 100
MAX_BYTES = 300
MAX_COUNT = 8

Outcome = tuple[str, type[ClientError] | None]
Feed = Callable[[bytes], Outcome]


def guard() -> HeadGuard:
    return HeadGuard(MAX_LINE, MAX_BYTES, MAX_COUNT)


def request_line(length: int, method: str = "GET") -> bytes:
    """A request line of exactly ``length`` bytes (CRLF not included)."""
    fixed = len(f"{method} / HTTP/1.1")
    assert length >= fixed
    return f"{method} /{'a' * (length - fixed)} HTTP/1.1".encode()


def header_lines(total: int, count: int) -> list[bytes]:
    """``count`` header lines whose bytes, each with its CRLF, add up to ``total``."""
    assert count >= 1
    lines = [b"h%d: v" % i for i in range(count - 1)]
    used = sum(len(line) + 2 for line in lines)
    last_name = b"last: "
    fill = total - used - len(last_name) - 2
    assert fill >= 1, "not enough room for the requested header bytes"
    lines.append(last_name + b"x" * fill)
    return lines


def head(line: bytes, headers: Iterable[bytes]) -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def segments(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def outcome(parts: Sequence[bytes], g: HeadGuard | None = None) -> Outcome:
    g = g or guard()
    try:
        for part in parts:
            g.feed(part)
    except ClientError as exc:
        return ("error", type(exc))
    return ("done" if g.done else "incomplete", None)


def whole(data: bytes) -> Outcome:
    return outcome([data])


def bytewise(data: bytes) -> Outcome:
    return outcome([data[i : i + 1] for i in range(len(data))])


def halves(data: bytes) -> Outcome:
    mid = len(data) // 2
    return outcome([data[:mid], data[mid:]])


def before_final_crlf(data: bytes) -> Outcome:
    # the segment boundary falls between the last header's CRLF and the blank line
    return outcome([data[:-2], data[-2:-1], data[-1:]])


FEEDS: list[Feed] = [whole, bytewise, halves, before_final_crlf]
FEED_IDS = ["whole", "bytewise", "halves", "before-final-crlf"]

SIMPLE = head(b"GET /index.html HTTP/1.1", [b"Host: example.test", b"Accept: */*"])


# ---------------------------------------------------------------- valid heads
@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
def test_simple_head_completes(feed: Feed) -> None:
    assert feed(SIMPLE) == ("done", None)


@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
@pytest.mark.parametrize(
    "data",
    [
        head(request_line(MAX_LINE), [b"Host: a"]),
        head(b"GET / HTTP/1.1", header_lines(MAX_BYTES, 3)),
        head(b"GET / HTTP/1.1", header_lines(MAX_BYTES, MAX_COUNT)),
        head(b"GET / HTTP/1.1", [b"h: v"] * MAX_COUNT),
        head(request_line(MAX_LINE), header_lines(MAX_BYTES, MAX_COUNT)),
    ],
    ids=["line", "bytes", "bytes+count", "count", "all-three"],
)
def test_exactly_at_each_limit_passes(data: bytes, feed: Feed) -> None:
    assert feed(data) == ("done", None)


def test_strict_prefixes_of_a_head_are_incomplete() -> None:
    data = head(request_line(MAX_LINE), header_lines(MAX_BYTES, MAX_COUNT))
    for end in range(1, len(data)):
        assert whole(data[:end]) == ("incomplete", None), end


def test_head_without_headers() -> None:
    assert bytewise(b"GET / HTTP/1.0\r\n\r\n") == ("done", None)
    assert whole(b"GET / HTTP/1.0\r\n\r\n") == ("done", None)


def test_empty_lines_before_the_request_line_are_ignored() -> None:
    data = b"\r\n\r\n" + SIMPLE
    assert whole(data) == ("done", None)
    assert bytewise(data) == ("done", None)


def test_bytes_after_the_head_are_not_checked() -> None:
    body = b"x" * (MAX_BYTES * 2) + b"\n \n\tbare\nLF\r\n\r\n" + b"y" * (MAX_LINE * 2)
    data = head(request_line(MAX_LINE), header_lines(MAX_BYTES, MAX_COUNT)) + body
    for feed in FEEDS:
        assert feed(data) == ("done", None)
    g = guard()
    g.feed(SIMPLE)
    assert g.done
    g.feed(b"\n\n\n" + b"z" * 10_000)  # ignored once done
    assert g.done


def test_reset_starts_a_new_head() -> None:
    g = guard()
    g.feed(head(request_line(MAX_LINE), header_lines(MAX_BYTES, MAX_COUNT)))
    assert g.done
    g.reset()
    assert not g.done
    # the counters start again from zero: a second head at the limits passes too
    for byte in head(request_line(MAX_LINE), header_lines(MAX_BYTES, MAX_COUNT)):
        g.feed(bytes([byte]))
    assert g.done
    g.reset()
    with pytest.raises(HeadersTooLarge):
        g.feed(head(b"GET / HTTP/1.1", [b"h: v"] * (MAX_COUNT + 1)))


# ---------------------------------------------------------------- violations
VIOLATIONS: list[tuple[str, bytes, type[ClientError], int]] = [
    ("line+1", head(request_line(MAX_LINE + 1), [b"Host: a"]), RequestLineTooLong, 414),
    ("line-huge", head(request_line(MAX_LINE * 5), [b"Host: a"]), RequestLineTooLong, 414),
    ("bytes+1", head(b"GET / HTTP/1.1", header_lines(MAX_BYTES + 1, 3)), HeadersTooLarge, 431),
    ("one-huge-header", head(b"GET / HTTP/1.1", [b"X: " + b"v" * 5000]), HeadersTooLarge, 431),
    ("count+1", head(b"GET / HTTP/1.1", [b"h: v"] * (MAX_COUNT + 1)), HeadersTooLarge, 431),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", ClientError, 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", ClientError, 400),
    ("bare-lf-blank-line", b"GET / HTTP/1.1\r\nHost: a\r\n\n", ClientError, 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", ClientError, 400),
    ("obs-fold-space", b"GET / HTTP/1.1\r\nX: a\r\n  b\r\nHost: a\r\n\r\n", ClientError, 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\nHost: a\r\n\r\n", ClientError, 400),
    ("space-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", ClientError, 400),
]


@pytest.mark.parametrize("feed", FEEDS, ids=FEED_IDS)
@pytest.mark.parametrize(
    ("data", "error", "status"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
def test_violation_is_detected(
    data: bytes, error: type[ClientError], status: int, feed: Feed
) -> None:
    assert feed(data) == ("error", error)
    g = guard()
    with pytest.raises(ClientError) as info:
        g.feed(data)
    assert type(info.value) is error
    assert info.value.status == status
    assert info.value.close_connection
    # what the client is told is fixed text, not the internal detail
    assert info.value.public_message


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        (b"GET /" + b"a" * (MAX_LINE * 3), RequestLineTooLong),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_BYTES * 3), HeadersTooLarge),
        (b"GET / HTTP/1.1\r\n" + b"h: v\r\n" * (MAX_COUNT + 1), HeadersTooLarge),
    ],
    ids=["endless-request-line", "endless-header", "endless-header-list"],
)
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_an_unfinished_head_trips_once_over_the_limit(
    prefix: bytes, error: type[ClientError], chunk: int
) -> None:
    """No need to wait for the end of a line (or of the head) to refuse an oversized one."""
    g = guard()
    with pytest.raises(error):
        for i in range(0, len(prefix), chunk):
            g.feed(prefix[i : i + chunk])
    assert not g.done


def test_trips_within_a_couple_of_bytes_of_the_limit() -> None:
    g = guard()
    line = b"GET /" + b"a" * (MAX_LINE * 3)
    fed = 0
    with pytest.raises(RequestLineTooLong):
        for byte in line:
            fed += 1
            g.feed(bytes([byte]))
    assert MAX_LINE < fed <= MAX_LINE + 2
    g = guard()
    start = b"GET / HTTP/1.1\r\n"
    g.feed(start)
    fed = 0
    with pytest.raises(HeadersTooLarge):
        for byte in b"X: " + b"v" * (MAX_BYTES * 3):
            fed += 1
            g.feed(bytes([byte]))
    assert MAX_BYTES < fed <= MAX_BYTES + 2


# ---------------------------------------------------------------- property-based
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC 0123456789/;=,.", max_size=30).map(
    str.strip
)
TARGET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/?=&-._~%", max_size=MAX_LINE - 18)
METHOD = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    method = draw(METHOD)
    target = "/" + draw(TARGET)
    line = f"{method} {target} HTTP/1.1".encode()
    headers: list[bytes] = []
    used = 0
    for _ in range(draw(st.integers(0, MAX_COUNT))):
        field = f"{draw(TOKEN)}: {draw(VALUE)}".encode()
        if used + len(field) + 2 > MAX_BYTES:
            break
        headers.append(field)
        used += len(field) + 2
    leading = b"\r\n" * draw(st.integers(0, 2))
    return leading + head(line, headers)


@st.composite
def invalid_heads(draw: st.DrawFn) -> tuple[bytes, type[ClientError]]:
    """A head with exactly one violation, and the error class it must produce."""
    kind = draw(st.sampled_from(["line", "bytes", "count", "bare-lf", "obs-fold"]))
    base_count = draw(st.integers(1, 4))
    base = [f"h{i}: {draw(VALUE)}".encode() for i in range(base_count)]
    line = b"GET / HTTP/1.1"
    if kind == "line":
        line = request_line(draw(st.integers(MAX_LINE + 1, MAX_LINE * 4)))
        return head(line, base), RequestLineTooLong
    if kind == "bytes":
        used = sum(len(h) + 2 for h in base)
        extra = draw(st.integers(MAX_BYTES - used + 1, MAX_BYTES * 3))
        pos = draw(st.integers(0, len(base)))
        base.insert(pos, b"big: " + b"z" * max(1, extra - 7))
        return head(line, base), HeadersTooLarge
    if kind == "count":
        count = draw(st.integers(MAX_COUNT + 1, MAX_COUNT * 3))
        return head(line, [b"c%d: v" % i for i in range(count)]), HeadersTooLarge
    if kind == "bare-lf":
        lines = [line, *base, b""]
        which = draw(st.integers(0, len(lines) - 1))
        data = b"".join(part + (b"\n" if i == which else b"\r\n") for i, part in enumerate(lines))
        return data, ClientError
    fold = draw(st.sampled_from([b" ", b"\t", b"  ", b" \t"])) + draw(TOKEN).encode()
    pos = draw(st.integers(0, len(base)))
    base.insert(pos, fold)
    return head(line, base), ClientError


CUTS = st.lists(st.integers(1, 2000), max_size=40)


@settings(max_examples=300, deadline=None)
@given(data=valid_heads(), cuts=CUTS, trailer=st.binary(max_size=64))
def test_any_split_of_a_valid_head_matches_the_whole_feed(
    data: bytes, cuts: list[int], trailer: bytes
) -> None:
    expected = whole(data)
    assert expected == ("done", None)
    assert outcome(segments(data, cuts)) == expected
    # whatever follows the head (a body, the next request) does not change the result
    assert outcome(segments(data + trailer, cuts)) == expected


@settings(max_examples=300, deadline=None)
@given(case=invalid_heads(), cuts=CUTS)
def test_any_split_of_an_invalid_head_gives_the_same_error(
    case: tuple[bytes, type[ClientError]], cuts: list[int]
) -> None:
    data, error = case
    assert whole(data) == ("error", error)
    assert outcome(segments(data, cuts)) == ("error", error)


@settings(max_examples=100, deadline=None)
@given(data=valid_heads())
def test_byte_by_byte_equals_whole_for_valid_heads(data: bytes) -> None:
    assert bytewise(data) == whole(data) == ("done", None)


@settings(max_examples=100, deadline=None)
@given(case=invalid_heads())
def test_byte_by_byte_equals_whole_for_invalid_heads(
    case: tuple[bytes, type[ClientError]],
) -> None:
    data, error = case
    assert bytewise(data) == whole(data) == ("error", error)
