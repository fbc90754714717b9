"""A small OpenID Connect / Keycloak-compatible login server on 127.0.0.1, for tests and the security probe.

It serves what MONAI Label's authentication asks a Keycloak realm for:

- ``GET <realm>``: ``{"realm", "public_key"}`` (the RSA public key, base64 DER, as Keycloak publishes it);
- ``GET <realm>/.well-known/openid-configuration``: ``{"issuer", "token_endpoint", ...}``;
- ``POST <realm>/protocol/openid-connect/token`` with ``grant_type=password``, ``username``, ``password``:
  ``{"access_token", "token_type": "Bearer", "expires_in"}`` for a configured user, 401 otherwise.

Tokens are RS256 JWTs signed with a key made at start, carrying ``preferred_username``, ``email``, ``name``,
``realm_access.roles``, ``iss``, ``iat`` and ``exp``, like Keycloak's. :meth:`TokenIssuer.token` mints one
directly (any roles, any expiry, or signed with another key to test refusals).

Usage::

    with TokenIssuer(users={"ann": ("pw", ["monailabel-annotator"])}) as issuer:
        env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": issuer.realm_uri}
        token = issuer.token("ann", ["monailabel-user"])

As a script it runs until interrupted and prints the realm address and one token with every MONAI Label
role (for ``scripts/probe_security.py --token``)::

    python tests/token_issuer.py --port 8180
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALL_ROLES = ("monailabel-admin", "monailabel-reviewer", "monailabel-annotator", "monailabel-user")
REALM = "monailabel"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TokenIssuer:
    """The login server (see the module docstring).

    Args:
        users: ``{username: (password, roles)}`` accepted by the token endpoint.
        port: TCP port on 127.0.0.1 (0: a free one).
    """

    def __init__(self, users: Mapping[str, tuple[str, Iterable[str]]] | None = None, port: int = 0) -> None:
        self.users = {u: (p, list(r)) for u, (p, r) in (users or {}).items()}
        self.key = new_key()
        self.requests: list[str] = []  # paths asked for, in order
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                issuer.requests.append(self.path)
                if self.path == issuer.realm_path:
                    self._send(200, {"realm": REALM, "public_key": issuer.public_key_b64()})
                elif self.path == issuer.realm_path + "/.well-known/openid-configuration":
                    self._send(200, {"issuer": issuer.realm_uri, "token_endpoint": issuer.token_uri,
                                     "grant_types_supported": ["password"],
                                     "id_token_signing_alg_values_supported": ["RS256"]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                issuer.requests.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if self.path != issuer.realm_path + "/protocol/openid-connect/token":
                    self._send(404, {"error": "not found"})
                    return
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                known = issuer.users.get(user)
                if form.get("grant_type", [""])[0] != "password" or known is None or known[0] != password:
                    self._send(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                    return
                self._send(200, {"access_token": issuer.token(user, known[1]), "token_type": "Bearer",
                                 "expires_in": 300})

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()

    @property
    def realm_path(self) -> str:
        return f"/realms/{REALM}"

    @property
    def realm_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.realm_path}"

    @property
    def token_uri(self) -> str:
        return f"{self.realm_uri}/protocol/openid-connect/token"

    def public_key_b64(self) -> str:
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def token(self, username: str = "tester", roles: Iterable[str] = ALL_ROLES, expires_in: float = 300.0,
              key: rsa.RSAPrivateKey | None = None) -> str:
        """A signed access token for ``username`` with ``roles`` (another ``key`` makes a forged one)."""
        now = int(time.time())
        claims = {
            "iss": self.realm_uri, "iat": now, "exp": int(now + expires_in), "typ": "Bearer",
            "preferred_username": username, "email": f"{username}@example.org", "name": username.title(),
            "realm_access": {"roles": list(roles)},
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a test login server on 127.0.0.1 until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--expires", type=float, default=3600.0, help="lifetime of the printed token (s)")
    args = parser.parse_args(argv)
    issuer = TokenIssuer(port=args.port)
    print(f"MONAI_LABEL_AUTH_REALM_URI={issuer.realm_uri}", flush=True)
    print(f"TOKEN={issuer.token('probe', ALL_ROLES, expires_in=args.expires)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        issuer.close()


if __name__ == "__main__":
    main()
