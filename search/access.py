"""Who may write: the admin token, and what a server without one accepts.

Writes are index jobs (``POST /index``, which also prunes) and the UI's Catalog tab. With
``LOOKALIKE_ADMIN_TOKEN`` set, each needs ``Authorization: Bearer TOKEN`` (the UI asks for it). Without
one, a server listening on loopback only takes writes from loopback clients, and a server listening
beyond it (``--host 0.0.0.0``, as in compose) takes none: there, anyone who reaches the port would
otherwise be an administrator. Reads (search, items, images, similar, health) stay public.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from pydantic import SecretStr


class AccessDenied(PermissionError):
    """A write the server refuses; ``status`` is the HTTP status to answer with (401 or 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, if that is what it holds."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class WriteGuard:
    """The write policy of one server: its admin token (if any) and the address it listens on."""

    token: SecretStr | None
    host: str

    @property
    def public(self) -> bool:
        """Listening beyond loopback: reachable from other machines."""
        return not is_loopback(self.host)

    def check(self, client: str | None, token: str | None) -> None:
        """Allow a write from ``client`` (its IP) presenting ``token``, or raise AccessDenied saying why."""
        if self.token is not None:
            if token is None:
                raise AccessDenied(401, "writes need the admin token: send Authorization: Bearer LOOKALIKE_ADMIN_TOKEN")
            # Compared as digests in constant time: the reply time tells nothing about the token.
            given = hashlib.sha256(token.encode()).digest()
            if not hmac.compare_digest(given, hashlib.sha256(self.token.get_secret_value().encode()).digest()):
                raise AccessDenied(403, "wrong admin token")
            return
        if self.public:
            raise AccessDenied(
                403,
                f"writes are disabled: this server listens on {self.host}, beyond this machine, and has no "
                "admin token; set LOOKALIKE_ADMIN_TOKEN to enable them",
            )
        if not is_loopback(client):
            raise AccessDenied(
                403, "writes are accepted from this machine only; set LOOKALIKE_ADMIN_TOKEN to allow others"
            )

    def check_server_path(self, catalog_root: object) -> None:
        """Server-side catalog paths read the server's files: beyond loopback they need a fenced folder."""
        if self.public and catalog_root is None:
            raise AccessDenied(
                403,
                "catalogs named by a server path need LOOKALIKE_CATALOG_ROOT when the server listens beyond this "
                "machine; set it to the folder catalogs may be read from, or upload the catalog",
            )


def client_key(client: str | None, authorization: str | None) -> str:
    """Whom a request counts against for rate limits: its bearer token (hashed), else its IP."""
    token = bearer(authorization)
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"ip:{client or 'unknown'}"
