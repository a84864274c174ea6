"""The few places where the edge reaches into h11 internals, for speed, in one module.

Both legs speak HTTP/1.1 through it: ``ServerConnection`` is the client's side
(``edge.http1``), ``ClientConnection`` the upstream's (``edge.upstream``), and forwarding
builds its messages with ``outgoing_request`` / ``outgoing_response``. It sits beside the
pipeline, like ``edge.deadline``, and imports nothing of the edge, so that neither leg
reaches into the other's package for it.

Sending: h11 re-validates every response header with regular expressions when a server
sends a response (``_clean_up_response_headers_for_sending`` rebuilds the event without
``_parsed=True``), although a proxy's response headers come straight out of h11's own
parser. ``ServerConnection`` skips that rebuild when it would change nothing, and falls
back to h11's code otherwise. Iterating ``h11.Headers`` goes through
``Sequence.__iter__`` (one ``__getitem__`` call per header); ``items()`` reads the
underlying list directly.

Receiving: h11's head readers (``maybe_read_from_IDLE_client`` for a request,
``maybe_read_from_SEND_RESPONSE_server`` for a response) run every line through
``validate()`` (a ``fullmatch`` plus a ``groupdict()``), through the obs-fold generator,
collect the pairs with ``list()`` of a generator, pass the request line as ``**kwargs``,
normalise the headers in a second loop, and then the event constructor walks the headers
once more through ``Sequence.__iter__`` to count ``Host`` and re-matches method and
target against regexes the request line has already enforced. ``read_request_head`` and
``read_response_head`` below do the same work with the same compiled regexes in one pass,
and hand anything unusual (obs-fold continuation lines, malformed lines, non-trivial
``Content-Length`` / ``Transfer-Encoding``) back to h11's own helpers, so events,
exceptions and buffer consumption stay exactly h11's. ``ServerConnection`` and
``ClientConnection`` install them through ``_get_io_object``.

State machine: for each event h11 copies both states, runs the transition tables and
then the state-triggered transitions to a fixed point, and walks the headers five times
(Connection, Upgrade, Expect, Transfer-Encoding, Content-Length). For the events of an
ordinary keep-alive exchange (Request, Response, Data, EndOfMessage, no protocol switch
pending, the connection staying open) the outcome is fixed: ``_FastHeads`` computes it
from one walk over the headers and leaves everything else (CONNECT, Upgrade, 1xx,
``Connection: close``, HTTP/1.0, errors) to h11's code. A property test drives random
conversations through both and compares every piece of state after every step.

The pin ``h11>=0.16,<0.17`` in pyproject keeps all of this in step with h11;
``tests/unit/test_h11compat.py`` checks the bytes on the wire and the parsed events
against stock h11.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from h11._events import Event
from h11._headers import CONTENT_LENGTH_MAX_DIGITS, Headers, normalize_and_validate
from h11._readers import (
    READERS,
    ReadersType,
    _decode_header_lines,
    header_field_re,
    maybe_read_from_IDLE_client,
    maybe_read_from_SEND_RESPONSE_server,
    request_line_re,
    status_line_re,
)
from h11._receivebuffer import ReceiveBuffer
from h11._state import DONE, IDLE, SEND_BODY, SEND_RESPONSE
from h11._util import LocalProtocolError, Sentinel
from h11._writers import WRITERS

# events are immutable: one EndOfMessage serves every message (saves its construction)
END_OF_MESSAGE = h11.EndOfMessage()

_CHUNKED = (b"Transfer-Encoding", b"transfer-encoding", b"chunked")

FullItems = list[tuple[bytes, bytes, bytes]]

_match_request_line = request_line_re.fullmatch
_match_status_line = status_line_re.fullmatch
_match_field_line = header_field_re.fullmatch
_new = object.__new__
_set = object.__setattr__
# Lowercased names that need more than ``(raw, lower, value)``: counted, or normalised.
_NOTABLE = frozenset((b"host", b"content-length", b"transfer-encoding"))


def fields_of(full: FullItems) -> Sequence[tuple[bytes, bytes]]:
    """``full`` as h11 ``Headers`` (by reference: appending to ``full`` adds a field), so
    that ``full_items`` gives it back without lowercasing every name again."""
    return Headers(full)


def full_items(headers: Sequence[tuple[bytes, bytes]]) -> FullItems:
    """(raw name, lowercased name, value) triples of an h11 ``Headers``, without copying."""
    full = getattr(headers, "_full_items", None)
    if full is None:
        return [(name, name.lower(), value) for name, value in headers]
    return full  # type: ignore[no-any-return]


def _count_hosts(full: FullItems) -> int:
    return sum(1 for _, lower, _ in full if lower == b"host")


def _fields_by_h11(lines: list[bytearray]) -> tuple[Headers, int]:
    """h11's own header pipeline: obs-fold, per-line ``validate``, then normalisation.

    Used for every head the single-pass loop in ``_fields`` does not vouch for, so that
    folded values, the first offending line, and the error message are h11's verbatim.
    """
    # h11 itself passes these bytearray lines (typed as ``bytes`` in h11)
    pairs = list(_decode_header_lines(lines[1:]))  # type: ignore[arg-type]
    headers = normalize_and_validate(pairs, _parsed=True)
    return headers, _count_hosts(headers._full_items)


def _fields(lines: list[bytearray]) -> tuple[Headers, int]:
    """Header lines ``lines[1:]`` as h11 ``Headers``, plus the number of ``Host`` fields.

    Equal to ``normalize_and_validate(list(_decode_header_lines(lines[1:])), _parsed=True)``
    but in one loop. Why that is the same:

    * A line that fullmatches ``header_field_re`` starts with a token character (the field
      name is a token), never SP or HT, so when every line matches, h11's obs-fold pass
      yields each line unchanged and its ``validate`` returns exactly these two groups. If
      any line does not match (a continuation line, or a malformed one), the whole head
      goes to h11's pipeline, which then folds or raises exactly as stock h11 does.
    * For names other than Content-Length and Transfer-Encoding, normalisation only adds
      the lowercased name. A single Content-Length of 1 to ``CONTENT_LENGTH_MAX_DIGITS``
      ASCII digits and a single ``Transfer-Encoding: chunked`` come out of it unchanged.
      Any other use of those two fields is normalised by h11's ``normalize_and_validate``
      itself, after all lines have matched, which keeps h11's order of errors (line syntax
      before framing).
    """
    full: FullItems = []
    hosts = 0
    seen_length = seen_coding = unusual = False
    field_lines = iter(lines)
    next(field_lines)  # the request or status line
    for line in field_lines:
        match = _match_field_line(line)
        if match is None:
            return _fields_by_h11(lines)
        name, value = match.group(1, 2)  # named groups, in this order
        lower = name.lower()
        if lower in _NOTABLE:
            if lower == b"host":
                hosts += 1
            elif lower == b"content-length":
                if seen_length or len(value) > CONTENT_LENGTH_MAX_DIGITS or not value.isdigit():
                    unusual = True
                seen_length = True
            else:
                if seen_coding or value != b"chunked":
                    unusual = True
                seen_coding = True
        full.append((name, lower, value))
    if unusual:
        headers = normalize_and_validate([(raw, value) for raw, _, value in full], _parsed=True)
        return headers, hosts  # normalisation never adds, drops or renames a Host field
    return Headers(full), hosts


def outgoing_request(method: bytes, target: bytes, full: FullItems) -> h11.Request:
    """An HTTP/1.1 ``Request`` from parts that are valid by construction.

    ``h11.Request(..., _parsed=True)`` would walk the headers once more to lowercase names
    and normalise Content-Length and Transfer-Encoding. The forwarder builds its upstream
    request from h11's parsed request (method, target, and header triples whose framing
    fields h11 already normalised), values it derived from them, and validated config, with
    exactly one Host field; ``tests/unit/test_h11compat.py`` checks the result equals the
    constructor's.
    """
    request: h11.Request = _new(h11.Request)
    _set(request, "method", method)
    _set(request, "headers", Headers(full))
    _set(request, "target", target)
    _set(request, "http_version", b"1.1")
    return request


def outgoing_response(status_code: int, reason: bytes, full: FullItems) -> h11.Response:
    """A final HTTP/1.1 ``Response`` from parts that are valid by construction.

    For a forwarded response: status and reason come from h11's parse of the upstream's
    final response (so 200-999), header triples from that parse plus fields the edge adds
    (Via, validated config, Connection: close), so the constructor's header pass would
    change nothing; ``tests/unit/test_h11compat.py`` checks the result equals it.
    """
    response: h11.Response = _new(h11.Response)
    _set(response, "headers", Headers(full))
    _set(response, "http_version", b"1.1")
    _set(response, "reason", reason)
    _set(response, "status_code", status_code)
    return response


def _head_lines(buf: ReceiveBuffer, empty_message: str) -> list[bytearray] | None:
    """The lines of a complete head, as h11's two head readers take them (None: wait)."""
    lines = buf.maybe_extract_lines()
    if lines is None:
        if buf.is_next_line_obviously_invalid_request_line():
            raise LocalProtocolError("illegal request line")
        return None
    if not lines:
        raise LocalProtocolError(empty_message)
    return lines


def read_request_head(buf: ReceiveBuffer) -> h11.Request | None:
    """Drop-in for h11's ``maybe_read_from_IDLE_client``, in fewer Python steps.

    Buffer handling and the request-line checks are h11's, message for message. The
    ``Request`` is assembled without its constructor, which with ``_parsed=True`` and
    ready ``Headers`` only stores the four fields, rejects a missing (HTTP/1.1) or repeated
    ``Host`` (checked here, with h11's messages), and re-matches method and target against
    ``token`` and ``vchar+``, which ``request_line_re`` has already enforced on both.
    """
    lines = _head_lines(buf, "no request line received")
    if lines is None:
        return None
    first = lines[0]
    match = _match_request_line(first)
    if match is None:
        raise LocalProtocolError(f"illegal request line: {first!r}")
    method, target, http_version = match.group(1, 2, 3)  # named groups, in this order
    headers, hosts = _fields(lines)
    if hosts != 1:
        if hosts == 0 and http_version == b"1.1":
            raise LocalProtocolError("Missing mandatory Host: header")
        if hosts > 1:
            raise LocalProtocolError("Found multiple Host: headers")
    request: h11.Request = _new(h11.Request)
    _set(request, "method", method)
    _set(request, "headers", headers)
    _set(request, "target", target)
    _set(request, "http_version", http_version)
    return request


def read_response_head(
    buf: ReceiveBuffer,
) -> h11.InformationalResponse | h11.Response | None:
    """Drop-in for h11's ``maybe_read_from_SEND_RESPONSE_server``, in fewer Python steps.

    Buffer handling and the status-line checks are h11's, message for message (including
    h11's "illegal request line" for a head starting with a control byte). A final
    ``Response`` is assembled without its constructor, whose only check (status in
    [200, 1000)) always holds for three digits not below 200; a 1xx (or 0xx) status goes
    through ``InformationalResponse`` so that its range check raises as in h11.
    """
    lines = _head_lines(buf, "no response line received")
    if lines is None:
        return None
    first = lines[0]
    match = _match_status_line(first)
    if match is None:
        raise LocalProtocolError(f"illegal status line: {first!r}")
    # the version group is mandatory in ``status_line``; only the reason may be absent
    http_version, status, reason = match.group(1, 2, 3)  # named groups, in this order
    if reason is None:
        reason = b""
    status_code = int(status)
    headers, _ = _fields(lines)
    if status_code < 200:
        return h11.InformationalResponse(
            headers=headers,
            status_code=status_code,
            reason=reason,
            http_version=http_version,
            _parsed=True,
        )
    response: h11.Response = _new(h11.Response)
    _set(response, "headers", headers)
    _set(response, "http_version", http_version)
    _set(response, "reason", reason)
    _set(response, "status_code", status_code)
    return response


_FAST_READERS: ReadersType = {
    key: (
        read_request_head
        if reader is maybe_read_from_IDLE_client
        else read_response_head
        if reader is maybe_read_from_SEND_RESPONSE_server
        else reader
    )
    for key, reader in READERS.items()
}


_CLIENT, _SERVER = h11.CLIENT, h11.SERVER
_DATA, _EOM, _REQUEST, _RESPONSE = h11.Data, h11.EndOfMessage, h11.Request, h11.Response
# the other side's states in which an EndOfMessage or a Response triggers nothing more
_PLAIN = (SEND_RESPONSE, SEND_BODY, DONE)
_read_request_head: Any = _FAST_READERS[(_CLIENT, IDLE)]
_read_response_head: Any = _FAST_READERS[(_SERVER, SEND_RESPONSE)]
_expect_nothing: Any = _FAST_READERS[(_CLIENT, DONE)]
_write_request: Any = WRITERS[(_CLIENT, IDLE)]
_write_any_response: Any = WRITERS[(_SERVER, SEND_RESPONSE)]
_body_readers = cast(dict[str, Any], READERS[SEND_BODY])
_body_writers = cast(dict[str, Any], WRITERS[SEND_BODY])
_CHUNKED_READER = _body_readers["chunked"]
_LENGTH_READER = _body_readers["content-length"]
_HTTP10_READER = _body_readers["http/1.0"]
_CHUNKED_WRITER = _body_writers["chunked"]
_LENGTH_WRITER = _body_writers["content-length"]
_HTTP10_WRITER = _body_writers["http/1.0"]
_FRAMING_NAMES = frozenset(
    (b"connection", b"upgrade", b"expect", b"transfer-encoding", b"content-length")
)

# (Connection has "close", Upgrade is non-empty, Expect has "100-continue",
#  Transfer-Encoding is "chunked", the first Content-Length token or None)
_Facts = tuple[bool, bool, bool, bool, bytes | None]


def _tokens(value: bytes) -> list[bytes]:
    """h11's ``get_comma_header`` for one field value: lowercased, split, stripped."""
    return [token for token in (part.strip() for part in value.lower().split(b",")) if token]


def _head_facts(headers: Headers) -> _Facts | None:
    """What h11 reads from a head with five ``get_comma_header`` walks, in one walk.

    None when Transfer-Encoding is anything but exactly ``chunked`` (h11 refuses that
    while parsing, so only an event built by hand gets here; h11's code handles it).
    """
    close = upgrade = expect = False
    transfer: list[bytes] = []
    length: bytes | None = None
    for _, name, value in headers._full_items:
        if name in _FRAMING_NAMES:
            tokens = _tokens(value)
            if name == b"connection":
                close = close or b"close" in tokens
            elif name == b"content-length":
                if length is None and tokens:
                    length = tokens[0]
            elif name == b"transfer-encoding":
                transfer += tokens
            elif name == b"upgrade":
                upgrade = upgrade or bool(tokens)
            else:
                expect = expect or b"100-continue" in tokens
    if transfer and transfer != [b"chunked"]:
        return None
    return close, upgrade, expect, bool(transfer), length


class _FastHeads(h11.Connection):
    """``h11.Connection`` reading request and response heads with the readers above.

    h11 picks a reader per (role, state) in ``_get_io_object``; where it would pick one of
    its two head readers, the equivalent one from this module is returned instead. Body
    readers, writers and the state machine are untouched.
    """

    def __init__(self, our_role: type[Sentinel], max_incomplete_event_size: int) -> None:
        super().__init__(our_role, max_incomplete_event_size=max_incomplete_event_size)
        self._reader = self._get_io_object(self.their_role, None, _FAST_READERS)

    def _process_event(self, role: type[Sentinel], event: Event) -> None:
        # h11's version copies both states, runs each event through the transition
        # tables, then re-runs the state-triggered transitions to a fixed point, reads
        # Connection / Upgrade / Expect with one header walk each, and walks the headers
        # twice more (Transfer-Encoding, Content-Length) to pick the body reader or
        # writer. For the four events of an ordinary keep-alive exchange (Request,
        # Response, Data, EndOfMessage, with no protocol switch pending) the outcome is
        # fixed, and computed below from one walk over the headers; anything else
        # (CONNECT, Upgrade, a closing connection, 1xx, errors) goes to h11's code.
        kind = type(event)
        cstate = self._cstate
        states = cstate.states
        if kind is _DATA:
            # Data in SEND_BODY changes no state; its one side effect, for the client's
            # data, is clearing the 100-continue wait.
            if states[role] is SEND_BODY:
                if role is _CLIENT:
                    self.client_is_waiting_for_100_continue = False
                return
        elif kind is _EOM:
            if (
                states[role] is SEND_BODY
                and cstate.keep_alive
                and not cstate.pending_switch_proposals
                and states[_SERVER if role is _CLIENT else _CLIENT] in _PLAIN
            ):
                states[role] = DONE
                if role is _CLIENT:
                    self.client_is_waiting_for_100_continue = False
                if role is self.our_role:
                    self._writer = None  # h11 has no writer for DONE
                else:
                    self._reader = _expect_nothing
                return
        elif kind is _REQUEST:
            if (
                role is _CLIENT
                and states[_CLIENT] is IDLE
                and states[_SERVER] is IDLE
                and cstate.keep_alive
                and not cstate.pending_switch_proposals
                and cast(h11.Request, event).method != b"CONNECT"
            ):
                facts = _head_facts(cast(h11.Request, event).headers)
                if facts is not None:
                    self._process_request(cast(h11.Request, event), facts)
                    return
        elif kind is _RESPONSE:
            if (
                role is _SERVER
                and states[_SERVER] is SEND_RESPONSE
                and cstate.keep_alive
                and not cstate.pending_switch_proposals
                and states[_CLIENT] in _PLAIN
            ):
                facts = _head_facts(cast(h11.Response, event).headers)
                if facts is not None:
                    self._process_response(cast(h11.Response, event), facts)
                    return
        super()._process_event(role, event)

    def _process_request(self, event: h11.Request, facts: _Facts) -> None:
        close, upgrade, expect, chunked, length = facts
        if upgrade:
            # h11 records an upgrade proposal: its own code handles that exchange
            super()._process_event(_CLIENT, event)
            return
        cstate = self._cstate
        states = cstate.states
        states[_CLIENT] = SEND_BODY
        states[_SERVER] = SEND_RESPONSE
        version = event.http_version
        old = version < b"1.1"
        if close or old:
            cstate.process_keep_alive_disabled()  # nothing is DONE: no state changes
        self._request_method = event.method
        if self.their_role is _CLIENT:
            self.their_http_version = version
            if chunked:
                self._reader = _CHUNKED_READER()
            else:
                self._reader = _LENGTH_READER(int(length) if length is not None else 0)
            self._writer = _write_any_response
        else:
            if chunked:
                self._writer = _CHUNKED_WRITER()
            else:
                self._writer = _LENGTH_WRITER(int(length) if length is not None else 0)
            self._reader = _read_response_head
        if expect and not old:
            self.client_is_waiting_for_100_continue = True

    def _process_response(self, event: h11.Response, facts: _Facts) -> None:
        close, _, _, chunked, length = facts
        cstate = self._cstate
        states = cstate.states
        client_before = states[_CLIENT]
        states[_SERVER] = SEND_BODY
        version = event.http_version
        if close or version < b"1.1":
            cstate.process_keep_alive_disabled()  # a DONE client becomes MUST_CLOSE
        if self.their_role is _SERVER:
            self.their_http_version = version
        self.client_is_waiting_for_100_continue = False
        status = event.status_code
        method = self._request_method
        if (
            status == 204
            or status == 304
            or method == b"HEAD"
            or (method == b"CONNECT" and 200 <= status < 300)
        ):
            body: Any = _LENGTH_READER if self.our_role is _CLIENT else _LENGTH_WRITER
            io_object = body(0)
        elif chunked:
            io_object = _CHUNKED_READER() if self.our_role is _CLIENT else _CHUNKED_WRITER()
        elif length is not None:
            body = _LENGTH_READER if self.our_role is _CLIENT else _LENGTH_WRITER
            io_object = body(int(length))
        else:
            io_object = _HTTP10_READER() if self.our_role is _CLIENT else _HTTP10_WRITER()
        client_changed = states[_CLIENT] is not client_before
        if self.our_role is _CLIENT:
            self._reader = io_object
            if client_changed:
                self._writer = cast(Any, WRITERS).get((_CLIENT, states[_CLIENT]))
        else:
            self._writer = io_object
            if client_changed:
                self._reader = cast(Any, _FAST_READERS).get((_CLIENT, states[_CLIENT]))

    def start_next_cycle(self) -> None:
        cstate = self._cstate
        states = cstate.states
        if (
            states[_CLIENT] is DONE
            and states[_SERVER] is DONE
            and cstate.keep_alive
            and not cstate.pending_switch_proposals
            and not self.client_is_waiting_for_100_continue
        ):
            cstate.states = {_CLIENT: IDLE, _SERVER: IDLE}
            self._request_method = None
            if self.our_role is _SERVER:
                self._writer = _write_any_response
                self._reader = _read_request_head
            else:
                self._writer = _write_request
                self._reader = _read_response_head
            return
        super().start_next_cycle()

    # h11 looks readers up in its module-level READERS table whenever a state changes;
    # this is h11's own method reading from a copy of that table with the two head readers
    # swapped, so no extra call is made on every state change.
    def _respond_to_state_changes(
        self, old_states: dict[type[Sentinel], type[Sentinel]], event: Event | None = None
    ) -> None:
        states = self._cstate.states  # what the our_state/their_state properties read
        ours, theirs = self.our_role, self.their_role
        if states[ours] is not old_states[ours]:
            self._writer = self._get_io_object(ours, event, WRITERS)
        if states[theirs] is not old_states[theirs]:
            self._reader = self._get_io_object(theirs, event, _FAST_READERS)


class ClientConnection(_FastHeads):
    """``h11.Connection(h11.CLIENT)`` with the faster response-head reader."""

    def __init__(self, max_incomplete_event_size: int = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE) -> None:
        super().__init__(h11.CLIENT, max_incomplete_event_size)


class ServerConnection(_FastHeads):
    """``h11.Connection(h11.SERVER)``: faster request heads, no redundant re-validation."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        facts = _head_facts(response.headers)
        if not self._cstate.keep_alive or facts is None:
            return super()._clean_up_response_headers_for_sending(response)
        _, _, _, chunked, length = facts
        status = response.status_code
        if (
            status == 204
            or status == 304
            or (self._request_method == b"CONNECT" and 200 <= status < 300)
            or (not chunked and length is not None)
        ):
            return response  # framed by Content-Length: h11 would rebuild it unchanged
        version = self.their_http_version
        if not chunked and version is not None and version >= b"1.1":
            # no length and no Transfer-Encoding: h11 would add chunked; so do we
            full = [*response.headers._full_items, _CHUNKED]
            return h11.Response(
                headers=Headers(full),
                status_code=response.status_code,
                http_version=response.http_version,
                reason=response.reason,
                _parsed=True,
            )
        return super()._clean_up_response_headers_for_sending(response)
