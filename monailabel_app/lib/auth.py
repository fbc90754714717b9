"""Who may call what: the roles of MONAI Label's own endpoints, applied to every route the app adds.

Every route handler of the app takes ``user: User = Depends(RBAC(<role>))`` as its first argument, the
dependency MONAI Label's endpoints use (``monailabel/endpoints/*.py``). With
``MONAI_LABEL_AUTH_ENABLE=true`` a request without a valid bearer token is answered 401 and one without the
role 403; without auth every request acts as MONAI Label's default user, who holds every role.

| role | may |
| --- | --- |
| ``READ`` (``monailabel-user``) | read: info, labels, CSV, the map, classification, training status, downloads |
| ``ANNOTATE`` (``monailabel-annotator``) | label slices, ask for suggestions (they reserve slices), upload studies |
| ``TRAIN`` (``monailabel-admin``, or ``MONAI_LABEL_AUTH_ROLE_TRAINER``) | start / stop training, batch inference |
| ``ADMIN`` (``monailabel-admin``) | delete studies and generic labels |

Role names follow MONAI Label's settings (``MONAI_LABEL_AUTH_ROLE_USER`` and so on).

**A fix to MONAI Label 0.8.5's token check.** Its ``from_token`` calls ``jwt.decode`` without the
``algorithms`` argument, which PyJWT 2 requires: every token, valid or not, is refused (401), so a server
with auth on could not be used at all. Importing this module replaces that one function of
``monailabel.endpoints.user.auth`` with :func:`from_token`, which verifies the signature with the realm's
public key for the algorithms in ``MONAI_LABEL_AUTH_TOKEN_ALGORITHMS`` (default ``RS256``, Keycloak's),
requires an expiry, and reads the user and roles from the same claims. Every route, MONAI Label's own and
the app's, keeps using MONAI Label's ``get_current_user`` / ``RBAC``, which call it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jwt
import requests
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.endpoints.user import auth as monai_auth
from monailabel.endpoints.user.auth import RBAC, User

log = logging.getLogger(__name__)

READ = settings.MONAI_LABEL_AUTH_ROLE_USER
ANNOTATE = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
ADMIN = settings.MONAI_LABEL_AUTH_ROLE_ADMIN
TRAINER = os.environ.get("MONAI_LABEL_AUTH_ROLE_TRAINER", "monailabel-trainer")
TRAIN = [ADMIN, TRAINER]

ALGORITHMS = [a.strip() for a in os.environ.get("MONAI_LABEL_AUTH_TOKEN_ALGORITHMS", "RS256").split(",") if a.strip()]

__all__ = ["ADMIN", "ANNOTATE", "READ", "RBAC", "TRAIN", "TRAINER", "User", "from_token", "labeller", "owner_of"]


def labeller(user: User, claimed: str) -> str:
    """The name a label is stored with: the signed-in user when the server has a login (a client cannot
    label in someone else's name), else the ``user`` the client sent."""
    return user.username if settings.MONAI_LABEL_AUTH_ENABLE else claimed


def owner_of(user: User, client_id: str) -> str:
    """Whose suggestion reservations a request counts against: the signed-in user when the server has a
    login (so one user cannot dodge the cap with many client ids), else the client id."""
    return f"user:{user.username}" if settings.MONAI_LABEL_AUTH_ENABLE else f"client:{client_id}"


def _claim(payload: dict[str, Any], path: str) -> Any:
    """A claim by MONAI Label's ``a#b`` path notation (``realm_access#roles``)."""
    value: Any = payload
    for key in path.split("#"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def from_token(token: str) -> User:
    """The user a bearer token names, after checking its signature and expiry (see the module docstring).

    Raises:
        jwt.InvalidTokenError: a bad, expired or foreign token (MONAI Label answers 401).
        HTTPException: 503 when the login server cannot be reached for its public key.
    """
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return monai_auth.DEFAULT_USER
    try:
        key = monai_auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    except (requests.RequestException, KeyError, ValueError) as err:
        log.error("cannot fetch the public key of %s: %s", settings.MONAI_LABEL_AUTH_REALM_URI, err)
        raise HTTPException(status_code=503, detail="the login server cannot be reached to check the token; "
                                                    "try again, or ask the administrator") from err
    payload = jwt.decode(token, key, algorithms=ALGORITHMS,
                         options={"verify_signature": True, "verify_aud": False, "verify_exp": True,
                                  "require": ["exp"]})
    roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES)
    return User(
        username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or ""),
        email=_text(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL)),
        name=_text(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME)),
        roles=[r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [],
    )


monai_auth.from_token = from_token  # see the module docstring: MONAI Label 0.8.5 refuses every token
