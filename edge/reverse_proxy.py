"""``edge reverse-proxy --from HOST[:PORT] --to URL``: one proxy, nothing else to set up.

The edge runs as ``edge serve`` would, with settings made here rather than read from an
env file: a private embedded Redis in a temporary state directory (removed on exit), the
proxy written there as a seed (with the certificate of ``--cert``/``--key``), the PROXY
protocol listeners off and the admin API on a free loopback port. Edge settings found in
the environment are ignored (they are meant for ``edge serve``), but the log ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from edge.settings import ENV_NAMES

__all__ = ["ReverseProxyError", "parse_from", "parse_to", "run"]

KEPT = frozenset({"LOG_LEVEL", "LOG_FORMAT", "EDGE_LOOP", "ACCESS_LOG_SKIP_PATHS"})


class ReverseProxyError(ValueError):
    """A bad argument; the message names it."""


def parse_from(text: str, https: bool) -> tuple[str, int]:
    """``HOST[:PORT]`` as the (normalised) host name and the port (80, or 443 for HTTPS)."""
    from edge.config.addresses import normalize_hostname

    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = port_text, ""
    if "://" in text:
        raise ReverseProxyError(f"--from {text!r}: a host name and a port, not a URL")
    try:
        port = int(port_text) if port_text else (443 if https else 80)
    except ValueError:
        raise ReverseProxyError(f"--from {text!r}: {port_text!r} is not a port") from None
    if not 1 <= port <= 65535:
        raise ReverseProxyError(f"--from {text!r}: the port must be 1 to 65535")
    try:
        return normalize_hostname(host), port
    except ValueError as exc:
        raise ReverseProxyError(f"--from {text!r}: {exc}") from None


def parse_to(text: str) -> str:
    """The upstream URL (``http://`` added when there is no scheme)."""
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReverseProxyError(f"--to {text!r}: expected http://HOST[:PORT] or https://...")
    return url


def _seed_keys(args: argparse.Namespace, host: str, target: str) -> dict[str, Any]:
    proxy: dict[str, Any] = {"hostname": host, "target_url": target}
    keys: dict[str, Any] = {}
    if args.https:
        proxy["enable_http"] = False  # plain HTTP is redirected to HTTPS
        if args.cert or args.key:
            keys.update(_cert_keys(args, host))
    keys[f"proxy:{host}"] = proxy
    return keys


def _cert_keys(args: argparse.Namespace, host: str) -> dict[str, Any]:
    if not (args.cert and args.key):
        raise ReverseProxyError("--cert and --key go together")
    from edge.certs.repository import prepare
    from edge.config.schema import ConfigError
    from edge.tls.material import MaterialError

    texts = []
    for option, path in (("--cert", args.cert), ("--key", args.key)):
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ReverseProxyError(f"{option} {path}: {exc}") from None
    name = host.replace("*", "_")
    try:
        prepared = prepare(name, texts[0], texts[1], [host])
    except (ConfigError, MaterialError, ValueError) as exc:
        raise ReverseProxyError(f"--cert {args.cert}: {exc}") from None
    return {f"cert:{name}": prepared.document, f"cert:domain:{host}": name}


def _environment(
    args: argparse.Namespace, host: str, port: int, state: Path, seed: Path, env: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k not in ENV_NAMES or k in KEPT}
    env.update(
        {
            "EDGE_STATE_DIR": str(state),
            "EDGE_SEED_FILE": str(seed),
            "SERVER_HOST": args.bind,
            "HTTPS_PORT": str(port) if args.https else "0",
            "HTTP_PORT": str(args.http_port or 0) if args.https else str(port),
            "PROXY_PROTOCOL_PORT": "0",
            "PROXY_PROTOCOL_TLS_PORT": "0",
            "API_HOST": "127.0.0.1",
            "API_PORT": "0",
        }
    )
    if args.https and "*" not in host:
        env["SELF_SIGNED_CN"] = host
    return env


class Serve(Protocol):
    def __call__(self, env: dict[str, str], env_file: str | None, *, workers: int) -> int: ...


def run(args: argparse.Namespace, serve: Serve) -> int:
    """Run the edge for ``args`` with ``serve`` (:func:`edge.cli.serve`); its exit status
    (2: a bad argument)."""
    import os

    try:
        host, port = parse_from(args.from_, args.https)
        target = parse_to(args.to)
        if (args.cert or args.key) and not args.https:
            raise ReverseProxyError("--cert and --key need --https")
        keys = _seed_keys(args, host, target)
    except ReverseProxyError as exc:
        print(f"edge reverse-proxy: {exc}", file=sys.stderr)
        return 2
    # short: the Redis socket path lives in it (at most 107 bytes)
    state = Path(tempfile.mkdtemp(prefix="edge-rp-"))
    try:
        state.chmod(0o700)
        seed = state / "seed.json"
        fd = os.open(seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold a key
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"keys": keys}, out)
        env = _environment(args, host, port, state, seed, dict(os.environ))
        scheme = "https" if args.https else "http"
        print(
            f"edge reverse-proxy: {scheme}://{host}:{port} -> {target} (Ctrl-C stops)",
            file=sys.stderr,
        )
        return serve(env, None, workers=args.workers)
    finally:
        shutil.rmtree(state, ignore_errors=True)
