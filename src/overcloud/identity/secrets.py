"""Secrets at rest: Fernet-encrypted in the repository, never in logs or responses.

The key is ``OVERCLOUD_SECRET_KEY`` (a Fernet key) or ``<state-dir>/secret.key``, made on first
use with mode 0600. Losing the key loses the secrets (DataLake credentials) — back it up with
the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretError(RuntimeError):
    """A secret could not be read (wrong or missing key). Never carries the secret."""


def load_key(state_dir: Path, env_value: str | None = None) -> bytes:
    if env_value:
        key = env_value.strip().encode()
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SecretError("OVERCLOUD_SECRET_KEY is not a Fernet key (32 url-safe base64 bytes)") from None
        return key
    path = state_dir / "secret.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key


class SecretBox:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretError("a stored secret cannot be decrypted with this Tower's key (OVERCLOUD_SECRET_KEY or secret.key changed?)") from None

    def __repr__(self) -> str:  # never show the key
        return "SecretBox(<key hidden>)"
