"""When a certificate is renewed: pure arithmetic on its lifetime, or the CA's window.

Without renewal information the time is ``RENEWAL_THRESHOLD_DAYS`` before expiry or two
thirds into the certificate's actual lifetime, whichever comes first (lifetimes shrink to
45 days: a fixed 30 days would renew those after a third of their life), moved earlier by
a random part of up to 2% of the lifetime (at most 12 hours) so that a fleet of
certificates issued together does not renew at one instant. With renewal information
(RFC 9773) it is a random time inside the CA's suggested window. Never earlier than
``min_age`` after the certificate's start, so a threshold longer than the lifetime cannot
renew in a loop.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

__all__ = ["by_lifetime", "in_window"]

JITTER_FRACTION = 0.02
JITTER_MAX = timedelta(hours=12)


def by_lifetime(
    not_before: datetime,
    not_after: datetime,
    threshold: timedelta,
    min_age: timedelta,
    rng: random.Random | None = None,
) -> datetime:
    rng = rng or random.Random()
    lifetime = not_after - not_before
    due = min(not_after - threshold, not_before + lifetime * 2 / 3)
    jitter = min(lifetime * JITTER_FRACTION, JITTER_MAX) * rng.random()
    return max(due - jitter, not_before + min_age)


def in_window(start: datetime, end: datetime, rng: random.Random | None = None) -> datetime:
    rng = rng or random.Random()
    span = max((end - start).total_seconds(), 0.0)
    return start + timedelta(seconds=span * rng.random())
