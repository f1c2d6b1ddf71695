"""Dependencies shared by the routes: the Tower, and who is calling.

Authentication is a bearer token. Today there is one principal, the admin,
whose token the Tower writes to ``<state-dir>/admin.token`` on first start.
Projects, users and roles slot in behind :func:`get_principal`: it returns a
:class:`Principal`, and routes only ever look at that.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from overcloud.files import write_private
from overcloud.tower import Tower

bearer = HTTPBearer(auto_error=False, description="the admin token from <state-dir>/admin.token")


@dataclasses.dataclass(frozen=True)
class Principal:
    subject: str
    tenant_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def ensure_admin_token(path: Path) -> str:
    """Read the admin token, creating it (mode 0600, never logged) on first start."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    os.chmod(path, 0o600)
    return token


def get_tower(request: Request) -> Tower:
    return request.app.state.tower


def get_principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' (the admin token is in <state-dir>/admin.token)", headers={"WWW-Authenticate": "Bearer"})
    expected: str = request.app.state.admin_token
    if not hmac.compare_digest(creds.credentials.encode(), expected.encode()):
        raise HTTPException(401, "the bearer token is not valid", headers={"WWW-Authenticate": "Bearer"})
    return Principal(subject="admin", tenant_id="admin", roles=frozenset({"admin"}))


TowerDep = Annotated[Tower, Depends(get_tower)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
