"""API keys and principals for serving and the control plane, stored hashed in the registry.

A key is `fml_<key id>_<secret>`; the database keeps the id, a random salt and
sha256(salt + secret), never the secret. Each key is bound to a principal with its scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.registry.schema import api_keys

KEY_PREFIX = "fml"
ENDPOINTS = ("chat", "completions", "models", "metrics")
DEFAULT_ENDPOINTS = ("chat", "completions", "models")
ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, and what its key allows."""

    name: str
    key_id: str
    roles: tuple[str, ...] = ()
    models: tuple[str, ...] = ("*",)
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    clearance: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def may_use_model(self, names: set[str]) -> bool:
        """True if any of a model's names (served name, alias, asset id) is in scope."""
        return self.is_admin or "*" in self.models or bool(names & set(self.models))

    def may_call(self, endpoint: str) -> bool:
        return self.is_admin or endpoint in self.endpoints


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as listed by `forgeml keys list` (no secret)."""

    id: str
    principal: str
    roles: list[str]
    models: list[str]
    endpoints: list[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    clearance: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None


def _scopes(row: Mapping[str, Any], seq: type[tuple] | type[list]) -> dict[str, Any]:
    """What a key allows, read from its row: roles, models and endpoints (as `seq`), its
    rate limits and clearance."""
    return {
        "roles": seq(row["roles"]),
        "models": seq(row["models"]),
        "endpoints": seq(row["endpoints"]),
        "requests_per_minute": row["requests_per_minute"],
        "tokens_per_minute": row["tokens_per_minute"],
        "clearance": row["clearance"],
    }


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}{secret}".encode()).hexdigest()


class KeyStore:
    """Create, list, revoke and check API keys in a SQLAlchemy database (the registry's)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Writes go through the registry's BEGIN IMMEDIATE path on SQLite (see store.py).
        self._write_engine = engine.execution_options(forgeml_write=True)

    def create_key(
        self,
        principal: str,
        *,
        roles: list[str] | None = None,
        models: list[str] | None = None,
        endpoints: list[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clearance: str | None = None,
        label: str = "",
    ) -> tuple[str, KeyInfo]:
        """Make a key; returns (the key, shown once, its stored info)."""
        if not principal:
            raise ForgeError("a key needs a principal", hint="pass --principal NAME")
        endpoints = list(endpoints or DEFAULT_ENDPOINTS)
        unknown = sorted(set(endpoints) - set(ENDPOINTS))
        if unknown:
            raise ForgeError(
                f"unknown endpoint scope {', '.join(unknown)}", hint=f"use {', '.join(ENDPOINTS)}"
            )
        for name, limit in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if limit is not None and limit < 1:
                raise ForgeError(f"{name} per minute must be >= 1, got {limit}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        row: dict[str, Any] = {
            "id": key_id,
            "principal": principal,
            "salt": salt,
            "secret_sha256": _digest(salt, secret),
            "roles": list(roles or []),
            "models": list(models or ["*"]),
            "endpoints": endpoints,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "clearance": clearance,
            "label": label,
            "created_at": datetime.now(UTC),
            "revoked_at": None,
        }
        with self._write_engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row))
        return f"{KEY_PREFIX}_{key_id}_{secret}", self._info(row)

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke a key by id (or the whole key); revoking twice is a no-op."""
        key_id = self._parse(key_id)[0] if key_id.startswith(f"{KEY_PREFIX}_") else key_id
        with self._write_engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no API key {key_id}", hint="run `forgeml keys list` to see ids")
        return self._info(row)

    def list_keys(self, include_revoked: bool = False) -> list[KeyInfo]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [self._info(r) for r in conn.execute(query).mappings()]

    def roles_of(self, principal: str) -> set[str]:
        """Every role the principal's unrevoked keys hold (empty: no such principal)."""
        query = select(api_keys.c.roles).where(
            api_keys.c.principal == principal, api_keys.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            return {role for (roles,) in conn.execute(query) for role in roles}

    def authenticate(self, key: str | None) -> Principal | None:
        """The principal of a valid, unrevoked key, else None (the caller answers 401)."""
        parsed = self._parse(key or "")
        if parsed is None:
            return None
        key_id, secret = parsed
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            # Hash anyway so an unknown id takes as long as a wrong secret.
            hmac.compare_digest(_digest("0" * 32, secret), "0" * 64)
            return None
        if not hmac.compare_digest(_digest(row["salt"], secret), row["secret_sha256"]):
            return None
        if row["revoked_at"] is not None:
            return None
        return Principal(name=row["principal"], key_id=row["id"], **_scopes(row, tuple))

    @staticmethod
    def _parse(key: str) -> tuple[str, str] | None:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
            return None
        return parts[1], parts[2]

    @staticmethod
    def _info(row: Any) -> KeyInfo:
        return KeyInfo(
            id=row["id"],
            principal=row["principal"],
            **_scopes(row, list),
            label=row["label"] or "",
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )


# -- what the CLI calls (`forgeml keys create/list/revoke`) ---------------------------------


def _open(workspace_root: str | Path | None):
    from forgeml.core.workspace import open_workspace
    from forgeml.governance.audit import AuditLog, audit_log_path
    from forgeml.registry.store import Registry

    ws = open_workspace(workspace_root)
    return Registry(ws.registry_url, ws.artifacts_dir), AuditLog(audit_log_path(ws.root))


def create_api_key(
    workspace_root: str | Path | None,
    principal: str,
    *,
    actor: str = "cli",
    **scopes: Any,
) -> tuple[str, KeyInfo]:
    """Create a key in a workspace's registry and audit it; `scopes` as in `create_key`."""
    registry, audit = _open(workspace_root)
    try:
        key, info = KeyStore(registry.engine).create_key(principal, **scopes)
    finally:
        registry.close()
    audit.append(
        "key_created",
        actor=actor,
        key_id=info.id,
        principal=info.principal,
        **_scopes(asdict(info), list),
    )
    return key, info


def revoke_api_key(
    workspace_root: str | Path | None, key_id: str, *, actor: str = "cli"
) -> KeyInfo:
    """Revoke a key (by id) in a workspace and audit it."""
    registry, audit = _open(workspace_root)
    try:
        info = KeyStore(registry.engine).revoke_key(key_id)
    finally:
        registry.close()
    audit.append("key_revoked", actor=actor, key_id=info.id, principal=info.principal)
    return info


def list_api_keys(
    workspace_root: str | Path | None, include_revoked: bool = False
) -> list[KeyInfo]:
    registry, _ = _open(workspace_root)
    try:
        return KeyStore(registry.engine).list_keys(include_revoked)
    finally:
        registry.close()
