"""The h11 fast path moved to ``edge.h11compat``, beside the pipeline, where both legs
import it; this name remains only until ``edge.http1.connection`` imports from there."""

from edge.h11compat import (
    END_OF_MESSAGE,
    FullItems,
    ServerConnection,
    full_items,
    outgoing_response,
)

__all__ = ["END_OF_MESSAGE", "FullItems", "ServerConnection", "full_items", "outgoing_response"]
