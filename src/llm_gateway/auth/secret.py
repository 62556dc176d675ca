"""The JWT secret: from JWT_SECRET, else generated once and kept in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_FILE = "jwt_secret"


def ensure_jwt_secret(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    if path.is_file():
        stored = path.read_text().strip()
        if stored:
            return stored
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
