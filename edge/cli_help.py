"""The parts of the ``edge`` command line that only describe it: each group's examples,
the settings listed by ``edge serve --help``, shell completion (``edge completion
bash|zsh``), and the arguments of ``edge reverse-proxy``.

Imports nothing heavy: ``edge --help`` and ``edge version`` load this module and
:mod:`edge.settings`, never Redis, cryptography or msgspec.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator

from edge.settings import _VARIABLES, SECRET_NAMES, Settings

__all__ = [
    "DOCS",
    "add_completion_parser",
    "add_reverse_proxy_parser",
    "completion_script",
    "examples",
    "run_completion",
    "serve_settings_help",
]

DOCS = "docs/configuration.md and docs/operations.md (in the source tree or the package)"

_EXAMPLES: dict[str, tuple[str, ...]] = {
    "edge": (
        "edge reverse-proxy --from localhost:8080 --to http://127.0.0.1:9000",
        "edge serve --env-file config/edge.env --seed config/example.json",
        "edge check --env-file config/edge.env",
        "edge --profile prod proxy list",
        "edge completion bash > ~/.local/share/bash-completion/completions/edge",
    ),
    "serve": (
        "edge serve --env-file config/edge.env",
        "edge serve --env-file config/edge.env --seed config/example.json --seed-replace",
    ),
    "check": (
        "edge check --env-file config/edge.env",
        "edge check --env-file config/edge.env --seed config/example.json",
    ),
    "cert": (
        "edge cert import app --cert fullchain.pem --key privkey.pem",
        "edge cert list",
        "edge cert show app --pem",
        "edge cert delete app",
    ),
    "reverse-proxy": (
        "edge reverse-proxy --from localhost:8080 --to 127.0.0.1:9000",
        "edge reverse-proxy --from app.example.com:8443 --to http://127.0.0.1:9000 --https",
        "edge reverse-proxy --from app.example.com:8443 --to http://127.0.0.1:9000 "
        "--https --cert fullchain.pem --key privkey.pem",
    ),
    "completion": (
        "edge completion bash > ~/.local/share/bash-completion/completions/edge",
        "edge completion zsh > ~/.zfunc/_edge   # with fpath+=~/.zfunc before compinit",
    ),
    "login": ("edge login --api-url http://127.0.0.1:9000", "edge login --profile prod"),
    "logout": ("edge logout", "edge logout --profile prod"),
    "config": ("edge config show", "edge config set api_url http://127.0.0.1:9000"),
    "token": ("edge token list", "edge token create ci --email ci@example.com"),
    "oauth": (
        "edge oauth status",
        "edge oauth tokens list --user octocat",
        "edge oauth tokens revoke JTI",
        "edge oauth routes-setup",
    ),
    "proxy": (
        "edge proxy create app.example.com --target http://127.0.0.1:9000",
        "edge proxy update app.example.com --no-http --header X-Env=prod",
        "edge proxy update app.example.com --disable",
        "edge proxy list -o json",
    ),
    "route": (
        "edge route create api --path /api --target-type port --target 9001",
        "edge route update api --disable",
        "edge route list --scope global",
    ),
    "service": (
        "edge service create billing --url https://billing.internal:8443",
        "edge service list",
    ),
    "certs": ("edge certs list", "edge certs show app", "edge certs delete app"),
    "resource": (
        "edge resource create https://mcp.example.com/mcp --name Tools --scope mcp:read",
        "edge resource list",
    ),
    "user": ("edge user list", "edge user show alice"),
    "project": ("edge project list",),
    "app": ("edge app create Web --project shop --id web", "edge app list --project shop"),
    "app-resource": (
        "edge app-resource create pg --app web --host 10.0.0.5 --port 5432 --internal-port 9187",
        "edge app-resource list",
    ),
    "database": (
        "edge database create main --project shop --engine postgres --host pg.internal",
        "edge database list",
    ),
    "logs": (
        "edge logs --errors --hours 2",
        "edge logs --host app.example.com --status 5xx -o json",
        "edge logs stats",
        "edge logs follow --ip 203.0.113.7",
    ),
    "pat": (
        "edge pat list --project web --user alice",
        "edge pat create laptop --project web --user alice --expires-in 30d",
    ),
}


def examples(name: str) -> str | None:
    """The ``examples:`` block of a command's help (None: no examples for it)."""
    lines = _EXAMPLES.get(name)
    if not lines:
        return None
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# ---------------------------------------------------------------------------- serve --help

# variable -> group title; a setting not listed here appears under "other"
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "listeners",
        (
            "SERVER_HOST",
            "HTTP_PORT",
            "HTTPS_PORT",
            "PROXY_PROTOCOL_PORT",
            "PROXY_PROTOCOL_TLS_PORT",
            "PROXY_TRUSTED_CIDRS",
            "PROXY_PROTOCOL_TIMEOUT",
            "LISTEN_BACKLOG",
            "SHARE_PORTS",
        ),
    ),
    ("admin API", ("API_HOST", "API_PORT", "API_HOSTNAME", "ADMIN_TOKEN")),
    (
        "Redis and state",
        (
            "REDIS_URL",
            "REDIS_USERNAME",
            "REDIS_PASSWORD",
            "EDGE_STATE_DIR",
            "EDGE_SEED_FILE",
            "EDGE_SEED_REPLACE",
            "CONFIG_RESYNC_INTERVAL",
        ),
    ),
    (
        "TLS",
        (
            "TLS_HANDSHAKE_TIMEOUT",
            "TLS_STRICT_SNI",
            "SELF_SIGNED_CN",
            "SELF_SIGNED_DAYS",
            "RSA_KEY_SIZE",
        ),
    ),
    (
        "upstreams",
        (
            "PROXY_CONNECT_TIMEOUT",
            "PROXY_REQUEST_TIMEOUT",
            "PROXY_TOTAL_TIMEOUT",
            "FORWARD_AUTH_TIMEOUT",
            "UPSTREAM_IDLE_LIMIT",
            "UPSTREAM_IDLE_TIMEOUT",
        ),
    ),
    (
        "client timeouts and limits",
        (
            "CLIENT_HEADER_TIMEOUT",
            "CLIENT_BODY_TIMEOUT",
            "KEEPALIVE_TIMEOUT",
            "MAX_HEADER_BYTES",
            "MAX_HEADER_COUNT",
            "MAX_REQUEST_LINE",
            "LINGER_TIMEOUT",
            "LINGER_TIME",
        ),
    ),
    ("shutdown", ("DRAIN_TIMEOUT", "DRAIN_IDLE_GRACE", "DRAIN_WEBSOCKET_GRACE")),
    ("processes and logs", ("EDGE_WORKERS", "EDGE_LOOP", "LOG_LEVEL", "LOG_FORMAT")),
    (
        "request log in redis",
        (
            "REQUEST_LOG",
            "EDGE_NODE_NAME",
            "LOG_BATCH_MS",
            "LOG_RETENTION_HOURS",
            "LOG_SLOW_MS",
            "LOG_STREAM_MAX",
            "LOG_QUEUE_SIZE",
            "LOG_MAX_ENTRIES",
        ),
    ),
    ("access tokens", ("PAT_VERIFY_CACHE_TTL", "PAT_LAST_USED_FLUSH_INTERVAL")),
    (
        "port-forward tunnels",
        (
            "PORT_FORWARD_MAX_SESSIONS",
            "PORT_FORWARD_MAX_SESSION_SECONDS",
            "PORT_FORWARD_PING_INTERVAL",
            "PORT_FORWARD_CONNECT_TIMEOUT",
            "PORT_FORWARD_MAX_MESSAGE",
            "PORT_FORWARD_SLOT_SECONDS",
        ),
    ),
)

_SPECIAL_DEFAULTS = {
    "EDGE_WORKERS": "the CPUs this process may use",
    "REDIS_URL": "unset: the embedded Redis in EDGE_STATE_DIR",
    "LOG_FORMAT": "console on a terminal, else json",
    "EDGE_NODE_NAME": "the host's name",
    "ADMIN_TOKEN": "unset",
}


def _default(name: str) -> str:
    if name in _SPECIAL_DEFAULTS:
        return _SPECIAL_DEFAULTS[name]
    field_name = _VARIABLES[name][0]
    field = next(f for f in dataclasses.fields(Settings) if f.name == field_name)
    if name in SECRET_NAMES or field.default is dataclasses.MISSING:
        return "unset"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grouped_settings() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Every setting as (group title, [(variable, default)]), each setting exactly once."""
    listed: set[str] = set()
    for title, names in _GROUPS:
        present = [n for n in names if n in _VARIABLES]
        listed.update(present)
        if present:
            yield title, [(n, _default(n)) for n in present]
    rest = [n for n in _VARIABLES if n not in listed]
    if rest:
        yield "other", [(n, _default(n)) for n in rest]


def serve_settings_help() -> str:
    """The settings part of ``edge serve --help``: grouped, with defaults, and the docs."""
    lines = ["settings (environment variables or --env-file lines) and their defaults:"]
    for title, entries in grouped_settings():
        lines.append(f"  {title}:")
        lines.extend(f"    {name:<30} {default}" for name, default in entries)
    lines.append(f"\nEach setting is described in {DOCS}.")
    lines.append("\n" + (examples("serve") or ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- completion


def add_completion_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for the shell: commands, subcommands and "
        "options of this edge.",
        epilog=examples("completion"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=("bash", "zsh"))


def _tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str], list[str]]]:
    """(command path, its subcommands, its options) for ``parser`` and every subparser."""
    subs: dict[str, argparse.ArgumentParser] = {}
    options: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        elif action.help is not argparse.SUPPRESS:
            options.extend(o for o in action.option_strings if o.startswith("--"))
    yield path, sorted(subs), sorted(set(options))
    for name, child in subs.items():
        yield from _tree(child, (*path, name))


def _case(function: str, entries: dict[str, list[str]]) -> str:
    lines = [f"{function}() {{", '  case "$1" in']
    for path, words in sorted(entries.items()):
        if words:
            lines.append(f"    {_quote(path)}) echo {_quote(' '.join(words))} ;;")
    lines += ["  esac", "}"]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


_BASH = r"""
_edge() {
  local cur="${COMP_WORDS[COMP_CWORD]}" path="" word i
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${COMP_WORDS[i]}"
    [[ "$word" == -* ]] && continue
    if [[ " $(_edge_commands "$path") " == *" $word "* ]]; then path="${path:+$path }$word"; fi
  done
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_edge_options "$path")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_edge_commands "$path")" -- "$cur"))
  fi
}
complete -o default -F _edge edge
"""

_ZSH = r"""
_edge() {
  local path="" word i
  for ((i = 2; i < CURRENT; i++)); do
    word="${words[i]}"
    [[ "$word" == -* ]] && continue
    if [[ " $(_edge_commands "$path") " == *" $word "* ]]; then path="${path:+$path }$word"; fi
  done
  if [[ "${words[CURRENT]}" == -* ]]; then
    compadd -- ${=$(_edge_options "$path")}
  else
    compadd -- ${=$(_edge_commands "$path")}
    _files
  fi
}
compdef _edge edge
"""


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for ``shell`` (``bash`` or ``zsh``) of the command line
    ``parser`` describes: subcommands by position, options of the command typed so far."""
    commands: dict[str, list[str]] = {}
    options: dict[str, list[str]] = {}
    for path, subs, opts in _tree(parser):
        commands[" ".join(path)] = subs
        options[" ".join(path)] = opts
    head = "#compdef edge\n" if shell == "zsh" else ""
    head += "# edge shell completion: generated by 'edge completion " + shell + "'\n"
    body = _case("_edge_commands", commands) + "\n" + _case("_edge_options", options)
    return head + body + (_ZSH if shell == "zsh" else _BASH)


def run_completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    sys.stdout.write(completion_script(parser, args.shell))
    return 0


# ---------------------------------------------------------------------------- reverse-proxy


def add_reverse_proxy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "reverse-proxy",
        help="serve one proxy, nothing else to set up",
        description="Serve HOST (on PORT) by proxying every request to URL, with a private\n"
        "embedded Redis in a temporary state directory (removed on exit): no env file,\n"
        "no seed, no Redis to set up. The PROXY protocol listeners stay off; the admin\n"
        "API listens on a free loopback port.",
        epilog=examples("reverse-proxy"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="HOST[:PORT]",
        help="the host name served, and the port (default 80, or 443 with --https)",
    )
    parser.add_argument(
        "--to", required=True, metavar="URL", help="the upstream (http:// when no scheme)"
    )
    parser.add_argument(
        "--https",
        action="store_true",
        help="serve TLS on PORT: with --cert/--key, or else the edge's self-signed certificate",
    )
    parser.add_argument("--cert", metavar="PEM", help="certificate chain for --https")
    parser.add_argument("--key", metavar="PEM", help="its private key (unencrypted)")
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="with --https: plain HTTP (redirected to HTTPS) on this port (default: a free one)",
    )
    parser.add_argument(
        "--bind", default="0.0.0.0", metavar="ADDRESS", help="address to listen on (0.0.0.0)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
