"""Where the audit log's keys and settings come from: the HMAC key that authenticates entries
and the Ed25519 key that signs checkpoints, kept outside the audit folder (0700/0600)."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forgeml.core.errors import ForgeError
from forgeml.core.workspace import SETTINGS_FILE

KEY_DIR_ENV = "FORGEML_AUDIT_KEY_DIR"
CHECKPOINT_EVERY_ENV = "FORGEML_AUDIT_CHECKPOINT_EVERY"
SHIP_TO_ENV = "FORGEML_AUDIT_SHIP_TO"
DEFAULT_KEY_DIR = ".forgeml-keys"
DEFAULT_CHECKPOINT_EVERY = 100
HMAC_KEY_FILE = "audit-hmac.key"
SIGNING_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"


@dataclass(frozen=True)
class AuditSettings:
    """`key_dir`: holds the keys; `checkpoint_every`: entries between automatic signed
    checkpoints (0: only on demand); `ship_to`: where checkpoints are copied (file paths,
    `syslog://HOST:PORT` over UDP, or `syslog:///dev/log`)."""

    key_dir: Path
    checkpoint_every: int
    ship_to: tuple[str, ...]


def _workspace_settings(log_path: Path) -> tuple[Path | None, dict]:
    """(workspace root, its `audit:` settings) when `log_path` is a workspace's own log."""
    root = log_path.parent.parent
    settings = root / SETTINGS_FILE
    if log_path.parent.name != "audit" or not settings.is_file():
        return None, {}
    data = yaml.safe_load(settings.read_text()) or {}
    section = data.get("audit") or {}
    if not isinstance(section, dict):
        raise ForgeError(
            f"{settings}: `audit` must be a mapping",
            hint="e.g. audit: {key_dir: /srv/forgeml-keys, checkpoint_every: 100, ship_to: []}",
        )
    return root, section


def resolve_audit_settings(
    log_path: str | Path,
    *,
    key_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    ship_to: list[str] | tuple[str, ...] | None = None,
) -> AuditSettings:
    """Arguments first, then $FORGEML_AUDIT_KEY_DIR / $FORGEML_AUDIT_CHECKPOINT_EVERY /
    $FORGEML_AUDIT_SHIP_TO (comma-separated), then the workspace's `forge.yaml` `audit:`
    section, then the defaults: keys in `.forgeml-keys/` beside the log's folder (for a
    workspace, `<workspace>/.forgeml-keys/`), a checkpoint every 100 entries, no shipping."""
    log_path = Path(log_path).absolute()
    root, section = _workspace_settings(log_path)
    base = root or log_path.parent.parent

    if key_dir is None:
        key_dir = os.environ.get(KEY_DIR_ENV) or section.get("key_dir") or DEFAULT_KEY_DIR
    key_path = Path(key_dir).expanduser()
    if not key_path.is_absolute():
        key_path = base / key_path

    if checkpoint_every is None:
        raw = os.environ.get(CHECKPOINT_EVERY_ENV) or section.get("checkpoint_every")
        try:
            checkpoint_every = DEFAULT_CHECKPOINT_EVERY if raw in (None, "") else int(raw)
        except (TypeError, ValueError):
            raise ForgeError(
                f"audit checkpoint_every must be a whole number, got {raw!r}",
                hint=f"set {CHECKPOINT_EVERY_ENV} or forge.yaml audit.checkpoint_every to "
                "e.g. 100 (0 turns automatic checkpoints off)",
            ) from None
    if checkpoint_every < 0:
        raise ForgeError(
            f"audit checkpoint_every must be 0 or more, got {checkpoint_every}",
            hint="0 turns automatic checkpoints off; `forgeml audit checkpoint` still works",
        )

    if ship_to is None:
        env = os.environ.get(SHIP_TO_ENV)
        ship_to = env.split(",") if env else section.get("ship_to") or []
        if isinstance(ship_to, str):
            ship_to = [ship_to]
    targets = tuple(str(t).strip() for t in ship_to if str(t).strip())
    return AuditSettings(key_path, checkpoint_every, targets)


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write `data` to `path` (0600) unless it exists: a temp file hard-linked into place, so
    a concurrent reader never sees a half-written key and two creators agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise ForgeError(
            f"cannot read the audit key {path}: permission denied",
            hint="run as the user that owns the key folder, or point "
            f"{KEY_DIR_ENV} at a key folder you may read",
        ) from None


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a signing key (sha256 of its raw public bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class AuditKeys:
    """The secrets of one key folder. `hmac_key` authenticates entries; `signing_key`
    signs checkpoints; `public_key` checks them (and is all an outside auditor needs)."""

    hmac_key: bytes | None
    signing_key: Ed25519PrivateKey | None
    public_key: Ed25519PublicKey | None

    @property
    def key_id(self) -> str | None:
        return key_id(self.public_key) if self.public_key else None

    def require_hmac_key(self) -> bytes:
        if self.hmac_key is None:
            raise ForgeError(
                f"no audit HMAC key ({HMAC_KEY_FILE}) could be loaded",
                hint=f"check the audit key folder ({KEY_DIR_ENV}) exists and is readable",
            )
        return self.hmac_key


def ensure_audit_keys(key_dir: Path) -> AuditKeys:
    """The keys in `key_dir`, created on first use (32 random bytes for the HMAC, a fresh
    Ed25519 pair for checkpoints), files 0600 in a 0700 folder whatever the umask."""
    hmac_path, signing_path = key_dir / HMAC_KEY_FILE, key_dir / SIGNING_KEY_FILE
    if not hmac_path.exists():
        _create_exclusive(hmac_path, secrets.token_bytes(32).hex().encode())
    if not signing_path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _create_exclusive(signing_path, pem)
    keys = load_audit_keys(key_dir)
    public_path = key_dir / PUBLIC_KEY_FILE
    if not public_path.exists() and keys.public_key is not None:
        _create_exclusive(public_path, public_key_pem(keys.public_key))
    return keys


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (`audit-signing.pub`)."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ForgeError(
            f"cannot read an Ed25519 public key from {path}: {exc}",
            hint=f"pass the {PUBLIC_KEY_FILE} file from the audit key folder",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ForgeError(f"{path} is not an Ed25519 public key", hint=f"pass {PUBLIC_KEY_FILE}")
    return key


def load_audit_keys(key_dir: Path, *, public_key_file: str | Path | None = None) -> AuditKeys:
    """Whatever keys `key_dir` holds, creating none (verification must not mint a key).
    The checkpoint public key comes from `public_key_file` if given, else from the private
    key, else from `audit-signing.pub` in `key_dir`."""
    hmac_path, signing_path = key_dir / HMAC_KEY_FILE, key_dir / SIGNING_KEY_FILE
    hmac_key = bytes.fromhex(_read_key_file(hmac_path).decode()) if hmac_path.exists() else None
    signing_key = None
    if signing_path.exists():
        loaded = serialization.load_pem_private_key(_read_key_file(signing_path), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ForgeError(
                f"{signing_path} is not an Ed25519 private key",
                hint="move it away; a new pair is made on the next audit entry",
            )
        signing_key = loaded
    if public_key_file is not None:
        public_key = load_public_key(public_key_file)
    elif signing_key is not None:
        public_key = signing_key.public_key()
    elif (key_dir / PUBLIC_KEY_FILE).exists():
        public_key = load_public_key(key_dir / PUBLIC_KEY_FILE)
    else:
        public_key = None
    return AuditKeys(hmac_key, signing_key, public_key)
