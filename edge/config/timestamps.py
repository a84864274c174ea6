"""The times a configuration document may carry (``created_at``, ``updated_at``).

A leaf (it imports nothing of edge) so that :mod:`edge.config.schema` and
:mod:`edge.config.targets`, which schema imports, check them alike.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TypeAlias

__all__ = ["Timestamp", "validate_timestamp"]

#: an ISO 8601 string or a Unix epoch number (or none)
Timestamp: TypeAlias = str | float | None


def validate_timestamp(value: str | float) -> str | float:
    """``value`` if it is an ISO 8601 time or a finite, non-negative epoch number;
    ValueError otherwise."""
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"must be an ISO 8601 timestamp or a Unix epoch number, got {value!r}"
            ) from None
        return value
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be an ISO 8601 timestamp or a Unix epoch number, got {value!r}")
    return value
