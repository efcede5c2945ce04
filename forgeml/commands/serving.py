"""CLI commands for serving (registered on the apps of forgeml.cli)."""

from __future__ import annotations
