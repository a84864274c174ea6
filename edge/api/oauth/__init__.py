"""``/api/v1/oauth``: the authorization server's admin surface (clients, tokens, browser
sessions, signing keys)."""
