"""The one way to open a workspace's registry: its database URL and artifact store.

Every stage, command and service that works inside a workspace opens the registry here.
"""

from __future__ import annotations

from forgeml.core.workspace import Workspace
from forgeml.registry.store import Registry


def open_registry(ws: Workspace) -> Registry:
    """The registry of workspace `ws` (its database and content-addressed artifacts)."""
    return Registry(ws.registry_url, ws.artifacts_dir)
