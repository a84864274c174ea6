"""Who may sign in: a proxy's ``auth_required_users``, else ``OAUTH_ALLOWED_GITHUB_USERS``.

``None`` on the proxy means the global list; ``["*"]`` anywhere means every GitHub user;
an empty global list means nobody (the safe default: an edge with GitHub configured and no
list lets no one in). GitHub logins are compared without case, as GitHub does.
"""

from __future__ import annotations


def login_allowed(
    login: str, proxy_users: tuple[str, ...] | None, global_users: tuple[str, ...]
) -> bool:
    users = global_users if proxy_users is None else proxy_users
    if "*" in users:
        return True
    wanted = login.lower()
    return any(user.lower() == wanted for user in users)
