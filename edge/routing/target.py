"""Where a request goes: an upstream origin and an optional base path."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlsplit


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash)
    url: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port == default else f"{host}:{self.port}"
        return text.encode("ascii")


@lru_cache(maxsize=65536)
def parse_target(url: str) -> Target:
    """Parse a validated upstream URL (the schema already refused bad ones)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if scheme == "https" else 80)
    # percent-encode anything outside HTTP's visible ASCII: the path goes on the wire as is
    base = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
    return Target(scheme, host, port, base, url)
