"""The JSON API served on ``API_PORT`` (and on ``API_HOSTNAME`` through public listeners).

The implementation lives in :mod:`edge.api` (router, bearer auth, token endpoints); this
module keeps the handler's place in the pipeline (``handlers/``) and its import path.
"""

from __future__ import annotations

from edge.api.app import ApiApp, default_groups

__all__ = ["ApiApp", "default_groups"]
