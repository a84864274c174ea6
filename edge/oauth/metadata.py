"""The authorization server's metadata (RFC 8414), also served as OpenID discovery.

The MCP specification (2025-11-25) makes clients try, for an issuer with a path, the
path-suffixed forms (``/.well-known/oauth-authorization-server/{path}``,
``/.well-known/openid-configuration/{path}`` and ``{path}/.well-known/openid-configuration``);
every form answers the same document here (the issuer has no path of its own).
"""

from __future__ import annotations

from typing import Any

OAUTH_METADATA = "/.well-known/oauth-authorization-server"
OPENID_METADATA = "/.well-known/openid-configuration"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


def is_metadata_path(path: str) -> bool:
    return (
        path in (OAUTH_METADATA, OPENID_METADATA)
        or path.startswith((OAUTH_METADATA + "/", OPENID_METADATA + "/"))
        or path.endswith(OPENID_METADATA)
    )


def server_metadata(issuer: str, scopes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "registration_endpoint": f"{issuer}/register",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "scopes_supported": list(scopes),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
        ],
        "resource_indicators_supported": True,
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
        # OpenID discovery's required members, for clients that read that document: no ID
        # tokens are issued (this is an OAuth server with GitHub as the identity provider)
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
