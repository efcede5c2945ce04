"""Where an agent's jobs may read: the workspace and the data roots an operator configured.

`forge.yaml` may list `data_roots: [/srv/corpora, ...]`; a job submitted with a non-admin key
may only read files under those folders or the workspace (outside its registry database,
audit log and keys). Paths are compared after resolving `~`, `..` and symlinks, so a link
inside a root that points elsewhere is judged by where it points.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from forgeml.core.errors import ForgeError
from forgeml.core.workspace import SETTINGS_FILE, Workspace

SETTING = "data_roots"
# Workspace files no job reads: the registry (hashed keys, every record), the audit trail and
# the audit keys, the settings.
PRIVATE = ("registry.db", "registry.db-wal", "registry.db-shm", "audit", ".forgeml-keys",
           SETTINGS_FILE)  # fmt: skip


def configured_data_roots(ws: Workspace) -> list[Path]:
    """The `data_roots` of the workspace's forge.yaml, resolved (relative ones: to the root)."""
    settings = ws.root / SETTINGS_FILE
    try:
        data = yaml.safe_load(settings.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ForgeError(f"cannot read {settings}: {exc}", hint="fix the settings file") from None
    roots = data.get(SETTING) or []
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise ForgeError(
            f"{settings}: `{SETTING}` must be a list of folder paths, got {roots!r}",
            hint=f"e.g. {SETTING}: [/srv/corpora, /data/acme]",
        )
    return [(ws.root / Path(r).expanduser()).resolve() for r in roots]


def agent_roots(ws: Workspace) -> list[Path]:
    """Every folder an agent's job may read from."""
    return [ws.root.resolve(), *configured_data_roots(ws)]


def resolve_user_path(text: str, base: Path) -> Path | None:
    """`text` as an absolute path with symlinks and `..` resolved (relative: to `base`); None
    when the OS cannot take it as a path."""
    try:
        path = Path(text).expanduser()
        return (path if path.is_absolute() else base / path).resolve()
    except (OSError, RuntimeError, ValueError):  # too long, a symlink loop, a NUL byte
        return None


def outside_roots(path: Path, roots: list[Path], ws: Workspace) -> str | None:
    """Why an agent may not read `path` (already resolved), or None when it may."""
    private = [ws.root.resolve() / name for name in PRIVATE]
    for p in private:
        if path == p or path.is_relative_to(p):
            return f"{path} is the workspace's own {p.name} (no job reads it)"
    if any(path == r or path.is_relative_to(r) for r in roots):
        return None
    shown = ", ".join(str(r) for r in roots)
    return (
        f"{path} is outside the folders agents may read ({shown}); an operator adds a folder "
        f"to `{SETTING}` in {ws.root / SETTINGS_FILE}"
    )


def looks_like_path(text: str) -> bool:
    """A string a job would read as a path even if nothing is there yet."""
    return text.startswith(("/", "~", "./", "../")) or text in {".", ".."} or os.sep + ".." in text


def set_data_roots(ws: Workspace, roots: list[str | Path]) -> list[Path]:
    """Replace the workspace's `data_roots` (an operator's setting; other settings are kept)."""
    from forgeml.core.io import atomic_write_text

    settings = ws.root / SETTINGS_FILE
    data = yaml.safe_load(settings.read_text()) or {}
    data[SETTING] = [str(Path(r).expanduser().resolve()) for r in roots]
    atomic_write_text(settings, yaml.safe_dump(data, sort_keys=False))
    return configured_data_roots(ws)
