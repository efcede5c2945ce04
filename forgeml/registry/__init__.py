"""The registry: content-addressed assets, runs, lineage, aliases and the stage cache.

`Registry` is the only entry point; it returns plain dataclasses and never exposes SQL.
"""

from forgeml.registry.artifacts import ArtifactStore, TreeDigest, tree_digest
from forgeml.registry.opener import open_registry
from forgeml.registry.store import (
    ASSET_KINDS,
    RUN_STATUSES,
    Asset,
    Lineage,
    Registry,
    Run,
    code_version,
    format_lineage,
    library_versions,
    new_run_id,
)

__all__ = [
    "ASSET_KINDS",
    "RUN_STATUSES",
    "ArtifactStore",
    "Asset",
    "Lineage",
    "Registry",
    "Run",
    "TreeDigest",
    "code_version",
    "format_lineage",
    "library_versions",
    "new_run_id",
    "open_registry",
    "tree_digest",
]
