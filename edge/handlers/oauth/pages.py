"""The few HTML pages a browser sees: consent, refusal, errors.

Every value is escaped; pages are never framed (clickjacking on a consent button) and load
nothing (``default-src 'none'``), and no page is cached.
"""

from __future__ import annotations

from html import escape

from edge.http1.exchange import Exchange, Headers

HTML = b"text/html; charset=utf-8"
PAGE_HEADERS: Headers = [
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;"
    "color:#222}h1{font-size:1.4em}code{background:#f3f3f3;padding:0 .2em}"
    "button{font-size:1em;padding:.4em 1.2em;margin-right:.6em}"
)


def _page(title: str, body: str) -> bytes:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>\n"
    ).encode()


def send(ex: Exchange, status: int, title: str, body: str, headers: Headers | None = None) -> None:
    if ex.finished:
        return
    ex.respond(status, _page(title, body), HTML, [*PAGE_HEADERS, *(headers or [])])


def error_page(ex: Exchange, status: int, title: str, message: str) -> None:
    """An error the browser cannot be sent back to the client with (bad client, bad
    redirect URI, expired login): a page, never a redirect."""
    send(ex, status, title, f"<p>{escape(message)}</p>")


def refused_page(ex: Exchange, login: str, where: str) -> None:
    send(
        ex,
        403,
        "Access denied",
        f"<p>The GitHub account <code>{escape(login)}</code> is not allowed to sign in "
        f"to {escape(where)}.</p><p>Ask an administrator to add it, or sign in to GitHub "
        "with another account and try again.</p>",
    )


def consent_page(
    ex: Exchange,
    *,
    action: str,
    request_id: str,
    csrf: str,
    client_name: str,
    client_id: str,
    redirect_host: str,
    scopes: tuple[str, ...],
    login: str,
    headers: Headers,
) -> None:
    items = "".join(f"<li><code>{escape(s)}</code></li>" for s in scopes) or "<li>(none)</li>"
    body = (
        f"<p>Signed in as <code>{escape(login)}</code>.</p>"
        f"<p><strong>{escape(client_name)}</strong> (<code>{escape(client_id)}</code>) "
        f"asks to act for you. After you approve, you will be sent to "
        f"<code>{escape(redirect_host)}</code>.</p>"
        f"<p>It asks for:</p><ul>{items}</ul>"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="request_id" value="{escape(request_id)}">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
        '<button type="submit" name="decision" value="approve">Approve</button>'
        '<button type="submit" name="decision" value="deny">Deny</button>'
        "</form>"
    )
    send(ex, 200, "Authorize access", body, headers)
