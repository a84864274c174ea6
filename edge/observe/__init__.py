"""Beside the request path: what is learnt from each exchange (access log, observers)."""

from __future__ import annotations

from edge.observe.observer import ExchangeObserver, fan_out

__all__ = ["ExchangeObserver", "fan_out"]
