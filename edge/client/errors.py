"""The one exception the client command line reports: a message and an exit status."""

from __future__ import annotations

__all__ = ["ClientError", "one_line"]


def one_line(text: str) -> str:
    """``text`` on one line: control characters (newlines included) become spaces."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


class ClientError(Exception):
    """A failure printed as ``edge: {message}`` on stderr, exiting with ``status``.

    Status 1 is a failure at run time (the edge is unreachable, the API refused the
    request); 2 is a usage or settings problem (a bad flag value, a bad config file).
    """

    def __init__(self, message: str, status: int = 1, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = one_line(message)
        self.status = status
        # the edge could not be reached or answered 502/503/504: trying again later may
        # work (what a long-running command such as `edge logs follow` does)
        self.transient = transient
