"""A forgeml workspace: `forge.yaml` settings, the registry database, the artifact store, runs.

`forgeml init DIR` makes one; every command finds it through `-w DIR`, the
`FORGEML_WORKSPACE` variable, or the current folder. A workspace is private to its owner
(folders 0700, files 0600, stored artifacts 0400) whatever the umask, unless forge.yaml names
a `shared_group` (0750/0640/0440, group set): opening one sets the process umask to match.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from forgeml.core.errors import ForgeError, NotFoundError
from forgeml.core.io import atomic_write_text

SETTINGS_FILE = "forge.yaml"
# What this process writes once a workspace is open: no bits for others, and none for the
# group unless the workspace is shared with one (then read, never write).
PRIVATE_UMASK = 0o077
SHARED_UMASK = 0o027
# The workspace's own top-level entries, whose group and mode opening it brings in line (files
# made before the workspace was private or shared); deeper files keep the modes they were
# written with. The audit keys folder is not among them: it stays 0700 whatever the setting.
TOP_LEVEL_ENTRIES = (
    SETTINGS_FILE,
    "registry.db",
    "registry.db-wal",
    "registry.db-shm",
    "registry.db-journal",
    "artifacts",
    "runs",
    "audit",
)


@dataclass(frozen=True)
class Workspace:
    root: Path
    registry_url: str
    shared_group: str | None = None

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


def init_workspace(
    root: str | Path, registry_url: str | None = None, *, shared_group: str | None = None
) -> Workspace:
    """Create (or re-open) a workspace at `root`. Existing settings are never overwritten.

    `shared_group`: a group whose members may read the workspace (see `apply_access`);
    None keeps it private to its owner."""
    root = Path(root).expanduser().resolve()
    settings = root / SETTINGS_FILE
    if settings.exists():
        return open_workspace(root)
    if root.exists() and not root.is_dir():
        raise ForgeError(f"{root} exists and is not a folder", hint="choose another path")
    gid = _group_id(shared_group, SETTINGS_FILE) if shared_group else None
    os.umask(SHARED_UMASK if shared_group else PRIVATE_UMASK)  # before anything is created
    root.mkdir(parents=True, exist_ok=True)
    _set_access(root, gid)
    url = registry_url or f"sqlite:///{root / 'registry.db'}"
    body = {"version": 1, "registry_url": url, "artifacts": "artifacts"}
    if shared_group:
        body["shared_group"] = shared_group
    atomic_write_text(settings, yaml.safe_dump(body))
    (root / "artifacts").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    apply_access(root, shared_group)
    return Workspace(root=root, registry_url=url, shared_group=shared_group)


def open_workspace(root: str | Path | None = None) -> Workspace:
    """Open the workspace at `root` (see `default_workspace_dir`) and set this process's file
    modes for it (`apply_access`)."""
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
    shared_group = data.get("shared_group")
    if shared_group is not None and (not isinstance(shared_group, str) or not shared_group):
        raise ForgeError(
            f"{settings}: shared_group must be a group name, got {shared_group!r}",
            hint="write e.g. `shared_group: mlteam`, or remove the line to keep it private",
        )
    apply_access(root, shared_group)
    return Workspace(root=root, registry_url=url, shared_group=shared_group)


def apply_access(root: Path, shared_group: str | None) -> None:
    """Make what this process writes from now on private to its user (umask 077: folders
    0700, files 0600; the artifact store makes its files 0400), or readable by
    `shared_group` (umask 027: 0750/0640/0440, the group inherited through set-group-ID
    folders), and bring the workspace's top-level entries in line.

    The umask is process-wide, so files written elsewhere afterwards (an export folder) get
    the same modes. Deeper files written under another setting keep their modes: to share an
    existing workspace, also run `chgrp -R GROUP DIR && chmod -R g+rX DIR`."""
    gid = _group_id(shared_group, root / SETTINGS_FILE) if shared_group else None
    os.umask(SHARED_UMASK if shared_group else PRIVATE_UMASK)
    for path in [root, *(root / name for name in TOP_LEVEL_ENTRIES)]:
        # a group member opening a shared workspace leaves its owner's files as they are
        if path.exists() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
            _set_access(path, gid)


def _group_id(name: str, settings: Path | str) -> int:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ForgeError(
            f"{settings}: shared_group '{name}' is not a group on this machine",
            hint="create the group (groupadd) or remove shared_group to keep the workspace private",
        ) from None
    if gid != os.getgid() and gid not in os.getgroups() and os.geteuid() != 0:
        raise ForgeError(
            f"{settings}: you are not a member of shared_group '{name}', so the workspace "
            "cannot be given to it",
            hint=f"ask an administrator to add you (usermod -aG {name} $USER) and log in again",
        )
    return gid


def _set_access(path: Path, gid: int | None) -> None:
    """Owner bits kept; group read (and search on folders) only when shared (`gid` set);
    nothing for others. A shared folder is set-group-ID so what is made in it gets the group."""
    st = path.lstat()
    owner = stat.S_IMODE(st.st_mode) & 0o700
    is_dir = stat.S_ISDIR(st.st_mode)
    mode = owner
    if gid is not None:
        mode |= (owner >> 3) & 0o050 | (stat.S_ISGID if is_dir else 0)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode or gid is not None:
        os.chmod(path, mode)
