"""The error hierarchy: every ``EdgeError`` in edge/ says status, code, whose fault, close code.

The walk imports every module of edge/, so a class added anywhere is checked without being
listed here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Iterator

import pytest
from wsproto.frame_protocol import LOCAL_ONLY_CLOSE_REASONS, CloseReason

import edge
from edge.api import http as api_http
from edge.certs import repository
from edge.errors import (
    ClientError,
    EdgeError,
    Fault,
    NoRoute,
    NotImplementedByEdge,
    ServiceUnavailable,
    UpstreamError,
    WsClose,
    code_for,
)

_CODE = re.compile(r"\A[a-z][a-z0-9_]*\Z")


def _import_all() -> None:
    for module in pkgutil.walk_packages(edge.__path__, "edge."):
        if module.name != "edge.__main__":
            importlib.import_module(module.name)


def _walk(cls: type[EdgeError]) -> Iterator[type[EdgeError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _walk(sub)


_import_all()
ALL: list[type[EdgeError]] = [EdgeError, *sorted(set(_walk(EdgeError)), key=str)]


def _owner(cls: type, attribute: str) -> type:
    return next(c for c in cls.__mro__ if attribute in vars(c))


def test_the_walk_sees_errors_of_every_area() -> None:
    modules = {cls.__module__ for cls in ALL}
    for expected in ("edge.errors", "edge.api.http", "edge.certs.repository"):
        assert expected in modules
    assert len(ALL) > 30


@pytest.mark.parametrize("cls", ALL, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_is_complete_and_consistent(cls: type[EdgeError]) -> None:
    assert 400 <= cls.status <= 599
    assert _CODE.match(cls.code), cls.code
    assert cls.public_message and "\n" not in cls.public_message
    # 4xx if and only if the client is at fault; the log level follows
    assert (cls.status < 500) == (cls.peer_fault is Fault.CLIENT)
    assert isinstance(cls.peer_fault, Fault)
    # the close code is one a WebSocket peer accepts on the wire
    assert isinstance(cls.ws_close, WsClose)
    code = int(cls.ws_close)
    assert code in {int(reason) for reason in CloseReason}
    assert code not in {int(reason) for reason in LOCAL_ONLY_CLOSE_REASONS}
    # a class that changed the status also has the code that goes with it
    assert issubclass(_owner(cls, "code"), _owner(cls, "status"))
    if cls.status == 401:  # RFC 9110 section 15.5.2: a 401 carries a challenge
        fields = [name for name, _ in cls.headers(cls.__new__(cls))]
        assert fields.count(b"www-authenticate") == 1


# the OAuth server's errors carry RFC 6749's codes (invalid_grant...), not the status's
OWN_CODES = ("edge.api.", "edge.certs.", "edge.oauth.", "edge.handlers.oauth.")
REQUEST_PATH = [c for c in ALL if not c.__module__.startswith(OWN_CODES)]


@pytest.mark.parametrize("cls", REQUEST_PATH, ids=lambda c: c.__qualname__)
def test_request_path_codes_are_those_clients_always_got(cls: type[EdgeError]) -> None:
    # the edge's JSON body carried the status's standard code before errors had their own
    assert cls.code == code_for(cls.status)


# every code the admin API answered before the hierarchy was one
API_CODES = {
    api_http.ApiError: (500, "internal_error"),
    api_http.InvalidBody: (400, "invalid_body"),
    api_http.Unauthorized: (401, "unauthorized"),
    api_http.Forbidden: (403, "forbidden"),
    api_http.NotFound: (404, "not_found"),
    api_http.MethodNotAllowed: (405, "method_not_allowed"),
    api_http.Conflict: (409, "conflict"),
    api_http.PayloadTooLarge: (413, "payload_too_large"),
    api_http.UnsupportedMediaType: (415, "unsupported_media_type"),
    api_http.RedisUnavailable: (503, "redis_unavailable"),
    api_http.Busy: (503, "auth_overloaded"),
}


@pytest.mark.parametrize("cls", list(API_CODES), ids=lambda c: c.__qualname__)
def test_api_codes_unchanged(cls: type[EdgeError]) -> None:
    assert (cls.status, cls.code) == API_CODES[cls]


def test_subclass_setting_only_a_status_gets_its_code_fault_and_close_code() -> None:
    class Gone(UpstreamError):
        status = 410

    class Teapot(NoRoute):
        status = 418

    class Timeout(UpstreamError):
        status = 504

    class Unprocessable(ClientError):
        status = 422
        code = "own_code"

    assert (Gone.code, Gone.peer_fault, Gone.ws_close) == (
        "gone",
        Fault.CLIENT,
        WsClose.POLICY_VIOLATION,
    )
    # a fault that fits the new status is kept: still the upstream's, still its close code
    assert (Teapot.code, Teapot.peer_fault) == ("im_a_teapot", Fault.CLIENT)
    assert (Timeout.code, Timeout.peer_fault, Timeout.ws_close) == (
        "gateway_timeout",
        Fault.UPSTREAM,
        WsClose.INTERNAL_ERROR,
    )
    assert Unprocessable.code == "own_code"


def test_one_raise_overrides_status_code_message_field() -> None:
    err = ClientError("h11: line too long", status=414)
    assert (err.status, err.code, err.public_message) == (414, "uri_too_long", "bad request")
    assert err.peer_fault is Fault.CLIENT and err.close_connection
    assert ClientError.status == 400 and ClientError.code == "bad_request"  # class untouched

    moved = UpstreamError(status=400)
    assert (moved.code, moved.peer_fault, moved.ws_close) == (
        "bad_request",
        Fault.CLIENT,
        WsClose.POLICY_VIOLATION,
    )
    named = NoRoute("detail", code="proxy_gone", public_message="gone", field="host")
    assert (named.status, named.code, named.public_message, named.field) == (
        404,
        "proxy_gone",
        "gone",
        "host",
    )
    assert EdgeError().field is None


def test_exception_text_is_the_detail_never_the_public_override() -> None:
    assert str(NoRoute("host x rejected", public_message="disabled")) == "host x rejected"
    # no detail: the class's public message, as before overrides existed
    assert str(ClientError(public_message="bare LF line ending")) == "bad request"


def test_log_level_follows_the_fault() -> None:
    assert NoRoute().log_level == logging.INFO
    assert UpstreamError().log_level == logging.WARNING
    assert ServiceUnavailable().log_level == logging.WARNING
    assert EdgeError().log_level == logging.WARNING
    # 501: refused like a malformed request, but the lack is ours
    assert NotImplementedByEdge().log_level == logging.WARNING
    assert NotImplementedByEdge.close_connection


def test_certificate_repository_errors_keep_their_message_for_the_cli() -> None:
    err = repository.CertNotFound("cert:nope does not exist")
    assert isinstance(err, EdgeError)
    assert err.message == str(err) == "cert:nope does not exist"
    # an HTTP client gets what the API answers for a missing certificate, not the key name
    assert (err.status, err.code, err.public_message) == (
        404,
        "certificate_not_found",
        "no certificate with this name",
    )
    assert repository.InvalidCertName("x").status == 404
    reserved = repository.ReservedCertName("invalid certificate name 'domain:x'")
    assert isinstance(reserved, repository.InvalidCertName)
    assert (reserved.status, reserved.peer_fault) == (400, Fault.CLIENT)
    for cls in (repository.CertExists, repository.NotACertRecord, repository.CertConflict):
        assert cls.status == 409


def test_code_for_is_the_reason_phrase() -> None:
    assert code_for(404) == "not_found"
    assert code_for(414) == "uri_too_long"
    assert code_for(500) == "internal_error"
    assert code_for(421) == "misdirected_request"
    assert code_for(599) == "599"
