"""CLI commands for rl (registered on the apps of forgeml.cli)."""

from __future__ import annotations
