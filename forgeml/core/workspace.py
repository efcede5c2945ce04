"""A forgeml workspace: `forge.yaml` settings, the registry database, the artifact store, runs.

`forgeml init DIR` makes one; every command finds it through `-w DIR`, the
`FORGEML_WORKSPACE` variable, or the current folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text

SETTINGS_FILE = "forge.yaml"


@dataclass(frozen=True)
class Workspace:
    root: Path
    registry_url: str

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, *parts: str) -> Path:
        path = self.runs_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


def default_workspace_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $FORGEML_WORKSPACE, else the current folder."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("FORGEML_WORKSPACE")
    return Path(env).expanduser().resolve() if env else Path.cwd().resolve()


def init_workspace(root: str | Path, registry_url: str | None = None) -> Workspace:
    """Create (or re-open) a workspace at `root`. Existing settings are never overwritten."""
    root = Path(root).expanduser().resolve()
    settings = root / SETTINGS_FILE
    if settings.exists():
        return open_workspace(root)
    if root.exists() and not root.is_dir():
        raise ForgeError(f"{root} exists and is not a folder", hint="choose another path")
    root.mkdir(parents=True, exist_ok=True)
    url = registry_url or f"sqlite:///{root / 'registry.db'}"
    atomic_write_text(
        settings,
        yaml.safe_dump({"version": 1, "registry_url": url, "artifacts": "artifacts"}),
    )
    (root / "artifacts").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    return Workspace(root=root, registry_url=url)


def open_workspace(root: str | Path | None = None) -> Workspace:
    """Open the workspace at `root` (see `default_workspace_dir`)."""
    root = default_workspace_dir(root)
    settings = root / SETTINGS_FILE
    if not settings.is_file():
        raise NotFoundError(
            f"no forgeml workspace at {root}",
            hint="run `forgeml init DIR` and pass `-w DIR` or set FORGEML_WORKSPACE",
        )
    data = yaml.safe_load(settings.read_text()) or {}
    url = os.environ.get("FORGEML_REGISTRY_URL") or data.get("registry_url")
    if not url:
        raise ForgeError(f"{settings} has no registry_url", hint="re-create it with forgeml init")
    return Workspace(root=root, registry_url=url)
