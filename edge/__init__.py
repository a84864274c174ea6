"""edge: an HTTP edge server configured live from Redis."""

__version__ = "0.1.0"
